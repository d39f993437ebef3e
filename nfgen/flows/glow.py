"""Glow's multi-scale body (Kingma & Dhariwal, 2018)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nfgen.flows.actnorm import ActNorm
from nfgen.flows.base import Flow, Sequential
from nfgen.flows.conv1x1 import InvConv1x1, InvConv1x1LU, Permute
from nfgen.flows.coupling import ChannelMask, Coupling
from nfgen.flows.multiscale import Level, MultiScaleFlow, Shape
from nfgen.flows.nets import NetFactory, make_conditioner
from nfgen.flows.priors import LearnedGaussian, SplitPrior
from nfgen.flows.reshape import Squeeze
from nfgen.flows.transforms import make_transform


def channel_mixer(channels: int, kind: str) -> Flow:
    if kind == "conv1x1_lu":
        return InvConv1x1LU(channels)
    if kind == "conv1x1":
        return InvConv1x1(channels)
    return Permute(channels, kind)


def glow_step(channels: int, net: NetFactory, coupling: str = "affine", permutation: str = "conv1x1_lu",
              coupling_options: Mapping[str, Any] | None = None, context_dim: int = 0) -> Flow:
    """One step of flow: actnorm -> 1x1 conv (or permutation) -> channel coupling (whose net also
    sees a ``context_dim`` context, if any)."""
    return Sequential(
        ActNorm(channels),
        channel_mixer(channels, permutation),
        Coupling(ChannelMask(channels), net, make_transform(coupling, **(coupling_options or {})), context_dim),
    )


def build_glow(shape: Shape, levels: int, steps: int, hidden: int, coupling: str = "affine",
               permutation: str = "conv1x1_lu", split_prior: str = "learned", learn_top: bool = True,
               conditioner: str = "glow", blocks: int = 1, coupling_options: Mapping[str, Any] | None = None,
               conditioner_options: Mapping[str, Any] | None = None, context_dim: int = 0) -> MultiScaleFlow:
    """``levels`` x [squeeze -> ``steps`` steps of flow -> split], no split after the last.

    Couplings use the registered elementwise transform ``coupling`` (with ``coupling_options``)
    and the registered ``conditioner`` of width ``hidden`` and depth ``blocks`` (Glow's own net
    has one hidden 1x1 layer), with its extra ``conditioner_options``. The keyword names are
    those of the config's ``model.glow`` section; ``context_dim`` is the size of the class
    embedding the couplings and split priors see (0: unconditional). Memory saving and channels-last are applied to
    the built model (``set_memory_saving``, ``set_channels_last``), not chosen here."""
    net = make_conditioner(conditioner, hidden, blocks, **(conditioner_options or {}))
    c, h, w = shape
    built = []
    for i in range(levels):
        in_shape = (c, h, w)
        c, h, w = 4 * c, h // 2, w // 2
        flows: list[Flow] = [Squeeze()]
        flows += [glow_step(c, net, coupling, permutation, coupling_options, context_dim) for _ in range(steps)]
        last = i == levels - 1
        if not last and split_prior == "learned":
            flows.append(SplitPrior(c, context_dim))
        if last and learn_top:
            flows.append(LearnedGaussian((c, h, w)))
        built.append(Level(Sequential(*flows), in_shape, (c, h, w), split=not last))
        if not last:
            c //= 2
    return MultiScaleFlow(built)

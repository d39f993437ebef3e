"""Glow's multi-scale body (Kingma & Dhariwal, 2018)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nfgen.flows.actnorm import ActNorm
from nfgen.flows.base import Flow, Sequential
from nfgen.flows.conv1x1 import InvConv1x1, InvConv1x1LU, Permute
from nfgen.flows.coupling import ChannelMask, Coupling
from nfgen.flows.glow_section import GlowConfig
from nfgen.flows.multiscale import MultiScaleFlow, Shape, squeezed, stack_levels
from nfgen.flows.nets import NetFactory
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


def build_glow(shape: Shape, section: GlowConfig, context_dim: int = 0) -> MultiScaleFlow:
    """``section.levels`` x [squeeze -> ``section.steps`` steps of flow -> split], no split after
    the last (the options: ``GlowConfig``, the config's ``model.glow``).

    Couplings use the section's registered transform and conditioner (``CouplingSpec``: Glow's
    own net has one hidden 1x1 layer); ``context_dim`` is the size of the class embedding the
    couplings and split priors see (0: unconditional). Memory saving and channels-last are
    applied to the built model (``set_memory_saving``, ``set_channels_last``), not chosen here."""
    s, net = section, section.net()

    def level(i: int, in_shape: Shape, last: bool) -> tuple[list[Flow], Shape]:
        c, h, w = out_shape = squeezed(in_shape)
        flows: list[Flow] = [Squeeze()]
        flows += [glow_step(c, net, s.coupling, s.permutation, s.coupling_options, context_dim) for _ in range(s.steps)]
        if not last and s.split_prior == "learned":
            flows.append(SplitPrior(c, context_dim))
        if last and s.learn_top:
            flows.append(LearnedGaussian(out_shape))
        return flows, out_shape

    return stack_levels(shape, s.levels, level)

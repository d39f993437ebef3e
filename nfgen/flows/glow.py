"""Glow's multi-scale body (Kingma & Dhariwal, 2018)."""

from __future__ import annotations

from nfgen.flows.actnorm import ActNorm
from nfgen.flows.base import Flow, Sequential
from nfgen.flows.conv1x1 import InvConv1x1, InvConv1x1LU, Permute
from nfgen.flows.coupling import Coupling
from nfgen.flows.multiscale import Level, MultiScaleFlow, Shape
from nfgen.flows.nets import glow_net
from nfgen.flows.reshape import Squeeze
from nfgen.priors import LearnedGaussian
from nfgen.priors import split_prior as make_split_prior


def channel_mixer(channels: int, kind: str) -> Flow:
    if kind == "conv1x1_lu":
        return InvConv1x1LU(channels)
    if kind == "conv1x1":
        return InvConv1x1(channels)
    return Permute(channels, kind)


def glow_step(channels: int, hidden: int, coupling: str, permutation: str) -> Flow:
    """One step of flow: actnorm -> 1x1 conv (or permutation) -> coupling."""
    return Sequential(
        ActNorm(channels),
        channel_mixer(channels, permutation),
        Coupling(channels, glow_net(hidden), mask="channel", transform=coupling),
    )


def build_glow(shape: Shape, levels: int, steps: int, hidden: int, coupling: str = "affine",
               permutation: str = "conv1x1_lu", split_prior: str = "learned",
               learn_top: bool = True, memory_saving: bool = False,
               channels_last: bool = False) -> MultiScaleFlow:
    """``levels`` x [squeeze -> ``steps`` steps of flow -> split], no split after the last."""
    c, h, w = shape
    built = []
    for i in range(levels):
        in_shape = (c, h, w)
        c, h, w = 4 * c, h // 2, w // 2
        flows: list[Flow] = [Squeeze(channels_last)]
        flows += [glow_step(c, hidden, coupling, permutation) for _ in range(steps)]
        last = i == levels - 1
        if not last and split_prior == "learned":
            flows.append(make_split_prior(c))
        if last and learn_top:
            flows.append(LearnedGaussian((c, h, w)))
        built.append(Level(Sequential(*flows, memory_saving=memory_saving), in_shape, (c, h, w), split=not last))
        if not last:
            c //= 2
    return MultiScaleFlow(built)

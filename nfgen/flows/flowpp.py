"""Flow++'s body (Ho, Chen, Srinivas, Duan & Abbeel, 2019, "Flow++: Improving Flow-Based
Generative Models with Variational Dequantization and Architecture Design")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nfgen.flows.actnorm import ActNorm
from nfgen.flows.base import Flow, Sequential
from nfgen.flows.coupling import ChannelMask, CheckerboardMask, Coupling, Mask
from nfgen.flows.glow import channel_mixer
from nfgen.flows.multiscale import Level, MultiScaleFlow, Shape
from nfgen.flows.nets import make_conditioner
from nfgen.flows.reshape import Squeeze
from nfgen.flows.transforms import make_transform


def build_flowpp(shape: Shape, levels: int = 2, channel: Sequence[int] = (0, 2), checkerboard: Sequence[int] = (4, 3),
                 split: bool = False, hidden: int = 96, blocks: int = 10, conditioner: str = "attention",
                 coupling: str = "logistic_mixture", permutation: str = "conv1x1_lu",
                 coupling_options: Mapping[str, Any] | None = None,
                 conditioner_options: Mapping[str, Any] | None = None, context_dim: int = 0) -> MultiScaleFlow:
    """Level ``i`` (a squeeze first, from the second level on): ``channel[i]`` couplings with
    channel masks, then ``checkerboard[i]`` with checkerboard masks, parities alternating; each
    coupling follows an actnorm and an invertible 1x1 convolution (the paper's ``Norm,
    Pointwise``). Flow++'s CIFAR-10 model is the default: 4 checkerboard couplings at 3x32x32,
    squeeze, 2 channel and 3 checkerboard couplings at 12x16x16, no factoring out (``split``
    factors half the channels out after each level but the last, as RealNVP and Glow do).

    Couplings use the registered transform ``coupling`` (Flow++: ``logistic_mixture`` with 32
    components) and conditioner (Flow++: gated convolutions with self-attention, 96 wide, 10
    blocks). The keyword names are those of the config's ``model.flowpp`` section; ``context_dim``
    is the size of the class embedding the couplings' nets see (0: unconditional)."""
    if len(channel) != levels or len(checkerboard) != levels:
        raise ValueError(f"channel and checkerboard give couplings per level: {levels} numbers each, "
                         f"got {list(channel)} and {list(checkerboard)}")
    net = make_conditioner(conditioner, hidden, blocks, **(conditioner_options or {}))

    def step(mask: Mask, channels: int) -> Flow:
        transform = make_transform(coupling, **(coupling_options or {}))
        # A single channel has nothing to mix: its 1x1 conv would only repeat actnorm's scale.
        mixer = [channel_mixer(channels, permutation)] if channels > 1 else []
        return Sequential(ActNorm(channels), *mixer, Coupling(mask, net, transform, context_dim))

    c, h, w = shape
    built = []
    for i in range(levels):
        in_shape = (c, h, w)
        flows: list[Flow] = []
        if i > 0:
            c, h, w = 4 * c, h // 2, w // 2
            flows.append(Squeeze())
        flows += [step(ChannelMask(c, parity=k % 2), c) for k in range(channel[i])]
        flows += [step(CheckerboardMask(c, (h, w), parity=k % 2), c) for k in range(checkerboard[i])]
        last = i == levels - 1
        built.append(Level(Sequential(*flows), in_shape, (c, h, w), split=split and not last))
        if split and not last:
            c //= 2
    return MultiScaleFlow(built)

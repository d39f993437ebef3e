"""Flow++'s body (Ho, Chen, Srinivas, Duan & Abbeel, 2019, "Flow++: Improving Flow-Based
Generative Models with Variational Dequantization and Architecture Design")."""

from __future__ import annotations

from nfgen.flows.actnorm import ActNorm
from nfgen.flows.base import Flow, Sequential
from nfgen.flows.coupling import ChannelMask, CheckerboardMask, Coupling, Mask
from nfgen.flows.flowpp_section import FlowppConfig
from nfgen.flows.glow import channel_mixer
from nfgen.flows.multiscale import MultiScaleFlow, Shape, squeezed, stack_levels
from nfgen.flows.reshape import Squeeze


def build_flowpp(shape: Shape, section: FlowppConfig, context_dim: int = 0) -> MultiScaleFlow:
    """Level ``i`` (a squeeze first, from the second level on): ``channel[i]`` couplings with
    channel masks, then ``checkerboard[i]`` with checkerboard masks, parities alternating; each
    coupling follows an actnorm and an invertible 1x1 convolution (the paper's ``Norm,
    Pointwise``). Flow++'s CIFAR-10 model is the default: 4 checkerboard couplings at 3x32x32,
    squeeze, 2 channel and 3 checkerboard couplings at 12x16x16, no factoring out (``split``
    factors half the channels out after each level but the last, as RealNVP and Glow do).

    Couplings use the section's registered transform (Flow++: ``logistic_mixture`` with 32
    components) and conditioner (Flow++: gated convolutions with self-attention, 96 wide, 10
    blocks). The options are ``FlowppConfig``, the config's ``model.flowpp``; ``context_dim`` is
    the size of the class embedding the couplings' nets see (0: unconditional)."""
    s = section
    if len(s.channel) != s.levels or len(s.checkerboard) != s.levels:
        raise ValueError(f"channel and checkerboard give couplings per level: {s.levels} numbers each, "
                         f"got {list(s.channel)} and {list(s.checkerboard)}")
    net = s.net()

    def step(mask: Mask, channels: int) -> Flow:
        # A single channel has nothing to mix: its 1x1 conv would only repeat actnorm's scale.
        mixer = [channel_mixer(channels, s.permutation)] if channels > 1 else []
        return Sequential(ActNorm(channels), *mixer, Coupling(mask, net, s.transform(), context_dim))

    def level(i: int, in_shape: Shape, last: bool) -> tuple[list[Flow], Shape]:
        flows: list[Flow] = [Squeeze()] if i > 0 else []
        c, h, w = out_shape = squeezed(in_shape) if i > 0 else in_shape
        flows += [step(ChannelMask(c, parity=k % 2), c) for k in range(s.channel[i])]
        flows += [step(CheckerboardMask(c, (h, w), parity=k % 2), c) for k in range(s.checkerboard[i])]
        return flows, out_shape

    return stack_levels(shape, s.levels, level, split=s.split)

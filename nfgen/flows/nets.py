"""Conditioner networks for coupling layers, injected as ``(c_in, c_out) -> nn.Module``.

The last layer of every conditioner starts at zero, so every coupling starts with zero
parameters (the identity for affine and additive couplings) and a freshly built Glow is
exactly its actnorms and 1x1 convolutions.

Conditioners are a named choice: ``CONDITIONERS`` maps a name to a function
``(hidden, blocks, **options) -> NetFactory``; a new one is one registered function::

    @register_conditioner("mlp")
    def mlp(hidden: int, blocks: int) -> NetFactory: ...

in a module listed in ``nfgen.flows.builtins``, or a user's plugin module (docs/plugins.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfgen.core.registry import Registry, build_named
from nfgen.flows.actnorm import ActNorm

NetFactory = Callable[[int, int], nn.Module]
Conditioner = Callable[..., NetFactory]  # (hidden, blocks, **options) -> NetFactory

# glow, resnet and mlp register below; the other built-ins in their own modules (nfgen.flows.builtins).
CONDITIONERS: Registry[Conditioner] = Registry("conditioner", "nfgen.flows.builtins")


def register_conditioner(name: str) -> Callable[[Conditioner], Conditioner]:
    """Function decorator: make a conditioner selectable by ``name``."""

    def add(fn: Conditioner) -> Conditioner:
        return CONDITIONERS.register(name, fn)

    return add


def make_conditioner(name: str, hidden: int, blocks: int, **options: object) -> NetFactory:
    """The registered conditioner ``name`` of width ``hidden`` and depth ``blocks``; a
    ``ValueError`` names the valid conditioners or options when they do not fit."""
    return build_named("conditioner", CONDITIONERS, name, {"hidden": hidden, "blocks": blocks, **options})


class ZeroConv2d(nn.Module):
    """3x3 convolution initialised to output zeros, with Glow's learned ``exp(3 * s)`` gain.

    The gain lets the output grow quickly once training starts, although the weights start at 0.
    """

    def __init__(self, c_in: int, c_out: int, gain: float = 3.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.log_gain = nn.Parameter(torch.zeros(1, c_out, 1, 1))
        self.gain = gain

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * torch.exp(self.log_gain * self.gain)


class ConvNorm(nn.Module):
    """Convolution followed by actnorm (Glow's conditioner layer), folded into one convolution:
    ``(conv(x, W) + loc) * e^s == conv(x, W * e^s) + loc * e^s``, so the per-channel scale and
    shift cost a weight multiply instead of two passes over the large activation tensor. The
    actnorm keeps its data-dependent initialisation from the first batch's conv outputs."""

    def __init__(self, c_in: int, c_out: int, kernel: int) -> None:
        super().__init__()
        conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False)
        self.weight = conv.weight
        self.padding = kernel // 2
        self.actnorm = ActNorm(c_out)

    def forward(self, x: Tensor) -> Tensor:
        norm = self.actnorm
        if norm.training and not norm._seen_initialized:
            with torch.no_grad():
                norm.initialize_once(F.conv2d(x, self.weight, padding=self.padding))
        scale = torch.exp(norm.log_scale.view(-1))
        return F.conv2d(x, self.weight * scale[:, None, None, None], norm.loc.view(-1) * scale,
                        padding=self.padding)


@register_conditioner("glow")
def glow_net(hidden: int, blocks: int = 1) -> NetFactory:
    """Glow's conditioner: conv3x3 -> actnorm -> ReLU -> [conv1x1 -> actnorm -> ReLU] x blocks
    -> zero conv. Glow has one hidden 1x1 layer (``blocks=1``)."""

    def build(c_in: int, c_out: int) -> nn.Module:
        layers = [ConvNorm(c_in, hidden, 3), nn.ReLU()]  # built in this order: same seed, same weights
        for _ in range(blocks):
            layers += [ConvNorm(hidden, hidden, 1), nn.ReLU()]
        return nn.Sequential(*layers, ZeroConv2d(hidden, c_out))

    return build


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvNorm(channels, channels, 3),
            nn.ReLU(),
            ConvNorm(channels, channels, 3),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.body(x))


@register_conditioner("resnet")
def resnet(hidden: int, blocks: int) -> NetFactory:
    """RealNVP's residual conditioner (actnorm in place of its batch norm, which would couple
    the samples of a batch and make the log-det depend on the batch)."""

    def build(c_in: int, c_out: int) -> nn.Module:
        return nn.Sequential(
            ConvNorm(c_in, hidden, 3),
            nn.ReLU(),
            *[ResidualBlock(hidden) for _ in range(blocks)],
            ZeroConv2d(hidden, c_out),
        )

    return build


class PerPixelMLP(nn.Module):
    """A multilayer perceptron applied to the channels of every pixel (1x1 convolutions as
    ``nn.Linear`` on the last axis); on vectors seen as ``[B, D, 1, 1]`` images, a plain MLP."""

    def __init__(self, c_in: int, c_out: int, hidden: int, blocks: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(c_in, hidden), nn.SiLU()]  # smooth: a 2-D density has no kinks
        for _ in range(blocks):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        last = nn.Linear(hidden, c_out)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.movedim(1, -1)).movedim(-1, 1)


@register_conditioner("mlp")
def mlp(hidden: int, blocks: int = 2) -> NetFactory:
    """An MLP on each pixel's channels: ``Linear -> SiLU -> [Linear -> SiLU] x blocks -> zero
    Linear``. The conditioner of 2-D flows (``nfgen density2d``); on images it sees no neighbours."""

    def build(c_in: int, c_out: int) -> nn.Module:
        return PerPixelMLP(c_in, c_out, hidden, blocks)

    return build

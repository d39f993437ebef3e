"""Conditioner networks for coupling layers, injected as ``(c_in, c_out) -> nn.Module``.

The last layer of every conditioner starts at zero, so every coupling starts as the identity
and a freshly built flow is exactly its actnorms and 1x1 convolutions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from nfgen.flows.actnorm import ActNorm

NetFactory = Callable[[int, int], nn.Module]


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


class Normalize(nn.Module):
    """Actnorm used as a plain layer inside a conditioner (its log-det is not needed there)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.actnorm(x)[0]


def glow_net(hidden: int) -> NetFactory:
    """Glow's conditioner: conv3x3 -> actnorm -> ReLU -> conv1x1 -> actnorm -> ReLU -> zero conv."""

    def build(c_in: int, c_out: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(c_in, hidden, 3, padding=1, bias=False),
            Normalize(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1, bias=False),
            Normalize(hidden),
            nn.ReLU(),
            ZeroConv2d(hidden, c_out),
        )

    return build


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            Normalize(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            Normalize(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def resnet(hidden: int, blocks: int) -> NetFactory:
    """RealNVP's residual conditioner (actnorm in place of its batch norm, which would couple
    the samples of a batch and make the log-det depend on the batch)."""

    def build(c_in: int, c_out: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(c_in, hidden, 3, padding=1),
            *[ResidualBlock(hidden) for _ in range(blocks)],
            Normalize(hidden),
            nn.ReLU(),
            ZeroConv2d(hidden, c_out),
        )

    return build

"""Conditioner networks for coupling layers, injected as ``(c_in, c_out) -> nn.Module``.

The last layer of every conditioner starts at zero, so every coupling starts as the identity
and a freshly built flow is exactly its actnorms and 1x1 convolutions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
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


def glow_net(hidden: int) -> NetFactory:
    """Glow's conditioner: conv3x3 -> actnorm -> ReLU -> conv1x1 -> actnorm -> ReLU -> zero conv."""

    def build(c_in: int, c_out: int) -> nn.Module:
        return nn.Sequential(
            ConvNorm(c_in, hidden, 3),
            nn.ReLU(),
            ConvNorm(hidden, hidden, 1),
            nn.ReLU(),
            ZeroConv2d(hidden, c_out),
        )

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

"""Priors over the latents.

The base distribution is always ``N(0, I)``. Glow's learned priors are written as bijections
that standardise a latent before it reaches that base, which is the same density:
``log N(z; mu, sigma) = log N((z - mu) / sigma; 0, I) - sum(log sigma)``. So they live inside
the multi-scale body, and sampling at temperature T (Glow's ``mu + T * sigma * eps``) is
simply ``eps ~ T * N(0, I)`` pushed through the inverse.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from nfgen.flows.affine import Affine
from nfgen.flows.base import Flow
from nfgen.flows.coupling import ChannelMask, Coupling
from nfgen.flows.nets import ZeroConv2d

Shape = tuple[int, int, int]


def standard_normal_log_prob(zs: list[Tensor]) -> Tensor:
    """Per-sample ``sum_i log N(z_i; 0, I)`` over a list of latents."""
    total = zs[0].new_zeros(zs[0].shape[0])
    for z in zs:
        total = total + (-0.5 * (z**2 + math.log(2 * math.pi))).flatten(1).sum(1)
    return total


def sample_standard_normal(shapes: list[Shape], n: int, temperature: float,
                           device: torch.device, dtype: torch.dtype,
                           generator: torch.Generator | None = None) -> list[Tensor]:
    return [temperature * torch.randn(n, *s, device=device, dtype=dtype, generator=generator)
            for s in shapes]


class LearnedGaussian(Flow):
    """Glow's learned top prior (``learn_top``): a per-position mean and log-std, here as the
    standardising map ``z = (x - mean) * exp(-log_std)``. Starts at ``N(0, I)``."""

    stem = "top_prior"  # any_size stays False: mean and log-std are per position

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(1, *shape))
        self.log_std = nn.Parameter(torch.zeros(1, *shape))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = -self.log_std.sum().expand(x.shape[0])
        return (x - self.mean) * torch.exp(-self.log_std), logdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = self.log_std.sum().expand(z.shape[0])
        return z * torch.exp(self.log_std) + self.mean, logdet


class SplitPrior(Coupling):
    """Glow's learned conditional prior for a factored-out half: a zero-initialised conv of the
    kept half gives the mean and log-std of the other half. That is exactly an affine channel
    coupling whose net is one zero conv, applied just before the split. In a class-conditional
    body the net also sees the class embedding (``context_channels``)."""

    stem = "split_prior"
    numbered = False

    def __init__(self, channels: int, context_channels: int = 0) -> None:
        super().__init__(ChannelMask(channels), ZeroConv2d, Affine(), context_channels)  # its net: one zero conv

"""Dequantization: from integer pixels to ``u = (x + eps) / K`` in ``[0, 1)``, returning the
correction term ``log q(eps | x)`` that the likelihood bound needs (zero for uniform noise).

Uniform and variational noise stay inside each pixel's bin, so the model's density bounds the
likelihood of the discrete image (likelihood mode). Gaussian noise (generation mode) does not:
``sigma`` says which mode a dequantizer is in (None: likelihood mode).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfgen.flows.base import cascade
from nfgen.flows.coupling import CheckerboardMask, Coupling
from nfgen.flows.multiscale import Shape
from nfgen.flows.nets import make_conditioner
from nfgen.flows.priors import standard_normal_log_prob
from nfgen.flows.transforms import make_transform


class UniformDequantizer(nn.Module):
    """``eps ~ U[0, 1)^D`` (Theis et al., 2016); ``log q = 0``.

    Both dequantizers take their base noise as an optional argument, so data-parallel ranks can
    each use their slice of one global draw and see exactly the noise a single process would.
    """

    sigma: float | None = None  # no Gaussian noise: likelihood mode

    @staticmethod
    def draw_noise(shape: tuple[int, ...], like: Tensor) -> Tensor:
        return torch.rand(shape, dtype=like.dtype, device=like.device)

    def forward(self, x: Tensor, levels: int, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        eps = self.draw_noise(x.shape, x) if noise is None else noise
        return (x + eps) / levels, x.new_zeros(x.shape[0])


class VariationalDequantizer(nn.Module):
    """Flow++ variational dequantization (Ho et al., 2019, section 3.1).

    ``eps = sigmoid(g(n; x))`` with ``n ~ N(0, I)`` and ``g`` a stack of checkerboard couplings
    whose nets also see features of ``x`` (their context); so
    ``log q(eps | x) = log N(n) - log|det dg/dn| - log|det d sigmoid / dy|``.
    The couplings' elementwise transform (``coupling``) and ``conditioner`` are named choices,
    as in the bodies (default: affine with Glow's net; Flow++ uses its own coupling flow here).
    """

    sigma: float | None = None  # no Gaussian noise: likelihood mode

    def __init__(self, shape: Shape, steps: int = 4, hidden: int = 32, coupling: str = "affine",
                 conditioner: str = "glow", blocks: int = 1, coupling_options: Mapping[str, Any] | None = None,
                 conditioner_options: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        c, h, w = shape
        self.context = nn.Sequential(
            nn.Conv2d(c, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
        )
        net = make_conditioner(conditioner, hidden, blocks, **(conditioner_options or {}))
        self.couplings = nn.ModuleList(
            Coupling(CheckerboardMask(c, (h, w), parity=k % 2), net,
                     make_transform(coupling, **(coupling_options or {})), context_channels=hidden)
            for k in range(steps)
        )

    @staticmethod
    def draw_noise(shape: tuple[int, ...], like: Tensor) -> Tensor:
        return torch.randn(shape, dtype=like.dtype, device=like.device)

    def forward(self, x: Tensor, levels: int, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        context = self.context(x / (levels - 1) - 0.5)
        y = self.draw_noise(x.shape, x) if noise is None else noise
        log_n = standard_normal_log_prob([y])
        y, logdet = cascade(y, self.couplings, context)
        # log d sigmoid(y)/dy = log sigmoid(y) + log sigmoid(-y)
        log_q = log_n - logdet + (F.softplus(-y) + F.softplus(y)).flatten(1).sum(1)
        return (x + torch.sigmoid(y)) / levels, log_q


class GaussianDequantizer(nn.Module):
    """Gaussian noise augmentation (TarFlow: Zhai et al., 2025): ``u = (x + 1/2) / K
    + sigma * n`` with ``n ~ N(0, I)``, the noise on the bin centre in ``u``'s scale (the image
    spans [0, 1)). ``log q`` is zero: the model is fitted to the density of the noisy continuous
    image itself, which is no bound on the discrete image's likelihood (the noise leaves the
    bin), so this is generation mode; samples are denoised by one Tweedie step with ``sigma``
    (``ImageFlow.denoise``)."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        if not 0 < sigma < math.inf:
            raise ValueError(f"sigma must be a positive finite number, got {sigma}")
        self.sigma = sigma

    @staticmethod
    def draw_noise(shape: tuple[int, ...], like: Tensor) -> Tensor:
        return torch.randn(shape, dtype=like.dtype, device=like.device)

    def forward(self, x: Tensor, levels: int, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        n = self.draw_noise(x.shape, x) if noise is None else noise
        return (x + 0.5) / levels + self.sigma * n, x.new_zeros(x.shape[0])

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}"

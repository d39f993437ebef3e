"""Preprocessing bijections from dequantised data ``u in [0, 1)`` to the flow's input."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from nfgen.flows.base import Flow


class Shift(Flow):
    """Glow's preprocessing ``x = u - 1/2``; volume preserving."""

    any_size = True

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x - 0.5, x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z + 0.5, z.new_zeros(z.shape[0])


class Logit(Flow):
    """RealNVP's ``x = logit(alpha + (1 - 2 alpha) u)`` (section 4.1).

    ``alpha`` keeps the logit away from the infinities at 0 and 1; its Jacobian,
    ``(1 - 2 alpha) / (y (1 - y))`` per dimension, is part of every bits/dim figure.
    """

    any_size = True

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"logit alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y = self.alpha + (1 - 2 * self.alpha) * x
        z = torch.log(y) - torch.log1p(-y)
        logdet = (math.log(1 - 2 * self.alpha) - torch.log(y) - torch.log1p(-y)).flatten(1).sum(1)
        return z, logdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = (torch.sigmoid(z) - self.alpha) / (1 - 2 * self.alpha)
        # log(y (1 - y)) = -softplus(-z) - softplus(z), stable for large |z|.
        logdet = (-math.log(1 - 2 * self.alpha) - F.softplus(-z) - F.softplus(z)).flatten(1).sum(1)
        return x, logdet

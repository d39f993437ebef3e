"""The affine and additive coupling transforms (RealNVP's and NICE's; Glow uses both)."""

from __future__ import annotations

import torch
from torch import Tensor

from nfgen.flows.transforms import ElementwiseTransform, register_transform


@register_transform("affine")
class Affine(ElementwiseTransform):
    """``y = x * exp(s) + t`` with a soft-clamped log-scale ``s = clamp * tanh(raw / clamp)``:
    the identity near zero (so a zero-initialised net gives an identity coupling, unlike Glow's
    ``sigmoid(raw + 2)``), yet every scale stays in ``[e^-clamp, e^clamp]``, so one bad step
    cannot blow activations up through many stacked layers."""

    params_per_dim = 2

    def __init__(self, clamp: float = 2.0) -> None:
        super().__init__()
        if not clamp > 0:
            raise ValueError(f"affine clamp must be > 0, got {clamp}")
        self.clamp = clamp

    def _shift_log_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = params.unbind(-1)
        return shift, self.clamp * torch.tanh(raw / self.clamp)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_s = self._shift_log_scale(params)
        return x * torch.exp(log_s) + shift, log_s

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_s = self._shift_log_scale(params)
        return (y - shift) * torch.exp(-log_s), -log_s


@register_transform("additive")
class Additive(ElementwiseTransform):
    """``y = x + t`` (NICE; Glow's additive coupling): volume preserving."""

    params_per_dim = 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x + params[..., 0], torch.zeros_like(x)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return y - params[..., 0], torch.zeros_like(y)

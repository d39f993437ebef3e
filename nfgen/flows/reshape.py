"""Squeeze: 2x2 space-to-depth (Dinh et al., 2017, "RealNVP", section 3.6)."""

from __future__ import annotations

from torch import Tensor

from nfgen.flows.base import Flow


class Squeeze(Flow):
    """``[B, C, H, W] -> [B, 4C, H/2, W/2]``; a permutation, so its log-det is zero."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"squeeze needs even height and width, got {h}x{w}")
        x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, 4 * c, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = z.shape
        z = z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return z.reshape(b, c // 4, 2 * h, 2 * w), z.new_zeros(b)

"""Squeeze: 2x2 space-to-depth (Dinh et al., 2017, "RealNVP", section 3.6)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nfgen.flows.base import Flow


class Squeeze(Flow):
    """``[B, C, H, W] -> [B, 4C, H/2, W/2]``; a permutation, so its log-det is zero.

    Output channel ``4c + 2i + j`` holds pixel ``(2h + i, 2w + j)`` of input channel ``c``.
    ``channels_last=True`` writes both directions' outputs in channels-last memory order (one
    copy either way), so a channels-last model never converts layouts between its convolutions.
    It is a training option, set on a built model by ``set_channels_last``.
    """

    any_size = True

    def __init__(self, channels_last: bool = False) -> None:
        super().__init__()
        self.channels_last = channels_last

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"squeeze needs even height and width, got {h}x{w}")
        x = x.reshape(b, c, h // 2, 2, w // 2, 2)  # (b, c, h2, i, w2, j)
        if self.channels_last:
            z = x.permute(0, 2, 4, 1, 3, 5).reshape(b, h // 2, w // 2, 4 * c).permute(0, 3, 1, 2)
        else:
            z = x.permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        return z, z.new_zeros(b)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = z.shape
        z = z.reshape(b, c // 4, 2, 2, h, w)  # (b, c, i, j, h2, w2)
        if self.channels_last:
            x = z.permute(0, 4, 2, 5, 3, 1).reshape(b, 2 * h, 2 * w, c // 4).permute(0, 3, 1, 2)
        else:
            x = z.permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)
        return x, x.new_zeros(b)


def to_layout(x: Tensor, channels_last: bool) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def set_channels_last(module: nn.Module, on: bool) -> None:
    """Set the memory layout of every module in ``module`` that has a ``channels_last`` switch
    (squeezes write their outputs in that order; an ImageFlow hands its body input and latents
    so). The numbers do not change, only the layout convolutions see."""
    for m in module.modules():
        if hasattr(m, "channels_last"):
            m.channels_last = on

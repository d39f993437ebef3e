"""Training-time augmentation that keeps a run exactly resumable: random horizontal flips
(``data.hflip``), drawn from a generator seeded by (seed, epoch, batch), never from a global RNG,
so a resumed run flips the same images of the same batches as an uninterrupted one."""

from __future__ import annotations

import torch
from torch import Tensor


def flip_draws(seed: int, epoch: int, batch: int, n: int) -> Tensor:
    """Which of the ``n`` images of batch ``batch`` of ``epoch`` are flipped (bool ``[n]``, each
    with probability 1/2): the same for the same (seed, epoch, batch), on every rank."""
    g = torch.Generator().manual_seed((seed * 100_003 + epoch) * 1_000_003 + batch)
    return torch.rand(n, generator=g) < 0.5


def hflip(images: Tensor, flips: Tensor) -> Tensor:
    """``images`` ``[B, C, H, W]`` with those marked in ``flips`` ``[B]`` mirrored left to right."""
    return torch.where(flips.to(images.device)[:, None, None, None], images.flip(-1), images)

"""The torch data sets the format modules hand over (imported when a split is loaded, so that
the registry and the format modules import no torch)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset


class ImagesOnly(Dataset[torch.Tensor]):
    """A torchvision data set's ``(image, label)`` items with the label dropped."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.base[index][0]


class ArrayImages(Dataset[torch.Tensor]):
    """Images held in memory as one uint8 tensor ``[N, C, H, W]`` (read whole from array files)."""

    def __init__(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {list(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: Any) -> torch.Tensor:
        return self.images[index]

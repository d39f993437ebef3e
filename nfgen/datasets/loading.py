"""The loader that batches a split or a folder of images (``make_loader``): a seeded shuffle,
persistent workers, and a one-line error for a split smaller than one batch."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from nfgen.errors import DataError


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int,
                pin_memory: bool, generator: torch.Generator | None = None,
                drop_last: bool = False) -> DataLoader:
    """A ``torch.utils.data.DataLoader`` of uint8 batches ``[B, C, H, W]`` (of a ``Labelled``
    data set: ``[images, labels]``, see ``split_batch``). A seeded ``generator``
    fixes the shuffle order (and the workers' seeds); workers persist between epochs."""
    n = len(dataset)  # type: ignore[arg-type]
    if drop_last and n < batch_size:
        raise DataError(f"{n} images is fewer than one batch of {batch_size}: lower train.batch_size")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      pin_memory=pin_memory, generator=generator, drop_last=drop_last,
                      persistent_workers=num_workers > 0)

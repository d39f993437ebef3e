"""Data as the trainer and the verbs take it: a config's splits (``load_split``, asked of the
registered data set, ``nfgen.datasets``), a folder of images to score (``load_folder``) and the
loader that batches either (``make_loader``). The data sets themselves, their formats and checks
live in ``nfgen/datasets/``; the names here are kept for the modules that import them.

Every user-facing problem is a ``DataError`` with a one-line message that says what to do.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from nfgen.datasets.images import (  # noqa: F401  (re-exported)
    FORMATS_HINT,
    IMAGE_EXTENSIONS,
    NULL_CLASS,
    ImageFiles,
    _hash_key,
    load_folder,
)
from nfgen.datasets.labels import Labelled  # noqa: F401  (re-exported)
from nfgen.datasets.registry import SPLITS  # noqa: F401  (re-exported)
from nfgen.datasets.splits import class_names, load_split  # noqa: F401  (re-exported)
from nfgen.datasets.tensors import ImagesOnly  # noqa: F401  (re-exported)
from nfgen.errors import DataError  # noqa: F401  (re-exported)


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

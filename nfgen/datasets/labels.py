"""Images with their classes, as data sets and as batches: what a class-conditional model trains on.

``nfgen.datasets`` makes them from a data set's labels (MNIST's digits, CIFAR-10's names, an image
folder's class subfolders, ...); the trainer, evaluation and scoring take batches of either kind through
``split_batch``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset, default_collate

from nfgen.errors import ConfigError


class Labelled(Dataset[tuple[torch.Tensor, int]]):
    """Images with their classes: item ``i`` is ``(images[i], int(labels[i]))``, so a loader's
    batch is ``[uint8 images [B, C, H, W], int64 labels [B]]`` and any index list (a shuffle, a
    rank's shard) keeps each image with its label. ``class_names[k]`` names label ``k``."""

    def __init__(self, images: Dataset[torch.Tensor], labels: torch.Tensor, class_names: list[str]) -> None:
        if len(labels) != len(images):  # type: ignore[arg-type]
            raise ValueError(f"{len(labels)} labels for {len(images)} images")  # type: ignore[arg-type]
        self.images, self.labels, self.class_names = images, labels.long(), list(class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def split_batch(batch: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A loader's batch as ``(images, labels)``: labels ``None`` for a data set without them."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    images, labels = batch
    return images, labels


def take(dataset: Dataset, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Items ``indices`` of a data set batched as a loader batches them, as ``(images, labels)``
    (``split_batch``): uint8 ``[n, C, H, W]`` and int64 ``[n]`` (None without labels)."""
    return split_batch(default_collate([dataset[int(i)] for i in indices]))


def check_classes(k: int, train_set: Dataset, test_set: Dataset) -> list[str] | None:
    """The class names of a model's data, checked: for a conditional model (``k`` classes) both
    splits ``Labelled`` with its ``k`` classes, named alike; None for an unconditional model
    (``k`` 0), which takes images only. Else a ``ConfigError``."""
    sets = {"training": train_set, "test": test_set}
    if k == 0:
        labelled = [name for name, s in sets.items() if isinstance(s, Labelled)]
        if labelled:
            raise ConfigError(f"the {labelled[0]} data has labels but the model is unconditional "
                              "(model.num_classes 0); give it images only")
        return None
    for name, s in sets.items():
        if not isinstance(s, Labelled) or len(s.class_names) != k:
            found = f"{len(s.class_names)} classes" if isinstance(s, Labelled) else "no labels"
            raise ConfigError(f"the model has {k} classes (model.num_classes) but the {name} data has {found}")
    if train_set.class_names != test_set.class_names:
        raise ConfigError("the training and test data name their classes differently "
                          f"({', '.join(train_set.class_names)} vs {', '.join(test_set.class_names)})")
    return train_set.class_names

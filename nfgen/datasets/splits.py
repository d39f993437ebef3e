"""A config's data as the trainer and the verbs take it: ``load_split`` asks the registered data
set (``data.dataset``) for a split and hands over images (an unconditional model) or ``Labelled``
items (a conditional one); ``class_names`` asks it for its classes without reading images."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nfgen.datasets.images import listed
from nfgen.datasets.labels import Labelled
from nfgen.datasets.registry import SPLITS, dataset_named
from nfgen.errors import DataError

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from nfgen.config.schema import Config


def load_split(cfg: Config, split: str) -> Dataset:
    """The "train" or "test" split of ``cfg.data``: for an unconditional model each item a uint8
    tensor of shape ``cfg.model.image_shape``; for a class-conditional one (``model.num_classes``
    > 0) a ``Labelled`` data set of ``(image, label)`` items with its ``class_names``, as many as
    the model has classes. Raises ``DataError`` (or ``ConfigError`` if the data set cannot
    produce that shape or those classes)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    dataset = dataset_named(cfg.data.dataset)
    dataset.check_config(cfg)  # the shape and classes the model asks for
    images, labels, names = dataset.load(cfg, split)
    k = cfg.model.num_classes
    if k == 0:
        return images
    if labels is None or len(names) != k:
        found = f"{len(names)} classes ({listed(names)})" if labels is not None else "no labels"
        raise DataError(f"model.num_classes is {k} but {dataset.title} under {cfg.data.root} has {found}: "
                        f"set model.num_classes to match")
    return Labelled(images, labels, names)


def class_names(cfg: Config) -> list[str]:
    """The names of ``cfg.data``'s classes, label ``k`` named ``[k]`` (e.g. MNIST's digits,
    CIFAR-10's names, an image folder's class subfolders), without reading any image; a
    ``DataError`` for a data set without classes."""
    return dataset_named(cfg.data.dataset).class_names(cfg)

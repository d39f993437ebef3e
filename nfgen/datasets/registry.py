"""The data sets nfgen reads, by name: ``data.dataset: <name>`` picks one registered here.

A data set is a ``DataSet`` object registered once, in its own module, with
``register_dataset(name, DataSet(...))``. The config's choices, its shape and class checks, the
class names stored in checkpoints and every data-set-parametrized test read this registry, so a
new data set (or a user's own, in a plugin module) is one registration.

This module and the format modules import no torch at import time: validating a config (and
``nfgen --help``) must not pay for it. A data set's ``load`` imports what it reads with.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, NamedTuple

from nfgen.config.parse import _short
from nfgen.core.registry import Registry
from nfgen.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

    from nfgen.config.schema import Config

SPLITS = ("train", "test")


class Split(NamedTuple):
    """One split as a data set hands it over: uint8 images ``[C, H, W]`` of the model's shape, their
    labels (int64 ``[N]``; None for a data set without classes) and the class names."""

    images: Dataset
    labels: torch.Tensor | None
    names: list[str]


def shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


class DataSet:
    """One data set in one on-disk format. Subclasses set ``title`` (how every message names it),
    ``help`` (one line, for the docs), the shapes it produces and its classes, and implement
    ``load``. ``check_config`` and ``class_names`` have defaults from those attributes."""

    title: str = ""
    help: str = ""
    # The model.image_shape values it produces; () for any (an image folder, which resizes).
    shapes: tuple[tuple[int, int, int], ...] = ()
    shape_note: str = ""  # said after the shapes in a mismatch message, e.g. how 32x32 MNIST is made
    # Label k's name, for a data set with fixed classes; None: its classes come from the files
    # (override class_names) or it has none (a conditional model on it is refused).
    classes: tuple[str, ...] | None = None
    name: str = ""  # set by register_dataset

    def check_config(self, cfg: Config) -> None:
        """Refuse (``ConfigError``, one line) a model this data set cannot feed: its image shape,
        its number of classes."""
        m = cfg.model
        if self.shapes and tuple(m.image_shape) not in self.shapes:
            made = " or ".join(shape_text(s) for s in self.shapes)
            raise ConfigError(f"{self.title} images are {made}{self.shape_note}; model.image_shape is "
                              f"{list(m.image_shape)}: set model.image_shape to one of those")
        k = m.num_classes
        if self.classes is None and k:
            raise ConfigError(f"{self.title} has no classes, so a conditional model cannot learn it (model.num_classes "
                              f"is {k}): set model.num_classes: 0")
        if self.classes is not None and k not in (0, len(self.classes)):
            raise ConfigError(f"{self.title} has {len(self.classes)} classes; model.num_classes is {k}: set it to "
                              f"{len(self.classes)} (or 0 for an unconditional model)")

    def class_names(self, cfg: Config) -> list[str]:
        """Label ``k``'s name at ``[k]``, without reading any image (a ``DataError`` if it has none)."""
        if self.classes is None:
            raise DataError(f"{self.title} has no classes: it trains unconditional models only (model.num_classes 0)")
        return list(self.classes)

    def load(self, cfg: Config, split: str) -> Split:
        """The ``split`` ("train" or "test") of ``cfg.data``, checked, as uint8 images of
        ``cfg.model.image_shape`` with every label (in 0..len(names)-1)."""
        raise NotImplementedError


# The built-in data sets register in their own modules, listed in nfgen.datasets.builtins (read
# the first time this registry is), as a plugin's do.
DATASETS: Registry[DataSet] = Registry("data set", "nfgen.datasets.builtins")


def register_dataset(name: str, dataset: DataSet) -> DataSet:
    """Make ``dataset`` the data set ``data.dataset: <name>`` reads. Call it once, in the data
    set's own module (a plugin module's registration works the same). Returns ``dataset``."""
    if not isinstance(dataset, DataSet):
        raise TypeError(f"register_dataset({name!r}, ...) takes a nfgen.datasets.DataSet, got {type(dataset).__name__}")
    if not isinstance(name, str) or not name.replace("_", "").isalnum() or name != name.lower():
        raise ValueError(f"a data set's name is lower-case letters, digits and _, got {name!r}")
    held = DATASETS.get(name)
    # The same data set again (its module reloaded) replaces it; another under a held name is refused
    # (two instances of one format class, as mnist and fashion_mnist, are told apart by title).
    if held is not None and (type(held).__qualname__, held.title) != (type(dataset).__qualname__, dataset.title):
        raise ValueError(f"data set {name!r} is registered twice ({held.title} and {dataset.title}): give the new "
                         "one another name")
    if not dataset.title or not dataset.help:
        raise ValueError(f"data set {name!r} needs a title (its name in messages) and a one-line help")
    dataset.name = name
    DATASETS[name] = dataset
    return dataset


def dataset_named(name: str, key: str = "data.dataset") -> DataSet:
    """The registered data set ``name``, or a ``ConfigError`` listing the names (and the closest)."""
    if name in DATASETS:
        return DATASETS[name]
    close = difflib.get_close_matches(name[:100], list(DATASETS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{key}: {_short(name)} is not a data set{hint}; registered: {', '.join(sorted(DATASETS))} "
                      f"(a plugin module can register more: docs/data.md)")

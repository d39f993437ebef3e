"""A folder of the user's images (``data.dataset: folder``): any format Pillow reads, grey or RGB,
resized (shorter side) and center-cropped to ``model.image_shape``; ``train/`` and ``test/``
subfolders, or one folder split by ``data.test_fraction``; with ``data.labels: true`` each class's
images in its own subfolder (sorted names, as torchvision's ``ImageFolder`` reads them). The
reading is ``nfgen.datasets.images``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nfgen.datasets.registry import SPLITS, DataSet, Split, register_dataset
from nfgen.errors import ConfigError, DataError

if TYPE_CHECKING:
    from nfgen.config.schema import Config


class FolderSet(DataSet):
    """Image files under ``data.root``; its shape is the model's, its classes its subfolders."""

    title = "image folder"
    help = "a folder of your images (any format Pillow reads), resized to model.image_shape; classes: subfolders"

    def check_config(self, cfg: Config) -> None:
        c = cfg.model.image_shape[0]
        if c not in (1, 3):
            raise ConfigError(f"an image folder gives 1 (grey) or 3 (RGB) channels, model.image_shape has {c}")
        k = cfg.model.num_classes
        if k and not cfg.data.labels:
            raise ConfigError(f"model.num_classes is {k} but data.labels is false: set data.labels: true, with each "
                              "class's images in a subfolder of the image folder (or model.num_classes: 0 for an "
                              "unconditional model)")

    def class_names(self, cfg: Config) -> list[str]:
        from nfgen.datasets.images import class_folders, split_classes

        if not cfg.data.labels:
            raise DataError(f"the image folder {cfg.data.root} has no labels (data.labels is false): set "
                            "data.labels: true, with one subfolder of images per class")
        root = Path(cfg.data.root)
        if not root.is_dir():
            raise DataError(f"image folder {root} not found: create it, or point data.root at your images")
        return split_classes(root) if all((root / s).is_dir() for s in SPLITS) else class_folders(root)

    def load(self, cfg: Config, split: str) -> Split:
        from nfgen.datasets.images import folder_split, listed

        images, labels, names = folder_split(cfg, split)
        k = cfg.model.num_classes
        if k and len(names) != k:
            raise DataError(f"model.num_classes is {k} but the image folder {cfg.data.root} has {len(names)} class "
                            f"folders ({listed(names)}): set model.num_classes: {len(names)}")
        return Split(images, labels, names)


register_dataset("folder", FolderSet())

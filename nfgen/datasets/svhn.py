"""SVHN (Netzer et al., 2011), the cropped-digits format torchvision reads: ``<root>/train_32x32.mat``
(73,257 images) and ``<root>/test_32x32.mat`` (26,032), MATLAB files of 3x32x32 house-number
digits in 10 classes (digit 0 stored as label 10, read as 0). The 531,131 ``extra`` images are not
read. Checked against the published md5s; reading needs scipy (``pip install scipy``, or the
``data`` extra)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from nfgen.datasets.registry import register_dataset
from nfgen.datasets.torchvision_sets import TorchvisionSet
from nfgen.errors import DataError

SPLIT_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


class SvhnSet(TorchvisionSet):
    """``torchvision.datasets.SVHN``, its files directly in ``data.root`` (torchvision's layout)."""

    title = "SVHN"
    help = "SVHN house-number digits (Netzer et al., 2011): 3x32x32, 10 classes, 73,257 / 26,032 (.mat, needs scipy)"
    shapes = ((3, 32, 32),)
    classes = tuple(str(d) for d in range(10))

    def folder(self, root: Path) -> Path:
        return root

    def missing(self, folder: Path) -> list[Path]:
        return [folder / f for f in SPLIT_FILES.values() if not (folder / f).is_file()]

    def check(self, folder: Path) -> None:
        from torchvision.datasets import SVHN, utils

        for split, name in SPLIT_FILES.items():
            # SVHN.split_list is looked up now, so that tests on tiny files can set their md5s.
            if not utils.check_integrity(str(folder / name), SVHN.split_list[split][2]):
                raise DataError(f"{folder / name} is truncated or corrupt (its md5 is not the official {self.title} "
                                f"file's): {self.redownload_file}")

    def make(self, root: Path, split: str, download: bool, transform: Any) -> Any:
        if importlib.util.find_spec("scipy") is None:
            raise DataError("SVHN's .mat files are read with scipy, which is not installed: pip install scipy "
                            "(or pip install 'nfgen[data]')")
        from torchvision.datasets import SVHN

        return SVHN(root=str(root), split=split, download=download, transform=transform)

    def targets(self, base: Any) -> Any:
        return base.labels


register_dataset("svhn", SvhnSet())

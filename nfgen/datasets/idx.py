"""Data sets in MNIST's IDX format, as torchvision stores them under ``<root>/<Name>/raw``
(uncompressed): MNIST, Fashion-MNIST and Kuzushiji-MNIST (KMNIST), each 60,000 train and 10,000
test 28x28 grey images in 10 classes.

Checked before torchvision reads them (IDX files have no checksum): each header agrees with its
file's size and kind (images 28x28, labels), each split has as many labels as images, the splits
are neither swapped nor the same file, and torchvision's old ``processed/`` cache (which it reads
instead of the raw files) holds the same images. Every message names the data set.
"""

from __future__ import annotations

import filecmp
import math
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nfgen.datasets.registry import register_dataset
from nfgen.datasets.torchvision_sets import TorchvisionSet
from nfgen.errors import DataError

if TYPE_CHECKING:
    from nfgen.config.schema import Config

# The IDX files torchvision reads (uncompressed), per split: (images, labels).
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_IMAGES, IDX_LABELS = 2051, 2049  # magic numbers: 0x08 (uint8) << 8 | number of dimensions
FULL = {"train": 60_000, "test": 10_000}  # the published splits' sizes (all three sets)


class IdxSet(TorchvisionSet):
    """One of torchvision's MNIST-format data sets (``torchvision.datasets.<name>``), read from
    ``<root>/<name>/raw``. 28x28, or 32x32 zero-padded 2 pixels a side (as openai/glow pads MNIST,
    so that squeezing can halve it more times)."""

    shapes = ((1, 28, 28), (1, 32, 32))
    shape_note = " (32x32: zero-padded 2 pixels a side)"

    def __init__(self, torchvision_name: str, title: str, classes: list[str], help: str) -> None:
        self.torchvision_name, self.title, self.classes, self.help = torchvision_name, title, tuple(classes), help

    def folder(self, root: Path) -> Path:
        return root / self.torchvision_name / "raw"

    def missing(self, folder: Path) -> list[Path]:
        if legacy_cache(folder):
            return []
        return [folder / f for pair in IDX_FILES.values() for f in pair if not (folder / f).is_file()]

    def make(self, root: Path, split: str, download: bool, transform: Any) -> Any:
        from torchvision import datasets

        cls = getattr(datasets, self.torchvision_name)
        return cls(root=str(root), train=split == "train", download=download, transform=transform)

    def steps(self, cfg: Config) -> list:
        from torchvision import transforms

        pad = (cfg.model.image_shape[1] - 28) // 2
        return [transforms.Pad(pad, fill=0)] if pad else []

    def check(self, folder: Path) -> None:
        """Each IDX file's header agrees with its size, each split has as many labels as images,
        and the splits are neither swapped (60,000 train and 10,000 test) nor the same file. Other
        counts are allowed: subsets in the IDX format are common."""
        if legacy_cache(folder):
            self._check_cache(folder)
            return
        counts = {}
        for split, (images, labels) in IDX_FILES.items():
            n_images = self._count(folder / images, IDX_IMAGES)
            n_labels = self._count(folder / labels, IDX_LABELS)
            if n_images != n_labels:
                raise DataError(
                    f"{folder / images} holds {n_images:,} images but {folder / labels} holds {n_labels:,} "
                    f"labels: the two {self.title} files are from different sets; delete them and download again"
                )
            counts[split] = n_images
        train, test = (folder / IDX_FILES[s][0] for s in IDX_FILES)
        if counts == {"train": FULL["test"], "test": FULL["train"]}:
            raise DataError(
                f"{self.title}'s train and test files are swapped: {train.name} holds {FULL['test']:,} images and "
                f"{test.name} {FULL['train']:,} (the train split has {FULL['train']:,}): swap the train-* and "
                f"t10k-* files in {folder}"
            )
        if counts["train"] == counts["test"] and filecmp.cmp(train, test, shallow=False):
            raise DataError(f"{test} is a copy of {train}, so test bits/dim would not measure "
                            f"generalisation: put {self.title}'s test images (t10k-*) in {folder}")

    def _check_cache(self, folder: Path) -> None:
        """torchvision reads its old processed/ cache instead of the raw files, by name: where both
        are there, they must hold the same images and labels (compared by content fingerprint)."""
        import torch

        from nfgen.datasets.fingerprint import of_batches

        for split, (images, labels) in IDX_FILES.items():
            if not ((folder / images).is_file() and (folder / labels).is_file()):
                continue
            n = self._count(folder / images, IDX_IMAGES)
            self._count(folder / labels, IDX_LABELS)
            x = torch.frombuffer(bytearray((folder / images).read_bytes()[16:]), dtype=torch.uint8).view(n, 1, 28, 28)
            y = torch.frombuffer(bytearray((folder / labels).read_bytes()[8:]), dtype=torch.uint8).long()
            cache = folder.parent / "processed" / ("training.pt" if split == "train" else "test.pt")
            try:
                cx, cy = torch.load(cache, weights_only=True)
            except Exception:
                raise DataError(f"{cache} (torchvision's old {self.title} cache) is unreadable: "
                                f"delete {cache.parent}") from None
            if of_batches([[cx.unsqueeze(1), cy.long()]]) != of_batches([[x, y]]):
                raise DataError(f"{cache} (torchvision's old {self.title} cache, which it reads instead of {folder}) "
                                f"holds other images than {folder / images}: delete {cache.parent} to use the raw files")

    def _count(self, path: Path, magic: int) -> int:
        """The number of records in an uncompressed uint8 IDX file (28x28 images, or labels),
        after checking that its header describes the file."""
        kind = "images" if magic == IDX_IMAGES else "labels"
        ndim = magic & 0xFF
        header = 4 * (1 + ndim)
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(header)
        if head[:2] == b"\x1f\x8b":
            raise DataError(f"{path} is gzip-compressed, but is read uncompressed: rename it to "
                            f"{path.name}.gz and decompress it (gunzip {path.name}.gz)")
        found = int.from_bytes(head[:4], "big")
        if len(head) >= 4 and found != magic:
            raise DataError(f"{path} is not {self.title} {kind} (IDX magic number {found}, expected "
                            f"{magic}): {self.redownload_file}")
        if len(head) < header:
            raise DataError(f"{path} is truncated ({size} bytes, shorter than its {header}-byte header): "
                            f"{self.redownload_file}")
        shape = list(struct.unpack(f">{ndim}I", head[4:]))
        if kind == "images" and shape[1:] != [28, 28]:
            raise DataError(f"{path} holds {shape[1]}x{shape[2]} images, but {self.title}'s are 28x28: "
                            f"{self.redownload_file}")
        expected = header + math.prod(shape)
        if size != expected:
            what = "truncated" if size < expected else f"corrupt ({size - expected:,} bytes too long)"
            raise DataError(
                f"{path} is {what}: its header counts {shape[0]:,} {self.title} {kind}, {expected:,} bytes, but "
                f"the file has {size:,}: {self.redownload_file}"
            )
        return shape[0]


def legacy_cache(raw: Path) -> bool:
    """Whether torchvision's old cache is there, which it loads instead of the raw files."""
    return all((raw.parent / "processed" / f).is_file() for f in ("training.pt", "test.pt"))


DIGITS = [str(d) for d in range(10)]

register_dataset("mnist", IdxSet(
    "MNIST", "MNIST", DIGITS,
    "MNIST handwritten digits (LeCun et al.): 1x28x28 (or padded to 32x32), 10 classes, 60,000 / 10,000"))
register_dataset("fashion_mnist", IdxSet(
    "FashionMNIST", "Fashion-MNIST",
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "Fashion-MNIST clothing (Xiao et al., 2017): 1x28x28 (or padded to 32x32), 10 classes, 60,000 / 10,000"))
register_dataset("kmnist", IdxSet(
    "KMNIST", "KMNIST",
    ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
    "Kuzushiji-MNIST cursive Japanese (Clanuwat et al., 2018): 1x28x28 (or padded to 32x32), 10 classes"))

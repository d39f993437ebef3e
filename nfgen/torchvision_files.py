"""MNIST's and CIFAR-10's files checked before torchvision reads them: an IDX header that does not
match its file, swapped or copied splits, torchvision's old MNIST cache shadowing new raw files,
CIFAR-10 files failing their md5. Each problem a ``DataError`` saying what to do."""

from __future__ import annotations

import filecmp
import math
import struct
from pathlib import Path

import torch
from torchvision import datasets

from nfgen.errors import DataError
from nfgen.fingerprint import of_batches

# MNIST's IDX files as torchvision reads them (uncompressed), per split: (images, labels).
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_IMAGES, IDX_LABELS = 2051, 2049  # magic numbers: 0x08 (uint8) << 8 | number of dimensions


def mnist_legacy(raw: Path) -> bool:
    """Whether torchvision's old cache is there, which it loads instead of the raw files."""
    return all((raw.parent / "processed" / f).is_file() for f in ("training.pt", "test.pt"))


def mnist_missing(raw: Path) -> list[Path]:
    if mnist_legacy(raw):
        return []
    return [raw / f for pair in MNIST_FILES.values() for f in pair if not (raw / f).is_file()]


def check_mnist(raw: Path) -> None:
    """Each IDX file's header agrees with its size, each split has as many labels as images, and
    the splits are neither swapped (MNIST's 60,000 train and 10,000 test) nor the same file.
    Other counts are allowed: subsets in the IDX format are common."""
    if mnist_legacy(raw):
        _check_mnist_cache(raw)
        return
    counts = {}
    for split, (images, labels) in MNIST_FILES.items():
        n_images, n_labels = _idx_count(raw / images, IDX_IMAGES), _idx_count(raw / labels, IDX_LABELS)
        if n_images != n_labels:
            raise DataError(
                f"{raw / images} holds {n_images:,} images but {raw / labels} holds {n_labels:,} "
                f"labels: the two files are from different sets; delete them and download again"
            )
        counts[split] = n_images
    train, test = (raw / MNIST_FILES[s][0] for s in MNIST_FILES)
    if counts == {"train": 10_000, "test": 60_000}:
        raise DataError(
            f"MNIST's train and test files are swapped: {train.name} holds 10,000 images and "
            f"{test.name} 60,000 (the train split has 60,000): swap the train-* and t10k-* files in {raw}"
        )
    if counts["train"] == counts["test"] and filecmp.cmp(train, test, shallow=False):
        raise DataError(f"{test} is a copy of {train}, so test bits/dim would not measure "
                        f"generalisation: put MNIST's test images (t10k-*) in {raw}")


def _check_mnist_cache(raw: Path) -> None:
    """torchvision reads its old processed/ cache instead of the raw files, by name: where both
    are there, they must hold the same digits and labels (compared by content fingerprint)."""
    for split, (images, labels) in MNIST_FILES.items():
        if not ((raw / images).is_file() and (raw / labels).is_file()):
            continue
        n = _idx_count(raw / images, IDX_IMAGES)
        _idx_count(raw / labels, IDX_LABELS)
        x = torch.frombuffer(bytearray((raw / images).read_bytes()[16:]), dtype=torch.uint8).view(n, 1, 28, 28)
        y = torch.frombuffer(bytearray((raw / labels).read_bytes()[8:]), dtype=torch.uint8).long()
        cache = raw.parent / "processed" / ("training.pt" if split == "train" else "test.pt")
        try:
            cx, cy = torch.load(cache, weights_only=True)
        except Exception:
            raise DataError(f"{cache} (torchvision's old MNIST cache) is unreadable: delete {cache.parent}") from None
        if of_batches([[cx.unsqueeze(1), cy.long()]]) != of_batches([[x, y]]):
            raise DataError(f"{cache} (torchvision's old MNIST cache, which it reads instead of {raw}) holds other "
                            f"digits than {raw / images}: delete {cache.parent} to use the raw files")


def _idx_count(path: Path, magic: int) -> int:
    """The number of records in an uncompressed uint8 IDX file (MNIST images 28x28, or labels),
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
        raise DataError(f"{path} is not an MNIST {kind} file (IDX magic number {found}, expected "
                        f"{magic}): delete it and download again (data.download: true)")
    if len(head) < header:
        raise DataError(f"{path} is truncated ({size} bytes, shorter than its {header}-byte header): "
                        f"delete it and download again (data.download: true)")
    shape = list(struct.unpack(f">{ndim}I", head[4:]))
    if kind == "images" and shape[1:] != [28, 28]:
        raise DataError(f"{path} holds {shape[1]}x{shape[2]} images, but MNIST's are 28x28: delete "
                        f"it and download again (data.download: true)")
    expected = header + math.prod(shape)
    if size != expected:
        what = "truncated" if size < expected else f"corrupt ({size - expected:,} bytes too long)"
        raise DataError(
            f"{path} is {what}: its header counts {shape[0]:,} {kind}, {expected:,} bytes, but the "
            f"file has {size:,}: delete it and download again (data.download: true)"
        )
    return shape[0]


def cifar10_missing(folder: Path) -> list[Path]:
    names = [f for f, _ in datasets.CIFAR10.train_list + datasets.CIFAR10.test_list]
    return [folder / f for f in [*names, datasets.CIFAR10.meta["filename"]] if not (folder / f).is_file()]


def check_cifar10(folder: Path) -> None:
    """Each file matches the official one's md5 (torchvision's own check, which otherwise only
    says "not found or corrupted", for all files at once)."""
    c = datasets.CIFAR10
    for name, md5 in [*c.train_list, *c.test_list, (c.meta["filename"], c.meta["md5"])]:
        # Looked up at call time, so that tests on tiny files can relax it (tests/datasets.py).
        if not datasets.cifar.check_integrity(str(folder / name), md5):
            raise DataError(f"{folder / name} is truncated or corrupt (its md5 is not the official "
                            f"file's): delete it and download again (data.download: true)")

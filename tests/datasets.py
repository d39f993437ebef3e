"""Tiny data sets written in the real on-disk formats, for tests (no network).

- MNIST: the IDX files torchvision reads from ``<root>/MNIST/raw`` (uncompressed).
- CIFAR-10: the Python pickles of ``cifar-10-python.tar.gz`` as extracted into
  ``<root>/cifar-10-batches-py``. torchvision checks these files' md5 sums against the real
  ones, so a test must call ``skip_cifar10_md5(monkeypatch)`` first; the pickles themselves are
  then parsed exactly as the real ones are.
- MNIST files of any record counts, all zero and sparse (``write_mnist_counts``).
- An image folder of PNGs written by PIL.
- ``digits()``: scikit-learn's real 8x8 handwritten digits as uint8 images.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets.cifar
from PIL import Image


def digits(size: int = 8) -> np.ndarray:
    """scikit-learn's ``load_digits()`` images, uint8 ``[1797, size, size]`` with values 0..255
    (``round(v * 255 / 16)`` of the 0..16 originals), upscaled with PIL bicubic if ``size != 8``."""
    from sklearn.datasets import load_digits  # a dev dependency, needed only here

    images = np.rint(load_digits().images * 255 / 16).astype(np.uint8)
    if size == 8:
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images])


def _random_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    # IDX: big-endian magic (0x0800 | ndim for uint8: 2051 images, 2049 labels), then each dim.
    path.write_bytes(struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.tobytes())


def write_mnist(root: Path, n_train: int = 20, n_test: int = 10,
                images: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Write ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` so that
    ``torchvision.datasets.MNIST(root)`` loads them. ``images`` (uint8 ``[N, 28, 28]``, N at
    least ``n_train + n_test``) gives the pixels, else they are random. Returns the train and test
    images (labels are ``i % 10``)."""
    if images is None:
        images = _random_images(n_train + n_test, (28, 28), seed=1)
    assert images.dtype == np.uint8 and images.shape[1:] == (28, 28), images.shape
    assert len(images) >= n_train + n_test, f"need {n_train + n_test} images, got {len(images)}"
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    train, test = images[:n_train], images[n_train:n_train + n_test]
    for prefix, part in (("train", train), ("t10k", test)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", part, 2051)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", (np.arange(len(part)) % 10).astype(np.uint8), 2049)
    return train, test


def write_mnist_counts(root: Path, n_train: int, n_test: int) -> Path:
    """Write MNIST's four raw files holding ``n_train`` and ``n_test`` all-zero images and labels,
    as sparse files (so MNIST's real 60,000 take no time or disk). Returns the raw folder."""
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for name, magic, shape in (("images-idx3", 2051, (n, 28, 28)), ("labels-idx1", 2049, (n,))):
            with open(raw / f"{prefix}-{name}-ubyte", "wb") as f:
                f.write(struct.pack(f">{1 + len(shape)}I", magic, *shape))
                f.truncate(4 * (1 + len(shape)) + int(np.prod(shape)))
    return raw


class _Python2Pickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch table we can extend
    """Writes ``bytes`` as Python 2 ``str`` (the BINSTRING opcodes), as in the real CIFAR-10 files,
    which were pickled by Python 2: torchvision's ``pickle.load(f, encoding="latin1")`` reads
    their keys as ``"data"``, and the data set's documented ``encoding="bytes"`` as ``b"data"``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str


def _write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        _Python2Pickler(f, protocol=2).dump(obj)


def skip_cifar10_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let torchvision's CIFAR10 accept the tiny files: their md5 sums cannot match the real ones.

    Patching ``CIFAR10._check_integrity`` alone is not enough: ``_load_meta`` calls the module's
    ``check_integrity(path, md5)`` directly. Replacing that function covers both, and still
    requires each file to exist, so a missing data set is still reported as missing."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity",
                        lambda fpath, md5=None: os.path.isfile(fpath))


def tiny_cifar10_md5(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Make the md5 sums torchvision checks CIFAR-10's files against those of the tiny files now in
    ``root/cifar-10-batches-py``, so that a file damaged afterwards fails the real md5 check."""
    folder = Path(root) / "cifar-10-batches-py"
    c = torchvision.datasets.CIFAR10

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    monkeypatch.setattr(c, "train_list", [[f, md5(f)] for f, _ in c.train_list])
    monkeypatch.setattr(c, "test_list", [[f, md5(f)] for f, _ in c.test_list])
    monkeypatch.setattr(c, "meta", {**c.meta, "md5": md5(c.meta["filename"])})


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root: Path, n_per_batch: int = 4, n_test: int = 6,
                  images: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Write ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``.
    ``images`` (uint8 ``[N, 32, 32, 3]``, N at least ``5 * n_per_batch + n_test``) gives the
    pixels, else they are random. Returns the train and test images, ``[N, 32, 32, 3]``.

    Each batch is ``{b"batch_label", b"labels", b"data", b"filenames"}`` with ``b"data"`` a uint8
    ``[n, 3072]`` array whose rows hold the red plane, then green, then blue (each row-major)."""
    n_train = 5 * n_per_batch
    if images is None:
        images = _random_images(n_train + n_test, (32, 32, 3), seed=2)
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3), images.shape
    assert len(images) >= n_train + n_test, f"need {n_train + n_test} images, got {len(images)}"
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train, test = images[:n_train], images[n_train:n_train + n_test]
    batches = [(f"data_batch_{i + 1}", train[i * n_per_batch:(i + 1) * n_per_batch]) for i in range(5)]
    for name, part in [*batches, ("test_batch", test)]:
        _write_pickle(folder / name, {
            b"batch_label": f"{name} of a tiny test copy".encode(),
            b"labels": [i % 10 for i in range(len(part))],
            b"data": np.ascontiguousarray(part.transpose(0, 3, 1, 2)).reshape(len(part), 3072),
            b"filenames": [f"image_{i:05d}.png".encode() for i in range(len(part))],
        })
    _write_pickle(folder / "batches.meta", {
        b"num_cases_per_batch": n_per_batch,
        b"label_names": [c.encode() for c in CIFAR10_CLASSES],
        b"num_vis": 3072,
    })
    return train, test


def write_image_folder(root: Path, images: np.ndarray | list[np.ndarray], split_dirs: bool,
                       n_test: int = 2, size: int | None = None, mode: str | None = None,
                       suffix: str = ".png") -> list[Path]:
    """Write each uint8 image (``[H, W]`` grey or ``[H, W, 3]`` RGB) as ``root/0000.png``, ... or,
    with ``split_dirs``, the last ``n_test`` under ``root/test/`` and the rest under ``root/train/``.
    ``size`` resizes each to ``size x size`` (PIL bicubic); ``mode`` converts ("L", "RGB") before
    saving. Returns the paths in image order."""
    root = Path(root)
    paths = []
    for i, array in enumerate(images):
        if split_dirs:
            folder = root / ("test" if i >= len(images) - n_test else "train")
        else:
            folder = root
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(np.asarray(array, dtype=np.uint8))
        if size is not None:
            img = img.resize((size, size), Image.BICUBIC)
        if mode is not None:
            img = img.convert(mode)
        path = folder / f"{i:04d}{suffix}"
        img.save(path)
        paths.append(path)
    return paths

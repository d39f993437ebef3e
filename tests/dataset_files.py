"""Tiny copies of every registered data set's on-disk format, for the registry-driven tests
(tests/test_datasets.py). ``WRITERS`` is keyed by the data set's class (its format), so a new
data set in an existing format (FashionMNIST beside MNIST) needs no test edit, and one in a new
format fails ``test_every_data_set_has_a_tiny_writer`` until its writer is here.

A writer ``(dataset, root, monkeypatch) -> Tiny`` writes the files under ``root`` and, where the
format has published md5s, sets them to the tiny files' so that the real check runs (a file
damaged afterwards fails it). ``Tiny`` holds what the loader must hand back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets as tvd
from datasets import _write_idx, _write_pickle, write_cifar10, write_image_folder

from nfgen.datasets.celeba import CelebaSet
from nfgen.datasets.cifar import CifarSet
from nfgen.datasets.folder import FolderSet
from nfgen.datasets.idx import IdxSet
from nfgen.datasets.imagenet import DownsampledImagenet
from nfgen.datasets.svhn import SvhnSet


@dataclass
class Tiny:
    shape: tuple[int, int, int]  # the model.image_shape to load it at
    train: np.ndarray | None  # uint8 [N, C, H, W] the loader must return, None where resized (CelebA)
    test: np.ndarray | None
    train_labels: np.ndarray | None  # int64 [N] in 0..K-1, None for a data set without classes
    test_labels: np.ndarray | None
    damage: Path  # a file whose truncation the data set's check must catch, naming it
    n_train: int = 0
    n_test: int = 0

    def __post_init__(self) -> None:
        if self.train is not None:
            self.n_train, self.n_test = len(self.train), len(self.test)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _rng(seed: int, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_idx_set(ds: IdxSet, root: Path, monkeypatch: pytest.MonkeyPatch) -> Tiny:
    raw = root / ds.torchvision_name / "raw"
    raw.mkdir(parents=True)
    out = {}
    for prefix, n, seed in (("train", 20, 1), ("t10k", 10, 2)):
        images, labels = _rng(seed, n, (28, 28)), (np.arange(n) * 3 % 10).astype(np.uint8)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images, 2051)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, 2049)
        out[prefix] = images[:, None], labels.astype(np.int64)
    return Tiny((1, 28, 28), out["train"][0], out["t10k"][0], out["train"][1], out["t10k"][1],
                raw / "t10k-labels-idx1-ubyte")


def _tiny_md5s(monkeypatch: pytest.MonkeyPatch, cls: type, folder: Path) -> None:
    monkeypatch.setattr(cls, "train_list", [[f, _md5(folder / f)] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, _md5(folder / f)] for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / cls.meta["filename"])})


def write_cifar_set(ds: CifarSet, root: Path, monkeypatch: pytest.MonkeyPatch) -> Tiny:
    folder = root / ds.base_folder
    if ds.name == "cifar10":
        train, test = write_cifar10(root)
        # write_cifar10 numbers each batch's labels from 0: five batches of 4, then 6 test images.
        y_train, y_test = np.tile(np.arange(4), 5), np.arange(len(test)) % 10
    else:  # CIFAR-100: one train and one test pickle with fine and coarse labels, and meta
        folder.mkdir(parents=True)
        train, test = _rng(3, 12, (32, 32, 3)), _rng(4, 6, (32, 32, 3))
        y_train, y_test = np.arange(12) * 7 % 100, np.arange(6) * 13 % 100
        for name, part, y in (("train", train, y_train), ("test", test, y_test)):
            _write_pickle(folder / name, {
                b"filenames": [f"{i}.png".encode() for i in range(len(part))], b"batch_label": b"tiny",
                b"fine_labels": [int(v) for v in y], b"coarse_labels": [int(v) // 5 for v in y],
                b"data": np.ascontiguousarray(part.transpose(0, 3, 1, 2)).reshape(len(part), 3072)})
        _write_pickle(folder / "meta", {b"fine_label_names": [c.encode() for c in ds.classes],
                                        b"coarse_label_names": [f"super{i}".encode() for i in range(20)]})
    _tiny_md5s(monkeypatch, getattr(tvd, ds.torchvision_name), folder)
    return Tiny((3, 32, 32), train.transpose(0, 3, 1, 2), test.transpose(0, 3, 1, 2), y_train, y_test,
                folder / ("test_batch" if ds.name == "cifar10" else "test"))


def write_svhn_set(ds: SvhnSet, root: Path, monkeypatch: pytest.MonkeyPatch) -> Tiny:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, seed in (("train", 12, 5), ("test", 6, 6)):
        images = _rng(seed, n, (3, 32, 32))
        digit = np.arange(n) % 10
        # SVHN's .mat: X [32, 32, 3, N] (row, column, channel, image), y [N, 1] with digit 0 stored as 10.
        savemat(root / f"{split}_32x32.mat", {"X": images.transpose(2, 3, 1, 0), "y": np.where(digit == 0, 10, digit)[:, None]})
        out[split] = images, digit
    monkeypatch.setattr(tvd.SVHN, "split_list", {
        s: [u, f, _md5(root / f) if (root / f).is_file() else m] for s, (u, f, m) in tvd.SVHN.split_list.items()})
    return Tiny((3, 32, 32), out["train"][0], out["test"][0], out["train"][1], out["test"][1],
                root / "test_32x32.mat")


def write_imagenet_set(ds: DownsampledImagenet, root: Path, monkeypatch: pytest.MonkeyPatch) -> Tiny:
    s = ds.size
    train_dir, val_dir = ds.npz_folders(root)
    train_dir.mkdir(parents=True), val_dir.mkdir(parents=True)
    images = _rng(7, 24, (3, s, s))
    labels = np.arange(24) * 41 % 1000  # 0-based; the files hold 1..1000
    for i in range(10):  # ten train batches of two images
        part = slice(2 * i, 2 * i + 2)
        np.savez(train_dir / f"train_data_batch_{i + 1}.npz", data=images[part].reshape(2, -1),
                 labels=list(labels[part] + 1), mean=np.zeros(3 * s * s))
    np.savez(val_dir / "val_data.npz", data=images[20:].reshape(4, -1), labels=list(labels[20:] + 1))
    return Tiny((3, s, s), images[:20], images[20:], labels[:20], labels[20:], val_dir / "val_data.npz")


def write_celeba_set(ds: CelebaSet, root: Path, monkeypatch: pytest.MonkeyPatch) -> Tiny:
    from PIL import Image

    folder = root / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    lines, counts = [], {"0": 0, "2": 0}
    for i, part in enumerate("0000001220"):  # 6 train, 2 validation (not read), 2 test
        name = f"{i + 1:06d}.jpg"
        Image.fromarray(_rng(8 + i, 1, (218, 178, 3))[0]).save(folder / name, quality=95)
        lines.append(f"{name} {part}")
        counts[part] = counts.get(part, 0) + 1
    partition = root / "celeba" / "list_eval_partition.txt"
    partition.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(tvd.CelebA, "file_list", [
        (i, _md5(partition) if f == partition.name else m, f) for i, m, f in tvd.CelebA.file_list])
    return Tiny((3, 32, 32), None, None, None, None, partition, n_train=counts["0"], n_test=counts["2"])


def write_folder_set(ds: FolderSet, root: Path, monkeypatch: pytest.MonkeyPatch) -> Tiny:
    images = _rng(9, 10, (8, 8, 3))
    paths = write_image_folder(root, list(images), split_dirs=True, n_test=3)
    x = images.transpose(0, 3, 1, 2)
    return Tiny((3, 8, 8), x[:7], x[7:], None, None, paths[-1])


WRITERS = {IdxSet: write_idx_set, CifarSet: write_cifar_set, SvhnSet: write_svhn_set,
           DownsampledImagenet: write_imagenet_set, CelebaSet: write_celeba_set, FolderSet: write_folder_set}

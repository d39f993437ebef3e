"""The real loaders on tiny data sets written in the real on-disk formats (tests/datasets.py)."""

from __future__ import annotations

import gc
import pickle
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
import torchvision.datasets.mnist
from datasets import digits, skip_cifar10_md5, write_cifar10, write_image_folder, write_mnist
from PIL import Image

from nfgen.config import ConfigError, config_from_dict
from nfgen.data import DataError, ImageFiles, load_split, make_loader


def cfg(root: Path, dataset: str, shape: list[int], **data: object):
    return config_from_dict({"data": {"dataset": dataset, "root": str(root), "download": False, **data},
                             "model": {"image_shape": shape, "levels": 1}})


def items(ds) -> torch.Tensor:
    return torch.stack([ds[i] for i in range(len(ds))])


@pytest.fixture(scope="module")
def digits28() -> np.ndarray:
    return digits(28)[:30]


# MNIST


def test_mnist_28_round_trips_real_digits(tmp_path, digits28):
    train, test = write_mnist(tmp_path, n_train=20, n_test=10, images=digits28)
    for split, expected in (("train", train), ("test", test)):
        x = items(load_split(cfg(tmp_path, "mnist", [1, 28, 28]), split))
        assert x.dtype == torch.uint8 and x.shape == (len(expected), 1, 28, 28)
        assert torch.equal(x[:, 0], torch.from_numpy(expected))


def test_mnist_32_is_zero_padded_two_pixels_a_side(tmp_path, digits28):
    train, _ = write_mnist(tmp_path, images=digits28)
    x = items(load_split(cfg(tmp_path, "mnist", [1, 32, 32]), "train"))
    assert x.dtype == torch.uint8 and x.shape == (len(train), 1, 32, 32)
    assert torch.equal(x[:, 0, 2:30, 2:30], torch.from_numpy(train))
    border = x.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.sum() == 0 and x.sum() > 0


def test_mnist_missing_without_download_says_what_to_do(tmp_path):
    with pytest.raises(DataError) as e:
        load_split(cfg(tmp_path, "mnist", [1, 28, 28]), "train")
    msg = str(e.value)
    assert "\n" not in msg and "data.download" in msg and str(tmp_path / "MNIST" / "raw") in msg


def test_mnist_failed_download_is_a_data_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="could not download MNIST into .*check the internet connection") as e:
        load_split(cfg(tmp_path, "mnist", [1, 28, 28], download=True), "train")
    assert "\n" not in str(e.value)  # the cause's wording depends on the torchvision version


def test_mnist_corrupt_files_are_a_data_error(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x00\x00garbage")
    with pytest.raises(DataError, match="unreadable"):
        load_split(cfg(tmp_path, "mnist", [1, 28, 28]), "train")


def test_mnist_shape_mismatch_is_a_config_error(tmp_path):
    write_mnist(tmp_path)
    with pytest.raises(ConfigError):
        load_split(cfg(tmp_path, "mnist", [3, 32, 32]), "train")


# CIFAR-10


def test_cifar10_counts_and_exact_pixels(tmp_path, monkeypatch):
    skip_cifar10_md5(monkeypatch)
    train, test = write_cifar10(tmp_path, n_per_batch=3, n_test=4)
    for split, expected in (("train", train), ("test", test)):
        x = items(load_split(cfg(tmp_path, "cifar10", [3, 32, 32]), split))
        assert x.dtype == torch.uint8 and x.shape == (len(expected), 3, 32, 32)
        assert torch.equal(x, torch.from_numpy(expected).permute(0, 3, 1, 2))
    assert len(train) == 15 and len(test) == 4


def test_cifar10_pickle_rows_are_channel_major(tmp_path):
    train, _ = write_cifar10(tmp_path, n_per_batch=2, n_test=1)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="bytes")  # the data set's own reading recipe
    row = batch[b"data"][1]
    assert batch[b"data"].shape == (2, 3072) and batch[b"data"].dtype == np.uint8
    for c in range(3):  # red plane, green plane, blue plane, each row-major
        assert np.array_equal(row[c * 1024:(c + 1) * 1024].reshape(32, 32), train[1, :, :, c])


def test_cifar10_missing_without_download_says_what_to_do(tmp_path):
    with pytest.raises(DataError) as e:
        load_split(cfg(tmp_path, "cifar10", [3, 32, 32]), "test")
    msg = str(e.value)
    assert "\n" not in msg and "data.download" in msg and "cifar-10-batches-py" in msg


def test_cifar10_failed_download_is_a_data_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="could not download CIFAR-10.*internet"):
        load_split(cfg(tmp_path, "cifar10", [3, 32, 32], download=True), "train")


# Image folders


def test_folder_with_train_and_test_subfolders(tmp_path):
    images = digits()[:7]
    write_image_folder(tmp_path, images, split_dirs=True, n_test=3)
    train = items(load_split(cfg(tmp_path, "folder", [1, 8, 8]), "train"))
    test = items(load_split(cfg(tmp_path, "folder", [1, 8, 8]), "test"))
    assert train.dtype == torch.uint8 and train.shape == (4, 1, 8, 8) and test.shape == (3, 1, 8, 8)
    assert torch.equal(torch.cat([train, test])[:, 0], torch.from_numpy(images))


def test_flat_folder_split_is_deterministic_disjoint_and_fractional(tmp_path):
    paths = write_image_folder(tmp_path, digits()[:20], split_dirs=False)
    (tmp_path / "more").mkdir()  # searched recursively; other files and hidden files are skipped
    paths.append(write_image_folder(tmp_path / "more", digits()[20:21], split_dirs=False)[0])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "._0000.png").write_bytes(b"macOS resource fork, not an image")
    c = cfg(tmp_path, "folder", [1, 8, 8], test_fraction=0.25)
    train, test = load_split(c, "train"), load_split(c, "test")
    assert isinstance(train, ImageFiles) and isinstance(test, ImageFiles)
    assert len(test) == round(21 * 0.25) and len(train) == 21 - len(test)
    assert set(train.files).isdisjoint(test.files) and set(train.files) | set(test.files) == set(paths)
    assert load_split(c, "test").files == test.files
    assert test.files != paths[:len(test)]  # held out by hash, not by name


def test_flat_folder_keeps_both_splits_non_empty(tmp_path):
    write_image_folder(tmp_path, digits()[:3], split_dirs=False)
    c = cfg(tmp_path, "folder", [1, 8, 8], test_fraction=0.01)
    assert len(load_split(c, "train")) == 2 and len(load_split(c, "test")) == 1


def test_folder_grey_and_rgb_conversion(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    write_image_folder(tmp_path / "rgb", rgb, split_dirs=True, n_test=1)
    grey = items(load_split(cfg(tmp_path / "rgb", "folder", [1, 8, 8]), "train"))
    expected = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in rgb[:2]])
    assert grey.shape == (2, 1, 8, 8) and torch.equal(grey[:, 0], torch.from_numpy(expected))
    colour = items(load_split(cfg(tmp_path / "rgb", "folder", [3, 8, 8]), "train"))
    assert torch.equal(colour, torch.from_numpy(rgb[:2]).permute(0, 3, 1, 2))

    write_image_folder(tmp_path / "grey", digits()[:3], split_dirs=True, n_test=1)
    x = items(load_split(cfg(tmp_path / "grey", "folder", [3, 8, 8]), "train"))
    assert x.shape == (2, 3, 8, 8) and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert torch.equal(x[:, 0], torch.from_numpy(digits()[:2]))


def test_folder_resizes_shorter_side_then_center_crops(tmp_path):
    wide = np.random.default_rng(1).integers(0, 256, size=(2, 8, 16), dtype=np.uint8)  # H=8, W=16
    write_image_folder(tmp_path / "same", wide, split_dirs=True, n_test=1)
    x = items(load_split(cfg(tmp_path / "same", "folder", [1, 8, 8]), "train"))
    assert torch.equal(x[0, 0], torch.from_numpy(wide[0, :, 4:12]))  # no resize: just the middle

    big = np.random.default_rng(2).integers(0, 256, size=(2, 16, 32), dtype=np.uint8)  # H=16, W=32
    write_image_folder(tmp_path / "big", big, split_dirs=True, n_test=1)
    x = items(load_split(cfg(tmp_path / "big", "folder", [1, 8, 8]), "test"))
    halved = np.array(Image.fromarray(big[1]).resize((16, 8), Image.BILINEAR))  # shorter side 16 -> 8
    assert x.shape == (1, 1, 8, 8) and torch.equal(x[0, 0], torch.from_numpy(halved[:, 4:12]))


def test_folder_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(DataError, match=f"image folder {tmp_path / 'nope'} not found"):
        load_split(cfg(tmp_path / "nope", "folder", [1, 8, 8]), "train")

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="0 images in"):
        load_split(cfg(tmp_path / "empty", "folder", [1, 8, 8]), "train")

    write_image_folder(tmp_path / "one", digits()[:1], split_dirs=False)
    with pytest.raises(DataError, match="at least 2"):
        load_split(cfg(tmp_path / "one", "folder", [1, 8, 8]), "test")

    write_image_folder(tmp_path / "half", digits()[:3], split_dirs=True, n_test=0)
    with pytest.raises(DataError, match="has train/ but no test/"):
        load_split(cfg(tmp_path / "half", "folder", [1, 8, 8]), "train")

    (tmp_path / "half" / "test").mkdir()
    with pytest.raises(DataError, match="no images in"):
        load_split(cfg(tmp_path / "half", "folder", [1, 8, 8]), "test")


@pytest.mark.parametrize("damage", ["not_an_image", "truncated"])
def test_corrupt_image_names_the_file(tmp_path, damage):
    paths = write_image_folder(tmp_path, digits(32)[:4], split_dirs=True, n_test=1)
    bad = paths[1]
    data = bad.read_bytes()
    bad.write_bytes(b"this is not a png" if damage == "not_an_image" else data[: len(data) // 2])
    if damage == "not_an_image":  # caught before training starts, from the header alone
        with pytest.raises(DataError, match=f"cannot read image {bad}"):
            load_split(cfg(tmp_path, "folder", [1, 32, 32]), "train")
        return
    ds = load_split(cfg(tmp_path, "folder", [1, 32, 32]), "train")
    ds[0]
    with pytest.raises(DataError, match=f"cannot read image {bad}"):
        ds[1]


def test_corrupt_image_in_a_loader_worker_is_one_line(tmp_path, monkeypatch):
    # A loader whose worker has raised waits out torch's full join timeout (5 s) before it
    # terminates the worker; shorten that wait, and collect the loader (held by the exception's
    # traceback cycle) here rather than at exit, to keep this file fast.
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.1)
    paths = write_image_folder(tmp_path, digits()[:4], split_dirs=True, n_test=1)
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) // 2])  # truncated: the header still parses
    loader = make_loader(load_split(cfg(tmp_path, "folder", [1, 8, 8]), "train"), batch_size=3,
                         shuffle=False, num_workers=1, pin_memory=False)
    with pytest.raises(DataError) as e:
        next(iter(loader))
    assert str(e.value).startswith(f"cannot read image {paths[0]}") and "\n" not in str(e.value)
    del e, loader
    gc.collect()


def test_bad_split_name(tmp_path):
    with pytest.raises(DataError, match="unknown split 'valid'"):
        load_split(cfg(tmp_path, "folder", [1, 8, 8]), "valid")


# Loaders


def test_loader_batches_and_seeded_order(tmp_path):
    write_image_folder(tmp_path, digits()[:12], split_dirs=True, n_test=2)
    ds = load_split(cfg(tmp_path, "folder", [1, 8, 8]), "train")

    def order(seed: int) -> list[torch.Tensor]:
        loader = make_loader(ds, batch_size=4, shuffle=True, num_workers=0, pin_memory=False,
                             generator=torch.Generator().manual_seed(seed), drop_last=True)
        return list(loader)

    batches = order(0)
    assert len(batches) == 2 and all(b.shape == (4, 1, 8, 8) and b.dtype == torch.uint8 for b in batches)
    assert all(torch.equal(a, b) for a, b in zip(batches, order(0), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(batches, order(1), strict=True))
    with pytest.raises(DataError, match="lower train.batch_size"):
        make_loader(ds, batch_size=64, shuffle=True, num_workers=0, pin_memory=False, drop_last=True)

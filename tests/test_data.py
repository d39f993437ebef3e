"""The real loaders on tiny data sets written in the real on-disk formats (tests/datasets.py)."""

from __future__ import annotations

import gc
import gzip
import os
import pickle
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
import torchvision.datasets.mnist
from datasets import (
    digits,
    skip_cifar10_md5,
    tiny_cifar10_md5,
    write_cifar10,
    write_image_folder,
    write_mnist,
    write_mnist_counts,
)
from PIL import Image

from nfgen.config.schema import ConfigError, config_from_dict
from nfgen.datasets.image_modes import ModeError, to_mode
from nfgen.datasets.images import ImageFiles
from nfgen.datasets.loading import make_loader
from nfgen.datasets.splits import load_split
from nfgen.errors import DataError


def cfg(root: Path, dataset: str, shape: list[int], **data: object):
    return config_from_dict({"data": {"dataset": dataset, "root": str(root), "download": False, **data},
                             "model": {"image_shape": shape, "glow": {"levels": 1}}})


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


def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if torchvision tries to download anything."""
    def download(*args, **kwargs):
        raise AssertionError("the test tried to download")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", download)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", download)


def one_line_error(c, split: str = "train") -> str:
    with pytest.raises(DataError) as e:
        load_split(c, split)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_mnist_one_file_missing_is_named(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    msg = one_line_error(cfg(tmp_path, "mnist", [1, 28, 28]))
    assert "lacks t10k-labels-idx1-ubyte" in msg and "data.download: true" in msg


@pytest.mark.parametrize("download", [False, True])
@pytest.mark.parametrize("cut", [1, 784 * 3, 20 * 784 + 10])  # a byte, 3 whole images, into the header
def test_mnist_truncated_file_is_named_not_missing(tmp_path, monkeypatch, download, cut):
    no_network(monkeypatch)  # all files exist, so nothing may be downloaded
    write_mnist(tmp_path, n_train=20, n_test=10)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    msg = one_line_error(cfg(tmp_path, "mnist", [1, 28, 28], download=download), "test")
    assert msg.startswith(f"{path} is truncated") and "delete it and download again" in msg
    if cut < len(data) - 16:  # the header survives: its count is quoted against the file's size
        assert f"counts 20 MNIST images, {len(data):,} bytes, but the file has {len(data) - cut:,}" in msg


def test_mnist_record_count_errors(tmp_path):
    c = cfg(tmp_path, "mnist", [1, 28, 28])
    raw = write_mnist_counts(tmp_path, 20, 10)
    labels = raw / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes() + b"\x00")
    assert one_line_error(c).startswith(f"{labels} is corrupt (1 bytes too long): its header counts 10 MNIST labels")

    raw = write_mnist_counts(tmp_path, 20, 10)
    (raw / "t10k-labels-idx1-ubyte").write_bytes((raw / "train-labels-idx1-ubyte").read_bytes())
    assert one_line_error(c).startswith(
        f"{raw / 't10k-images-idx3-ubyte'} holds 10 images but {raw / 't10k-labels-idx1-ubyte'} holds 20 labels")

    raw = write_mnist_counts(tmp_path, 20, 10)
    (raw / "train-images-idx3-ubyte").write_bytes((raw / "train-labels-idx1-ubyte").read_bytes())
    assert "is not MNIST images (IDX magic number 2049, expected 2051)" in one_line_error(c)


def test_mnist_swapped_standard_splits_are_refused(tmp_path):
    write_mnist_counts(tmp_path, 10_000, 60_000)
    msg = one_line_error(cfg(tmp_path, "mnist", [1, 28, 28]))
    assert msg.startswith("MNIST's train and test files are swapped") and "swap the train-* and t10k-*" in msg
    write_mnist_counts(tmp_path, 60_000, 10_000)  # the real counts, the right way round
    assert len(load_split(cfg(tmp_path, "mnist", [1, 28, 28]), "test")) == 10_000


def test_mnist_test_split_equal_to_train_is_refused(tmp_path, digits28):
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(tmp_path, n_train=10, n_test=10, images=digits28)
    for name in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        (raw / f"t10k-{name}").write_bytes((raw / f"train-{name}").read_bytes())
    msg = one_line_error(cfg(tmp_path, "mnist", [1, 28, 28]))
    assert msg.startswith(f"{raw / 't10k-images-idx3-ubyte'} is a copy of {raw / 'train-images-idx3-ubyte'}")


def test_mnist_gzip_file_under_the_raw_name_says_to_decompress(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    path.write_bytes(gzip.compress(path.read_bytes()))
    assert one_line_error(cfg(tmp_path, "mnist", [1, 28, 28])).startswith(f"{path} is gzip-compressed")


def test_mnist_corrupt_files_are_a_data_error(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x00\x00garbage")
    with pytest.raises(DataError, match="is not MNIST images .*delete it and download again"):
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


@pytest.mark.parametrize("download", [False, True])
def test_cifar10_truncated_file_fails_its_md5_and_is_named(tmp_path, monkeypatch, download):
    no_network(monkeypatch)  # all files exist, so nothing may be downloaded
    write_cifar10(tmp_path, n_per_batch=2, n_test=2)
    tiny_cifar10_md5(monkeypatch, tmp_path)
    c = cfg(tmp_path, "cifar10", [3, 32, 32], download=download)
    assert len(load_split(c, "test")) == 2  # the md5 check passes on intact files
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:-100])
    msg = one_line_error(c, "test")  # torchvision checks the train files for the test split too
    assert msg.startswith(f"{path} is truncated or corrupt") and "delete it and download again" in msg


def test_cifar10_unpicklable_file_is_unreadable(tmp_path, monkeypatch):
    skip_cifar10_md5(monkeypatch)
    write_cifar10(tmp_path, n_per_batch=2, n_test=2)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:50])
    assert "are unreadable" in one_line_error(cfg(tmp_path, "cifar10", [3, 32, 32]), "test")


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


# Image modes: every mode Pillow opens becomes 8-bit grey or RGB by to_mode's stated rules.


def save_in_both_splits(folder: Path, img: Image.Image, suffix: str = ".png", **save) -> None:
    for split in ("train", "test"):
        (folder / split).mkdir(parents=True, exist_ok=True)
        img.save(folder / split / f"image{suffix}", **save)


def read_back(folder: Path, img: Image.Image, channels: int, suffix: str = ".png", **save) -> np.ndarray:
    """``img`` saved in ``folder``'s train/ and test/ and read back by load_split, uint8 [C, H, W]."""
    save_in_both_splits(folder, img, suffix, **save)
    return load_split(cfg(folder, "folder", [channels, img.height, img.width]), "train")[0].numpy()


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma of uint8 [H, W, 3], as Pillow's convert("L") computes it."""
    return np.asarray(Image.fromarray(rgb, "RGB").convert("L"))


# round(v * 255 / 65535) at the edges of its steps: never a tie, since 257 is odd.
SIXTEEN_BIT_STEPS = {0: 0, 128: 0, 129: 1, 257: 1, 385: 1, 386: 2, 32767: 127, 32768: 128,
                     65406: 254, 65407: 255, 65535: 255}


def sixteen_bit_ramp() -> np.ndarray:
    rest = np.random.default_rng(3).integers(0, 65536, size=64 - len(SIXTEEN_BIT_STEPS))
    return np.concatenate([list(SIXTEEN_BIT_STEPS), rest]).astype(np.uint16).reshape(8, 8)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    v = sixteen_bit_ramp()
    x = read_back(tmp_path, Image.fromarray(v), 1)
    assert Image.open(tmp_path / "train" / "image.png").mode in ("I;16", "I")  # "I" before Pillow 10
    assert dict(zip(v.ravel()[:len(SIXTEEN_BIT_STEPS)].tolist(), x[0].ravel().tolist())) == SIXTEEN_BIT_STEPS
    assert np.array_equal(x[0], np.rint(v.astype(np.float64) * 255 / 65535).astype(np.uint8))
    rgb = load_split(cfg(tmp_path, "folder", [3, 8, 8]), "test")[0].numpy()
    assert all(np.array_equal(rgb[c], x[0]) for c in range(3))


def test_16bit_big_endian_and_32bit_integer_images(tmp_path):
    v = sixteen_bit_ramp()
    expected = np.rint(v.astype(np.float64) * 255 / 65535).astype(np.uint8)
    big_endian = Image.frombytes("I;16B", (8, 8), v.astype(">u2").tobytes())
    assert np.array_equal(np.asarray(to_mode(big_endian, "L")), expected)
    # A 16-bit PGM opens as mode "I" (32-bit): values within 16 bits are scaled as 16-bit.
    (tmp_path / "pgm").mkdir()
    pgm = tmp_path / "pgm" / "image.pgm"
    pgm.write_bytes(b"P5 8 8 65535\n" + v.astype(">u2").tobytes())
    assert np.array_equal(np.asarray(to_mode(Image.open(pgm), "L")), expected)

    for value in (70_000, -1):  # beyond 16 bits: the scale is unknown
        wide = v.astype(np.int32)
        wide[3, 3] = value
        folder = tmp_path / f"wide{value}"
        save_in_both_splits(folder, Image.fromarray(wide), ".tif")
        ds = load_split(cfg(folder, "folder", [1, 8, 8]), "train")  # the header is fine: mode I
        with pytest.raises(DataError) as e:
            ds[0]
        msg = str(e.value)
        assert msg.startswith(f"image {folder / 'train' / 'image.tif'} (mode I): 32-bit integer pixels")
        assert "outside 16 bits' 0..65535" in msg and "\n" not in msg


def test_float_images_in_0_1_are_scaled_others_refused(tmp_path):
    known = {0.0: 0, 1.0: 255, 0.5: 128, 0.25: 64, 0.125: 32}  # round half up of v * 255
    v = np.random.default_rng(4).random((8, 8)).astype(np.float32)
    v.ravel()[:len(known)] = list(known)
    x = read_back(tmp_path, Image.fromarray(v), 1, ".tif")
    assert Image.open(tmp_path / "train" / "image.tif").mode == "F"
    assert dict(zip(v.ravel()[:len(known)].tolist(), x[0].ravel().tolist())) == known
    assert np.array_equal(x[0], np.floor(v.astype(np.float64) * 255 + 0.5).astype(np.uint8))
    for bad in (1.5, -0.25, float("nan")):
        v[0, 0] = bad
        with pytest.raises(ModeError, match=r"outside \[0, 1\]"):
            to_mode(Image.fromarray(v), "L")


def test_alpha_is_composited_over_black(tmp_path):
    rng = np.random.default_rng(5)
    colour = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
    alpha[0, :4], alpha[1, :4] = 0, 255
    expected = np.rint(colour * (alpha[..., None] / 255)).astype(np.uint8)
    assert (expected[0, :4] == 0).all() and np.array_equal(expected[1, :4], colour[1, :4])
    rgba = Image.fromarray(np.dstack([colour, alpha]), "RGBA")
    assert np.array_equal(read_back(tmp_path / "rgba", rgba, 3), expected.transpose(2, 0, 1))
    assert np.array_equal(read_back(tmp_path / "rgba_l", rgba, 1)[0], luma(expected))

    la = Image.fromarray(np.dstack([colour[..., 0], alpha]), "LA")
    assert np.array_equal(read_back(tmp_path / "la", la, 1)[0], expected[..., 0])
    # Premultiplied modes already hold the composite.
    rgba_pre = Image.frombytes("RGBa", (8, 8), np.dstack([expected, alpha]).tobytes())
    assert np.array_equal(np.asarray(to_mode(rgba_pre, "RGB")), expected)
    la_pre = Image.frombytes("La", (8, 8), np.dstack([expected[..., 0], alpha]).tobytes())
    assert np.array_equal(np.asarray(to_mode(la_pre, "L")), expected[..., 0])


def test_transparent_colour_and_palettes(tmp_path):
    palette = np.random.default_rng(6).integers(0, 256, size=(256, 3), dtype=np.uint8)
    index = np.random.default_rng(7).integers(0, 4, size=(8, 8), dtype=np.uint8)
    p = Image.fromarray(index, "P")
    p.putpalette(palette.ravel().tolist())
    assert np.array_equal(read_back(tmp_path / "p", p, 3), palette[index].transpose(2, 0, 1))
    assert np.array_equal(read_back(tmp_path / "p_l", p, 1)[0], luma(palette[index]))

    opaque = palette[index] * (index != 2)[..., None]  # index 2 transparent (tRNS): black
    assert np.array_equal(read_back(tmp_path / "p_t", p, 3, transparency=2), opaque.transpose(2, 0, 1))
    assert np.array_equal(np.asarray(to_mode(p.convert("PA"), "RGB")), palette[index])

    grey = palette[index][..., 0]
    x = read_back(tmp_path / "l_t", Image.fromarray(grey, "L"), 1, transparency=int(grey[0, 0]))
    assert np.array_equal(x[0], np.where(grey == grey[0, 0], 0, grey))
    rgb = palette[index]
    key = tuple(int(c) for c in rgb[0, 0])
    x = read_back(tmp_path / "rgb_t", Image.fromarray(rgb, "RGB"), 3, transparency=key)
    assert np.array_equal(x, np.where((rgb == key).all(-1)[..., None], 0, rgb).transpose(2, 0, 1))


def test_bilevel_cmyk_and_other_colour_spaces(tmp_path):
    bits = np.random.default_rng(8).random((8, 8)) < 0.5
    x = read_back(tmp_path / "one", Image.fromarray(bits), 3)
    assert np.array_equal(x, np.broadcast_to(np.where(bits, 255, 0), (3, 8, 8)))
    x = read_back(tmp_path / "one_t", Image.fromarray(bits), 1, transparency=1)  # white transparent
    assert (x == 0).all()
    x = read_back(tmp_path / "one_t0", Image.fromarray(bits), 1, transparency=0)  # black transparent
    assert np.array_equal(x[0], np.where(bits, 255, 0))

    # (255 - C)(255 - K) / 255 per channel: white, red, black, and a half cyan.
    cmyk = {(0, 0, 0, 0): (255, 255, 255), (0, 255, 255, 0): (255, 0, 0), (0, 0, 0, 255): (0, 0, 0),
            (128, 0, 0, 0): (127, 255, 255)}
    img = Image.frombytes("CMYK", (4, 1), bytes(np.array(list(cmyk), np.uint8).ravel()))
    x = read_back(tmp_path / "cmyk", img.resize((8, 8), Image.NEAREST), 3, ".tif")
    assert [tuple(x[:, 0, 2 * i].tolist()) for i in range(4)] == list(cmyk.values())

    rgb = np.random.default_rng(9).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    for mode in ("YCbCr", "HSV"):  # Pillow's own conversions, which round-trip within a few levels
        back = np.asarray(to_mode(Image.fromarray(rgb).convert(mode), "RGB")).astype(int)
        assert np.abs(back - rgb).max() <= 8

    lab = tmp_path / "lab"  # refused from the header alone, before training starts
    save_in_both_splits(lab, Image.new("LAB", (8, 8)), ".tif")
    msg = one_line_error(cfg(lab, "folder", [3, 8, 8]))
    assert msg.startswith(f"image {lab / 'train' / 'image.tif'} has mode LAB") and "save it as" in msg


def test_exif_orientation_is_applied(tmp_path):
    wide = np.random.default_rng(10).integers(0, 256, size=(8, 16), dtype=np.uint8)  # H=8, W=16
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored image must turn 90 degrees clockwise to be upright
    save_in_both_splits(tmp_path, Image.fromarray(wide), exif=exif.tobytes())
    x = load_split(cfg(tmp_path, "folder", [1, 8, 8]), "train")[0].numpy()
    upright = np.rot90(wide, k=-1)  # H=16, W=8: the shorter side is already 8, so only cropped
    assert np.array_equal(x[0], upright[4:12])


# Symbolic links in image folders


def test_folder_follows_symlinked_folders_and_files_once(tmp_path):
    store, data = tmp_path / "store", tmp_path / "data"
    many = write_image_folder(store / "many", digits()[:6], split_dirs=False)
    single = write_image_folder(store / "single", digits()[6:7], split_dirs=False)
    own = write_image_folder(data / "own", digits()[7:9], split_dirs=False)
    (data / "linked").symlink_to(store / "many", target_is_directory=True)
    (data / "zz_again").symlink_to(store / "many", target_is_directory=True)  # one folder twice
    (data / "own" / "loop").symlink_to(data, target_is_directory=True)  # an ancestor: endless
    (store / "many" / "up").symlink_to(store, target_is_directory=True)  # reaches store/single
    (data / "one.png").symlink_to(single[0])  # and so does this file
    c = cfg(data, "folder", [1, 8, 8], test_fraction=0.25)
    train, test = load_split(c, "train"), load_split(c, "test")
    files = train.files + test.files
    assert len(files) == 9 and len(test.files) == 2
    assert {os.path.realpath(p) for p in files} == {os.path.realpath(p) for p in many + single + own}
    assert not any({"zz_again", "loop", "up"} & set(p.parts) for p in files)
    assert data / "one.png" in files and data / "linked" / "0000.png" in files
    got = sorted(items(train)[:, 0].numpy().tolist() + items(test)[:, 0].numpy().tolist())
    assert got == sorted(digits()[:9].tolist())


def test_broken_symlink_is_named(tmp_path):
    write_image_folder(tmp_path, digits()[:3], split_dirs=False)
    (tmp_path / "gone.png").symlink_to(tmp_path / "elsewhere.png")
    msg = one_line_error(cfg(tmp_path, "folder", [1, 8, 8]))
    assert msg.startswith(f"{tmp_path / 'gone.png'} is a broken symbolic link")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their permissions")
def test_unreadable_subfolder_is_an_error_not_skipped(tmp_path):
    write_image_folder(tmp_path, digits()[:3], split_dirs=False)
    write_image_folder(tmp_path / "locked", digits()[3:5], split_dirs=False)
    (tmp_path / "locked").chmod(0)
    try:
        msg = one_line_error(cfg(tmp_path, "folder", [1, 8, 8]))
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert msg.startswith(f"cannot list folder {tmp_path / 'locked'}")

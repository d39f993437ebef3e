"""Files are read or refused loudly, never dropped in silence: a GIF (any format Pillow reads) in
a folder is read, other files in a scored folder are reported, a class folder cannot take the
null class's name, and a training split without an image of some class is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from archs import tiny_model
from datasets import digits, write_image_folder
from PIL import Image
from test_labels import write_classes
from typer.testing import CliRunner

from nfgen.cli.app import app
from nfgen.config.schema import config_from_dict
from nfgen.datasets.images import _hash_key, load_folder
from nfgen.datasets.splits import load_split
from nfgen.errors import DataError
from nfgen.model.image_flow import build_model
from nfgen.training.checkpoint import save_checkpoint

runner = CliRunner()


def test_gifs_and_other_pillow_formats_are_read_as_the_same_pixels(tmp_path):
    images = digits()[:3]
    for i, (im, suffix) in enumerate(zip(images, (".gif", ".tga", ".png"))):
        Image.fromarray(im).save(tmp_path / f"{i}{suffix}")
    data = load_folder(tmp_path, (1, 8, 8))
    assert [p.suffix for p in data.files] == [".gif", ".tga", ".png"]
    assert torch.equal(torch.stack([data[i] for i in range(3)])[:, 0], torch.from_numpy(images))


def test_a_scored_folder_reports_what_it_skipped(tmp_path):
    cfg = config_from_dict({"data": {"dataset": "folder", "root": str(tmp_path / "data"), "num_workers": 0},
                            "model": {**tiny_model("glow", (1, 8, 8)), "n_bits": 5}, "train": {"batch_size": 8}})
    write_image_folder(tmp_path / "data", list(digits()[:12]), split_dirs=True, n_test=4)
    ckpt = tmp_path / "c.pt"
    save_checkpoint(ckpt, {"config": cfg.to_dict(), "model": build_model(cfg).state_dict()})
    folder = tmp_path / "scored"
    folder.mkdir()
    Image.fromarray(digits()[20]).save(folder / "a.gif")
    Image.fromarray(digits()[20]).save(folder / "b.png")
    (folder / "notes.txt").write_text("not an image")
    result = runner.invoke(app, ["score", "--ckpt", str(ckpt), "--device", "cpu", "--folder", str(folder),
                                 "--json", "-"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["images"]
    assert [Path(r["image"]).name for r in rows] == ["a.gif", "b.png"]
    assert rows[0]["png_bits_per_dim"] == rows[1]["png_bits_per_dim"]  # the same pixels, the same code length
    assert "1 file(s) that are not images skipped" in result.stderr and "notes.txt" in result.stderr


def _labelled(root: Path, **data) -> object:
    return config_from_dict({"data": {"dataset": "folder", "root": str(root), "labels": True, **data},
                             "model": {**tiny_model("glow", (1, 8, 8)), "num_classes": 2}})


def test_a_class_folder_named_null_is_refused(tmp_path):
    for split in ("train", "test"):
        write_classes(tmp_path / split, {"cat": digits()[:3], "null": digits()[3:6]})
    with pytest.raises(DataError, match="class folder named 'null', the name of the null class.*rename"):
        load_split(_labelled(tmp_path), "train")


def test_a_training_split_without_an_image_of_a_class_is_refused(tmp_path):
    write_classes(tmp_path, {"many": digits()[:20]})
    rare = tmp_path / "rare"
    rare.mkdir()
    files = sorted(tmp_path.rglob("*.png"))
    # One image of "rare", named so that the held-out split (the lowest path hashes) takes it.
    lowest = min(_hash_key(p, tmp_path) for p in files)
    name = next(f"{i}.png" for i in range(10_000) if _hash_key(rare / f"{i}.png", tmp_path) < lowest)
    Image.fromarray(np.asarray(digits()[30])).save(rare / name)
    cfg = _labelled(tmp_path, test_fraction=0.1)
    assert set(load_split(cfg, "test").labels.tolist()) == {0, 1}
    with pytest.raises(DataError, match="class folder .*rare has no image in the training split"):
        load_split(cfg, "train")

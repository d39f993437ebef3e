"""Every verb's outputs, checked up front by one function (nfgen.core.outputs.check_outputs): a refusal
writes nothing, two outputs never name one file, ``-`` is standard output everywhere, and an
output that cannot be written is refused before the work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from archs import tiny_model
from PIL import Image
from typer.testing import CliRunner

from nfgen.cli.app import app
from nfgen.core.outputs import OutputError, check_outputs

runner = CliRunner()


def nfgen(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def one_line(result, code: int, message: str) -> None:
    assert result.exit_code == code, result.output
    assert message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """A conditional and an unconditional tiny Glow, trained two steps on 8x8 images in three
    class folders."""
    tmp = tmp_path_factory.mktemp("outputs")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for name in ("a", "b", "c"):
            (tmp / "data" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp / "data" / split / name / f"{i}.png")
    out = {}
    for kind, extra in (("plain", {}), ("cond", {"num_classes": 3})):
        cfg = {"data": {"dataset": "folder", "root": str(tmp / "data"), "num_workers": 0, "labels": bool(extra)},
               "model": {**tiny_model("glow", (1, 8, 8)), "n_bits": 5, **extra},
               "train": {"device": "cpu", "batch_size": 8, "max_steps": 2, "eval_batches": 1, "sample_count": 4}}
        (tmp / f"{kind}.yaml").write_text(yaml.safe_dump(cfg))
        assert nfgen("train", "--config", tmp / f"{kind}.yaml", "--run-dir", tmp / kind, "--no-progress").exit_code == 0
        out[kind] = tmp / kind / "checkpoints" / "last.pt"
    return out


def files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_the_rules(tmp_path):
    existing = tmp_path / "exists.json"
    existing.write_text("keep")
    with pytest.raises(OutputError, match="--csv and --json both write"):
        check_outputs({"--csv": tmp_path / "f", "--json": tmp_path / "." / "f"}, False)
    with pytest.raises(OutputError, match="--csv and --json cannot both be standard output"):
        check_outputs({"--csv": Path("-"), "--json": Path("-")}, False)
    with pytest.raises(OutputError, match="--out is a picture and cannot go to standard output"):
        check_outputs({"--out": Path("-")}, False, pictures=("--out",))
    with pytest.raises(OutputError, match="exists; pass --overwrite"):
        check_outputs({"--json": existing}, False)
    check_outputs({"--json": existing}, True)
    with pytest.raises(OutputError, match="is a folder: give a file name"):
        check_outputs({"--json": tmp_path}, True)
    with pytest.raises(OutputError, match="exists.json is a file, not a folder"):
        check_outputs({"--json": existing / "deeper" / "x.json"}, False)
    check_outputs({"--json": tmp_path / "new" / "deeper" / "x.json", "--csv": Path("-")}, False)
    assert existing.read_text() == "keep" and files_in(tmp_path) == {"exists.json"}


def test_sample_each_refuses_before_writing_anything(ckpts, tmp_path):
    each = tmp_path / "each"
    each.mkdir()
    (each / "00003.png").write_bytes(b"keep me")
    result = nfgen("sample", "--ckpt", ckpts["plain"], "--n", "6", "--out", tmp_path / "grid.png", "--each", each)
    one_line(result, 1, "00003.png exists; pass --overwrite")
    assert files_in(tmp_path) == {"each", "each/00003.png"} and (each / "00003.png").read_bytes() == b"keep me"
    result = nfgen("sample", "--ckpt", ckpts["plain"], "--n", "6", "--out", each / "00000.png", "--each", each)
    one_line(result, 1, "--out and --each both write")
    result = nfgen("sample", "--ckpt", ckpts["plain"], "--n", "6", "--out", tmp_path / "g.png", "--each", each / "00003.png")
    one_line(result, 1, "is a file, not a folder")
    result = nfgen("sample", "--ckpt", ckpts["plain"], "--n", "6", "--out", tmp_path / "grid.png", "--each", tmp_path / "new")
    assert result.exit_code == 0, result.output
    assert files_in(tmp_path / "new") == {f"{i:05d}.png" for i in range(6)} and (tmp_path / "grid.png").exists()


def test_score_refuses_two_outputs_in_one_file(ckpts, tmp_path):
    same = tmp_path / "scores"
    result = nfgen("score", "--ckpt", ckpts["plain"], "--csv", same, "--json", same)
    one_line(result, 1, "--csv and --json both write")
    assert not same.exists()
    result = nfgen("score", "--ckpt", ckpts["plain"], "--csv", "-", "--json", "-")
    one_line(result, 1, "cannot both be standard output")


def test_eval_bpd_json_dash_is_standard_output(ckpts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["eval-bpd", "--ckpt", str(ckpts["plain"]), "--json", "-"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["split"] == "test"  # the report line went to stderr
    assert "test bits/dim" in result.stderr
    assert not (tmp_path / "-").exists()


def test_classify_json_dash_and_clashing_outputs(ckpts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["classify", "--ckpt", str(ckpts["cond"]), "--json", "-", "--out", "c.png"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["class_names"] == ["a", "b", "c"]
    assert files_in(tmp_path) == {"c.png"}
    one_line(runner.invoke(app, ["classify", "--ckpt", str(ckpts["cond"]), "--json", "x.png", "--out", "x.png"]),
             1, "--out and --json both write")


def test_classify_writes_its_numbers_before_a_degraded_picture(ckpts, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)  # the bound on pictures follows Pillow's
    result = runner.invoke(app, ["classify", "--ckpt", str(ckpts["cond"]), "--json", str(tmp_path / "c.json"),
                                 "--out", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    assert "note: the confusion matrix of 3 classes is drawn at" in result.stderr
    assert json.loads((tmp_path / "c.json").read_text())["n_images"] == 12
    with Image.open(tmp_path / "c.png") as img:
        assert img.width * img.height <= 40_000


@pytest.mark.parametrize("verb", [
    ["sample", "--out", "{bad}/s.png"],
    ["sample", "--each", "{bad}/each"],
    ["interpolate", "--pairs", "1", "--out", "{bad}/i.png"],
    ["eval-bpd", "--json", "{bad}/e.json"],
    ["score", "--csv", "{bad}/s.csv"],
    ["score", "--json", "{bad}/s.json"],
    ["score", "--ood", "{data}", "--hist", "{bad}/h.png"],
    ["classify", "--out", "{bad}/c.png"],
    ["classify", "--json", "{bad}/c.json"],
])
def test_every_verb_refuses_an_output_it_cannot_write_before_any_work(ckpts, tmp_path, verb):
    bad = tmp_path / "a_file"
    bad.write_text("x")
    args = [a.format(bad=bad, data=ckpts["plain"].parents[2] / "data" / "test" / "a") for a in verb]
    ckpt = ckpts["cond" if verb[0] == "classify" else "plain"]
    result = runner.invoke(app, [args[0], "--ckpt", str(ckpt), *args[1:]])
    one_line(result, 1, "a_file is a file, not a folder")
    assert files_in(tmp_path) == {"a_file"}

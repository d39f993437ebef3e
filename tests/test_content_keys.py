"""Class A of the second red team: what nfgen keeps between runs is keyed by the content that
produced it (``nfgen.datasets.fingerprint``), never by a name. The test changes the content under an
unchanged name and shows the kept value is not used."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from archs import tiny_model
from datasets import digits, write_image_folder
from PIL import Image
from typer.testing import CliRunner

from nfgen.cli.app import app
from nfgen.cli.support import load_trained
from nfgen.config.schema import config_from_dict
from nfgen.datasets.fingerprint import Fingerprint, read_hashed
from nfgen.model.image_flow import build_model
from nfgen.tasks.score import STATS_SUFFIX, measure, training_stats
from nfgen.training.checkpoint import LOADED_SHA256, load_checkpoint, save_checkpoint

runner = CliRunner()


def _checkpoint(path: Path, root: Path, seed: int) -> Path:
    """A Glow of random weights (seeded) and its config: what score needs of a checkpoint."""
    cfg = config_from_dict({"name": "keys", "data": {"dataset": "folder", "root": str(root), "num_workers": 0},
                            "model": {**tiny_model("glow", (1, 8, 8)), "n_bits": 5},
                            "train": {"device": "cpu", "batch_size": 16}})
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(path, {"config": cfg.to_dict(), "model": model.state_dict()})
    return path


@pytest.fixture
def run(tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    write_image_folder(root, list(digits()[:40]), split_dirs=True, n_test=8)
    return _checkpoint(tmp_path / "run" / "last.pt", root, 0), root


def _score(ckpt: Path) -> dict:
    result = runner.invoke(app, ["score", "--ckpt", str(ckpt), "--device", "cpu", "--split", "test", "--json", "-"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _stored(ckpt: Path) -> dict:
    return json.loads(ckpt.with_name(ckpt.name + STATS_SUFFIX).read_text())


def test_the_checkpoint_hash_is_of_the_bytes_loaded(run):
    ckpt, _ = run
    assert load_checkpoint(ckpt)[LOADED_SHA256] == read_hashed(ckpt)[1]
    # ... and is never written into a checkpoint saved from a loaded state.
    again = ckpt.with_name("again.pt")
    save_checkpoint(again, load_checkpoint(ckpt))
    assert LOADED_SHA256 not in torch.load(again, weights_only=True)


@pytest.mark.parametrize("change", ["invert", "delete", "relabel-order"])
def test_training_images_changed_under_the_same_names_are_measured_again(run, change):
    ckpt, root = run
    first = _score(ckpt)
    stats = ckpt.with_name(ckpt.name + STATS_SUFFIX)
    kept = stats.read_text()
    assert _stored(ckpt)["n_images"] == 32
    files = sorted((root / "train").glob("*.png"))
    if change == "invert":  # the same files, names and count; other pixels
        for f in files:
            with Image.open(f) as im:
                pixels = np.asarray(im)
            Image.fromarray(255 - pixels).save(f)
    elif change == "delete":
        for f in files[:12]:
            f.unlink()
    else:  # the same images under each other's names: the same set, another order
        data = [f.read_bytes() for f in files]
        for f, b in zip(files, reversed(data)):
            f.write_bytes(b)
    second = _score(ckpt)
    assert stats.read_text() != kept  # measured again and stored under the new content
    stored = _stored(ckpt)
    if change == "delete":
        assert stored["n_images"] == 20
    if change != "relabel-order":  # other images: other statistics (a reordering keeps the mean)
        assert abs(second["train_mean_bpd"] - first["train_mean_bpd"]) > 1e-3
    assert stored["mean_bpd"] == pytest.approx(second["train_mean_bpd"])
    # Unchanged content: the stored statistics are used (the file is not rewritten).
    mtime = stats.stat().st_mtime_ns
    assert _score(ckpt)["train_mean_bpd"] == pytest.approx(second["train_mean_bpd"])
    assert stats.stat().st_mtime_ns == mtime


def test_a_checkpoint_replaced_during_a_score_run_does_not_inherit_its_statistics(run, tmp_path):
    """Training replaces last.pt while score runs: the statistics are the loaded model's, stored
    under the loaded bytes' hash, so the new file's first score measures it afresh."""
    ckpt, _ = run
    newer = _checkpoint(tmp_path / "newer.pt", run[1], 1)
    t = load_trained(ckpt, None, "cpu")  # score's loader ...
    ckpt.write_bytes(newer.read_bytes())  # ... then training writes the next last.pt
    train = t.split("train")
    old_stats = training_stats(t.model, train, ckpt, t.sha256, batch_size=16)
    assert _stored(ckpt)["key"]["checkpoint_sha256"] == t.sha256 != read_hashed(ckpt)[1]

    fresh = load_trained(ckpt, None, "cpu")
    torch.manual_seed(0)
    truth = measure(fresh.model, train, "train", (), batch_size=16).bpd
    new_stats = training_stats(fresh.model, train, ckpt, fresh.sha256, batch_size=16)
    np.testing.assert_allclose(new_stats.bpd, truth)
    assert abs(new_stats.mean - old_stats.mean) > 1e-3  # two models, two sets of statistics
    assert _score(ckpt)["train_mean_bpd"] == pytest.approx(new_stats.mean)


def test_fingerprints_follow_content_not_batching():
    images = torch.from_numpy(digits()[:10]).unsqueeze(1)
    labels = torch.arange(10) % 3

    def of(batch_size: int, x: torch.Tensor, y: torch.Tensor | None) -> str:
        f = Fingerprint()
        for i in range(0, len(x), batch_size):
            f.batch(x[i:i + batch_size] if y is None else [x[i:i + batch_size], y[i:i + batch_size]])
        return f.hexdigest()

    assert of(3, images, None) == of(10, images, None) == of(1, images, None)
    changed = images.clone()
    changed[4, 0, 3, 3] ^= 1
    assert of(3, changed, None) != of(3, images, None)
    assert of(3, images, labels) != of(3, images, None) != of(3, images[:9], None)
    assert of(3, images, labels) != of(3, images, labels.flip(0))


def test_torchvisions_old_mnist_cache_is_used_only_while_it_holds_the_raw_files_digits(tmp_path):
    """torchvision reads MNIST/processed/*.pt in place of the raw files, by name: new raw files
    under an old cache are refused, not shadowed."""
    from datasets import write_mnist

    from nfgen.datasets.splits import load_split
    from nfgen.errors import DataError

    train, test = write_mnist(tmp_path, 12, 6)
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir()
    for name, part in (("training.pt", train), ("test.pt", test)):
        torch.save((torch.from_numpy(part), torch.arange(len(part)) % 10), processed / name)
    cfg = config_from_dict({"data": {"dataset": "mnist", "root": str(tmp_path), "download": False},
                            "model": {**tiny_model("glow", (1, 28, 28)), "glow": {"levels": 2, "steps": 1, "hidden": 4}}})
    assert torch.equal(load_split(cfg, "train")[3], torch.from_numpy(train[3])[None])
    write_mnist(tmp_path, 12, 6, images=255 - np.concatenate([train, test]))  # new digits, the same names
    with pytest.raises(DataError, match="old MNIST cache.*holds other images"):
        load_split(cfg, "train")

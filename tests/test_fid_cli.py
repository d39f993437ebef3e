"""``nfgen eval-fid`` end to end: a tiny TorchScript feature extractor (with logits) on 8x8
digits, a folder of images and a trained checkpoint as the generated set, the JSON record, the
cache, sampling that is ``nfgen sample``'s, non-finite samples counted, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from archs import tiny_model
from datasets import digits, write_image_folder
from typer.testing import CliRunner

from nfgen.cli.app import app
from nfgen.tasks.fidelity import sets
from nfgen.tasks.fidelity.features import Features, FeaturesError, torchscript_features
from nfgen.training.checkpoint import model_from_checkpoint

pytest.importorskip("torch_fidelity")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # deprecated in torch >= 2.10; still works
runner = CliRunner()


class TinyFeatures(torch.nn.Module):
    """[B, 1, 8, 8] floats -> 6 features (pooled pixels through a fixed map); logits: 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.map = torch.nn.Linear(16, 6)
        self.head = torch.nn.Linear(6, 3)
        with torch.no_grad():
            self.map.weight.copy_(torch.randn(6, 16, generator=g))
            self.head.weight.copy_(torch.randn(3, 6, generator=g) * 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.map(torch.nn.functional.avg_pool2d(x, 2).flatten(1)))

    @torch.jit.export
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward(x))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("fid")
    images = digits()[:120]
    write_image_folder(tmp / "data", images, split_dirs=True, n_test=40)
    write_image_folder(tmp / "gen", images[:80], split_dirs=False)  # the training images themselves
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # TorchScript features are a float32 module, as a user's would be
    torch.jit.save(torch.jit.script(TinyFeatures()), str(tmp / "feats.pt"))
    torch.set_default_dtype(default)
    cfg = {"name": "tiny", "data": {"dataset": "folder", "root": str(tmp / "data"), "num_workers": 0},
           "model": {**tiny_model("glow", [1, 8, 8]), "n_bits": 5},
           "train": {"device": "cpu", "batch_size": 8, "max_steps": 2, "warmup_steps": 1, "log_every": 100,
                     "eval_every": 100, "sample_every": 100, "checkpoint_every": 100, "eval_batches": 1}}
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["train", "--config", str(tmp / "tiny.yaml"), "--run-dir", str(tmp / "run"),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    return {"tmp": tmp, "ckpt": tmp / "run" / "checkpoints" / "last.pt", "config": tmp / "tiny.yaml",
            "features": tmp / "feats.pt"}


def nfgen(*args: object):
    return runner.invoke(app, ["eval-fid", *[str(a) for a in args]])


def one_line_error(result, message: str) -> None:
    assert result.exit_code != 0, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_a_folder_of_the_reference_images_scores_as_identical(setup: dict):
    t = setup["tmp"]
    out = t / "same.json"
    r = nfgen("--gen", t / "gen", "--config", setup["config"], "--ref", "train", "--features", setup["features"],
              "--cache-dir", t / "cache", "--json", out, "--kid-subset-size", 50)
    assert r.exit_code == 0, r.output
    rec = json.loads(out.read_text())
    assert abs(rec["fid"]) < 1e-6 and rec["precision"] == 1.0 and rec["recall"] == 1.0
    assert rec["reference"]["n_images"] == 80 and rec["generated"]["n_images"] == 80
    assert rec["generated"]["n_nonfinite"] == 0 and rec["reference"]["cache"] == "miss"
    assert rec["features"]["kind"] == "torchscript" and rec["features"]["has_logits"]
    assert rec["kid"]["subset_size"] == 50 and rec["feature_dim"] == 6
    c = rec["classifier"]
    assert c["generated"]["read_share"] == c["reference"]["read_share"]  # the same images, read the same
    assert "FID" in r.output and "classifier-read share" in r.output
    # Again: the reference comes from the cache; the numbers do not move.
    r = nfgen("--gen", t / "gen", "--config", setup["config"], "--features", setup["features"],
              "--cache-dir", t / "cache", "--json", "-", "--kid-subset-size", 50)
    assert r.exit_code == 0, r.output
    again = json.loads(r.stdout[r.stdout.index("{"):])
    assert again["reference"]["cache"] == "hit" and again["fid"] == rec["fid"] and again["kid"] == rec["kid"]


def test_a_checkpoint_is_sampled_and_every_option_recorded(setup: dict):
    t = setup["tmp"]
    out = t / "ckpt.json"
    r = nfgen("--ckpt", setup["ckpt"], "--ref", "test", "--features", setup["features"], "--n", 30,
              "--batch-size", 16, "--temperature", 0.7, "--seed", 5, "--no-cache", "--json", out)
    assert r.exit_code == 0, r.output
    rec = json.loads(out.read_text())
    s = rec["generated"]["sampling"]
    assert (s["temperature"], s["seed"], s["batch_size"], s["guidance"], s["denoise"]) == (0.7, 5, 16, 0.0, False)
    assert rec["generated"]["n_requested"] == 30 and rec["generated"]["n_images"] == 30
    assert rec["reference"]["set"] == "test" and rec["reference"]["n_images"] == 40
    assert rec["reference"]["cache"] == "off" and rec["fid"] > 0


def test_samples_are_those_of_nfgen_sample(setup: dict):
    """The generated set is ``ImageFlow.sample`` with one generator seeded by --seed: the first
    batch's images are exactly ``nfgen sample --seed``'s."""
    model, _, _ = model_from_checkpoint(setup["ckpt"], device=torch.device("cpu"))
    pixels = Features("torchscript", "pixels", "0" * 64, lambda x: x.flatten(1).float())
    got = sets.from_model(model, pixels, 12, 12, 0.8, seed=3, denoise=False)
    want = model.sample(12, 0.8, torch.Generator().manual_seed(3))
    assert torch.equal(got.features, want.flatten(1).double())


def test_non_finite_samples_are_counted_not_hidden():
    class Broken(torch.nn.Module):
        """Draws whose 2nd and 5th images are NaN."""

        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def sample_continuous(self, n, temperature, generator, denoise, labels, guidance, annealed):
            u = torch.rand(n, 1, 4, 4, generator=generator)
            u[[1, 4][: n]] = float("nan")
            return u

        def _to_images(self, u):
            return (u * 255).to(torch.uint8)

    pixels = Features("torchscript", "pixels", "0" * 64, lambda x: x.flatten(1).float())
    got = sets.from_model(Broken(), pixels, 8, 8, requested=torch.arange(8))
    assert got.n_nonfinite == 2 and len(got.features) == 6 and got.n_requested == 8
    assert got.requested.tolist() == [0, 2, 3, 5, 6, 7]  # each kept sample keeps its label


def test_torchscript_extractor_checks(setup: dict, tmp_path: Path):
    f = torchscript_features(setup["features"], torch.device("cpu"))
    assert f.logits is not None and len(f.sha256) == 64
    wrong = f.extract
    with pytest.raises(FeaturesError, match="must take the data's own channels and size"):
        wrong(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    r = nfgen("--gen", setup["tmp"] / "gen", "--config", setup["config"], "--features", tmp_path / "junk.pt")
    one_line_error(r, "is not a TorchScript module")


def test_one_line_errors(setup: dict):
    t = setup["tmp"]
    one_line_error(nfgen("--gen", t / "gen"), "with --gen, give --config")
    one_line_error(nfgen("--config", setup["config"]), "give exactly one of --ckpt")
    one_line_error(nfgen("--gen", t / "gen", "--config", setup["config"], "--inception-weights", t / "none.pth"),
                   "download https://")
    one_line_error(nfgen("--ckpt", setup["ckpt"], "--features", setup["features"], "--guidance", 1),
                   "needs a class-conditional model")
    one_line_error(nfgen("--ckpt", setup["ckpt"], "--features", setup["features"], "--threshold", 1.5),
                   "--threshold must be")


def test_fid_during_training_is_logged_and_changes_nothing_else(setup: dict, tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    base = yaml.safe_load(setup["config"].read_text())
    base["train"].update(max_steps=4, log_every=1)
    runs = {}
    for name, extra in (("plain", {}), ("fid", {"fid_every": 2, "fid_samples": 20,
                                                 "fid_features": str(setup["features"])})):
        cfg = {**base, "train": {**base["train"], **extra}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        r = runner.invoke(app, ["train", "--config", str(tmp_path / f"{name}.yaml"), "--run-dir",
                                str(tmp_path / name), "--no-progress"])
        assert r.exit_code == 0, r.output
        runs[name] = torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)
    acc = EventAccumulator(str(tmp_path / "fid" / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("test/fid")] == [2, 4]
    assert all(e.value > 0 for e in acc.Scalars("test/fid"))
    assert "test/classifier_read_share" in acc.Tags()["scalars"]
    for key, value in runs["plain"]["model"].items():  # sampling for FID never touched the training RNG
        assert torch.equal(value, runs["fid"]["model"][key]), key
    bad = {**base, "train": {**base["train"], "fid_every": 2, "fid_features": str(tmp_path / "none.pt")}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    r = runner.invoke(app, ["train", "--config", str(tmp_path / "bad.yaml"), "--run-dir", str(tmp_path / "bad"),
                            "--no-progress"])
    one_line_error(r, "no such file")


def test_a_class_conditional_checkpoint_with_labels_and_guidance(setup: dict, tmp_path: Path):
    from PIL import Image

    images = digits()[:90]
    for i, image in enumerate(images):
        folder = tmp_path / "data" / ("test" if i >= 60 else "train") / "abc"[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    cfg = yaml.safe_load(setup["config"].read_text())
    cfg["data"].update(root=str(tmp_path / "data"), labels=True)
    cfg["model"].update(num_classes=3, label_dropout=0.2)
    (tmp_path / "cond.yaml").write_text(yaml.safe_dump(cfg))
    r = runner.invoke(app, ["train", "--config", str(tmp_path / "cond.yaml"), "--run-dir", str(tmp_path / "run"),
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    r = nfgen("--ckpt", tmp_path / "run" / "checkpoints" / "last.pt", "--ref", "test", "--features", setup["features"],
              "--n", 12, "--batch-size", 5, "--label", "b", "--label", "null", "--guidance", 1.5, "--no-cache",
              "--json", "-")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout[r.stdout.index("{"):])
    s = rec["generated"]["sampling"]
    assert s["labels"] == ["b", "null"] and s["guidance"] == 1.5 and not s["annealed"]
    g = rec["classifier"]["generated"]
    assert g["n_images"] == 12 and g["n_labelled"] == 6  # the null-class half asks for no class
    assert 0 <= g["read_as_requested_share"] <= 1
    one_line_error(nfgen("--ckpt", tmp_path / "run" / "checkpoints" / "last.pt", "--features", setup["features"],
                         "--label", "zebra"), "is not a class of this model")

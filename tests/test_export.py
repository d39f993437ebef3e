"""nfgen.load, nfgen export (safetensors + config.json) and its Hub upload's layout, and
sampling in batches."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import digits, write_image_folder
from PIL import Image
from test_reliability import cfg_dict
from typer.testing import CliRunner

import nfgen
from nfgen.cli.app import app
from nfgen.config.schema import config_from_dict
from nfgen.tasks.generate import sample_in_batches
from nfgen.training.checkpoint import CheckpointError, model_from_checkpoint
from nfgen.training.export import CONFIG, FILES, WEIGHTS, export_model, push_to_hub
from nfgen.training.run import train

runner = CliRunner()


def conditional_folder(root: Path) -> Path:
    """Two classes of digits in class subfolders, a train and a test split."""
    images = digits(8)
    for split, part in (("train", slice(0, 24)), ("test", slice(24, 32))):
        for name, offset in (("zero", 0), ("one", 100)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i, image in enumerate(images[offset:][part]):
                Image.fromarray(image).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """last.pt of a 3-step run with an EMA (float32: what a user's run writes)."""
    tmp = tmp_path_factory.mktemp("export")
    write_image_folder(tmp / "data", list(digits(8)[:40]), split_dirs=True, n_test=8)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        train(config_from_dict(cfg_dict(tmp / "data", max_steps=3, ema_decay=0.9)), tmp / "run", progress=False)
    finally:
        torch.set_default_dtype(previous)
    return tmp / "run" / "checkpoints" / "last.pt"


def draw(model, seed: int = 0, n: int = 6, **kwargs) -> torch.Tensor:
    return model.sample(n, 0.8, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_load_a_checkpoint_gives_the_ema_model_ready_to_use(trained):
    model = nfgen.load(trained)
    reference, cfg, state = model_from_checkpoint(trained)  # the EMA weights, as the verbs use
    assert not model.training and model.config == cfg and model.class_names is None
    assert all(torch.equal(a, state["ema"][k]) for k, a in model.state_dict().items())
    assert not all(torch.equal(state["ema"][k], state["model"][k]) for k in state["model"])  # an EMA that differs
    assert torch.equal(draw(model), draw(reference))
    x = draw(model)
    assert model.bits_per_dim(x).shape == (6,)
    live = nfgen.load(trained, ema=False)
    assert all(torch.equal(a, state["model"][k]) for k, a in live.state_dict().items())


def test_an_export_samples_bit_for_bit_what_its_checkpoint_does(trained, tmp_path):
    out = tmp_path / "export"
    files = export_model(trained, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES) == sorted(p.name for p in files)
    record = json.loads((out / CONFIG).read_text())
    assert record["nfgen_export"] == 1 and record["weights"] == "ema" and record["step"] == 3
    assert record["class_names"] is None and record["config"]["train"]["max_steps"] == 3
    exported, from_ckpt = nfgen.load(out), nfgen.load(trained)
    assert not exported.training and exported.config == from_ckpt.config
    for seed in (0, 7):
        assert torch.equal(draw(exported, seed), draw(from_ckpt, seed))
    x = draw(from_ckpt)
    torch.manual_seed(1)
    a = exported.bits_per_dim(x)
    torch.manual_seed(1)
    assert torch.equal(a, from_ckpt.bits_per_dim(x))
    assert (out / WEIGHTS).stat().st_size < trained.stat().st_size  # no optimizer state, one set of weights


def test_export_refuses_to_overwrite_and_explains_a_bad_folder(trained, tmp_path):
    out = tmp_path / "export"
    export_model(trained, out)
    before = (out / WEIGHTS).read_bytes()
    result = runner.invoke(app, ["export", "--ckpt", str(trained), "--out", str(out)])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "already holds model.safetensors, config.json, README.md; pass --overwrite" in result.output
    result = runner.invoke(app, ["export", "--ckpt", str(trained), "--out", str(out), "--overwrite", "--no-ema"])
    assert result.exit_code == 0 and "model.safetensors" in result.output, result.output
    assert (out / WEIGHTS).read_bytes() != before  # the live weights now
    assert json.loads((out / CONFIG).read_text())["weights"] == "model"
    (out / WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="does not fit the model its config describes"):
        nfgen.load(out)
    (out / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="is not an nfgen export"):
        nfgen.load(out)
    newer = tmp_path / "newer"
    export_model(trained, newer)
    record = json.loads((newer / CONFIG).read_text())
    (newer / CONFIG).write_text(json.dumps({**record, "nfgen_export": 99}))
    with pytest.raises(CheckpointError, match="exported by a newer nfgen"):
        nfgen.load(newer)


def test_a_conditional_export_keeps_its_class_names(tmp_path):
    data = conditional_folder(tmp_path / "data")
    d = cfg_dict(data, max_steps=2)
    d["model"] = {**d["model"], "num_classes": 2, "class_dim": 4}
    d["data"] = {**d["data"], "labels": True}
    train(config_from_dict(d), tmp_path / "run", progress=False)
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    export_model(ckpt, tmp_path / "export")
    model = nfgen.load(tmp_path / "export")
    assert model.class_names == ["one", "zero"] == nfgen.load(ckpt).class_names
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    assert torch.equal(draw(model, labels=labels), draw(nfgen.load(ckpt), labels=labels))


class FakeHub:
    """An ``HfApi`` stand-in that 'uploads' into a local folder."""

    def __init__(self, root: Path) -> None:
        self.root, self.calls = root, []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def upload_folder(self, folder_path, repo_id, allow_patterns, **kwargs):
        self.calls.append(("upload_folder", {"repo_id": repo_id, "allow_patterns": allow_patterns}))
        target = self.root / repo_id
        target.mkdir(parents=True)
        for name in allow_patterns:
            shutil.copy(Path(folder_path) / name, target / name)


def test_push_to_hub_uploads_a_folder_that_loads(trained, tmp_path):
    out = tmp_path / "export"
    export_model(trained, out)
    (out / "notes.txt").write_text("mine, not the model's")
    hub = FakeHub(tmp_path / "hub")
    push_to_hub(out, "me/digits-glow", hub)
    assert hub.calls[0] == ("create_repo", {"repo_id": "me/digits-glow", "repo_type": "model", "private": False,
                                            "exist_ok": True})
    uploaded = tmp_path / "hub" / "me/digits-glow"
    assert sorted(p.name for p in uploaded.iterdir()) == sorted(FILES)  # the export's files, nothing else
    assert "library_name: nfgen" in (uploaded / "README.md").read_text()
    assert torch.equal(draw(nfgen.load(uploaded)), draw(nfgen.load(trained)))


def test_push_to_hub_without_the_extra_fails_before_writing(trained, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    result = runner.invoke(app, ["export", "--ckpt", str(trained), "--out", str(tmp_path / "e"),
                                 "--push-to-hub", "me/x"])
    assert result.exit_code == 1 and "pip install 'nfgen[hub]'" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "e").exists()


# ------------------------------------------------------------------ sampling in batches
def test_samples_in_batches_are_todays_where_one_batch_covers_all(trained):
    model = nfgen.load(trained)

    def batched(batch_size: int, seed: int = 3) -> torch.Tensor:
        return sample_in_batches(model, 10, batch_size, 0.8, torch.Generator().manual_seed(seed))

    one_call = model.sample(10, 0.8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(batched(10), one_call) and torch.equal(batched(64), one_call)
    assert torch.equal(batched(4), batched(4))  # smaller batches: reproducible by seed and batch size
    assert batched(4).shape == one_call.shape and not torch.equal(batched(4), batched(4, seed=4))


def test_sample_verb_batch_size_keeps_the_default_grid(trained, tmp_path):
    paths = {}
    for name, extra in (("default", []), ("covering", ["--batch-size", "64"]), ("small", ["--batch-size", "5"])):
        paths[name] = tmp_path / f"{name}.png"
        result = runner.invoke(app, ["sample", "--ckpt", str(trained), "--n", "16", "--out", str(paths[name]), *extra])
        assert result.exit_code == 0, result.output
    pixels = {k: Image.open(p).tobytes() for k, p in paths.items()}
    assert pixels["default"] == pixels["covering"] and pixels["small"] != pixels["default"]
    bad = runner.invoke(app, ["sample", "--ckpt", str(trained), "--batch-size", "0", "--out", str(tmp_path / "b.png")])
    assert bad.exit_code == 2 and "--batch-size must be in 1..65536" in bad.output


def test_a_sample_progress_bar_is_not_written_to_a_file(trained, tmp_path):
    log = tmp_path / "out.log"
    with log.open("w") as f:
        done = subprocess.run([sys.executable, "-m", "nfgen", "sample", "--ckpt", str(trained), "--n", "12",
                               "--batch-size", "4", "--out", str(tmp_path / "s.png")], stdout=f,
                              stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text()
    assert done.returncode == 0 and "\r" not in text and text.splitlines() == [
        f"wrote 12 samples at temperature 1 to {tmp_path / 's.png'}"]


def test_interpolate_in_batches_draws_the_same_rows(trained, tmp_path):
    outs = []
    for batch in ("1", "64"):
        outs.append(tmp_path / f"i{batch}.png")
        result = runner.invoke(app, ["interpolate", "--ckpt", str(trained), "--pairs", "3", "--steps", "3",
                                     "--batch-size", batch, "--out", str(outs[-1])])
        assert result.exit_code == 0, result.output
    assert Image.open(outs[0]).tobytes() == Image.open(outs[1]).tobytes()


"""End to end through the command line, on tiny data sets in the real on-disk formats."""

import json
import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from archs import ARCHS, tiny_model
from datasets import digits, skip_cifar10_md5, write_cifar10, write_image_folder, write_mnist
from PIL import Image
from typer.testing import CliRunner
from verbs import checkpoint_verbs, verbs

from nfgen.cli.app import app

runner = CliRunner()


def nfgen(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def tiny_config(tmp_path: Path, dataset: str, shape, root: Path, **train) -> Path:
    cfg = {
        "name": "tiny",
        "data": {"dataset": dataset, "root": str(root), "download": False, "num_workers": 0},
        "model": {"arch": "glow", "image_shape": list(shape), "glow": {"levels": 2, "steps": 1, "hidden": 8}},
        "train": {"device": "cpu", "batch_size": 8, "max_steps": 4, "warmup_steps": 2,
                  "log_every": 1, "eval_every": 2, "sample_every": 2, "sample_count": 4,
                  "checkpoint_every": 1, "eval_batches": 1, **train},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def mnist_run(tmp_path):
    write_mnist(tmp_path / "data", n_train=32, n_test=16, images=digits(28)[:48])
    config = tiny_config(tmp_path, "mnist", (1, 28, 28), tmp_path / "data")
    run = tmp_path / "run"
    result = nfgen("train", "--config", config, "--run-dir", run, "--no-progress")
    assert result.exit_code == 0, result.output
    return config, run


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_train_writes_the_run_folder(mnist_run):
    _, run = mnist_run
    assert (run / "config.yaml").is_file()
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"last.pt", "best.pt"}
    assert list((run / "tb").glob("events.out.tfevents.*"))
    grids = sorted((run / "samples").glob("*.png"))
    assert [g.name for g in grids][:2] == ["step0000002_t0.7.png", "step0000002_t1.png"]
    assert png_size(grids[0]) == (2 * 30 + 2, 2 * 30 + 2)  # 4 samples of 28 px, 2 px padding
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["progress"]["step"] == 4


def test_resume_continues_from_last_checkpoint(mnist_run):
    config, run = mnist_run
    result = nfgen("train", "--config", config, "--run-dir", run, "--resume", "--no-progress",
                   "--set", "train.max_steps=6")
    assert result.exit_code == 0, result.output
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["progress"]["step"] == 6
    # Without a config, --resume reads the run's own config.yaml.
    result = nfgen("train", "--run-dir", run, "--resume", "--no-progress", "--set", "train.max_steps=7")
    assert result.exit_code == 0, result.output


def test_refuses_to_overwrite_a_run(mnist_run):
    config, run = mnist_run
    result = nfgen("train", "--config", config, "--run-dir", run, "--no-progress")
    assert result.exit_code != 0 and "--resume" in result.output and "--overwrite" in result.output
    result = nfgen("train", "--config", config, "--run-dir", run, "--no-progress", "--overwrite")
    assert result.exit_code == 0, result.output


def test_sample_grid_and_single_images(mnist_run, tmp_path):
    _, run = mnist_run
    out = tmp_path / "s.png"
    result = nfgen("sample", "--ckpt", run / "checkpoints/last.pt", "--n", 6, "--nrow", 3,
                   "--temperature", 0.7, "--out", out, "--each", tmp_path / "each")
    assert result.exit_code == 0, result.output
    assert png_size(out) == (3 * 30 + 2, 2 * 30 + 2)
    singles = sorted((tmp_path / "each").glob("*.png"))
    assert len(singles) == 6 and png_size(singles[0]) == (28, 28)
    again = nfgen("sample", "--ckpt", run / "checkpoints/last.pt", "--out", out)
    assert again.exit_code != 0 and "--overwrite" in again.output


def test_eval_bpd_json_agrees_with_printed_figure(mnist_run, tmp_path):
    _, run = mnist_run
    out = tmp_path / "r.json"
    result = nfgen("eval-bpd", "--ckpt", run / "checkpoints/best.pt", "--split", "test",
                   "--samples", 3, "--json", out)
    assert result.exit_code == 0, result.output
    printed = float(re.search(r"test bits/dim: ([0-9.]+)", result.output).group(1))
    record = json.loads(out.read_text())
    assert record["bits_per_dim"] == pytest.approx(printed, abs=5e-5)
    assert record["n_images"] == 16 and record["importance_samples"] == 3
    assert record["split"] == "test" and record["n_bits"] == 8 and record["dequantization"] == "uniform"
    assert record["nats_per_image"] == pytest.approx(printed * 28 * 28 * 0.6931471805599453, rel=1e-3)


def test_interpolate_grid_has_real_endpoints(mnist_run, tmp_path):
    _, run = mnist_run
    out = tmp_path / "i.png"
    result = nfgen("interpolate", "--ckpt", run / "checkpoints/last.pt", "--pairs", 2, "--steps", 5,
                   "--out", out, "--spherical")
    assert result.exit_code == 0, result.output
    assert png_size(out) == (7 * 30 + 2, 2 * 30 + 2)


def test_cifar10_and_image_folder(tmp_path, monkeypatch):
    skip_cifar10_md5(monkeypatch)
    write_cifar10(tmp_path / "cifar", n_per_batch=4, n_test=8)
    config = tiny_config(tmp_path, "cifar10", (3, 32, 32), tmp_path / "cifar", max_steps=2)
    result = nfgen("train", "--config", config, "--run-dir", tmp_path / "c", "--no-progress")
    assert result.exit_code == 0, result.output

    write_image_folder(tmp_path / "folder", list(digits(8)[:40]), split_dirs=True, n_test=8)
    config = tiny_config(tmp_path, "folder", (1, 8, 8), tmp_path / "folder", max_steps=2,
                         sample_temperatures=[0.5])
    result = nfgen("train", "--config", config, "--run-dir", tmp_path / "f", "--no-progress",
                   "--set", "dequantization.kind=variational")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "f" / "samples" / "step0000002_t0.5.png").is_file()


@pytest.mark.parametrize("override,message", [
    ("model.stepz=3", "unknown key 'model.stepz' (did you mean 'model.glow.steps'?)"),
    ("model.glow.stepz=3", "unknown key 'model.glow.stepz' (did you mean 'steps'?)"),
    ("model.glow.steps=0", "model.glow.steps must be in 1..4096, got 0"),
    ("model.glow.levels=3", "not divisible by 2**3 = 8"),
    ("train.lr=fast", "train.lr: expected a number"),
    ("model.glow.coupling=affin", "model.glow.coupling: unknown coupling transform 'affin'"),
    pytest.param("model.blocks=4", "model.blocks does not apply to arch glow", marks=pytest.mark.legacy_keys,
                 id="legacy-flat-key-the-arch-never-used"),
    ("model.realnvp.blocks=4", "model.realnvp is the section of arch realnvp, but model.arch is glow"),
])
def test_bad_config_is_one_line_with_exit_code_2(tmp_path, override, message):
    config = tiny_config(tmp_path, "mnist", (1, 28, 28), tmp_path)
    result = nfgen("train", "--config", config, "--set", override, "--run-dir", tmp_path / "r")
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # nothing started


def test_user_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint" * 10)
    cases = [
        (("train", "--config", tmp_path / "nope.yaml"), "not found; give a path or one of"),
        (("sample", "--ckpt", tmp_path / "nope.pt"), "does not exist"),
        (("sample", "--ckpt", bad), "not a readable nfgen checkpoint"),
        (("eval-bpd", "--ckpt", bad), "not a readable nfgen checkpoint"),
        (("sample", "--ckpt", bad, "--n", 0), "--n must be in 1..65536, got 0"),
    ]
    for args, message in cases:
        result = nfgen(*args)
        assert result.exit_code != 0, args
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_missing_mnist_says_what_to_do(tmp_path):
    config = tiny_config(tmp_path, "mnist", (1, 28, 28), tmp_path / "empty")
    for _ in range(2):  # a start that failed before any checkpoint does not block the next one
        result = nfgen("train", "--config", config, "--run-dir", tmp_path / "r", "--no-progress")
        assert result.exit_code == 1 and "data.download" in result.output


def test_shipped_configs_load_by_bare_name():
    from nfgen.config.schema import load_config, shipped_configs

    names = shipped_configs()
    assert {"glow_cifar.yaml", "realnvp_cifar.yaml", "glow_mnist.yaml", "realnvp_mnist.yaml",
            "quickstart.yaml", "glow_digits.yaml"} <= set(names)
    for name in names:
        load_config(name)
    glow = load_config("glow_cifar")
    assert (glow.model.glow.levels, glow.model.glow.steps, glow.model.glow.hidden) == (3, 32, 512)


def test_python_dash_m_and_help():
    out = subprocess.run([sys.executable, "-m", "nfgen", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    listed = set(re.findall(r"^│ (\S+)", out.stdout, re.MULTILINE))  # Typer's table: one verb a row
    assert len(verbs()) > 10 and listed >= set(verbs()), set(verbs()) - listed


# Every verb that takes a checkpoint, with what each is run with on every architecture's
# checkpoint; the verbs run elsewhere say where, so a new verb must be placed in one of the two.
VERB_ARGS = {
    "sample": ["--n", "4", "--out", "{tmp}/s.png"],
    "interpolate": ["--pairs", "2", "--steps", "3", "--out", "{tmp}/i.png"],
    "eval-bpd": ["--json", "{tmp}/e.json"],
    "check": ["--n", "2"],
    "score": ["--split", "test", "--json", "{tmp}/score.json"],
    "export": ["--out", "{tmp}/export"],
    "eval-fid": ["--ref", "test", "--n", "8", "--features", "{tmp}/pixels.pt", "--no-cache"],
}
RUN_ELSEWHERE = {"classify": "a class-conditional model's verb: test_conditional_cli runs it on every architecture"}
NO_DEVICE_OPTION = {"export"}  # it copies weights, computes nothing


def test_every_checkpoint_verb_is_run_on_every_architecture():
    assert checkpoint_verbs() == set(VERB_ARGS) | set(RUN_ELSEWHERE)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_through_every_verb(tmp_path, arch):
    write_image_folder(tmp_path / "data", list(digits(8)[:40]), split_dirs=True, n_test=8)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "name": arch, "data": {"dataset": "folder", "root": str(tmp_path / "data"), "num_workers": 0},
        "model": {**tiny_model(arch, (1, 8, 8)), "n_bits": 5},
        "train": {"device": "cpu", "batch_size": 8, "max_steps": 3, "warmup_steps": 1, "eval_every": 3,
                  "sample_every": 3, "sample_count": 4, "checkpoint_every": 3, "eval_batches": 1}}))
    run = tmp_path / "run"
    assert nfgen("train", "--config", config, "--run-dir", run, "--no-progress").exit_code == 0
    result = nfgen("train", "--run-dir", run, "--resume", "--set", "train.max_steps=4", "--no-progress")
    assert result.exit_code == 0, result.output
    ckpt = run / "checkpoints" / "last.pt"
    with warnings.catch_warnings():  # TorchScript is deprecated in torch >= 2.10; eval-fid --features loads it
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Flatten()), str(tmp_path / "pixels.pt"))  # eval-fid's features
    for verb, args in VERB_ARGS.items():
        device = [] if verb in NO_DEVICE_OPTION else ["--device", "cpu"]
        result = nfgen(verb, "--ckpt", ckpt, *device, *[a.format(tmp=tmp_path) for a in args])
        assert result.exit_code == 0, (verb, result.output)
    assert png_size(tmp_path / "i.png") == (5 * 10 + 2, 2 * 10 + 2)  # (steps + 2) x pairs cells of 8 + 2
    assert math.isfinite(json.loads((tmp_path / "e.json").read_text())["bits_per_dim"])

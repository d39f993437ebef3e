"""What a training run tells people and tools: log lines a cluster job can read (no bar
redraws in a file), the start banner, metrics.jsonl, TensorBoard's config, the optional W&B
mirror, and what a resume that changes the config says and keeps."""

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import digits, write_image_folder
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from test_reliability import cfg_dict, write_yaml
from typer.testing import CliRunner

from nfgen.cli.app import app
from nfgen.config.schema import config_from_dict
from nfgen.errors import MissingExtraError
from nfgen.training.budget import Budget
from nfgen.training.checkpoint import load_checkpoint
from nfgen.training.console import Console, time_left
from nfgen.training.logging import RunLogger
from nfgen.training.run import train
from nfgen.training.wandb_log import WandbLog, import_wandb
from nfgen.training.writes import SideWrites

runner = CliRunner()


@pytest.fixture
def data(tmp_path) -> Path:
    write_image_folder(tmp_path / "data", list(digits(8)[:40]), split_dirs=True, n_test=8)
    return tmp_path / "data"


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ lines in a file
def test_redirected_training_writes_lines_without_carriage_returns(data, tmp_path):
    """A job whose output goes to a file (Slurm, nohup): the banner, a line every log_every
    steps with the step, bits/dim, lr, speed, elapsed and time left, the evaluation lines, and
    not a single bar redraw."""
    config = write_yaml(tmp_path / "c.yaml", cfg_dict(data, max_steps=12, log_every=4, eval_every=6,
                                                      checkpoint_every=6))
    log = tmp_path / "job.log"
    with log.open("w") as f:
        done = subprocess.run([sys.executable, "-m", "nfgen", "train", "--config", str(config), "--run-dir",
                               str(tmp_path / "run")], stdout=f, stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert lines[0].startswith("nfgen train: ") and "parameters, float32 on cpu" in lines[0]
    assert "32 training / 8 test images, batch 8, seed 0; 12 steps" in lines[1]
    assert f"run folder: {tmp_path / 'run'} (TensorBoard: {tmp_path / 'run' / 'tb'}" in lines[2]
    steps = [line for line in lines if line.startswith("step ") and " bpd " in line]
    assert [int(s.split()[1].split("/")[0]) for s in steps] == [1, 4, 8, 12]  # step 1, then every log_every
    for s in steps:
        assert "/12 " in s and " lr " in s and " img/s " in s and " elapsed " in s and " left " in s
    assert steps[-1].endswith("left 0.0s (max_steps)")
    evaluations = [line for line in lines if line.startswith("step ") and ": test bits/dim " in line]
    assert [e.split(":")[0] for e in evaluations] == ["step 6", "step 12"]
    assert lines[-1].startswith("done: test bits/dim")
    assert len(lines) == 3 + 4 + 2 + 1  # banner, steps, evaluations, done: nothing else


def test_the_bar_is_drawn_only_on_a_terminal():
    bar_stream, out = io.StringIO(), io.StringIO()
    quiet = Console(10, 0, metric="bpd", out=out, bar_stream=bar_stream, tty=False)
    for step in range(1, 11):
        quiet.step(step, 3.0, 8)
        if step % 5 == 0:
            quiet.log(step, 3.0, 1e-3, 100.0)
    quiet.close()
    assert bar_stream.getvalue() == "" and len(out.getvalue().splitlines()) == 2
    drawn = Console(10, 0, metric="bpd", out=out, bar_stream=bar_stream, tty=True)
    drawn.step(1, 3.0, 8)
    drawn.close()
    assert "\r" in bar_stream.getvalue() and "left" in bar_stream.getvalue()


def test_time_left_is_the_sooner_of_the_steps_and_the_budget():
    now = [100.0]
    budget = Budget(600.0, clock=lambda: now[0])
    budget.start()
    now[0] = 160.0  # a minute in: 10 of 1,000,000 steps done, 9 minutes of budget left
    left = time_left(10, 1_000_000, 0, 60.0, budget)
    assert (left.seconds, left.by) == (540.0, "max_time")
    left = time_left(990, 1000, 0, 60.0, budget)  # 10 steps at 60/990 s each: sooner than the budget
    assert left.by == "max_steps" and left.seconds == pytest.approx(10 * 60 / 990)
    assert time_left(5, 10, 5, 0.0).seconds == math.inf  # no step yet in this job: unknown
    assert time_left(5, 10, 5, 0.0).text() == "?"


# ------------------------------------------------------------------ metrics.jsonl, TensorBoard
def test_metrics_file_has_tensorboards_scalars_and_a_resume_does_not_repeat_steps(data, tmp_path):
    run = tmp_path / "run"
    first = config_from_dict(cfg_dict(data, max_steps=6, checkpoint_every=3, eval_every=3))
    train(first, run, progress=False)
    rows = records(run)
    events = EventAccumulator(str(run / "tb")).Reload()
    for tag in ("train/bpd", "train/lr", "test/bpd", "time/train_seconds"):
        tb = {e.step: e.value for e in events.Scalars(tag)}
        mine = {r["step"]: r[tag] for r in rows if tag in r}
        assert tb.keys() == mine.keys() and all(tb[s] == pytest.approx(mine[s], rel=1e-6) for s in tb), tag
    assert all(isinstance(r["wall_time"], float) for r in rows)
    assert "config/text_summary" in events.Tags()["tensors"]  # the resolved config, as text
    hparams = {v.tag: v.metadata.plugin_data.content for f in (run / "tb").glob("events.*")
               for event in EventFileLoader(str(f)).Load() for v in event.summary.value
               if v.metadata.plugin_data.plugin_name == "hparams"}
    assert b"train.max_steps" in hparams["_hparams_/session_start_info"] and b"test/bpd" in hparams["_hparams_/experiment"]

    # A job killed after step 6 that had written metrics up to 8: the resume from last.pt (step
    # 6) drops steps 7-8 before writing its own, so each step appears once.
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 7, "wall_time": 0.0, "train/bpd": 9.0}) + "\n")
        f.write('{"step": 8, "wall_t')  # half a line: killed mid-write
    train(config_from_dict(cfg_dict(data, max_steps=9, checkpoint_every=3, eval_every=3)), run, resume=True,
          progress=False)
    rows = records(run)
    steps = [r["step"] for r in rows if "train/bpd" in r]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8, 9] and all(r.get("train/bpd") != 9.0 for r in rows)


def test_a_failing_metrics_file_warns_once_and_training_goes_on(data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").mkdir()  # not writable as a file
    warnings = []
    logger = RunLogger(run / "tb", SideWrites(warnings.append))
    from nfgen.training.metrics_file import MetricsFile

    logger.mirrors = [MetricsFile(run / "metrics.jsonl")]
    for step in range(3):
        logger.scalars({"a": 1.0}, step)
    logger.close()
    assert len(warnings) == 1 and "metrics file" in warnings[0] and "training goes on" in warnings[0]


# ------------------------------------------------------------------ Weights & Biases
class FakeWandb:
    """The parts of the ``wandb`` module nfgen calls, recording them."""

    def __init__(self) -> None:
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        # wandb.init may draw random numbers itself: nfgen must not let that shift training's.
        import random

        random.random()
        torch.rand(3)
        self.inits.append(kwargs)
        return self

    def log(self, values, step):
        self.logged.append((step, values))

    def finish(self):
        self.finished += 1

    class Image:
        def __init__(self, array):
            self.array = array


def test_wandb_mirrors_scalars_and_grids_and_leaves_training_exact(data, tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    d = cfg_dict(data, max_steps=4, eval_every=2, sample_every=2, sample_count=4)
    plain, mirrored = tmp_path / "plain", tmp_path / "mirrored"
    train(config_from_dict(d), plain, progress=False)
    train(config_from_dict({**d, "train": {**d["train"], "wandb_project": "p", "wandb_entity": "e"}}), mirrored,
          progress=False)
    a, b = (load_checkpoint(r / "checkpoints/last.pt") for r in (plain, mirrored))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # no RNG touched
    assert len(fake.inits) == 1 and fake.inits[0]["project"] == "p" and fake.inits[0]["entity"] == "e"
    assert fake.inits[0]["id"] == (mirrored / "wandb_id").read_text().strip()  # a resume continues this run
    assert fake.inits[0]["config"]["train"]["max_steps"] == 4
    scalars = {(s, k): float(v) for s, values in fake.logged for k, v in values.items()
               if not isinstance(v, FakeWandb.Image)}
    assert {(r["step"], k): v for r in records(mirrored) for k, v in r.items() if k not in ("step", "wall_time")} \
        == scalars
    grids = [(s, k, v.array) for s, values in fake.logged for k, v in values.items() if isinstance(v, FakeWandb.Image)]
    assert {(s, k) for s, k, _ in grids} == {(s, f"samples/temperature_{t:g}") for s in (2, 4) for t in (0.7, 1.0)}
    assert all(array.dtype.name == "uint8" and array.ndim == 3 and array.shape[2] == 3 for _, _, array in grids)
    assert fake.finished == 1


def test_wandb_missing_is_one_line_naming_the_extra(data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'nfgen\[wandb\]'"):
        import_wandb()
    d = cfg_dict(data, wandb_project="p")
    result = runner.invoke(app, ["train", "--config", str(write_yaml(tmp_path / "c.yaml", d)), "--run-dir",
                                 str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "nfgen[wandb]" in result.output and not (tmp_path / "run" / "checkpoints").exists()


def test_a_failing_wandb_warns_once_and_training_goes_on(tmp_path):
    class Offline(FakeWandb):
        def init(self, **kwargs):
            raise RuntimeError("api key not configured (no-tty)\nmore")

    cfg = config_from_dict(cfg_dict(tmp_path, wandb_project="p"))
    warnings = []
    logger = RunLogger(tmp_path / "tb", SideWrites(warnings.append), mirrors=[WandbLog(cfg, tmp_path, Offline())])
    for step in range(3):
        logger.scalars({"a": 1.0}, step)
    logger.close()
    assert len(warnings) == 1 and "Weights & Biases" in warnings[0] and "api key not configured" in warnings[0]


# ------------------------------------------------------------------ a resume that changes the config
def test_a_resume_that_changes_keys_says_which_and_keeps_the_old_config(data, tmp_path):
    run = tmp_path / "run"
    config = write_yaml(tmp_path / "c.yaml", cfg_dict(data, max_steps=3))
    assert runner.invoke(app, ["train", "--config", str(config), "--run-dir", str(run), "--no-progress"]).exit_code == 0
    old = (run / "config.yaml").read_text()
    result = runner.invoke(app, ["train", "--resume", "--run-dir", str(run), "--no-progress",
                                 "--set", "train.max_steps=5", "--set", "train.lr=0.0005"])
    assert result.exit_code == 0, result.output
    assert f"resuming at step 3 with 2 changed keys (the old config is kept as {run / 'config.3.yaml'}):" in result.output
    assert "  train.lr: 0.001 -> 0.0005" in result.output and "  train.max_steps: 3 -> 5" in result.output
    assert (run / "config.3.yaml").read_text() == old
    assert "max_steps: 5" in (run / "config.yaml").read_text()
    # Each changing resume keeps the config it replaced.
    again = runner.invoke(app, ["train", "--resume", "--run-dir", str(run), "--no-progress", "--set", "train.max_steps=6"])
    assert again.exit_code == 0 and "train.max_steps: 5 -> 6" in again.output
    assert sorted(p.name for p in run.glob("config.*.yaml")) == ["config.3.yaml", "config.5.yaml"]

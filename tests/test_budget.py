"""train.max_time: the stop rule on a virtual clock, a clean stop, a new budget per job, exactness."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
import yaml
from datasets import digits, write_image_folder
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from nfgen.cli.app import app
from nfgen.config.schema import ConfigError, config_from_dict, parse_duration
from nfgen.training.budget import RESERVE, STEP_WINDOW, Budget, format_seconds
from nfgen.training.checkpoint import CheckpointError, Progress, load_checkpoint, training_state
from nfgen.training.distributed import Rank
from nfgen.training.logging import RunLogger
from nfgen.training.parts import TrainerParts
from nfgen.training.run import build_trainer, train
from nfgen.training.writes import SideWrites

runner = CliRunner()


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class VirtualClock(ManualClock):
    """Time that passes only while the model works: each pass of the flow's body over a batch
    takes one second (training steps, evaluation batches, the actnorm init), all else none. The
    budget's estimates are then exact, so its promises can be checked without real timing."""

    def attach(self, model: torch.nn.Module) -> VirtualClock:
        model.body.register_forward_pre_hook(lambda *args: setattr(self, "now", self.now + 1.0))
        return self


# ------------------------------------------------------------------ parsing
@pytest.mark.parametrize("value,seconds", [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400),
                                           ("10min", 600), ("1d", 86400), ("4:00:00", 14400), (600, 600),
                                           (0.5, 0.5), ("600", 600), (None, None)])
def test_max_time_takes_seconds_or_a_duration(value, seconds):
    assert parse_duration(value) == seconds
    assert parse_duration(config_from_dict({"train": {"max_time": value}}).train.max_time) == seconds


@pytest.mark.parametrize("value,message", [("10x", "not a duration"), ("", "not a duration"), ("m", "not a duration"),
                                           ("5:99:00", "not a duration"), (0, "above 0"), ("-5", "above 0"),
                                           (10**9, "at most 366 days"), (True, "expected a number or a string"),
                                           ([1], "expected a number or a string"), (math.inf, "expected")])
def test_bad_max_time_is_one_line_naming_the_key(value, message):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"train": {"max_time": value}})
    assert message in str(e.value) and str(e.value).startswith("train.max_time") and "\n" not in str(e.value)


def test_format_seconds():
    assert [format_seconds(s) for s in (4.25, 95.2, 7260)] == ["4.2s", "1m35s", "2h01m00s"]


# ------------------------------------------------------------------ the rule
def test_budget_keeps_room_for_due_work_one_step_and_the_final_phase():
    clock = ManualClock()
    budget = Budget(20.0, clock)
    budget.start()
    for seconds in (1.0, 3.0, 2.0):
        budget.record("step", seconds)
    budget.record("eval", 2.0)
    budget.record("samples", 1.0)
    budget.record("save", 0.5)
    final = RESERVE * (2.0 + 1.0 + 2 * 0.5)  # an evaluation (and best.pt), samples, last.pt
    assert budget.final_reserve() == pytest.approx(final)
    clock.now = 20.0 - 3.0 - final  # the slowest recent step, then the final phase, exactly fit
    assert budget.allows_another_step([])
    assert not budget.allows_another_step(["save"])  # a periodic checkpoint due now does not
    clock.now += 0.01
    assert not budget.allows_another_step([])
    for _ in range(STEP_WINDOW):  # the slow step drops out of the window
        budget.record("step", 1.0)
    assert budget.allows_another_step([])
    unlimited = Budget(clock=clock)
    unlimited.record("step", 1e9)
    assert not unlimited.limited and unlimited.allows_another_step(["eval", "save"])


# ------------------------------------------------------------------ the trainer
@pytest.fixture
def data(tmp_path) -> Path:
    # 40 train images, 8 test: with batch 8 an epoch is 5 steps and the test split one batch.
    write_image_folder(tmp_path / "data", list(digits(8)[:48]), split_dirs=True, n_test=8)
    return tmp_path / "data"


def cfg(root: Path, **train):
    return config_from_dict({
        "name": "b", "data": {"dataset": "folder", "root": str(root), "num_workers": 0},
        "model": {"image_shape": [1, 8, 8], "n_bits": 5, "glow": {"levels": 2, "steps": 1, "hidden": 8}},
        "dequantization": {"kind": "variational", "steps": 1, "hidden": 4},
        "train": {"device": "cpu", "batch_size": 8, "max_steps": 1000, "warmup_steps": 2, "log_every": 1,
                  "eval_every": 5, "sample_every": 7, "sample_count": 4, "checkpoint_every": 3,
                  "ema_decay": 0.9, "seed": 3, **train},
    })


def trainer_for(config, run: Path, clock: VirtualClock, resume: bool = False):
    logger = RunLogger(run / "tb")
    trainer = build_trainer(config, run, logger, Rank(), False, TrainerParts(clock=clock))
    clock.attach(trainer.model)
    if resume:
        last = run / "checkpoints/last.pt"
        trainer.resume(training_state(load_checkpoint(last), last), last)
    return trainer, logger


def run_job(config, run: Path, resume: bool = False) -> tuple[object, float]:
    """One job on a fresh virtual clock; returns the trainer and the job's virtual duration."""
    clock = VirtualClock()
    trainer, logger = trainer_for(config, run, clock, resume)
    try:
        trainer.run_loop()
    finally:
        logger.close()
    return trainer, clock.now


def scalars(run: Path, tag: str) -> dict[int, float]:
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_budget_stop_ends_within_the_budget_with_a_final_evaluation_and_last_pt(data, tmp_path, capsys):
    run = tmp_path / "run"
    trainer, took = run_job(cfg(data, max_time=40), run)
    assert trainer.stopped_by_budget and 5 < trainer.step < 1000
    assert took <= 40  # the final evaluation and last.pt included
    # ... and not wastefully early: one more step, and the evaluation it might have had to
    # include, would not have fit beside the final phase's reserve.
    assert 40 - took < 1 + 2 + trainer.budget.final_reserve()
    state = load_checkpoint(run / "checkpoints/last.pt")
    assert state["progress"]["step"] == trainer.step
    assert state["progress"]["train_seconds"] == took  # this job's time (virtual), the first job
    assert trainer.step in scalars(run, "test/bpd")  # the final evaluation, at the step reached
    assert scalars(run, "time/train_seconds")[trainer.step] <= took
    out = capsys.readouterr().out
    assert f"stopped at step {trainer.step} of 1000" in out and f"continue with: nfgen train --resume --run-dir {run}" in out


def test_each_resumed_job_gets_a_new_budget_and_the_run_stays_exact(data, tmp_path):
    part, full = tmp_path / "part", tmp_path / "full"
    first, took1 = run_job(cfg(data, max_time=25), part)
    second, took2 = run_job(cfg(data, max_time=25), part, resume=True)
    assert first.stopped_by_budget and second.stopped_by_budget and took1 <= 25 and took2 <= 25
    # A new budget, not what was left of the first (nothing): about as many steps again.
    assert second.step - first.step >= first.step - 3
    progress = load_checkpoint(part / "checkpoints/last.pt")["progress"]
    assert progress["train_seconds"] == took1 + took2  # summed over the run's jobs

    # The budget decides where a job stops, nothing else: an uninterrupted run without one to the
    # same step ends with bitwise the same weights, EMA and position.
    run_job(cfg(data, max_steps=second.step), full)
    a = load_checkpoint(full / "checkpoints/last.pt")
    b = load_checkpoint(part / "checkpoints/last.pt")
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    drop = {"train_seconds"}  # wall-clock time is the one thing allowed to differ
    assert {k: v for k, v in a["progress"].items() if k not in drop} == {
        k: v for k, v in b["progress"].items() if k not in drop}
    assert scalars(full, "train/bpd") == scalars(part, "train/bpd")


def test_checkpoints_without_train_seconds_still_load():
    old = {"step": 3, "epoch": 0, "batch_in_epoch": 3, "best_bpd": math.inf, "bad_steps": 0, "lr_scale": 1.0,
           "rollbacks": 0}
    assert Progress.from_dict(old).train_seconds == 0.0
    for bad in (-1.0, math.inf, "1"):
        with pytest.raises(CheckpointError, match="train_seconds"):
            Progress.from_dict({**old, "train_seconds": bad})


def test_budget_stop_from_the_command_line_exits_cleanly_and_resumes(data, tmp_path):
    # The one check on the real clock, with a generous bound for a loaded machine.
    run = tmp_path / "cli"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg(data, max_time="2s", max_steps=10**6, eval_every=1000, sample_every=1000,
                                         checkpoint_every=1000).to_dict()))
    start = time.monotonic()
    result = runner.invoke(app, ["train", "--config", str(config), "--run-dir", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert time.monotonic() - start < 60
    assert "train.max_time 2.0s spent: stopped at step" in result.output and "done: test bits/dim" in result.output
    step = load_checkpoint(run / "checkpoints/last.pt")["progress"]["step"]
    assert 1 <= step < 10**6
    result = runner.invoke(app, ["train", "--run-dir", str(run), "--resume", "--no-progress",
                                 "--set", "train.max_time=1"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "checkpoints/last.pt")["progress"]["step"] > step


def test_train_without_a_budget_reports_its_time(data, tmp_path):
    run = tmp_path / "plain"
    train(cfg(data, max_steps=4), run, progress=False)
    seconds = load_checkpoint(run / "checkpoints/last.pt")["progress"]["train_seconds"]
    assert seconds > 0 and scalars(run, "time/train_seconds")[4] <= seconds


# ------------------------------------------------------------------ the final phase, measured by running it
class WritingClock(VirtualClock):
    """A virtual clock on which writing a sample grid costs time in proportion to its images, as
    encoding a PNG does: ``per_image`` seconds per image for the PNG and again for TensorBoard's
    image. Training steps cost ``step`` seconds per pass of the body. Nothing real is timed."""

    def __init__(self, step: float, per_image: float) -> None:
        super().__init__()
        self.step, self.per_image = step, per_image

    def attach(self, model: torch.nn.Module) -> WritingClock:
        model.body.register_forward_pre_hook(lambda *args: setattr(self, "now", self.now + self.step))
        return self

    def grid_written(self, images: int) -> None:
        self.now += self.per_image * images


class SlowGridWrites(SideWrites):
    """The trainer's write policy, with each sample grid's PNG taking time on ``clock``."""

    def __init__(self, clock: WritingClock, images: int) -> None:
        super().__init__()
        self.clock, self.images = clock, images

    def attempt(self, what, path, write):
        if what == "sample grid":
            self.clock.grid_written(self.images)
        return super().attempt(what, path, write)


class SlowImageWriter:
    """A TensorBoard writer whose ``add_image`` takes time on the clock, by the grid's images."""

    def __init__(self, clock: WritingClock, images: int, log_dir: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.clock, self.images, self.inner = clock, images, SummaryWriter(log_dir)

    def add_image(self, *args, **kwargs):
        self.clock.grid_written(self.images)
        return self.inner.add_image(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def budget_trainer(config, run: Path, clock: WritingClock):
    images = config.train.sample_count
    writes = SlowGridWrites(clock, images)
    logger = RunLogger(run / "tb", writes, lambda d: SlowImageWriter(clock, images, d))
    trainer = build_trainer(config, run, logger, Rank(), False, TrainerParts(clock=clock, writes=writes))
    clock.attach(trainer.model)
    return trainer, logger


def budget_job(config, run: Path, clock: WritingClock):
    trainer, logger = budget_trainer(config, run, clock)
    try:
        trainer.run_loop()
    finally:
        logger.close()
    return trainer


def test_a_3_second_budget_with_large_grids_ends_in_time(data, tmp_path):
    # Two grids of 1,024 images at 0.25 ms per image for the PNG and as much for TensorBoard:
    # a final phase of about a second, a third of the budget, that drawing alone (free here)
    # would not show. The budget's measure must include the writes, or the job overruns.
    config = cfg(data, max_time=3, sample_count=1024, eval_every=10**6, sample_every=10**6,
                 checkpoint_every=10**6)
    writing = 2 * 2 * 1024 * 0.00025  # two temperatures, PNG and TensorBoard
    # The up-front measure, before any step, includes the writes ...
    probe, logger = budget_trainer(config, tmp_path / "probe", WritingClock(step=0.01, per_image=0.00025))
    probe.measure_final_phase()
    logger.close()
    assert probe.budget.cost["samples"] == pytest.approx(writing)
    assert not (tmp_path / "probe/samples").exists() and not (tmp_path / "probe/tb").exists()
    assert list((tmp_path / "probe/checkpoints").iterdir()) == []  # the trial checkpoint is gone
    # ... so a job stops in time for them.
    clock = WritingClock(step=0.01, per_image=0.00025)
    trainer = budget_job(config, tmp_path / "run", clock)
    assert trainer.stopped_by_budget and trainer.step > 10
    assert clock.now <= 3.0  # ended in time, on a clock on which nothing flakes
    assert sorted(p.name for p in (tmp_path / "run/samples").iterdir()) == [
        f"step{trainer.step:07d}_t0.7.png", f"step{trainer.step:07d}_t1.png"]


def test_a_budget_stop_says_what_the_final_phase_cost_and_what_to_lower(data, tmp_path, capsys):
    # Grids that take 50 s to write (measured up front, and reserved x1.5) leave a 2-minute
    # budget no room after its first step.
    clock = WritingClock(step=0.5, per_image=50 / (4 * 64))
    config = cfg(data, max_time="2m", sample_count=64, eval_every=10**6, sample_every=10**6,
                 checkpoint_every=10**6)
    trainer = budget_job(config, tmp_path / "run", clock)
    assert trainer.stopped_by_budget and trainer.step == 1 and clock.now <= 120
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"stopped at step {trainer.step} of 1000" in last
    assert "sample grids 50.0s" in last and "evaluation 0.5s" in last and "checkpoints 0.0s" in last
    assert "lower train.sample_count" in last
    assert last.endswith(f"continue with: nfgen train --resume --run-dir {tmp_path / 'run'}")

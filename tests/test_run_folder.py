"""Run folders and resuming with changes: what may change, what is refused, and that a refused
start writes nothing (config.yaml, checkpoints, logs and samples stay as they were)."""

import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from datasets import digits, write_image_folder
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_reliability import cfg_dict, write_yaml
from typer.testing import CliRunner

from nfgen.cli.app import app
from nfgen.config.schema import config_from_dict
from nfgen.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, training_state
from nfgen.training.distributed import Rank
from nfgen.training.logging import NullLogger
from nfgen.training.run import build_trainer, train

runner = CliRunner()


def nfgen(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def one_line(result, code: int, message: str) -> None:
    assert result.exit_code == code, result.output
    assert message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output, result.output


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()
            and p.name != ".lock"}


@pytest.fixture
def data(tmp_path) -> Path:
    write_image_folder(tmp_path / "data", list(digits(8)[:40]), split_dirs=True, n_test=8)
    return tmp_path / "data"


@pytest.fixture
def run(data, tmp_path) -> Path:
    """A finished 2-step run with checkpoints, TensorBoard events, samples and its config.yaml."""
    run = tmp_path / "run"
    config = write_yaml(tmp_path / "c.yaml", cfg_dict(data, max_steps=2, eval_every=2, sample_every=2,
                                                      sample_count=4))
    assert nfgen("train", "--config", config, "--run-dir", run, "--no-progress").exit_code == 0
    assert (run / "checkpoints/best.pt").is_file() and list((run / "samples").glob("*.png"))
    return run


# ------------------------------------------------------------------ the run folder
@pytest.mark.parametrize("change,code,message", [
    ({"data": {"root": "/no/such/folder"}}, 1, "image folder"),
    ({"train": {"batch_size": 1000}}, 2, "train.batch_size 1000 is larger than the 32 training images"),
])
def test_overwrite_that_cannot_start_keeps_the_old_run(run, tmp_path, change, code, message):
    before = snapshot(run)
    d = cfg_dict(Path(yaml.safe_load((run / "config.yaml").read_text())["data"]["root"]))
    for section, values in change.items():
        d[section] = {**d[section], **values}
    result = nfgen("train", "--config", write_yaml(tmp_path / "new.yaml", d), "--run-dir", run,
                   "--no-progress", "--overwrite")
    one_line(result, code, message)
    assert snapshot(run) == before


def test_overwrite_that_starts_replaces_the_old_run(run, tmp_path):
    old_events = set(run.glob("tb/events.*"))
    result = nfgen("train", "--run-dir", run, "--config", run / "config.yaml", "--no-progress", "--overwrite",
                   "--set", "train.max_steps=1")
    assert result.exit_code == 0, result.output
    assert not old_events & set(run.glob("tb/events.*"))
    assert not list(run.glob("samples/step0000002_*"))
    for name in ("last.pt", "best.pt"):
        assert load_checkpoint(run / "checkpoints" / name)["progress"]["step"] == 1


def test_a_folder_with_only_best_pt_holds_a_run(run, tmp_path):
    (run / "checkpoints/last.pt").unlink()
    before = snapshot(run)
    config = run / "config.yaml"
    one_line(nfgen("train", "--config", config, "--run-dir", run, "--no-progress"), 1,
             f"already holds a run (checkpoints/best.pt); continue it with `nfgen train --resume --run-dir {run}`, "
             "or pass --overwrite to start over")
    one_line(nfgen("train", "--run-dir", run, "--resume", "--no-progress"), 1,
             "last.pt does not exist (best.pt is there, but a run resumes from last.pt)")
    assert snapshot(run) == before


def test_a_folder_whose_start_failed_may_be_reused(data, tmp_path):
    run = tmp_path / "run"
    bad = write_yaml(tmp_path / "bad.yaml", cfg_dict(data, batch_size=1000))
    assert nfgen("train", "--config", bad, "--run-dir", run, "--no-progress").exit_code == 2
    good = write_yaml(tmp_path / "good.yaml", cfg_dict(data, max_steps=1))
    result = nfgen("train", "--config", good, "--run-dir", run, "--no-progress")
    assert result.exit_code == 0, result.output


HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from nfgen.training.rundir import RunFolderLock
    lock = RunFolderLock(Path(sys.argv[1])).acquire()  # held while referenced (filelock releases on GC)
    print("locked", flush=True)
    time.sleep(600)
""")


def test_a_second_training_in_the_same_folder_is_refused_while_the_first_lives(run, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run)
        result = nfgen("train", "--run-dir", run, "--resume", "--no-progress", "--set", "train.max_steps=3")
        one_line(result, 1, f"is in use by another training (pid {holder.pid} on ")
        assert snapshot(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)  # the OS drops the lock with the process, however it dies
        holder.wait()
    result = nfgen("train", "--run-dir", run, "--resume", "--no-progress", "--set", "train.max_steps=3")
    assert result.exit_code == 0, result.output


def test_two_concurrent_trainings_into_one_folder(data, tmp_path):
    config = write_yaml(tmp_path / "c.yaml", cfg_dict(data, max_steps=100_000))
    cmd = [sys.executable, "-m", "nfgen", "train", "--config", str(config), "--run-dir", str(tmp_path / "run"),
           "--no-progress"]
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "run/checkpoints/last.pt").exists() and time.time() < deadline:
            time.sleep(0.1)
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert second.stderr.strip() == (f"error: {tmp_path / 'run'} is in use by another training (pid {first.pid} "
                                         f"on {socket.gethostname()}); wait for it to finish or stop "
                                         "it, or choose another --run-dir")
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 143


# ------------------------------------------------------------------ resuming with changes
def _tb(run: Path, tag: str) -> dict[int, float]:
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_resume_with_a_new_lr_and_weight_decay_steps_with_them(run):
    result = nfgen("train", "--run-dir", run, "--resume", "--no-progress", "--set", "train.max_steps=4",
                   "--set", "train.lr=2.5e-4", "--set", "train.weight_decay=0.01")
    assert result.exit_code == 0, result.output
    state = load_checkpoint(run / "checkpoints/last.pt")
    group = state["optimizer"]["param_groups"][0]
    assert (group["lr"], group["initial_lr"], group["weight_decay"]) == (2.5e-4, 2.5e-4, 0.01)
    lrs = _tb(run, "train/lr")  # the lr each logged step ran with (warm-up is 1 step)
    assert lrs[2] == pytest.approx(1e-3) and lrs[3] == pytest.approx(2.5e-4) and lrs[4] == pytest.approx(2.5e-4)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 2.5e-4


def _resumed_trainer(run: Path, **changes):
    root = Path(yaml.safe_load((run / "config.yaml").read_text())["data"]["root"])
    cfg = config_from_dict(cfg_dict(root, **{"max_steps": 10, **changes}))
    last = run / "checkpoints/last.pt"
    trainer = build_trainer(cfg, run, NullLogger(), Rank(), False)
    trainer.resume(training_state(load_checkpoint(last), last), last)
    return trainer


def test_resumed_optimizer_steps_with_the_new_lr_and_weight_decay(run):
    trainer = _resumed_trainer(run, lr=2.5e-4, weight_decay=0.01, max_steps=4)
    seen = []  # what each update of the resumed run is computed with, read at the update itself
    trainer.optim.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"])))
    trainer.run_loop()
    assert seen == [(2.5e-4, 0.01), (2.5e-4, 0.01)]


@pytest.fixture
def ema_run(data, tmp_path) -> Path:
    run = tmp_path / "ema"
    train(config_from_dict(cfg_dict(data, max_steps=3, ema_decay=0.9)), run, progress=False)
    return run


def _params(state: dict, names: list[str]) -> list[torch.Tensor]:
    return [state[n] for n in names]


def test_resume_with_ema_decay_zero_drops_the_average(ema_run):
    trainer = _resumed_trainer(ema_run, ema_decay=0.0)
    assert trainer.optim.ema is None and trainer.eval_model is trainer.model
    train(trainer.cfg, ema_run, resume=True, progress=False)
    assert load_checkpoint(ema_run / "checkpoints/last.pt")["ema"] is None


def test_resume_with_a_new_ema_decay_continues_the_average_with_it(ema_run):
    names = [n for n, _ in _resumed_trainer(ema_run).model.named_parameters()]
    before = load_checkpoint(ema_run / "checkpoints/last.pt")
    cfg = config_from_dict({**cfg_dict(Path("unused"), max_steps=4, ema_decay=0.5),
                            "data": yaml.safe_load((ema_run / "config.yaml").read_text())["data"]})
    train(cfg, ema_run, resume=True, progress=False)
    after = load_checkpoint(ema_run / "checkpoints/last.pt")
    assert after["ema_state"]["n_averaged"].item() == before["ema_state"]["n_averaged"].item() + 1
    for old, new, live in zip(_params(before["ema"], names), _params(after["ema"], names),
                              _params(after["model"], names)):
        torch.testing.assert_close(new, 0.5 * old + 0.5 * live)


def test_resume_with_ema_starts_the_average_from_the_current_weights(run):
    trainer = _resumed_trainer(run, ema_decay=0.9)
    assert trainer.optim.ema is None
    data_root = yaml.safe_load((run / "config.yaml").read_text())["data"]["root"]
    train(config_from_dict(cfg_dict(Path(data_root), max_steps=3, ema_decay=0.9)), run, resume=True, progress=False)
    state = load_checkpoint(run / "checkpoints/last.pt")
    names = [n for n, _ in trainer.model.named_parameters()]
    for ema, live in zip(_params(state["ema"], names), _params(state["model"], names)):
        assert torch.equal(ema, live)  # the average began at step 3 with the weights of step 3


def test_refused_resumes_write_nothing_and_a_plain_resume_still_works(run):
    before = snapshot(run)
    refused = [
        (["--set", "train.optimizer=adamax"], 2, "train.optimizer cannot change on --resume"),
        (["--set", "train.max_steps=1"], 2, "train.max_steps 1 is not above step 2, which"),
        (["--set", "train.max_steps=2"], 2, "set train.max_steps above 2 to continue"),
        (["--set", "data.test_fraction=0.5"], 2, "different 'data' section (data.test_fraction)"),
        (["--set", "model.glow.hidden=16"], 2, "different 'model' section (model.glow.hidden)"),
    ]
    for extra, code, message in refused:
        one_line(nfgen("train", "--run-dir", run, "--resume", "--no-progress", *extra), code, message)
        assert snapshot(run) == before, extra
    result = nfgen("train", "--run-dir", run, "--resume", "--no-progress", "--set", "train.max_steps=3")
    assert result.exit_code == 0, result.output


def test_resume_after_the_data_moved_and_with_other_workers(run, tmp_path):
    old = Path(yaml.safe_load((run / "config.yaml").read_text())["data"]["root"])
    moved = tmp_path / "moved"
    shutil.move(old, moved)
    result = nfgen("train", "--run-dir", run, "--resume", "--no-progress", "--set", "train.max_steps=3",
                   "--set", f"data.root={moved}", "--set", "data.num_workers=1", "--set", "data.download=false")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "checkpoints/last.pt")["progress"]["step"] == 3


# ------------------------------------------------------------------ checkpoints a resume cannot use
def _corrupt(state: dict, field: str, value) -> dict:
    if "." in field:  # KeyError: the key is missing
        outer, inner = field.split(".")
        kept = {k: v for k, v in state[outer].items() if k != inner}
        return {**state, outer: kept if value is KeyError else {**kept, inner: value}}
    if value is KeyError:
        return {k: v for k, v in state.items() if k != field}
    return {**state, field: value}


@pytest.mark.parametrize("field,value,message", [
    ("optimizer", KeyError, "holds no training state (optimizer missing)"),
    ("progress.step", "3", "progress.step is '3', not a valid int"),
    ("progress.best_bpd", None, "progress.best_bpd is None"),
    ("progress.epoch", -1, "progress.epoch is -1"),
    ("progress.rollbacks", KeyError, "'progress' lacks 'rollbacks'"),
    ("optimizer", [], "'optimizer' is not an optimizer state"),
    ("scheduler", {"base_lrs": [1e-3]}, "'scheduler' is not a learning-rate schedule state"),
    ("rng.python", (3, "x", None), "'rng' does not hold valid random generator states"),
    ("rng.torch", torch.zeros(3), "'rng' does not hold valid random generator states"),
    ("ema_state", {"weights": 1}, "'ema_state' is not the state of an averaged model"),
    ("model", {"w": 1.0}, "'model' is not a mapping of names to tensors"),
])
def test_checkpoints_with_missing_or_mistyped_fields_are_one_line(run, field, value, message):
    last = run / "checkpoints/last.pt"
    state = load_checkpoint(last)
    state = {k: v for k, v in state.items() if k not in ("format", "nfgen_version")}
    save_checkpoint(last, _corrupt(state, field, value))
    before = snapshot(run)
    one_line(nfgen("train", "--run-dir", run, "--resume", "--no-progress", "--set", "train.max_steps=4"), 1, message)
    assert snapshot(run) == before


def test_a_model_only_checkpoint_is_refused_by_resume_and_accepted_by_sample(run, tmp_path):
    last = run / "checkpoints/last.pt"
    state = load_checkpoint(last)
    save_checkpoint(last, {"config": state["config"], "model": state["model"]})
    one_line(nfgen("train", "--run-dir", run, "--resume", "--no-progress", "--set", "train.max_steps=4"), 1,
             "holds no training state (optimizer, scheduler, progress, rng missing): it can be sampled")
    assert nfgen("sample", "--ckpt", last, "--n", 4, "--out", tmp_path / "s.png").exit_code == 0
    with pytest.raises(CheckpointError):
        train(config_from_dict(state["config"]), run, resume=True, progress=False)


def test_resume_of_a_missing_run_creates_nothing(tmp_path):
    result = nfgen("train", "--run-dir", tmp_path / "nope", "--resume", "--no-progress", "--config",
                   write_yaml(tmp_path / "c.yaml", cfg_dict(tmp_path)))
    one_line(result, 1, "nothing to resume")
    assert not (tmp_path / "nope").exists()

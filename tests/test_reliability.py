"""Fault injection: kills during saves, signals mid-run, NaNs, failed writes, hostile inputs."""

import errno
import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from datasets import digits, write_image_folder
from typer.testing import CliRunner

from nfgen.cli.app import app
from nfgen.cli.support import script_main
from nfgen.config.schema import config_from_dict
from nfgen.training import checkpoint as ckpt_module
from nfgen.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nfgen.training.distributed import Rank
from nfgen.training.divergence import DivergenceError
from nfgen.training.logging import RunLogger
from nfgen.training.parts import TrainerParts
from nfgen.training.run import build_trainer, train
from nfgen.training.stream import BatchStream
from nfgen.training.writes import SideWrites

runner = CliRunner()


def cfg_dict(root: Path, **train) -> dict:
    return {
        "name": "r",
        "data": {"dataset": "folder", "root": str(root), "num_workers": 0},
        "model": {"image_shape": [1, 8, 8], "n_bits": 5, "glow": {"levels": 2, "steps": 1, "hidden": 8}},
        "train": {"device": "cpu", "batch_size": 8, "max_steps": 6, "warmup_steps": 1, "log_every": 1,
                  "eval_every": 100, "sample_every": 100, "checkpoint_every": 1, "eval_batches": 1,
                  **train},
    }


@pytest.fixture
def data(tmp_path) -> Path:
    write_image_folder(tmp_path / "data", list(digits(8)[:40]), split_dirs=True, n_test=8)
    return tmp_path / "data"


def write_yaml(path: Path, d: dict) -> Path:
    path.write_text(yaml.safe_dump(d))
    return path


# ------------------------------------------------------------------ 1. no torn checkpoint
def test_sigkill_during_saves_leaves_a_complete_checkpoint(tmp_path):
    script = textwrap.dedent(f"""
        import torch
        from nfgen.training.checkpoint import save_checkpoint
        for i in range(10_000):
            save_checkpoint({str(tmp_path / 'last.pt')!r},
                            {{"model": {{"w": torch.full((4_000_000,), float(i))}}, "i": i}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while not (tmp_path / "last.pt").exists() and time.time() < deadline:
            time.sleep(0.05)
        for delay in (0.13, 0.29, 0.41):  # land at different points of a ~16 MB write
            time.sleep(delay)
            state = None
            if delay == 0.41:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            state = load_checkpoint(tmp_path / "last.pt")
            w = state["model"]["w"]
            assert w.numel() == 4_000_000 and bool((w == state["i"]).all())
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}})
    before = path.read_bytes()

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_module.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint.*unchanged"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_periodic_save_failure_warns_and_training_goes_on(data, tmp_path, monkeypatch, capsys):
    real_save, calls = ckpt_module.torch.save, {"n": 0}

    def flaky(obj, f):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(ckpt_module.torch, "save", flaky)
    cfg = config_from_dict(cfg_dict(data))
    train(cfg, tmp_path / "run", progress=False)
    assert "warning: could not write checkpoint" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "run/checkpoints/last.pt")["progress"]["step"] == 6


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning: could not write")]


class DiskFullFor(SideWrites):
    """The trainer's write policy on a disk that is full for the files named ``names``: their
    checkpoint writes fail inside the atomic write (torch.save), their other writes at once."""

    def __init__(self, *names: str) -> None:
        super().__init__()
        self.names = names

    def attempt(self, what, path, write):
        if Path(path).name in self.names or what in self.names:
            real = write

            def write():
                if not what.startswith("checkpoint"):
                    disk_full()
                with mock.patch.object(ckpt_module.torch, "save", disk_full):
                    real()

        return super().attempt(what, path, write)


def test_failing_best_pt_warns_once_and_training_goes_on(data, tmp_path, capsys):
    run = tmp_path / "run"
    train(config_from_dict(cfg_dict(data, eval_every=2)), run, progress=False,
          parts=TrainerParts(writes=DiskFullFor("best.pt")))
    lines = warnings_in(capsys.readouterr().err)
    assert len(lines) == 1 and str(run / "checkpoints/best.pt") in lines[0] and "No space" in lines[0], lines
    assert not (run / "checkpoints/best.pt").exists()
    progress = load_checkpoint(run / "checkpoints/last.pt")["progress"]
    assert progress["step"] == 6
    assert progress["best_bpd"] == float("inf")  # it describes what best.pt holds: nothing


def test_failing_sample_grids_warn_once_with_the_path(data, tmp_path, capsys):
    run = tmp_path / "run"
    train(config_from_dict(cfg_dict(data, sample_every=2, sample_count=4)), run, progress=False,
          parts=TrainerParts(writes=DiskFullFor("sample grid")))
    lines = warnings_in(capsys.readouterr().err)
    assert len(lines) == 1 and str(run / "samples/step0000002_t0.7.png") in lines[0], lines
    assert load_checkpoint(run / "checkpoints/last.pt")["progress"]["step"] == 6


class FullDiskWriter:
    """A SummaryWriter whose event file hits a full disk at the third scalar."""

    def __init__(self, log_dir: str) -> None:
        self.n = 0

    def add_scalar(self, *args) -> None:
        self.n += 1
        if self.n >= 3:
            raise OSError(errno.ENOSPC, "No space left on device", "events.out.tfevents.1")

    def add_image(self, *args) -> None:
        pass

    def add_text(self, *args) -> None:
        pass

    def flush(self) -> None:
        disk_full()

    def close(self) -> None:
        pass


def test_failing_tensorboard_warns_once_and_training_goes_on(data, tmp_path, capsys):
    run, cfg = tmp_path / "run", config_from_dict(cfg_dict(data))
    (run / "checkpoints").mkdir(parents=True)
    writes = SideWrites()
    logger = RunLogger(run / "tb", writes, make_writer=FullDiskWriter)
    build_trainer(cfg, run, logger, Rank(), False, TrainerParts(writes=writes)).run_loop()
    logger.close()
    lines = warnings_in(capsys.readouterr().err)
    assert lines == ["warning: could not write TensorBoard events events.out.tfevents.1: "
                     "No space left on device; training goes on"]
    assert load_checkpoint(run / "checkpoints/last.pt")["progress"]["step"] == 6


def test_failing_final_save_is_an_error_naming_the_path(data, tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt_module.torch, "save", disk_full)
    run = tmp_path / "run"
    config = write_yaml(tmp_path / "c.yaml", cfg_dict(data, max_steps=2, checkpoint_every=100))
    result = runner.invoke(app, ["train", "--config", str(config), "--run-dir", str(run), "--no-progress"])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: could not write checkpoint {run / 'checkpoints/last.pt'}: No space left on device; "
                      "the previous checkpoint, if any, is unchanged"], result.stderr
    assert "Traceback" not in result.output


def test_a_killed_save_leaves_no_temp_file_after_the_next_start(data, tmp_path):
    run = tmp_path / "run"
    train(config_from_dict(cfg_dict(data, max_steps=2)), run, progress=False)
    folder = run / "checkpoints"
    stale = [folder / ".last.pt.k2x_9abc.tmp", folder / ".best.pt.00zz11yy.tmp"]
    kept = [folder / ".notes.tmp", folder / ".last.pt.TOOLONGNAME.tmp", folder / "mine.tmp"]
    for p in stale + kept:
        p.write_bytes(b"x" * 1000)
    train(config_from_dict(cfg_dict(data, max_steps=3)), run, resume=True, progress=False)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


# ------------------------------------------------------------------ 2. clean stop on signals
@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_run_saves_and_resumes(data, tmp_path, signum, code):
    config = write_yaml(tmp_path / "c.yaml", cfg_dict(data, max_steps=100_000))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "nfgen", "train", "--config", str(config),
                             "--run-dir", str(run), "--no-progress"],
                            stderr=subprocess.PIPE, text=True)
    last = run / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"stopped by {signal.Signals(signum).name}" in err and "--resume" in err
    assert "Traceback" not in err
    step = load_checkpoint(last)["progress"]["step"]
    assert step >= 1
    result = runner.invoke(app, ["train", "--run-dir", str(run), "--resume", "--no-progress",
                                 "--set", f"train.max_steps={step + 2}"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(last)["progress"]["step"] == step + 2


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_to_the_process_group_with_loader_workers_stops_cleanly(data, tmp_path, signum, code):
    # scancel, timeout, `kill -- -PGID` and Ctrl-C signal every process of the group, DataLoader
    # workers included. 32 images in batches of 8: new workers start every 4 steps, and the test loader's
    # at every evaluation, so the signal can land while workers start, run or stop.
    config = write_yaml(tmp_path / "c.yaml", cfg_dict(data, max_steps=100_000, checkpoint_every=100_000,
                                                      eval_every=3))
    yaml_cfg = yaml.safe_load(config.read_text())
    yaml_cfg["data"]["num_workers"] = 2
    write_yaml(config, yaml_cfg)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "nfgen", "train", "--config", str(config),
                             "--run-dir", str(run), "--no-progress"],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not list(run.glob("tb/events.*")) and time.time() < deadline:  # written at step 1
            time.sleep(0.1)
        time.sleep(1.5)
        os.killpg(proc.pid, signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code, err
    assert f"stopped by {signal.Signals(signum).name}" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    # checkpoint_every is never reached: last.pt exists only because the stop saved it.
    assert load_checkpoint(run / "checkpoints/last.pt")["progress"]["step"] >= 1


# ------------------------------------------------------------------ 4. NaN / Inf guard
class Poisoned(BatchStream):
    """The trainer's batch stream, with a fault at the steps in ``at`` (each batch's position
    says its step), at most ``times`` times: the batch's
    dequantization noise is NaN (``what="noise"``: its loss is NaN), or a parameter of the model
    becomes NaN as the batch is drawn (``what="parameter"``: every later loss is NaN until a
    rollback restores the weights)."""

    def __init__(self, *args, at: tuple[int, ...], what: str, times: int = 1) -> None:
        super().__init__(*args)
        self.at, self.what, self.left = at, what, times * len(at)

    def batches(self, epoch: int = 0, batch_in_epoch: int = 0):
        per_epoch = len(self.train_set) // self.global_batch
        for drawn in super().batches(epoch, batch_in_epoch):
            step = drawn.epoch * per_epoch + drawn.batch_in_epoch - 1
            if step in self.at and self.left:
                self.left -= 1
                if self.what == "noise":
                    drawn = drawn._replace(batch=drawn.batch._replace(noise=drawn.batch.noise * float("nan")))
                else:
                    with torch.no_grad():
                        next(self.model.parameters()).view(-1)[0] = float("nan")
            yield drawn


def poisoned(**fault) -> TrainerParts:
    return TrainerParts(stream=functools.partial(Poisoned, **fault))


def test_nan_loss_skips_the_update_and_counts_it(data, tmp_path):
    run = tmp_path / "run"
    train(config_from_dict(cfg_dict(data)), run, progress=False, parts=poisoned(at=(2, 3), what="noise"))
    state = load_checkpoint(run / "checkpoints/last.pt")
    assert state["progress"]["bad_steps"] == 2 and state["progress"]["step"] == 6
    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point())


def train_as_the_cli(cfg, run: Path, parts: TrainerParts, capsys) -> tuple[int, str]:
    """``nfgen train``'s work under its error policy (``user_errors``, via ``script_main``):
    the exit code and everything printed."""
    code = script_main(lambda: train(cfg, run, progress=False, parts=parts) and None)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_nan_parameter_stops_and_leaves_the_last_good_checkpoint(data, tmp_path, capsys):
    run = tmp_path / "run"
    code, output = train_as_the_cli(config_from_dict(cfg_dict(data, max_bad_steps=2)), run,
                                    poisoned(at=(3,), what="parameter"), capsys)
    assert code == 1
    assert "training diverged (2 non-finite steps in a row at step 5)" in output
    assert "last good checkpoint, untouched" in output
    state = load_checkpoint(run / "checkpoints/last.pt")
    assert state["progress"]["step"] == 3
    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("on_divergence", ["stop", "rollback"])
def test_divergence_before_any_checkpoint_names_none(data, tmp_path, capsys, on_divergence):
    run = tmp_path / "run"
    cfg = config_from_dict(cfg_dict(data, max_bad_steps=2, checkpoint_every=100, on_divergence=on_divergence))
    code, output = train_as_the_cli(cfg, run, poisoned(at=(1,), what="parameter"), capsys)
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(errors) == 1 and output.strip().splitlines()[-1] == errors[0]
    assert "before any checkpoint was written" in errors[0] and "last.pt" not in errors[0]
    assert "Traceback" not in output
    assert not (run / "checkpoints" / "last.pt").exists()


def test_rollback_reloads_the_last_good_state_with_a_lower_lr(data, tmp_path):
    run = tmp_path / "run"
    cfg = config_from_dict(cfg_dict(data, max_bad_steps=2, on_divergence="rollback"))
    train(cfg, run, progress=False, parts=poisoned(at=(3,), what="parameter"))
    state = load_checkpoint(run / "checkpoints/last.pt")
    p = state["progress"]
    assert (p["step"], p["rollbacks"], p["lr_scale"]) == (6, 1, 0.5)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.5 * 1e-3)
    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point())


def test_rollbacks_are_bounded(data, tmp_path):
    cfg = config_from_dict(cfg_dict(data, max_bad_steps=1, on_divergence="rollback", max_rollbacks=2))
    with pytest.raises(DivergenceError, match="after 2 rollbacks"):
        train(cfg, tmp_path / "run", progress=False, parts=poisoned(at=(3,), what="parameter", times=10))


def test_sampling_a_broken_model_is_an_error_not_nan_images(data, tmp_path):
    cfg = config_from_dict(cfg_dict(data))
    from nfgen.model.image_flow import build_model

    model = build_model(cfg)
    with torch.no_grad():
        model.body.levels[-1].flow.flows[-1].log_std.fill_(float("nan"))
    save_checkpoint(tmp_path / "bad.pt", {"config": cfg.to_dict(), "model": model.state_dict()})
    result = runner.invoke(app, ["sample", "--ckpt", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 1 and "decoded images are not finite" in result.output
    assert not (tmp_path / "s.png").exists()


# ------------------------------------------------------------------ 5, 6. hostile inputs
@pytest.fixture
def trained(data, tmp_path) -> Path:
    run = tmp_path / "run"
    train(config_from_dict(cfg_dict(data, max_steps=2)), run, progress=False)
    return run / "checkpoints" / "last.pt"


def test_hostile_inputs_get_one_clear_line(data, tmp_path, trained):
    good = cfg_dict(data)
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("model: {levels: 2\ntrain: [")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(trained.read_bytes()[:1000])
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(os.urandom(5000))
    state = torch.load(trained, weights_only=True)
    other_arch = tmp_path / "other.pt"
    model = state["config"]["model"]
    torch.save({**state, "config": {**state["config"], "model": {**model, "glow": {**model["glow"], "steps": 3}}}},
               other_arch)
    newer = tmp_path / "newer.pt"
    torch.save({**state, "format": 99, "nfgen_version": "9.0"}, newer)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    existing = tmp_path / "exists.png"
    existing.write_bytes(b"keep me")
    cases = [
        (["train", "--config", str(malformed)], 2, "not valid YAML at line"),
        (["train", "--config", str(write_yaml(tmp_path / "t.yaml", {**good, "trian": {}}))], 2,
         "unknown key 'trian' (did you mean 'train'?)"),
        (["train", "--config", str(write_yaml(tmp_path / "v.yaml", {**good, "train": {"lr": -1}}))], 2,
         "train.lr must be in (0, 10]"),
        (["train", "--config", str(write_yaml(tmp_path / "m.yaml", {**good, "data": {**good["data"], "root": "/nope"}})),
          "--run-dir", str(tmp_path / "r2")], 1, "image folder"),
        (["sample", "--ckpt", str(truncated)], 1, "not a readable nfgen checkpoint"),
        (["sample", "--ckpt", str(random_bytes)], 1, "not a readable nfgen checkpoint"),
        (["sample", "--ckpt", str(other_arch)], 1, "does not match its model architecture"),
        (["sample", "--ckpt", str(newer)], 1, "written by a newer nfgen (9.0, format 99)"),
        (["sample", "--ckpt", str(trained), "--out", str(a_file / "s.png")], 1, "file.txt"),
        (["sample", "--ckpt", str(trained), "--out", str(existing)], 1, "exists; pass --overwrite"),
        (["interpolate", "--ckpt", str(trained), "--out", str(existing), "--pairs", "1"], 1, "exists; pass --overwrite"),
        (["eval-bpd", "--ckpt", str(trained), "--json", str(existing)], 1, "exists; pass --overwrite"),
        (["train", "--config", str(write_yaml(tmp_path / "g.yaml", good)), "--run-dir", str(trained.parent.parent)], 1,
         f"already holds a run (checkpoints/last.pt and best.pt); continue it with `nfgen train --resume --run-dir "
         f"{trained.parent.parent}`"),
    ]
    for args, code, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == code, (args, result.output)
        assert message in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert existing.read_bytes() == b"keep me"
    assert load_checkpoint(trained)["progress"]["step"] == 2  # the refused run left it alone

"""density2d's run life cycle, brought to train's: SIGINT and SIGTERM stop it cleanly, a stop
during the final evaluation keeps the numbers already computed, and nothing advises a --resume
that density2d does not have."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from nfgen.cli.app import app
from nfgen.density2d import train as d2

runner = CliRunner()


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({
        "name": "t", "target": {"name": "ring"}, "flow": {"kind": "planar", "layers": 2},
        "train": {"max_steps": 30, "log_every": 10, "checkpoint_every": 1000},
        "eval": {"samples": 2000, "quadrature": 200, "grid": 20, "dpi": 30}}))
    return path


def _run(tmp_path: Path, *extra: str):
    return runner.invoke(app, ["density2d", "--config", str(_config(tmp_path)), "--run-dir", str(tmp_path / "run"),
                               "--no-progress", *extra])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_mid_training_saves_and_says_how_to_go_on(tmp_path, monkeypatch, signum):
    torch.set_default_dtype(torch.float32)
    step = d2._Training.run_step

    def signalled(self):
        if self.step == 5:
            os.kill(os.getpid(), signum)  # the handler only notes it: this step finishes
        return step(self)

    monkeypatch.setattr(d2._Training, "run_step", signalled)
    result = _run(tmp_path)
    assert result.exit_code == 128 + signum, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"stopped by {signal.Signals(signum).name}" in lines[0]
    assert "at step 6 of 30" in lines[0] and "--overwrite" in lines[0] and "continue with --resume" not in lines[0]
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["step"] == 6
    # The folder now holds a run: the refusal names the option density2d has, not --resume.
    again = _run(tmp_path)
    assert again.exit_code != 0 and "already holds a run" in again.output
    assert "--resume" not in again.output and "--overwrite" in again.output


def test_ctrl_c_during_the_final_evaluation_keeps_its_numbers(tmp_path, monkeypatch):
    torch.set_default_dtype(torch.float32)
    evaluate = d2._Training.evaluate

    def interrupted(self):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the final numbers are computed
        return evaluate(self)

    monkeypatch.setattr(d2._Training, "evaluate", interrupted)
    result = _run(tmp_path)
    assert result.exit_code == 128 + signal.SIGINT, result.output
    assert "summary.json" in result.output and "pictures were not drawn" in result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["pictures"] == []
    assert all(k in summary for k in ("log_z_quadrature", "elbo", "log_z_importance", "reverse_kl"))
    # Without the stop, the same run writes the pictures and lists them.
    monkeypatch.setattr(d2._Training, "evaluate", evaluate)
    assert _run(tmp_path, "--overwrite").exit_code == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["pictures"] == ["figures/density.png", "figures/training.png"]
    assert all((tmp_path / "run" / p).is_file() for p in summary["pictures"])

"""scripts/race.py without the race: its arguments, its figures, its table, and one nfgen worker
on tiny data (no timed assertions)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import digits, write_mnist

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "race.py"


@pytest.fixture(scope="module")
def race():
    spec = importlib.util.spec_from_file_location("race", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def mnist(tmp_path) -> Path:
    write_mnist(tmp_path / "mnist", n_train=40, n_test=16, images=digits(28)[:56])
    return tmp_path / "mnist"


def test_bits_per_real_pixel_charges_padding_to_the_784_real_pixels(race):
    # A 1x32x32 model at b bits per dim spends b * 1024 bits per image, over 784 real pixels.
    nats = 1.5 * 1024 * math.log(2)
    assert race.bits_per_real_pixel(nats) == pytest.approx(1.5 * 1024 / 784)


def test_count_nonfinite_counts_samples_not_values(race):
    draws = iter([torch.tensor([[1.0, math.nan, math.inf], [0.0, 1.0, 2.0]]), torch.tensor([[-math.inf, 0.0, 0.0]])])
    assert race.count_nonfinite(race.draw(lambda n: next(draws), n=3, chunk=2)) == 2


def test_samples_are_written_at_28x28_without_the_nonfinite(race, tmp_path):
    from PIL import Image

    u = torch.rand(3, 1, 32, 32)
    u[1, 0, 5, 5] = math.nan
    race.write_samples(u, tmp_path / "s")
    files = sorted((tmp_path / "s").iterdir())
    assert [f.name for f in files] == ["0000.png", "0001.png"]  # the non-finite sample is not written
    second = np.asarray(Image.open(files[1]))
    assert second.shape == (28, 28)  # the zero-padded model's 2-pixel border cropped
    assert (second == torch.floor(u[2, 0, 2:30, 2:30] * 256).numpy()).all()


def test_each_set_belongs_to_the_config_before_it(race, capsys):
    parser = race.make_parser()
    args = parser.parse_args(["--budget", "1", "--config", "a.yaml", "--set", "x=1", "--set", "y=2", "--config", "b.yaml"])
    assert args.contenders == [{"kind": "nfgen", "config": "a.yaml", "sets": ["x=1", "y=2"]},
                               {"kind": "nfgen", "config": "b.yaml", "sets": []}]
    assert race.label(args.contenders[0]) == "nfgen a.yaml x=1 y=2"
    assert parser.parse_args(["--normflows"]).contenders == []  # the default list was not changed
    with pytest.raises(SystemExit):
        parser.parse_args(["--set", "x=1", "--config", "a.yaml"])
    assert "comes before any --config" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--config", "glow_mnist.yaml"], "give --budget"),
    (["--budget", "10x", "--config", "glow_mnist.yaml"], "--budget: '10x' is not a duration"),
    (["--budget", "5"], "nothing to race"),
    (["--budget", "5", "--config", "glow_mnist.yaml", "--set", "model.glow.stepz=2"], "model.glow.stepz"),
    (["--budget", "5", "--config", "glow_cifar.yaml"], "MNIST images are 1x28x28"),
])
def test_bad_input_is_one_line_before_any_contender_runs(race, mnist, monkeypatch, capsys, argv, message):
    monkeypatch.setattr(race, "spawn", lambda spec: pytest.fail("a contender started"))
    assert race.main([*argv, "--data", str(mnist)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_missing_digits_say_how_to_write_them(race, tmp_path, capsys):
    assert race.main(["--budget", "5", "--config", "glow_mnist.yaml", "--data", str(tmp_path / "none")]) == 1  # DataError
    assert "nfgen data mnist" in capsys.readouterr().err


def test_table_lists_each_point_and_the_nonfinite_counts(race):
    result = {"contender": "nfgen x.yaml", "params": 1234, "skipped_steps": 0, "nonfinite_samples": {"1": 3, "0.7": 0},
              "points": [{"seconds": 9.6, "step": 10, "bits_per_real_pixel": 2.5}]}
    text = race.table({"points": 2, "results": [result]})
    assert "50% of budget" in text and "100% of budget" in text
    row = text.splitlines()[-1]
    assert "2.5000 @10s" in row and row.split()[-3:] == ["3", "0", "finished"] and "1,234" in row


def test_nfgen_worker_trains_one_job_per_share_and_reports_each(race, mnist, tmp_path):
    torch.set_default_dtype(torch.float32)
    spec = {"kind": "nfgen", "config": "glow_mnist.yaml", "data": str(mnist), "budget": 2.0, "points": 2,
            "device": "cpu", "threads": 1, "seed": 0, "run_dir": str(tmp_path / "run"),
            "samples_dir": str(tmp_path / "samples"),
            "sets": ["model.image_shape=[1,28,28]", "model.glow.levels=2", "model.glow.steps=1", "model.glow.hidden=8",
                     "train.batch_size=8", "train.sample_count=4"]}
    result = race.nfgen_worker(spec)
    points = result["points"]
    assert len(points) == 2 and 1 <= points[0]["step"] < points[1]["step"]  # the second job resumed the first
    assert points[0]["seconds"] < points[1]["seconds"]
    assert all(np.isfinite(p["bits_per_real_pixel"]) for p in points)
    assert set(result["nonfinite_samples"]) == {"1", "0.7"} and result["params"] > 0
    written = len(list((tmp_path / "samples").glob("*.png")))
    assert written == race.SAMPLES - result["nonfinite_samples"]["1"]  # the T=1 draws, for eval-fid --gen


def test_a_diverging_contender_keeps_its_points_and_is_marked(race, mnist, tmp_path, monkeypatch):
    from nfgen.training.divergence import DivergenceError

    torch.set_default_dtype(torch.float32)
    real, calls = race.train, []

    def diverges_on_the_second_job(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise DivergenceError("training diverged (5 non-finite steps in a row at step 9); lower train.lr")
        return real(*args, **kwargs)

    monkeypatch.setattr(race, "train", diverges_on_the_second_job)
    spec = {"kind": "nfgen", "config": "glow_mnist.yaml", "data": str(mnist), "budget": 3.0, "points": 3,
            "device": "cpu", "threads": 1, "seed": 0, "run_dir": str(tmp_path / "run"),
            "sets": ["model.image_shape=[1,28,28]", "model.glow.levels=2", "model.glow.steps=1", "model.glow.hidden=8",
                     "train.batch_size=8", "train.sample_count=4"]}
    result = race.nfgen_worker(spec)
    assert len(result["points"]) == 1 and result["diverged"].startswith("training diverged")
    assert set(result["nonfinite_samples"]) == {"1", "0.7"}  # sampled from the last good checkpoint
    assert race.status(result) == "DIVERGED (points until then)"


def test_a_failing_contender_is_reported_and_the_race_goes_on(race, mnist, tmp_path, monkeypatch, capsys):
    failed = race.spawn({"kind": "nfgen", "config": str(tmp_path / "missing.yaml"), "sets": [], "data": str(mnist),
                         "budget": 1.0, "points": 1, "device": "cpu", "threads": 1, "seed": 0,
                         "run_dir": str(tmp_path / "run")})
    assert failed["failed"] == "exit code 2" and failed["points"] == []
    err = capsys.readouterr().err
    assert "missing.yaml" in err and "Traceback" not in err  # the worker's one line, then the race's
    finished = {"contender": "nfgen a.yaml", "params": 10, "skipped_steps": 0, "nonfinite_samples": {"1": 0, "0.7": 0},
                "points": [{"seconds": 1.0, "step": 4, "bits_per_real_pixel": 2.0}]}
    results = iter([finished, failed])
    monkeypatch.setattr(race, "spawn", lambda spec: next(results))
    report = tmp_path / "race.json"
    code = race.main(["--budget", "2", "--config", "glow_mnist.yaml", "--config", "glow_mnist.yaml",
                      "--data", str(mnist), "--json", str(report)])
    assert code == 1  # a contender failed ...
    rows = capsys.readouterr().out.strip().splitlines()[-2:]
    assert rows[0].endswith("finished") and "2.0000 @1s" in rows[0]  # ... and the finished one is kept
    assert rows[1].endswith("FAILED (exit code 2)")
    assert [r.get("failed") for r in json.loads(report.read_text())["results"]] == [None, "exit code 2"]

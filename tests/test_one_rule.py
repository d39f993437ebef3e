"""Class C of the second red team: a rule lives where every path passes. density2d's quadrature
refuses a box that cuts the density off, for a built-in energy as for a formula, at any
resolution; a Gaussian-noise model's noisy NLL is never tabled as bits per real pixel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from datasets import digits, write_mnist
from typer.testing import CliRunner

from nfgen.cli.app import app
from nfgen.density2d.estimates import QuadratureError, quadrature_log_z
from nfgen.density2d.targets import ENERGIES, build_target
from nfgen.errors import NotALikelihoodError

runner = CliRunner()


@pytest.mark.parametrize("name,box", [("ring", 1.0), ("ring", 2.0), ("u1", 2.0), ("u2", 2.0), ("u3", 3.0), ("u4", 1.0)])
@pytest.mark.parametrize("cells", [50, 1000, 3000])
def test_a_box_that_cuts_a_built_in_energy_is_refused_at_any_resolution(name, box, cells):
    with pytest.raises(QuadratureError, match="outermost cells"):
        quadrature_log_z(build_target(name, box=box), cells)


@pytest.mark.parametrize("name", sorted(ENERGIES))
def test_every_built_in_energy_fits_its_own_box(name):
    assert quadrature_log_z(build_target(name), 1000).edge_fraction < 1e-6


@pytest.mark.parametrize("target", [["target.name=ring", "target.box=1"], ["target.name=u2", "target.box=2"],
                                    ["target.name=expression", "target.box=4", "target.expression=z1**2"]])
def test_density2d_refuses_a_cut_box_in_one_line_before_writing(tmp_path, target):
    result = runner.invoke(app, ["density2d", "--config", "ring_planar", "--run-dir", str(tmp_path / "run"),
                                 "--no-progress", *(a for s in target for a in ("--set", s))])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "outermost cells" in lines[0] and "target.box" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def race():
    spec = importlib.util.spec_from_file_location("race", Path(__file__).resolve().parent.parent / "scripts" / "race.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_race_refuses_a_gaussian_noise_contender_before_any_runs(race, tmp_path, monkeypatch, capsys):
    write_mnist(tmp_path / "mnist", n_train=40, n_test=16, images=digits(28)[:56])
    monkeypatch.setattr(race, "spawn", lambda spec: pytest.fail("a contender started"))
    argv = ["--budget", "5", "--data", str(tmp_path / "mnist"), "--config", "tarflow_mnist.yaml",
            "--set", "dequantization.kind=gaussian", "--set", "dequantization.sigma=0.05"]
    assert race.main(argv) == NotALikelihoodError.exit_code  # as eval-bpd exits on such a model
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Gaussian noise" in err and "no bits/dim" in err
    # The worker, the path every nfgen contender takes, refuses too (a spec written by hand).
    spec = {"config": "tarflow_mnist.yaml", "sets": ["dequantization.kind=gaussian", "dequantization.sigma=0.05"],
            "data": str(tmp_path / "mnist"), "device": "cpu", "seed": 0, "budget": 1, "points": 1,
            "run_dir": str(tmp_path / "run")}
    with pytest.raises(ValueError, match="no bits/dim"):
        race.nfgen_worker(spec)
    assert not (tmp_path / "run").exists()

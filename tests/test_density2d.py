"""nfgen density2d: planar and radial layers, targets and their true normalisers, short fits
that must reach stated margins of the truth, the pictures, and the command's errors.

(The layers also run through the shared flow harness in test_flows.py, VECTORS.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from nfgen.cli.app import app
from nfgen.density2d.config import load_config, shipped_configs
from nfgen.density2d.estimates import energy_estimates, grid_points, log_weights, quadrature_log_z
from nfgen.density2d.expression import ExpressionError, compile_energy
from nfgen.density2d.model import build_density2d
from nfgen.density2d.targets import ENERGIES, SAMPLERS, EnergyTarget, build_target, ring
from nfgen.flows.vector import MIN_SLOPE, Planar, Radial

runner = CliRunner()


def nfgen(*args: object):
    return runner.invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------------------ layers
def _set_planar(layer: Planar, w: torch.Tensor, u: torch.Tensor, b: float = 0.3) -> Planar:
    with torch.no_grad():
        layer.w.copy_(w)
        layer.u.copy_(u)
        layer.b.fill_(b)
    return layer


def test_planar_logdet_is_the_matrix_determinant_lemma():
    layer = _set_planar(Planar(2), torch.tensor([1.3, -0.4]), torch.tensor([0.8, 1.1]))
    x = torch.randn(16, 2)
    _, logdet = layer(x)
    u_hat, _ = layer.constrained()
    psi = (1 - torch.tanh(x @ layer.w + layer.b) ** 2)[:, None] * layer.w  # h'(w^T z + b) w
    dense = torch.linalg.det(torch.eye(2) + u_hat[None, :, None] * psi[:, None, :])  # det(I + u psi^T), per sample
    assert torch.allclose(logdet, dense.log(), atol=1e-12)
    assert logdet.abs().min() > 1e-3  # not the identity's zero


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_planar_constraint_holds_for_any_raw_parameters(scale):
    # Random raw parameters, and adversarial ones: u against w, w^T u from -1 down to -1e6.
    for trial, push in enumerate([None] * 20 + torch.logspace(0, 6, 20).tolist()):
        w = scale * torch.randn(2)
        u = scale * torch.randn(2) if push is None else -push * w / (w @ w)
        layer = _set_planar(Planar(2), w, u)
        u_hat, m = layer.constrained()
        assert m >= -1 + MIN_SLOPE
        assert (w @ u_hat - m).abs() <= 1e-12 * max(1.0, abs(float(w @ u))), trial
        x = 3 * torch.randn(64, 2) / scale  # across the whole tanh, both saturated ends
        x[0] = -layer.b.detach() * w / (w @ w)  # where tanh' = 1: the least slope
        _, logdet = layer(x)
        assert torch.isfinite(logdet).all() and logdet.min() >= math.log(MIN_SLOPE) - 1e-9


def test_planar_inverse_is_exact_to_its_stated_tolerance_and_degrades_only_with_conditioning():
    torch.manual_seed(1)
    for raw_wu in (5.0, 0.0, -3.0, -8.0):  # m = -1 + softplus(raw_wu): from 4 down to -0.9997
        w = torch.randn(2)
        layer = _set_planar(Planar(2), w, raw_wu * w / (w @ w) + 0.5 * torch.randn(2))
        x = 4 * torch.randn(256, 2)
        z, ld = layer(x)
        x_back, ld_back = layer.inverse(z)
        # The error along w is amplified by the reciprocal of the map's slope there, 1 + m tanh'.
        slope = torch.exp(ld).min().item()
        assert (x_back - x).abs().max() * min(1.0, slope) < Planar.inverse_tol
        assert (ld + ld_back).abs().max() < Planar.inverse_tol / min(1.0, slope)


def test_radial_constraint_and_exact_inverse_for_any_raw_parameters():
    torch.manual_seed(2)
    for trial in range(40):
        layer = Radial(2)
        scale = [0.1, 1.0, 5.0, 20.0][trial % 4]
        with torch.no_grad():
            for p in layer.parameters():
                p.copy_(scale * torch.randn_like(p))
        alpha, beta = layer.constrained()
        assert alpha > 0 and beta >= -alpha
        x = layer.z0.detach() + torch.randn(128, 2) * torch.logspace(-3, 2, 128)[:, None]
        z, ld = layer(x)
        x_back, ld_back = layer.inverse(z)
        assert torch.isfinite(ld).all()
        assert ((x_back - x).abs().max(1).values / (1 + x.abs().max(1).values)).max() < 1e-9
        # A log-det rounds relative to its size; and z - z0, where the map has pulled x close to
        # its centre, keeps only the digits of z that are left: relative error ~ 1e-16 |z| / |z - z0|.
        r_out = (z - layer.z0).norm(dim=1)
        tol = 1e-9 * ld.abs().clamp(min=1) + 1e-13 * (1 + z.abs().max(1).values) / r_out
        assert ((ld + ld_back).abs() <= tol).all()


def test_layers_start_as_the_identity():
    x = torch.randn(8, 2)
    radial = Radial(2)
    assert torch.allclose(radial(x)[0], x, atol=1e-12)
    planar = Planar(2, noise=0.0)
    z, ld = planar(x)
    assert torch.allclose(z, x, atol=1e-12) and ld.abs().max() < 1e-12


# ------------------------------------------------------------------------------ targets
def test_quadrature_log_z_of_the_ring_matches_its_closed_form():
    # Z = 2 pi * integral_0^inf r exp(-(r - 2)^2 / (2 s^2)) dr = 2 pi (2 s sqrt(2 pi) Phi(2/s) + s^2 exp(-2/s^2))
    s = 0.4
    phi = 0.5 * (1 + math.erf(2 / s / math.sqrt(2)))
    exact = math.log(2 * math.pi * (2 * s * math.sqrt(2 * math.pi) * phi + s**2 * math.exp(-2 / s**2)))
    q = quadrature_log_z(EnergyTarget("ring", ring, 5.0), 1000)
    assert abs(q.log_z - exact) < 1e-5 and q.edge_fraction < 1e-10


@pytest.mark.parametrize("name", sorted(ENERGIES))
def test_every_energy_has_finite_mass_inside_its_box(name):
    energy, box = ENERGIES[name]
    coarse, fine = (quadrature_log_z(EnergyTarget(name, energy, box), n) for n in (400, 800))
    assert math.isfinite(fine.log_z) and abs(fine.log_z - coarse.log_z) < 1e-3  # converged
    assert fine.edge_fraction < 1e-6  # the box holds the mass (U2-U4 only thanks to their walls)


@pytest.mark.parametrize("name", ["8gaussians", "checkerboard"])
def test_known_densities_integrate_to_one_and_hold_their_samples(name):
    sampler, log_density, box = SAMPLERS[name]
    points, area = grid_points(box, 900)  # cells of 0.01: the checkerboard's edges fall between cells
    assert abs(log_density(points).exp().sum().item() * area - 1) < 1e-4
    x = sampler(10_000, torch.Generator().manual_seed(0))
    assert torch.isfinite(log_density(x)).all()  # every sample lies in the support


def test_every_sampler_draws_reproducible_points_in_its_box():
    for name, (sampler, _, box) in SAMPLERS.items():
        a, b = (sampler(4000, torch.Generator().manual_seed(3)) for _ in range(2))
        assert a.shape == (4000, 2) and torch.equal(a, b), name
        assert (a.abs().max(1).values < box).float().mean() > 0.995, name


def test_an_expression_is_the_energy_it_writes():
    x = 3 * torch.randn(100, 2)
    u = compile_energy("0.5*((sqrt(z1**2+z2**2)-2)/0.4)**2")
    assert torch.allclose(u(x), ring(x), atol=1e-12)
    u = compile_energy("-logaddexp(-(z1-2)**2/2, -(z1+2)**2/2) + 0.5*z2**2 + pi - e + max(z1, 0) * 0")
    expected = -torch.logaddexp(-(x[:, 0] - 2) ** 2 / 2, -(x[:, 0] + 2) ** 2 / 2) + 0.5 * x[:, 1] ** 2 + math.pi - math.e
    assert torch.allclose(u(x), expected, atol=1e-12)


@pytest.mark.parametrize("text, message", [
    ("__import__('os').system('true')", "unknown function"),
    ("z1.__class__", "not allowed"),
    ("(lambda: z1)()", "unknown function"),
    ("open('f')", "unknown function"),
    ("[z1, z2][0]", "not allowed"),
    ("x + z2", "unknown name 'x'"),
    ("exp(z1, z2)", "takes 1 argument"),
    ("exp(z1=1)", "plain positional"),
    ("z1 if z2 else 0", "not allowed"),
    ("z1 +", "not a formula"),
    ("'abc'", "not allowed"),
    ("", "empty"),
    ("+".join(["z1"] * 300), "parts"),
])
def test_an_expression_refuses_anything_but_a_formula(text, message):
    with pytest.raises(ExpressionError, match=message):
        compile_energy(text)


# ------------------------------------------------------------------------------ short fits
def _config(tmp_path: Path, **sections) -> Path:
    cfg = {"name": "t", "train": {"log_every": 10, "eval_every": 100, "checkpoint_every": 100},
           "eval": {"samples": 4000, "quadrature": 300, "grid": 40, "dpi": 40}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory):
    """A short reverse-KL fit of the ring by spline couplings, through the command line."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # the command's own precision
    torch.manual_seed(0)
    try:
        tmp = tmp_path_factory.mktemp("ring")
        config = _config(tmp, target={"name": "ring"},
                         flow={"kind": "coupling", "layers": 3, "coupling": "spline", "hidden": 32, "blocks": 1,
                               "coupling_options": {"bins": 8, "bound": 4.0}},
                         train={"max_steps": 400, "lr": 0.005, "batch_size": 256, "anneal_steps": 100},
                         eval={"samples": 20_000})
        result = nfgen("density2d", "--config", config, "--run-dir", tmp / "run", "--no-progress")
        assert result.exit_code == 0, result.output
        yield tmp / "run", result.output
    finally:
        torch.set_default_dtype(previous)


# nats: the bound after 400 steps must be this close to the quadrature log Z. The fit's outcome
# depends on float32 rounding from its first step on: seeds 0-2 gave 0.038, 0.037, 0.022 on torch
# 2.14.1 and 0.231, 0.037, 0.079 on torch 2.4.1 (the same code; the runs part at ~1e-7 in step 1).
RING_MARGIN = 0.3
EIGHT_GAUSSIANS_MARGIN = 0.2  # nats: the test log-likelihood after 400 steps, below the true density's


def test_a_short_ring_fit_lowers_the_reverse_kl_and_bounds_log_z(ring_run):
    run, output = ring_run
    s = json.loads((run / "summary.json").read_text())
    assert "ELBO" in output and s["steps"] == 400 and s["skipped_steps"] == 0
    # Never above the truth by more than its Monte Carlo error (3 standard errors); close to it.
    assert s["elbo"] <= s["log_z_quadrature"] + 3 * s["elbo_stderr"]
    assert s["reverse_kl"] < RING_MARGIN
    assert abs(s["log_z_importance"] - s["log_z_quadrature"]) < 0.05
    # The untrained flow (the same seed's initialisation) was far worse: training lowered the KL.
    torch.manual_seed(0)
    cfg = load_config(run / "config.yaml")
    untrained = build_density2d(cfg.flow, "energy")
    target = build_target("ring")
    log_w = log_weights(untrained, target, 20_000, None)
    before = energy_estimates(log_w, s["log_z_quadrature"])
    assert before["reverse_kl"] > s["reverse_kl"] + 0.5


def test_the_pictures_are_written_with_their_size_and_not_blank(ring_run):
    run, _ = ring_run
    for name, size in (("density.png", (480, 144)), ("training.png", (400, 152))):
        with Image.open(run / "figures" / name) as im:
            assert im.size == size, name
            pixels = torch.tensor(np.array(im.convert("L")), dtype=torch.float64).flatten()
        assert pixels.std() > 20 and len(pixels.unique()) > 50, name  # drawn, not one flat colour
    tb = list((run / "tb").glob("events.out.tfevents.*"))
    assert tb and tb[0].stat().st_size > 10_000  # scalars and the two pictures
    assert (run / "checkpoints" / "last.pt").is_file()
    # The image commands refuse it by name, not with a puzzling config error.
    result = nfgen("sample", "--ckpt", run / "checkpoints" / "last.pt", "--out", run / "x.png")
    assert result.exit_code == 1 and "holds a 2-D flow of `nfgen density2d`" in result.output


def test_a_short_likelihood_fit_of_eight_gaussians_nears_the_true_density(tmp_path):
    torch.set_default_dtype(torch.float32)
    config = _config(tmp_path, target={"name": "8gaussians"},
                     flow={"kind": "coupling", "layers": 3, "coupling": "spline", "hidden": 32, "blocks": 1,
                           "coupling_options": {"bins": 8, "bound": 4.0}},
                     train={"max_steps": 400, "lr": 0.005, "batch_size": 256})
    result = nfgen("density2d", "--config", config, "--run-dir", tmp_path / "run", "--no-progress")
    assert result.exit_code == 0, result.output
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    # The gap, true minus model log-likelihood on the same test points, estimates KL(p || q) >= 0
    # (seeds 0-2 measured 0.086, 0.090, 0.109, each +-0.007).
    assert -3 * s["gap_stderr"] < s["gap"] < EIGHT_GAUSSIANS_MARGIN
    assert abs(s["true_test_log_likelihood"] - s["test_log_likelihood"] - s["gap"]) < 1e-6


# ------------------------------------------------------------------------------ the command
def test_every_shipped_config_loads_by_bare_name():
    names = shipped_configs()
    assert {"ring_planar.yaml", "eight_gaussians_spline.yaml", "moons_affine.yaml"} <= set(names)
    for name in names:
        load_config(name.removesuffix(".yaml"), ["train.max_steps=1"])


@pytest.mark.parametrize("sets, message", [
    (["target.name=donut"], "target.name 'donut' is not one of"),
    (["target.name=expression", "target.box=4", "target.expression=__import__('os')"], "target.expression: unknown function"),
    (["target.name=expression", "target.expression=z1**2"], "needs target.box > 0"),
    (["target.name=expression", "target.box=4", "target.expression=z1**2"], "not normalisable"),
    (["target.name=expression", "target.box=4", "target.expression=log(z1)"], "NaN"),
    (["target.name=csv"], "needs target.csv"),
    (["target.name=csv", "target.csv=/nonexistent.csv"], "cannot read /nonexistent.csv"),
    (["flow.kind=glow"], "flow.kind: 'glow' is not one of"),
    (["flow.coupling=cubic", "flow.kind=coupling"], "unknown coupling transform 'cubic'"),
    (["flow.layerz=3"], "unknown key 'flow.layerz'"),
    (["train.lr=0"], "train.lr must be in"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, sets, message):
    config = _config(tmp_path, target={"name": "ring"}, train={"max_steps": 2})
    run = tmp_path / "run"
    result = nfgen("density2d", "--config", config, "--run-dir", run, *[a for s in sets for a in ("--set", s)])
    assert result.exit_code != 0
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert message in result.output, result.output
    assert not run.exists()


def test_a_csv_of_points_trains_and_a_second_run_needs_overwrite(tmp_path):
    torch.set_default_dtype(torch.float32)
    points = SAMPLERS["moons"][0](500, torch.Generator().manual_seed(0))
    csv = tmp_path / "points.csv"
    csv.write_text("x,y\n" + "".join(f"{a:.6f},{b:.6f}\n" for a, b in points.tolist()))
    config = _config(tmp_path, target={"name": "csv", "csv": str(csv)},
                     flow={"kind": "coupling", "layers": 2, "hidden": 16, "blocks": 0}, train={"max_steps": 20})
    run = tmp_path / "run"
    result = nfgen("density2d", "--config", config, "--run-dir", run, "--no-progress")
    assert result.exit_code == 0, result.output
    s = json.loads((run / "summary.json").read_text())
    assert s["test_points"] == 100 and math.isfinite(s["test_log_likelihood"]) and "gap" not in s
    again = nfgen("density2d", "--config", config, "--run-dir", run, "--no-progress")
    assert again.exit_code != 0 and "already holds a run" in again.output
    assert nfgen("density2d", "--config", config, "--run-dir", run, "--no-progress", "--overwrite").exit_code == 0
    csv.write_text("x,y\n1,2\n3,oops\n")
    bad = nfgen("density2d", "--config", config, "--run-dir", tmp_path / "other")
    assert bad.exit_code == 1 and "line 3 is not two numbers" in bad.output and not (tmp_path / "other").exists()


def test_planar_and_radial_flows_train_on_both_objectives(tmp_path):
    torch.set_default_dtype(torch.float32)
    for kind, target in (("planar", "u1"), ("radial", "moons")):
        config = _config(tmp_path, target={"name": target}, flow={"kind": kind, "layers": 4},
                         train={"max_steps": 10}, eval={"samples": 500})
        result = nfgen("density2d", "--config", config, "--run-dir", tmp_path / kind, "--no-progress")
        assert result.exit_code == 0, result.output


def test_off_a_terminal_progress_is_plain_lines_not_bar_redraws(tmp_path):
    # Redirected to a file (a cluster job), the bar's carriage-return redraws would all stay.
    result = nfgen("density2d", "--config", "ring_planar", "--run-dir", tmp_path / "run", "--set", "train.max_steps=40",
                   "--set", "train.log_every=20", "--set", "flow.layers=2", "--set", "eval.samples=500")
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output
    assert [line.split(":")[0] for line in result.output.splitlines() if line.startswith("step ")] == \
        ["step 1 of 40", "step 20 of 40", "step 40 of 40"]

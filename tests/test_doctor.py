"""``nfgen check``: healthy models pass with every block listed; a broken block is named."""

import math

import pytest
import torch
import yaml
from flow_harness import randomize
from typer.testing import CliRunner

from nfgen.cli.app import app
from nfgen.config.schema import config_from_dict
from nfgen.flows.actnorm import ActNorm
from nfgen.flows.affine import Affine
from nfgen.flows.base import Flow, set_memory_saving
from nfgen.flows.coupling import ChannelMask, Coupling
from nfgen.flows.nets import glow_net
from nfgen.model.image_flow import build_model
from nfgen.tasks import doctor
from nfgen.tasks.doctor import MIN_SCALE, diagnose, format_report, verdict
from nfgen.training.checkpoint import save_checkpoint

runner = CliRunner()
DATA = {"dataset": "folder", "root": "x"}  # check builds the model only; no data is read
SECTION = {"levels": 2, "steps": 2, "hidden": 8}  # model.<arch>
BLOCKS = {
    "glow": ["level0.squeeze", "level0.step0", "level0.step1", "level0.split_prior",
             "level1.squeeze", "level1.step0", "level1.step1", "level1.top_prior"],
    "realnvp": ["level0.coupling0", "level0.coupling1", "level0.squeeze", "level0.coupling2",
                "level0.coupling3", "level1.coupling0", "level1.coupling1", "level1.coupling2"],
}


def config(arch: str = "glow"):
    extra, section = ({"preprocess": "logit"}, {"blocks": 1}) if arch == "realnvp" else ({}, {})
    return config_from_dict({"data": DATA, "model": {"image_shape": [1, 8, 8], "arch": arch, **extra,
                                                     arch: {**SECTION, **section}}})


def model(arch: str = "glow"):
    return randomize(build_model(config(arch))).eval()


def step(m, level: int, k: int):
    return m.body.levels[level].flow.flows[1 + k]  # Glow: [squeeze, step0, step1, ...]


def failing(report) -> set[str]:
    return {b.name for b in report.blocks if b.problems}


@pytest.mark.parametrize("arch", ["glow", "realnvp"])
def test_a_randomised_model_is_healthy_and_every_block_is_listed(arch):
    report = diagnose(model(arch), n=4)
    assert report.healthy, report.problems
    assert [b.name for b in report.blocks] == BLOCKS[arch]
    assert all(b.logdet_error is not None and b.logdet_error < 1e-9 for b in report.blocks)
    assert all(b.min_scale is not None for b in report.blocks if "coupling" in b.name or "step" in b.name)
    text = format_report(report)
    assert all(name in text for name in BLOCKS[arch])
    assert verdict(report).startswith("healthy: all 8 blocks within limits")
    if arch == "glow":
        assert "level0.step1 (Sequential: ActNorm, InvConv1x1LU, Coupling)" in text
        assert all(b.cond is not None and b.cond < 10 for b in report.blocks if "step" in b.name)


def break_lu(conv):
    conv.log_s[0] = -30.0  # one singular value ~1e-13


def break_plain(conv):
    conv.weight[1] = conv.weight[0]  # rank deficient, up to rounding


@pytest.mark.parametrize("permutation,breaking", [("conv1x1_lu", break_lu), ("conv1x1", break_plain)])
def test_a_near_singular_1x1_conv_is_named(permutation, breaking):
    cfg = config_from_dict({"model": {"image_shape": [1, 8, 8], "glow": {**SECTION, "permutation": permutation}}})
    m = randomize(build_model(cfg)).eval()
    with torch.no_grad():
        breaking(step(m, 0, 1).flows[1])
    report = diagnose(m, n=4)
    assert not report.healthy
    assert failing(report) == {"level0.step1"}
    assert any(p.startswith("level0.step1: 1x1-conv condition number") for p in report.problems)
    assert verdict(report).startswith("NOT healthy: ")


def test_a_nan_parameter_is_named_and_later_blocks_are_still_measured():
    m = model()
    with torch.no_grad():
        step(m, 1, 0).flows[0].loc[0, 0] = math.nan
    report = diagnose(m, n=4)
    assert failing(report) == {"level1.step0"}
    assert "level1.step0: non-finite values in parameter flows.0.loc" in report.problems
    assert any(p.startswith("sampling: 4 of 4 samples not finite") for p in report.problems)
    after = report.blocks[BLOCKS["glow"].index("level1.step1")]
    assert after.notes and math.isfinite(after.roundtrip32)  # its NaN input was replaced, not passed on


def test_a_collapsing_coupling_scale_is_named():
    # The default soft clamp bounds log_s to [-2, 2], so no scale can fall below e^-2 ~ 0.14.
    # A user may build couplings with a wider clamp; with clamp 30 and a net that outputs a raw
    # log-scale of -20 the scale is exp(30 tanh(-2/3)) ~ 2.5e-8.
    m = model()
    coupling = randomize(Coupling(ChannelMask(4), glow_net(8), Affine(clamp=30.0)))
    with torch.no_grad():
        coupling.net[-1].conv.weight.zero_()
        coupling.net[-1].log_gain.zero_()
        coupling.net[-1].conv.bias[2:] = -20.0  # the raw log-scale half of the net's output
    step(m, 0, 0).flows[2] = coupling
    report = diagnose(m, n=4)
    row = report.blocks[BLOCKS["glow"].index("level0.step0")]
    assert row.min_scale == pytest.approx(math.exp(30 * math.tanh(-20 / 30)), rel=1e-6)
    assert row.min_scale < MIN_SCALE
    assert "level0.step0" in failing(report)
    assert any(p.startswith("level0.step0: smallest coupling scale") for p in report.problems)


def test_a_wrong_log_det_formula_is_caught_by_the_jacobian():
    class OffByAMilli(ActNorm):
        def _logdet(self, x):
            return super()._logdet(x) + 1e-3

    m = model()
    old = step(m, 1, 1).flows[0]
    wrong = OffByAMilli(8)
    wrong.load_state_dict(old.state_dict())
    step(m, 1, 1).flows[0] = wrong
    report = diagnose(m, n=2)
    assert failing(report) == {"level1.step1"}
    assert any(p.startswith("level1.step1: log-det error 0.001") for p in report.problems)


def test_a_jacobian_too_large_is_skipped_out_loud(monkeypatch):
    monkeypatch.setattr(doctor, "MAX_JACOBIAN_DIMS", 16)  # RealNVP's 1x8x8 checkerboards need 64
    report = diagnose(model("realnvp"), n=2)
    row = report.blocks[0]
    assert row.logdet_error is None and row.logdet_at == "skip"
    assert row.notes[0].startswith("log-det check skipped: a 64-dim Jacobian at its fixed size 8x8")
    assert "note: level0.coupling0: log-det check skipped" in format_report(report)
    assert report.blocks[3].logdet_at == "2x2"  # a 4-channel coupling falls back to the smaller crop


def test_check_a_fresh_model_from_a_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"data": DATA, "model": {"image_shape": [1, 8, 8], "arch": "glow", "glow": SECTION}}))
    result = runner.invoke(app, ["check", "--config", str(path), "--set", "model.glow.steps=1", "--n", "4", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "level1.top_prior (LearnedGaussian)" in result.output
    assert result.output.strip().splitlines()[-1].startswith("healthy: all 6 blocks within limits")


def test_check_a_checkpoint_with_a_nan_weight_fails(tmp_path):
    m = model()
    with torch.no_grad():
        step(m, 0, 0).flows[1].lower[1, 0] = math.nan
    path = tmp_path / "bad.pt"
    save_checkpoint(path, {"config": config().to_dict(), "model": m.state_dict()})
    result = runner.invoke(app, ["check", "--ckpt", str(path), "--n", "2", "--device", "cpu"])
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("NOT healthy: ") and "level0.step0: non-finite values in parameter flows.1.lower" in last


def test_check_needs_exactly_one_model_source(tmp_path):
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: give exactly one of --ckpt FILE or --config FILE"


class HalfScale(Flow):
    """A layer the doctor has never seen: it is measured by what it says of itself."""

    any_size = True
    stem = "halver"

    def describe(self):
        return "HalfScale: x / 2"

    def diagnostics(self, x, context=None):
        return {"min_scale": 0.5}

    def forward(self, x, context=None):
        return x / 2, x.new_full((x.shape[0],), -x[0].numel() * math.log(2))

    def inverse(self, z, context=None):
        return z * 2, z.new_full((z.shape[0],), z[0].numel() * math.log(2))


def test_a_new_kind_of_layer_describes_and_measures_itself():
    m = model()
    m.body.levels[1].flow.flows.insert(1, HalfScale())
    report = diagnose(m, n=2)
    row = next(b for b in report.blocks if b.name == "level1.halver")
    assert row.kind == "HalfScale: x / 2" and row.min_scale == 0.5 and row.logdet_at == "2x2"
    assert row.logdet_error is not None and row.logdet_error < 1e-9


def test_a_memory_saving_model_is_checked_block_by_block():
    m = model()
    set_memory_saving(m, True)
    assert diagnose(m, n=2).healthy
    assert all(lv.flow.memory_saving for lv in m.body.levels)  # checked as it runs, and left so

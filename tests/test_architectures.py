"""The architecture registry: what the command line can build is what the tests iterate, and an
architecture registered later (as a plugin registers one) is a config choice, a listed section
and a subject of the architecture-parametrized tests, with no other edit."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from archs import ARCHS, arch_names, tiny_body, tiny_model
from flow_harness import check_flow, randomize
from typer.testing import CliRunner

import nfgen
from nfgen.cli.app import app
from nfgen.config.keys import keys, opt
from nfgen.config.schema import Config, ConfigError, config_from_dict
from nfgen.flows import architectures
from nfgen.flows.architectures import architecture_names, register_architecture
from nfgen.flows.base import Sequential
from nfgen.flows.coupling import CheckerboardMask, Coupling
from nfgen.flows.multiscale import Level, MultiScaleFlow, Shape
from nfgen.flows.priors import LearnedGaussian
from nfgen.flows.section import ArchSection, CouplingSpec, check, coupling_field
from nfgen.model.image_flow import ARCHITECTURES


@dataclasses.dataclass(frozen=True)
class NiceConfig(CouplingSpec, ArchSection):
    """NICE (Dinh, Krueger & Bengio, 2014): additive couplings on alternating checkerboard
    halves, then a diagonal scaling; one scale, so no levels."""

    couplings: int = opt(4, "additive couplings, alternating checkerboard parity")
    coupling: str = coupling_field("coupling", "additive", "NICE: additive")

    def validate(self, where: str, image_shape: tuple[int, int, int], memory_saving: bool) -> None:
        check(1 <= self.couplings <= 64, f"{where}.couplings must be in 1..64, got {self.couplings}")
        super().validate(where, image_shape, memory_saving)


def build_nice(shape: Shape, section: NiceConfig, context_dim: int = 0) -> MultiScaleFlow:
    """``couplings`` checkerboard couplings, parities alternating, then NICE's diagonal scaling
    layer (a learned per-dimension scale and shift)."""
    c, h, w = shape
    net = section.net()
    flows = [Coupling(CheckerboardMask(c, (h, w), parity=k % 2), net, section.transform(), context_dim)
             for k in range(section.couplings)]
    return MultiScaleFlow([Level(Sequential(*flows, LearnedGaussian(shape)), shape, shape, split=False)])


def _tiny_nice(shape: Shape, depth: int, width: int) -> dict:
    return {"couplings": 2 * depth, "hidden": width}


@pytest.fixture
def nice(monkeypatch) -> str:
    """NICE, registered for this test only (the registry is restored after it)."""
    monkeypatch.setattr(architectures, "_REGISTRY", dict(architectures.architectures()))
    register_architecture("nice", build=build_nice, tiny=_tiny_nice, preprocess="logit",
                          help="NICE (Dinh et al., 2014): arch nice's options")(NiceConfig)
    return "nice"


def test_an_architecture_registered_later_is_a_config_choice_with_its_section(nice):
    assert "nice" not in ARCHS and arch_names() == [*ARCHS, "nice"]  # the harness's list, read now
    assert list(ARCHITECTURES) == arch_names() and ARCHITECTURES["nice"] is build_nice
    cfg = config_from_dict({"model": tiny_model("nice", (1, 8, 8))})
    assert cfg.model.arch == "nice" and cfg.model.nice == NiceConfig(couplings=4, hidden=8) and cfg.model.glow is None
    assert config_from_dict(cfg.to_dict()) == cfg  # the YAML and checkpoint format: model.nice
    assert cfg.to_dict()["model"]["nice"]["coupling"] == "additive"
    rows = {k.path: k for k in keys(Config)}
    assert rows["model.arch"].type.endswith("| tarflow | nice") and rows["model.nice"].section
    assert rows["model.nice.couplings"].default == "4"
    listing = CliRunner().invoke(app, ["config", "--keys"]).output
    assert "model.nice.couplings" in listing and "model.nice:" in listing
    for data, message in [
        ({"arch": "glow", "nice": {"couplings": 2}}, "model.nice is the section of arch nice, but model.arch is glow"),
        ({"arch": "nice", "nice": {"levels": 2}}, "unknown key 'model.nice.levels'"),
        ({"arch": "nice", "nice": {"couplings": 0}}, "model.nice.couplings must be in 1..64"),
        ({"arch": "nice", "nice": {"coupling": "cubic"}}, "model.nice.coupling: unknown coupling transform 'cubic'"),
        ({"arch": "nicer"}, "model.arch: 'nicer' is not one of 'glow', 'realnvp', 'flowpp', 'tarflow', 'nice'"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            config_from_dict({"model": {"image_shape": [1, 8, 8], **data}})


def test_an_architecture_registered_later_gets_the_harness_and_the_exact_probability_test(nice):
    # The flow harness (round trip, log-det against the autograd Jacobian, gradients), with a
    # class embedding too, as test_flows runs it on every registered architecture.
    body = randomize(tiny_body("nice", (2, 4, 4)))
    check_flow(body, torch.randn(2, 2, 4, 4))
    conditional = randomize(tiny_body("nice", (2, 4, 4), context_dim=3))
    check_flow(conditional, torch.randn(2, 2, 4, 4), torch.randn(2, 3))
    # The 16-image exact-probability test of test_likelihood, on the new architecture.
    import test_likelihood

    test_likelihood.test_probabilities_sum_to_mass_in_data_box("nice", "logit", "variational")


def test_the_hostile_value_fuzz_walks_a_later_architecture(nice):
    import test_hostile_values as fuzz

    walked = {key for base in fuzz._arch_bases() for key in fuzz._keys(Config, "", base)}
    assert {f"model.nice.{f.name}" for f in dataclasses.fields(NiceConfig)} <= walked


def test_the_command_line_sees_the_architectures_the_tests_iterate():
    # A fresh interpreter, as a user runs nfgen: the architectures it offers (the choices of
    # model.arch and the model.<arch> sections it lists) are exactly the ones every
    # architecture-parametrized test iterates, in the same order: the tests see no more and no
    # fewer architectures than the command line does.
    done = subprocess.run([sys.executable, "-m", "nfgen", "config", "--keys"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    choices = re.search(r"^model\.arch\s+(.+?)\s{2,}", done.stdout, re.MULTILINE).group(1).split(" | ")
    sections = re.findall(r"^model\.(\w+):", done.stdout, re.MULTILINE)
    assert choices == sections == ARCHS == architecture_names()
    built = nfgen.build_model({"model": tiny_model(ARCHS[-1], (1, 8, 8))})
    assert built.body.input_shape == (1, 8, 8)


def test_a_taken_name_or_a_bad_one_is_refused_in_one_line(nice):
    with pytest.raises(ValueError, match="architecture 'glow' is already registered"):
        register_architecture("glow", build=build_nice, tiny=_tiny_nice, help="another glow")(NiceConfig)
    with pytest.raises(ValueError, match="a Python name"):
        register_architecture("my-flow", build=build_nice, tiny=_tiny_nice, help="h")
    with pytest.raises(ValueError, match="unknown architecture 'nope'; expected one of glow, realnvp, flowpp, "
                                         "tarflow, nice"):
        architectures.architecture("nope")
    assert architecture_names()[:4] == ["glow", "realnvp", "flowpp", "tarflow"]


# The files whose tests are parametrized by the architecture registry (tests/archs.py).
PARAMETRIZED = ["test_flows.py", "test_likelihood.py", "test_conditional.py", "test_training.py", "test_cli.py"]


def test_a_plugin_named_to_pytest_joins_every_architecture_parametrized_test():
    """``pytest --plugin nice`` imports tests/plugins/nice.py (NICE, one file outside the package)
    before collection: each registry-driven file then has tests for NICE, with no test edit."""
    here = Path(__file__).parent

    def collected(*extra: str) -> set[str]:
        done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                               *extra, *(str(here / f) for f in PARAMETRIZED)],
                              capture_output=True, text=True, timeout=300, cwd=here.parent)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return {line for line in done.stdout.splitlines() if "::" in line}

    plain, with_nice = collected(), collected("--plugin", "nice")
    added = with_nice - plain
    assert plain < with_nice and all("nice" in test for test in added)
    assert {test.split("::")[0].rpartition("/")[2] for test in added} == set(PARAMETRIZED)

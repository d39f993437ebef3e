"""nfgen config: the resolved YAML, and every key's type, default and help from the field
metadata, which also writes docs/configs.md."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from nfgen.cli.app import app
from nfgen.cli.config_verb import BEGIN, DOCS_COMMAND, END, reference_block, with_reference
from nfgen.config.keys import keys, opt, text_listing
from nfgen.config.parse import _section_type, section_choices
from nfgen.config.schema import Config, load_config
from nfgen.density2d.config import Density2DConfig
from nfgen.density2d.config import load_config as load_2d
from nfgen.flows.architectures import architecture_names, architecture_sections

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def nfgen(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _leaves(cls: type, prefix: str = "") -> list[str]:
    """Every plain key of a config tree, independently of nfgen.config.keys (a field holding one
    of several sections: every registered one)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        for name, (choice, _) in section_choices(f).items():
            out += _leaves(choice, f"{prefix}{name}.")
        if section_choices(f):
            continue
        section = _section_type(hints[f.name])
        out += _leaves(section, f"{prefix}{f.name}.") if section else [f"{prefix}{f.name}"]
    return out


@pytest.mark.parametrize("root", [Config, Density2DConfig])
def test_every_key_and_section_has_its_help(root):
    listed = list(keys(root))
    assert [k.path for k in listed if not k.section] == _leaves(root)
    assert all(k.help and "\n" not in k.help for k in listed), [k.path for k in listed if not k.help]
    if root is Config:
        assert {f"model.{a}" for a in architecture_names()} <= {k.path for k in listed if k.section}


def test_keys_show_types_and_the_defaults_a_config_gets():
    rows = {k.path: k for k in keys(Config)}
    assert (rows["train.lr"].type, rows["train.lr"].default) == ("float", "0.001")
    assert rows["model.arch"].type == " | ".join(architecture_names())
    assert rows["model.arch"].type.startswith("glow | realnvp | flowpp | tarflow")
    assert (rows["train.max_time"].type, rows["train.max_time"].default) == ("float | str | null", "null")
    assert (rows["model.tarflow.layers"].type, rows["model.tarflow.layers"].default) == ("list of int", "[8]")
    assert rows["train.betas"].type == "[float, float]" and rows["model.glow.coupling_options"].default == "{}"
    # The listed defaults are the ones an empty config resolves to.
    empty = Config().to_dict()
    for path in ("train.lr", "train.warmup_steps", "data.root", "model.n_bits", "dequantization.kind"):
        section, key = path.split(".")
        assert yaml.safe_load(rows[path].default) == empty[section][key], path
    # An architecture's section lists the defaults its dataclass fills in when that arch is chosen.
    assert yaml.safe_load(rows["model.glow.steps"].default) == load_config("glow_cifar", ["model.glow.steps=32"]) \
        .model.glow.steps == architecture_sections()["glow"][0]().steps


def test_a_field_without_help_is_refused():
    with pytest.raises(TypeError, match="needs its one-line help"):
        opt(3)


def test_config_prints_the_resolved_yaml_which_loads_back_to_the_same_config(tmp_path):
    result = nfgen("config", "quickstart.yaml", "--set", "train.lr=0.01", "--set", "model.glow.steps=2")
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output)
    cfg = load_config("quickstart.yaml", ["train.lr=0.01", "model.glow.steps=2"])
    assert resolved == cfg.to_dict() and resolved["train"]["lr"] == 0.01 and resolved["model"]["glow"]["steps"] == 2
    assert resolved["train"]["ema_decay"] == 0.0  # defaults filled in
    (tmp_path / "c.yaml").write_text(result.output)
    assert load_config(tmp_path / "c.yaml") == cfg


def test_config_of_a_2d_flow():
    result = nfgen("config", "ring_planar", "--density2d", "--set", "train.lr=0.002")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output) == load_2d("ring_planar", ["train.lr=0.002"]).to_dict()


@pytest.mark.parametrize("args, message", [
    ([], "give a config FILE to resolve, or --keys to list every key"),
    (["quickstart.yaml", "--keys"], "give a config FILE to resolve, or --keys to list every key"),
    (["quickstart.yaml", "--markdown"], "--markdown goes with --keys"),
    (["--keys", "--set", "train.lr=1"], "--set goes with a config FILE, not --keys"),
    (["quickstart.yaml", "--set", "train.lrr=1"], "unknown key 'train.lrr' (did you mean 'lr'?)"),
    (["nope.yaml"], "config 'nope.yaml' not found; give a path or one of: flowpp_cifar.yaml"),
])
def test_config_mistakes_are_one_line(args, message):
    result = nfgen("config", *args)
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_keys_listing_has_every_key_once():
    result = nfgen("config", "--keys")
    assert result.exit_code == 0 and result.output == text_listing(Config)
    lines = result.output.splitlines()
    firsts = [line.split()[0] for line in lines[1:]]
    assert [f for f in firsts if not f.endswith(":")] == _leaves(Config)
    flat = nfgen("config", "--keys", "--density2d").output
    assert [line.split()[0] for line in flat.splitlines()[1:] if not line.split()[0].endswith(":")] == _leaves(Density2DConfig)


def test_docs_configs_md_holds_the_generated_reference():
    page = (REPO / "docs" / "configs.md").read_text()
    assert page.count(BEGIN) == 1 and page.count(END) == 1
    assert with_reference(page) == page, f"docs/configs.md is stale: run `{DOCS_COMMAND}`"
    assert reference_block() in page and nfgen("config", "--keys", "--markdown").output == reference_block()
    for path in _leaves(Config) + _leaves(Density2DConfig):
        assert f"| `{path}` |" in reference_block(), path


def test_a_stale_reference_is_replaced_and_the_prose_kept():
    block = reference_block()
    stale = f"# Configs\n\nProse.\n\n{block.replace('peak learning rate', 'old words')}\nMore prose.\n"
    assert with_reference(stale) == f"# Configs\n\nProse.\n\n{block}\nMore prose.\n"
    assert with_reference("# Configs\n") == f"# Configs\n\n{block}"

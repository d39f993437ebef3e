"""Every value a user controls, fed hostile values: each is refused before any work starts, with
exit code 2 and one line (config keys, CLI options, environment variables)."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
from archs import ARCHS, arch_names, tiny_model
from typer.testing import CliRunner

from nfgen.cli.app import app
from nfgen.config.parse import section_choices
from nfgen.config.schema import Config, ConfigError, _section_type, config_from_dict
from nfgen.flows.architectures import architecture

runner = CliRunner()
HOSTILE = [math.nan, math.inf, -math.inf, -1, 2**64, "abc", [1], {"a": 1}, None]
BASE = {"name": "r", "data": {"dataset": "folder", "root": "data"},
        "model": {"arch": "glow", "image_shape": [1, 8, 8], "glow": {"levels": 2, "steps": 1, "hidden": 8}}}
# (key, value) pairs that are legitimately valid: free-form names and paths, a one-temperature
# list, a gradient clip so large it never clips, a section given as null (its defaults).
WANDB = ("train.wandb_project", "train.wandb_entity", "train.wandb_run_name")  # free-form W&B names
VALID = {("name", "abc"), ("run_dir", "abc"), ("data.root", "abc"), ("train.sample_temperatures", (1,)),
         ("train.grad_clip", 2**64), *((key, "abc") for key in WANDB),
         ("model.tarflow.layers", (1,)),  # one Transformer layer in every block
         ("train.fid_features", "abc"),  # a file name, checked when training starts (and only with fid_every)
         ("plugins", ("abc",))}  # a module name: the standard library's abc imports (a missing one: test_plugins.py)
NULLABLE = {"train.max_time", *WANDB}  # null: no time budget; no W&B (project), its defaults (entity, run name)


def _keys(cls: type, prefix: str, data: dict) -> list[str]:
    """Every leaf key of a config section, descending into the sections ``data`` uses (of a
    field holding one of several sections, ``model.<arch>``: the one ``data`` gives)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        choices = section_choices(f)
        for name in (n for n in choices if n in data):
            keys += _keys(choices[name][0], f"{prefix}{name}.", data[name] or {})
        if choices:
            continue
        section = _section_type(hints[f.name])
        if section is None:
            keys.append(prefix + f.name)
        elif f.name in data or dataclasses.is_dataclass(hints[f.name]):
            keys += _keys(section, f"{prefix}{f.name}.", data.get(f.name) or {})
    return keys


def _with(data: dict, key: str, value) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    node, *path = out, *key.split(".")
    for k in path[:-1]:
        node[k] = dict(node.get(k) or {})
        node = node[k]
    node[path[-1]] = value
    return out


def _arch_bases() -> list[dict]:
    """A valid config of every registered architecture (the registry's tiny model): the fuzz
    walks every section's keys."""
    return [BASE] + [_with(BASE, "model", tiny_model(arch, (1, 8, 8))) for arch in arch_names()]


CASES = sorted({(key, repr(value)): (base, key, value) for base in _arch_bases()
                for key in _keys(Config, "", base) for value in HOSTILE}.values(),
               key=lambda c: (c[1], repr(c[2])))


def test_the_walk_covers_every_section():
    keys = {key for _, key, _ in CASES}
    assert {"train.lr", "train.seed", "data.num_workers", "model.glow.steps", "model.realnvp.blocks",
            "dequantization.hidden", "model.glow.coupling_options", "model.tarflow.patch"} <= keys
    for arch in ARCHS:  # every key of every registered architecture's section
        fields = dataclasses.fields(architecture(arch).section)
        assert {f"model.{arch}.{f.name}" for f in fields} <= keys, arch


@pytest.mark.parametrize("base,key,value", CASES, ids=[f"{k}={v!r}" for _, k, v in CASES])
def test_every_config_key_refuses_hostile_values(base, key, value):
    data = _with(base, key, value)
    try:
        cfg = config_from_dict(data)
    except ConfigError as e:
        assert len(str(e).splitlines()) == 1 and str(e).strip()
        return
    if value is None and key in NULLABLE:  # null means "none" here (and to_dict leaves it out)
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) is None
        return
    if value is None:  # a key set to null is refused unless it is a section (defaults)
        pytest.fail(f"{key}=null accepted")
    got = cfg.to_dict()
    for part in key.split("."):
        got = got[part]
    assert (key, tuple(got) if isinstance(got, list) else got) in VALID, f"{key}={value!r} accepted"


SAMPLE = ["sample", "--ckpt", "missing.pt"]
EVAL = ["eval-bpd", "--ckpt", "missing.pt"]
INTERP = ["interpolate", "--ckpt", "missing.pt"]
CHECK = ["check", "--config", "quickstart.yaml"]
OPTION_CASES = [
    *[(SAMPLE, "--n", v) for v in ("0", "-1", "abc", str(2**64), "nan")],
    *[(SAMPLE, "--temperature", v) for v in ("nan", "inf", "-1", "0", "abc", "1e309")],
    *[(SAMPLE, "--seed", v) for v in ("-1", str(2**64))],
    (SAMPLE, "--nrow", "0"), (SAMPLE, "--nrow", "65"), (SAMPLE, "--device", "tpu"),
    (SAMPLE, "--device", "cuda:x"), (SAMPLE, "--out", "grid.xyz"), (SAMPLE, "--out", "grid"),
    *[(EVAL, "--samples", v) for v in ("0", "-3", str(2**64))],
    (EVAL, "--batch-size", "0"), (EVAL, "--split", "valid"), (EVAL, "--device", "tpu"),
    *[(INTERP, o, v) for o, v in (("--pairs", "0"), ("--steps", "1"), ("--seed", "-1"), ("--split", "x"),
                                   ("--out", "i.nope"), ("--device", "gpu"))],
    *[(CHECK, o, v) for o, v in (("--n", "0"), ("--seed", str(2**70)), ("--device", "tpu"))],
    (["train", "--config", "quickstart.yaml"], "--set", "train.lr=nan"),
    (["train", "--config", "quickstart.yaml"], "--set", "train"),
    (["train", "--config", "quickstart.yaml"], "--set", "train.=3"),
]


@pytest.mark.parametrize("command,option,value", OPTION_CASES,
                         ids=[f"{c[0]}{o}={v}" for c, o, v in OPTION_CASES])
def test_every_cli_option_refuses_hostile_values(tmp_path, monkeypatch, command, option, value):
    monkeypatch.chdir(tmp_path)  # a missing checkpoint: the value must be refused before it is read
    result = runner.invoke(app, [*command, option, value])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "does not exist" not in lines[0]
    assert not list(tmp_path.iterdir())  # nothing written


def test_binary_and_deeply_nested_config_files_are_one_line(tmp_path):
    binary = tmp_path / "b.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    deep = tmp_path / "d.yaml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    nested = tmp_path / "n.yaml"
    nested.write_text("model: {glow: {coupling_options: {a: {b: {c: {d: {e: {f: 1}}}}}}}}\n")
    for path, message in ((binary, "not a text file"), (deep, "nested too deeply"), (nested, "nested")):
        result = runner.invoke(app, ["train", "--config", str(path), "--run-dir", str(tmp_path / "r")])
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("env,message", [
    ({"WORLD_SIZE": "2"}, "launch data-parallel training with torchrun"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a non-negative integer"),
    ({"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, "RANK=5 is not below WORLD_SIZE=2"),
])
def test_environment_variables_are_checked(tmp_path, monkeypatch, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    result = runner.invoke(app, ["train", "--config", "quickstart.yaml", "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1

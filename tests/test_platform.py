"""Every platform: the run lock without fcntl (Windows), the device choice (CUDA, then Apple's
MPS, then the CPU), and files written with the user's umask, atomically."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from nfgen.cli.app import app
from nfgen.config.schema import ConfigError, check_device_name
from nfgen.core.atomic import atomic_write, atomic_write_text
from nfgen.core.devices import DeviceError, choose_device

# A Python without fcntl (as on Windows): the import fails, as it does there.
NO_FCNTL = """
import json, sys, warnings
sys.modules["fcntl"] = None
warnings.simplefilter("ignore")  # filelock says it falls back to a soft lock here; Windows has msvcrt
from pathlib import Path
from nfgen.cli.app import app
from nfgen.errors import OutputError
from nfgen.training.rundir import RunFolderLock
try:
    app(["--help"], prog_name="nfgen")
except SystemExit as e:
    helped = e.code
run = Path(sys.argv[1])
first = RunFolderLock(run).acquire()
try:
    RunFolderLock(run).acquire()
    refused = ""
except OutputError as e:
    refused = str(e)
first.release()
again = RunFolderLock(run).acquire()
again.release()
import os
print(json.dumps({"help": helped, "refused": refused, "pid": os.getpid(),
                  "fcntl": sys.modules.get("fcntl") is not None}))
"""


def test_nfgen_starts_and_locks_a_run_folder_without_fcntl(tmp_path):
    done = subprocess.run([sys.executable, "-c", NO_FCNTL, str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["help"] == 0 and report["fcntl"] is False
    # the second training is refused with the holder's PID and host, as with flock
    assert report["refused"] == (f"{tmp_path / 'run'} is in use by another training (pid {report['pid']} "
                                 f"on {socket.gethostname()}); wait for it to finish or stop it, or choose another "
                                 "--run-dir")


def test_the_holder_file_names_this_process(tmp_path):
    from nfgen.training.rundir import RunFolderLock

    lock = RunFolderLock(tmp_path).acquire()
    try:
        assert (tmp_path / ".lock.holder").read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
    finally:
        lock.release()


@pytest.mark.parametrize("name, cuda, mps, chosen", [
    ("auto", True, True, "cuda"),
    ("auto", True, False, "cuda"),
    ("auto", False, True, "mps"),
    ("auto", False, False, "cpu"),
    ("cpu", True, True, "cpu"),
    ("cuda:1", True, False, "cuda:1"),
    ("mps", False, True, "mps"),
])
def test_auto_picks_cuda_then_mps_then_cpu(name, cuda, mps, chosen):
    assert choose_device(check_device_name(name), cuda=cuda, mps=mps) == chosen


@pytest.mark.parametrize("name, cuda, mps, missing", [("cuda", False, True, "CUDA"), ("cuda:0", False, False, "CUDA"),
                                                      ("mps", True, False, "MPS")])
def test_an_accelerator_the_machine_lacks_is_one_line(name, cuda, mps, missing):
    with pytest.raises(DeviceError) as e:
        choose_device(name, cuda=cuda, mps=mps)
    assert f"but {missing}" in str(e.value) and "use auto or cpu" in str(e.value) and "\n" not in str(e.value)


def test_mps_is_a_device_name_and_others_are_not():
    assert check_device_name("mps") == "mps"
    for bad in ("mps:0", "metal", "gpu"):
        with pytest.raises(ConfigError, match="auto, cpu, cuda, cuda:N or mps"):
            check_device_name(bad)


@pytest.mark.skipif(getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
                    reason="this machine has MPS")
def test_device_mps_without_mps_is_a_one_line_error_from_the_cli():
    result = CliRunner().invoke(app, ["check", "--config", "quickstart.yaml", "--device", "mps"])
    assert result.exit_code == 1
    assert result.output == ("error: train.device is 'mps' but MPS (Apple silicon's GPU, macOS 12.3+) is not available "
                             "in this torch; use auto or cpu\n")


# ------------------------------------------------------------------ the user's umask
@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _writers(folder: Path) -> dict[str, Path]:
    """Each kind of file nfgen writes atomically, written once; returns the paths."""
    from nfgen.tasks.generate import save_grid
    from nfgen.tasks.score import TrainStats, save_stats
    from nfgen.training.checkpoint import save_checkpoint

    paths = {"checkpoint": folder / "checkpoints" / "last.pt", "config": folder / "config.yaml",
             "json": folder / "stats.json", "png": folder / "samples" / "grid.png"}
    save_checkpoint(paths["checkpoint"], {"model": {"w": torch.zeros(2)}})
    atomic_write_text(paths["config"], "name: x\n")
    save_stats(paths["json"], TrainStats(torch.ones(3, dtype=torch.float64).numpy(), {"k": 1}))
    save_grid(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), paths["png"])
    return paths


def test_files_get_the_users_umask_like_any_program(tmp_path, umask):
    for kind, path in _writers(tmp_path).items():
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, (kind, oct(path.stat().st_mode))
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "config.yaml"
    atomic_write_text(path, "old\n")

    def half_then_fail(f):
        f.write(b"new, half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_leftovers_of_a_killed_save_are_still_recognised(tmp_path):
    """A save killed between create and rename leaves ".last.pt.XXXXXXXX.tmp"; the run folder
    removes it on the next start (the name's form is shared with nfgen.core.atomic)."""
    from nfgen.core.atomic import _create_temp
    from nfgen.training.checkpoint import remove_temp_files

    fd, tmp = _create_temp(tmp_path / "last.pt")
    os.close(fd)
    assert remove_temp_files(tmp_path, ("last.pt", "best.pt")) == [tmp] and not tmp.exists()

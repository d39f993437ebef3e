"""The run folder: who may write into it (a lock), and whether it holds a run."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
from pathlib import Path

from nfgen.training.checkpoint import CheckpointError, remove_temp_files

LOCK_NAME = ".lock"  # in the run folder; holds the PID and host of the training that writes there
CHECKPOINT_NAMES = ("last.pt", "best.pt")  # what training writes into <run>/checkpoints
RUN_PARTS = ("checkpoints", "tb", "samples")  # what --overwrite deletes


class RunFolderLock:
    """An exclusive ``flock`` on ``<run>/.lock`` for the life of one training process. The OS
    drops it when the process ends however it ends (SIGKILL, OOM), so a stale lock is impossible;
    the file itself stays and only says who held it last."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> RunFolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise CheckpointError(f"{self.path.parent} is in use by another training ({holder}); "
                                  "wait for it to finish or stop it, or choose another --run-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def checkpoints_in(run_dir: Path) -> list[Path]:
    """The checkpoints that make a folder hold a run: ``last.pt`` or ``best.pt`` in
    ``<run>/checkpoints``. A folder whose start failed before the first save has none and may
    be reused; temporary files of an interrupted save do not count."""
    return [p for name in CHECKPOINT_NAMES if (p := run_dir / "checkpoints" / name).exists()]


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool, resumable: bool = True) -> None:
    """Refuse to mix two runs in one folder: an existing run needs --resume or --overwrite (a
    verb without --resume, ``resumable`` false, is not told to pass it). Only reads;
    --overwrite's deletion happens in ``clear_run`` once the new run is known to start."""
    held = checkpoints_in(run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    if resume:
        if not last.is_file():
            extra = f" ({held[0].name} is there, but a run resumes from last.pt)" if held else ""
            raise CheckpointError(f"nothing to resume: {last} does not exist{extra}")
        return
    if held and not overwrite:
        how = "pass --resume to continue it or --overwrite to start over" if resumable else \
            "pass --overwrite to start over, or give another --run-dir"
        raise CheckpointError(f"{run_dir} already holds a run; {how} "
                              f"(it has checkpoints/{' and '.join(p.name for p in held)})")


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Temporary checkpoint files of a save that was killed. Call only while holding the lock:
    it proves no other trainer is writing into this folder."""
    return remove_temp_files(run_dir / "checkpoints", CHECKPOINT_NAMES)


def clear_run(run_dir: Path) -> None:
    """--overwrite: delete the old run's checkpoints, logs and samples."""
    for sub in RUN_PARTS:
        shutil.rmtree(run_dir / sub, ignore_errors=True)

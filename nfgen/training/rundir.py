"""The run folder: who may write into it (a lock), and whether it holds a run."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
from pathlib import Path

from filelock import FileLock, Timeout

from nfgen.errors import CheckpointError, OutputError
from nfgen.training.checkpoint import remove_temp_files

LOCK_NAME = ".lock"  # in the run folder: the lock itself (filelock's)
HOLDER_NAME = ".lock.holder"  # beside it: the PID and host of the training that holds the lock
CHECKPOINT_NAMES = ("last.pt", "best.pt")  # what training writes into <run>/checkpoints
RUN_PARTS = ("checkpoints", "tb", "samples")  # what --overwrite deletes, with RUN_FILES
RUN_FILES = ("metrics.jsonl", "config.*.yaml")  # the metrics and the configs a resume replaced


def resume_command(run_dir: Path, *sets: str) -> str:
    """The command that continues the run in ``run_dir`` (with its own config.yaml), for every
    message that says to continue; ``sets`` are ``--set`` overrides it needs."""
    extra = "".join(f" --set {shlex.quote(s)}" for s in sets)
    return f"nfgen train --resume --run-dir {shlex.quote(str(run_dir))}{extra}"


class RunFolderLock:
    """An exclusive lock on ``<run>/.lock`` for the life of one training process, through
    ``filelock`` (``flock`` on Unix, ``msvcrt`` on Windows): the OS drops it when the process
    ends however it ends (SIGKILL, OOM), so a stale lock is impossible. The holder writes its
    PID and host into ``<run>/.lock.holder`` for the message another training gets; that file
    stays and only says who held the lock last. (The holder is a file of its own because
    Windows cannot read a locked region, and filelock may truncate the lock file it opens.)"""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self.holder = run_dir / HOLDER_NAME
        self.lock: FileLock | None = None

    def acquire(self) -> RunFolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.path, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            try:
                holder = self.holder.read_text(errors="replace")[:200].strip()
            except OSError:
                holder = ""
            raise OutputError(f"{self.path.parent} is in use by another training ({holder or 'another process'}); "
                              "wait for it to finish or stop it, or choose another --run-dir") from None
        self.lock = lock
        self.holder.write_text(f"pid {os.getpid()} on {socket.gethostname()}\n")
        return self

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


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
        how = (f"continue it with `{resume_command(run_dir)}`, or pass --overwrite to start over" if resumable
               else "pass --overwrite to start over, or give another --run-dir")
        raise OutputError(f"{run_dir} already holds a run (checkpoints/{' and '.join(p.name for p in held)}); {how}")


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Temporary checkpoint files of a save that was killed. Call only while holding the lock:
    it proves no other trainer is writing into this folder."""
    return remove_temp_files(run_dir / "checkpoints", CHECKPOINT_NAMES)


def clear_run(run_dir: Path) -> None:
    """--overwrite: delete the old run's checkpoints, logs, metrics and samples."""
    for sub in RUN_PARTS:
        shutil.rmtree(run_dir / sub, ignore_errors=True)
    for pattern in RUN_FILES:
        for path in run_dir.glob(pattern):
            path.unlink(missing_ok=True)

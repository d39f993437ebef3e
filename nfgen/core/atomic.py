"""One way to write a file: whole or not at all, with the permissions any program's file gets.

The bytes go to a temporary file beside the target, are flushed to disk, and the temporary file
is renamed over the target: a crash at any moment leaves the old complete file or the new one.
The temporary file is created as ``open()`` creates files, mode 0666 less the user's umask
(0644 under the usual umask 022, 0664 for a lab group's 002), where ``tempfile.mkstemp`` would
make it 0600 and the rename would carry that over, hiding checkpoints from the rest of a group.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# The temporary file: ".<target name>.<8 random hex digits>.tmp" beside the target (a killed
# write's leftovers are recognised by this form: nfgen.training.checkpoint.remove_temp_files).
_ATTEMPTS = 100


def _create_temp(path: Path) -> tuple[int, Path]:
    for _ in range(_ATTEMPTS):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            # 0o666: the kernel takes the umask off, exactly as for open(path, "w").
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {path}")


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX; Windows cannot open a folder for this)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(f)`` on a binary file that becomes ``path`` only once complete (see the
    module's docstring). Creates the parent folder. An ``OSError`` leaves ``path`` unchanged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """``atomic_write`` of UTF-8 text."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))

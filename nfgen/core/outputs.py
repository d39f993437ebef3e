"""Every file a verb writes, checked before any work by one function (``check_outputs``): a verb
that refuses has written nothing, and one that starts will be able to write what it promised.

The rules, for every verb alike:
- ``-`` means standard output, for any text output (``--json -``, ``--csv -``); at most one
  output may be standard output, and pictures never are.
- No two outputs name the same file (``--csv F --json F`` would keep one silently).
- An output that exists is refused unless ``--overwrite``; a folder is never an output file.
- Each output can be written: it is writable if it exists, else its nearest existing folder is a
  writable folder (the folders between are created when the output is written).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from nfgen.errors import OutputError

STDOUT = "-"



def is_stdout(path: Path | str | None) -> bool:
    return path is not None and str(path) == STDOUT


def check_outputs(outputs: dict[str, Path | Sequence[Path] | None], overwrite: bool,
                  pictures: Sequence[str] = ()) -> None:
    """Check the outputs of one command, ``{option: path or paths}`` (None: not asked for), by the
    rules above; ``pictures`` names the options that are images (never standard output)."""
    seen: dict[Path, str] = {}
    to_stdout = []
    for option, value in outputs.items():
        paths = [] if value is None else [value] if isinstance(value, str | Path) else list(value)
        for path in map(Path, paths):
            if is_stdout(path):
                if option in pictures:
                    raise OutputError(f"{option} is a picture and cannot go to standard output: give a file name")
                to_stdout.append(option)
                continue
            key = path.resolve()
            if key in seen:
                raise OutputError(f"{seen[key]} and {option} both write {path}: give each its own file")
            seen[key] = option
            _check_one(option, path, overwrite)
    if len(to_stdout) > 1:
        raise OutputError(f"{' and '.join(to_stdout)} cannot both be standard output: give one a file name")


def _check_one(option: str, path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder: give a file name")
    if path.exists():
        if not overwrite:
            raise OutputError(f"{path} exists; pass --overwrite to replace it")
        if not os.access(path, os.W_OK):
            raise OutputError(f"{option} {path} is not writable: change its permissions or write elsewhere")
        return
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{option} {path}: {folder} is a file, not a folder: write elsewhere")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: the folder {folder} is not writable: write elsewhere")


def folder_outputs(folder: Path, names: Sequence[str]) -> list[Path]:
    """The files a verb will write into ``folder`` (``sample --each``), to be checked with the rest."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder: give a folder for the images")
    return [folder / name for name in names]


@contextmanager
def opened(path: Path | None) -> Iterator[TextIO]:
    """A text output: standard output for None or ``-``, else the file (its folders created)."""
    if path is None or is_stdout(path):
        yield sys.stdout
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        yield f

"""``<run>/metrics.jsonl``: the run's scalars as one JSON object a line, for notebooks and scripts.

Each line is ``{"step": 200, "wall_time": 1733481234.5, "train/bpd": 2.31, ...}``: the same
names and values TensorBoard gets, written at the same moments (``pandas.read_json(path,
lines=True)`` reads it). A resumed run first drops the lines past the step it resumes from, so
the steps a killed job ran after its last checkpoint are not in the file twice.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

NAME = "metrics.jsonl"


def _plain(value: float) -> float | str | None:
    """JSON has no inf or nan: they are written as the strings "inf", "-inf", "nan"."""
    value = float(value)
    return value if math.isfinite(value) else str(value)


class MetricsFile:
    """Appends to ``path``; opened at the first write (building a trainer writes nothing)."""

    what = "metrics file"

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self.resume_step: int | None = None

    def resume_at(self, step: int) -> None:
        """Drop the lines of steps after ``step`` at the next write (a resume from ``step``)."""
        self.resume_step = step

    def _truncate(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept = []
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    if json.loads(line)["step"] <= step:
                        kept.append(line if line.endswith("\n") else line + "\n")
                except (ValueError, KeyError, TypeError):
                    continue  # a line half-written when a job was killed
        tmp = self.path.with_name(f".{self.path.name}.tmp")  # only the run-folder lock holder writes here
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.resume_step is not None:
            self._truncate(self.resume_step)
            self.resume_step = None
        record = {"step": step, "wall_time": round(self.clock(), 3), **{k: _plain(v) for k, v in values.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

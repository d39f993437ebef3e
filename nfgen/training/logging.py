"""The run's logger: TensorBoard scalars and image grids (passed into the trainer)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from nfgen.training.writes import SideWrites


class RunLogger:
    """Writes to ``<run>/tb``; one instance per run, closed when training ends.

    The event file is opened at the first write, so building a trainer writes nothing into the
    run folder (a run that fails to start leaves an existing run untouched). Every write is a
    side write: a failure (disk full) warns once and later events are dropped, because
    TensorBoard's writer thread keeps failing once it has failed. ``make_writer`` builds the
    SummaryWriter-like object (tests pass one that fails).
    """

    def __init__(self, log_dir: str | Path, writes: SideWrites | None = None,
                 make_writer: Callable[[str], Any] = SummaryWriter) -> None:
        self.log_dir = Path(log_dir)
        self.writes = writes or SideWrites()
        self.make_writer = make_writer
        self.writer: Any = None
        self.broken = False

    def _write(self, action: Callable[[Any], object]) -> None:
        if self.broken:
            return

        def run() -> None:
            if self.writer is None:
                self.writer = self.make_writer(str(self.log_dir))
            action(self.writer)

        if not self.writes.attempt("TensorBoard events", self.log_dir, run):
            self.broken = True

    def scalars(self, values: dict[str, float], step: int) -> None:
        def add(w: Any) -> None:
            for tag, value in values.items():
                w.add_scalar(tag, value, step)

        self._write(add)

    def image(self, tag: str, grid: Tensor, step: int) -> None:
        self._write(lambda w: w.add_image(tag, grid, step))

    def close(self) -> None:
        if self.writer is None:
            return
        if not self.broken:
            self._write(lambda w: w.flush())
        try:
            self.writer.close()
        except OSError:
            pass  # already reported by the failing write; closing must not hide the real outcome
        self.writer = None


class NullLogger(RunLogger):
    """For ranks other than 0 in data-parallel training: logs nothing."""

    def __init__(self) -> None:
        pass

    def scalars(self, values: dict[str, float], step: int) -> None:
        pass

    def image(self, tag: str, grid: Tensor, step: int) -> None:
        pass

    def close(self) -> None:
        pass

"""The run's logger: TensorBoard scalars and image grids (passed into the trainer)."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor
from torch.utils.tensorboard import SummaryWriter


class RunLogger:
    """Writes to ``<run>/tb``; one instance per run, closed when training ends."""

    def __init__(self, log_dir: str | Path) -> None:
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, grid: Tensor, step: int) -> None:
        self.writer.add_image(tag, grid, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


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

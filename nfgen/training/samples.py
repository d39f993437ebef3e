"""Training's sample grids: one per ``train.sample_temperatures``, logged to TensorBoard and
written as PNGs, from the same noise each time (watch one set of samples evolve)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from nfgen.config.schema import TrainConfig
from nfgen.model.image_flow import ImageFlow
from nfgen.tasks.generate import grid, sample_grid, save_grid
from nfgen.training.logging import RunLogger
from nfgen.training.rng import forked_rng
from nfgen.training.writes import SideWrites


class SampleGrids:
    """``write`` is what the trainer calls at every sample step, and what the time budget times."""

    def __init__(self, t: TrainConfig, device: torch.device) -> None:
        self.t, self.device = t, device

    def write(self, model: ImageFlow, step: int, out: Path, logger: RunLogger, writes: SideWrites) -> None:
        """Draw each temperature's grid, log it to ``logger`` and write it as a PNG in ``out``
        (under the ``writes`` policy); on a forked RNG."""
        model.eval()
        with forked_rng(self.device):
            for temperature in self.t.sample_temperatures:
                torch.manual_seed(self.t.seed + 2)  # same noise each time: watch one set evolve
                try:
                    images, nrow = sample_grid(model, self.t.sample_count, temperature)  # conditional: a row per class
                except FloatingPointError:
                    continue  # an early, unstable model; the next grid will try again
                logger.image(f"samples/temperature_{temperature:g}", grid(images, nrow), step)
                path = out / f"step{step:07d}_t{temperature:g}.png"

                def write(images: torch.Tensor = images, path: Path = path, nrow: int | None = nrow) -> None:
                    out.mkdir(parents=True, exist_ok=True)
                    save_grid(images, path, nrow)

                writes.attempt("sample grid", path, write)

    def trial(self, model: ImageFlow, step: int, logger: RunLogger, writes: SideWrites) -> None:
        """``write`` as the final phase runs it (the same write policy and logger kind) but into a
        scratch folder that is deleted after: what the time budget times."""
        quiet = writes.quiet()
        with tempfile.TemporaryDirectory(prefix="nfgen-budget-") as tmp:
            scratch = RunLogger(Path(tmp) / "tb", quiet, logger.make_writer)
            try:
                self.write(model, step, Path(tmp) / "samples", scratch, quiet)
                scratch.close()  # TensorBoard's writer encodes and flushes in its own thread: time it
            finally:
                scratch.close()

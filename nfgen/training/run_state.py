"""A run's state in and out of its checkpoints: what a checkpoint holds, resuming from one, and
writing one (rank 0 writes, the other ranks wait; a periodic write that fails warns and
training goes on, see ``SideWrites``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch.utils.data import Dataset

from nfgen.config.schema import Config
from nfgen.errors import ConfigError
from nfgen.model.image_flow import ImageFlow
from nfgen.training import distributed
from nfgen.training.budget import Budget
from nfgen.training.checkpoint import (
    CheckpointError,
    Progress,
    TrainingState,
    check_data_classes,
    restore_model,
    save_checkpoint,
)
from nfgen.training.distributed import Rank
from nfgen.training.optimization import Optimization
from nfgen.training.rng import rng_state, set_rng_state
from nfgen.training.rundir import resume_command
from nfgen.training.writes import SideWrites


class RunState:
    """The model, its optimization, the run's ``progress`` and random state, saved whole into
    ``run_dir/checkpoints`` and restored whole. ``budget`` times the writes and this job's
    training seconds; ``metric`` and ``class_names`` say what the checkpoint's numbers and labels
    mean."""

    def __init__(self, cfg: Config, run_dir: Path, model: ImageFlow, metric: str, class_names: list[str] | None,
                 rank: Rank, device: torch.device, writes: SideWrites, budget: Budget) -> None:
        self.cfg, self.run_dir, self.model, self.metric, self.class_names = cfg, run_dir, model, metric, class_names
        self.rank, self.device, self.writes, self.budget = rank, device, writes, budget
        self.progress = Progress()
        self.optim = Optimization(model, cfg.train, lambda: self.progress.lr_scale)
        self.seconds_before = 0.0  # training time of the jobs before this one (a resumed run)

    def train_seconds(self) -> float:
        """Wall-clock seconds of training of the whole run: earlier jobs' and this one's so far."""
        return self.seconds_before + self.budget.elapsed()

    def to_dict(self) -> dict:
        self.progress.train_seconds = self.train_seconds()
        return {"config": self.cfg.to_dict(), "model": self.model.state_dict(), **self.optim.state(),
                "progress": self.progress.to_dict(), "rng": rng_state(self.device),
                "metric": self.metric,  # what the logs and progress.best_bpd measure: bpd | noisy_nll
                "class_names": self.class_names}  # label k names class_names[k]; None: unconditional

    def resume(self, state: TrainingState, path: Path, train_set: Dataset) -> None:
        """Continue from a validated checkpoint. Settings a resumed run may change take effect:
        ``train.lr`` and ``train.weight_decay`` replace the saved ones; ``train.ema_decay`` 0 drops
        the average (evaluation, best.pt and samples use the live weights), another nonzero decay
        continues the saved average with the new decay, and a run without an average starts one
        from its current weights at the next update."""
        reached, t = state.progress.step, self.cfg.train
        check_data_classes(state.class_names, train_set, path)  # the verbs' check, by the same function
        if t.max_steps <= reached:
            raise ConfigError(f"train.max_steps {t.max_steps} is not above step {reached}, which {path} has "
                              f"reached; set train.max_steps above {reached} to continue, e.g. "
                              f"{resume_command(self.run_dir, f'train.max_steps={2 * reached}')}")
        self.load(state, path)
        self.seconds_before = state.progress.train_seconds  # here, not in load: a rollback keeps the time spent

    def load(self, state: TrainingState, path: Path) -> None:
        restore_model(self.model, state.model, path)
        self.progress = dataclasses.replace(state.progress)  # before the optimizer: its lr follows lr_scale
        self.optim.load(state, path)
        set_rng_state(state.rng, self.device)

    def save(self, name: str) -> Path:
        """Write ``checkpoints/<name>``; it must succeed (a failure raises). Every rank calls it:
        rank 0 writes, the others wait, so a checkpoint is complete when any rank goes on."""
        path = self.run_dir / "checkpoints" / name
        with self.budget.timed("save"):
            self.write(path)
        return path

    def write(self, path: Path) -> None:
        try:
            if self.rank.is_main:
                if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
                    raise CheckpointError(f"the model has non-finite parameters; {path} was not overwritten")
                save_checkpoint(path, self.to_dict())
        finally:
            distributed.barrier(self.rank)

    def side_save(self, name: str) -> bool:
        """A periodic save: a failure warns and training goes on. Every rank calls it and gets
        rank 0's outcome, so all ranks keep the same ``best_bpd`` and so make the same
        (collective) save calls later."""
        path = self.run_dir / "checkpoints" / name
        written = self.writes.attempt(f"checkpoint {name}", path, lambda: self.save(name))
        return not distributed.any_rank(not written, self.rank, self.device)

    def probe_save(self) -> None:
        """A checkpoint written beside last.pt and deleted: what the time budget times. A write
        that fails now is reported when a real one is due."""
        probe = self.run_dir / "checkpoints" / "budget-probe.pt"
        try:
            self.write(probe)  # every rank: it waits for rank 0's write
        except CheckpointError:
            pass
        finally:
            if self.rank.is_main:
                probe.unlink(missing_ok=True)

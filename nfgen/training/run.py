"""One call that trains a run: prepare the run directory, resume if asked, fit, close."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from nfgen.config import Config
from nfgen.training import distributed
from nfgen.training.checkpoint import CheckpointError, config_of, load_checkpoint
from nfgen.training.distributed import Rank
from nfgen.training.logging import NullLogger, RunLogger
from nfgen.training.trainer import Trainer, resolve_device


def run_dir_for(cfg: Config, run_dir: str | Path | None = None) -> Path:
    return Path(run_dir or cfg.run_dir or Path("runs") / cfg.name)


def prepare_run_dir(cfg: Config, run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder: an existing run needs --resume or --overwrite."""
    last = run_dir / "checkpoints" / "last.pt"
    if resume:
        if not last.is_file():
            raise CheckpointError(f"nothing to resume: {last} does not exist")
        return
    if last.exists():  # a folder whose start failed before any checkpoint holds no run yet
        if not overwrite:
            raise CheckpointError(f"{run_dir} already holds a run; pass --resume to continue it "
                                  "or --overwrite to start over")
        for sub in ("checkpoints", "tb", "samples"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def check_resumable(cfg: Config, saved: Config, path: Path) -> None:
    """A resumed run may change training settings (e.g. train.max_steps), not the model."""
    for section in ("model", "dequantization", "data"):
        if getattr(cfg, section) != getattr(saved, section):
            raise CheckpointError(f"{path} was trained with a different '{section}' section; "
                                  "resume with the run's own config.yaml")


def train(cfg: Config, run_dir: Path, resume: bool = False, overwrite: bool = False,
          progress: bool = True) -> float:
    """Train (or continue) the run in ``run_dir``; returns the final test bits/dim. Under
    torchrun every process calls this; rank 0 alone writes to ``run_dir``."""
    rank = distributed.setup(resolve_device(cfg.train.device))
    try:
        return _train(cfg, run_dir, resume, overwrite, progress, rank)
    finally:
        distributed.cleanup(rank)


def _train(cfg: Config, run_dir: Path, resume: bool, overwrite: bool, progress: bool, rank: Rank) -> float:
    if rank.is_main:
        prepare_run_dir(cfg, run_dir, resume, overwrite)
    distributed.barrier(rank)
    state = None
    if resume:
        last = run_dir / "checkpoints" / "last.pt"
        state = load_checkpoint(last)
        check_resumable(cfg, config_of(state, last), last)
    if rank.is_main:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    logger = RunLogger(run_dir / "tb") if rank.is_main else NullLogger()
    try:
        trainer = Trainer(cfg, run_dir, logger, progress=progress, rank=rank)
        if state is not None:
            trainer.load_state(state, run_dir / "checkpoints" / "last.pt")
        return trainer.run_loop()
    finally:
        logger.close()

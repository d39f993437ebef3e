"""One call that trains a run: lock and check the run folder, build and resume, then write."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import torch
import yaml

from nfgen.config.parse import field_key
from nfgen.config.schema import Config
from nfgen.core.atomic import atomic_write_text
from nfgen.core.costs import Memory, available_memory
from nfgen.core.devices import resolve_device
from nfgen.datasets.splits import load_split
from nfgen.errors import ConfigError
from nfgen.model.image_flow import build_model
from nfgen.tasks.generate import check_grid_size, class_rows
from nfgen.training import distributed
from nfgen.training.checkpoint import config_of, load_checkpoint, training_state
from nfgen.training.distributed import Rank
from nfgen.training.logging import NullLogger, RunLogger, flat_config, run_logger
from nfgen.training.memory import check_training_fits
from nfgen.training.parts import TrainerParts
from nfgen.training.rundir import RunFolderLock, check_run_dir, checkpoints_in, clear_run, remove_stale_temp_files
from nfgen.training.trainer import Trainer
from nfgen.training.writes import SideWrites


def run_dir_for(cfg: Config, run_dir: str | Path | None = None) -> Path:
    return Path(run_dir or cfg.run_dir or Path("runs") / cfg.name)


# Where the data lives and how it is loaded are not part of a run's identity; what it is is.
_DATA_PLACE = ("root", "num_workers", "download")


def _changed(new: object, old: object, where: str) -> list[str]:
    """Dotted names of the keys that differ between two config sections (into subsections)."""
    if not (dataclasses.is_dataclass(new) and dataclasses.is_dataclass(old)) or type(new) is not type(old):
        return [where] if new != old else []
    return [k for f in dataclasses.fields(old) for k in _changed(getattr(new, f.name), getattr(old, f.name),
                                                                  f"{where}.{field_key(old, f)}")]


def check_resumable(cfg: Config, saved: Config, path: Path) -> None:
    """A resumed run may change training settings (e.g. train.max_steps, train.lr), not the model,
    the data it learns from, or its optimizer (whose saved state belongs to that optimizer)."""
    same_data = {k: getattr(saved.data, k) for k in _DATA_PLACE}
    sections = {"model": (cfg.model, saved.model), "dequantization": (cfg.dequantization, saved.dequantization),
                "data": (dataclasses.replace(cfg.data, **same_data), saved.data)}
    for section, (new, old) in sections.items():
        if new != old:
            raise ConfigError(f"{path} was trained with a different '{section}' section "
                              f"({', '.join(_changed(new, old, section))}); resume with the run's own config.yaml")
    if cfg.train.optimizer != saved.train.optimizer:
        raise ConfigError(f"train.optimizer cannot change on --resume ({path} was trained with "
                          f"{saved.train.optimizer!r}, whose state it holds); start a new run to use "
                          f"{cfg.train.optimizer!r}")


def config_changes(old: Config, new: Config) -> list[str]:
    """``"train.lr: 0.002 -> 0.001"`` for each key whose value differs (keys only one has, too)."""
    a, b = flat_config(old.to_dict()), flat_config(new.to_dict())
    return [f"{k}: {a.get(k, '(none)')} -> {b.get(k, '(none)')}" for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]


def _keep_old_config(run_dir: Path, saved: Config, cfg: Config, step: int) -> None:
    """A resume that changes keys says which, and keeps the config it replaces as config.<step>.yaml."""
    changes = config_changes(saved, cfg)
    if not changes:
        return
    kept = run_dir / f"config.{step}.yaml"
    _write_config(kept, saved)
    print(f"resuming at step {step} with {len(changes)} changed key{'s' * (len(changes) != 1)} "
          f"(the old config is kept as {kept}):", flush=True)
    for line in changes:
        print(f"  {line}", flush=True)


def build_trainer(cfg: Config, run_dir: Path, logger: RunLogger, rank: Rank, progress: bool,
                  parts: TrainerParts | None = None, memory: Memory = available_memory) -> Trainer:
    """The model (seeded first, so every rank builds the same initial weights) and both data
    splits from the config, handed to the trainer with ``parts`` (``TrainerParts``; None: all
    from the config). A run that would not fit the device's free memory (``memory``,
    injectable) is refused first."""
    device = distributed.local_device(resolve_device(cfg.train.device), rank)
    check_training_fits(cfg, device, max(1, cfg.train.batch_size // rank.world_size), memory)
    m, n, nrow = cfg.model, cfg.train.sample_count, None  # the sample grids training writes
    if m.num_classes:  # a row per class
        labels, nrow = class_rows(m.num_classes, n)
        n = len(labels)
    check_grid_size(n, tuple(m.image_shape), nrow, "train.sample_count")
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    model = build_model(cfg, memory)
    return Trainer(cfg, run_dir, logger, model=model, train_set=load_split(cfg, "train"),
                   test_set=load_split(cfg, "test"), progress_bar=progress, rank=rank, parts=parts)


def train(cfg: Config, run_dir: Path, resume: bool = False, overwrite: bool = False,
          progress: bool = True, parts: TrainerParts | None = None) -> float:
    """Train (or continue) the run in ``run_dir``; returns the final test bits/dim. Under
    torchrun every process calls this; rank 0 alone locks and writes to ``run_dir``. ``parts``
    replaces the trainer's parts the config would make (``TrainerParts``: batch stream, time
    budget, divergence policy, write policy), e.g. a test's faulty one."""
    rank = distributed.setup(resolve_device(cfg.train.device))
    lock = RunFolderLock(run_dir)
    try:
        if rank.is_main:
            if resume:  # refuse a resume of a missing run before the lock creates its folder
                check_run_dir(run_dir, resume, overwrite)
            lock.acquire()
        result = _train(cfg, run_dir, resume, overwrite, progress, rank, parts or TrainerParts())
        distributed.barrier(rank)  # every rank done with the process group before any tears it down
        return result
    finally:
        lock.release()
        distributed.cleanup(rank)


def _write_config(path: Path, cfg: Config) -> None:
    """Atomically, like checkpoints: a plain ``--resume`` reads this file, so a kill while it is
    written must leave the old one or the new one, never half of it."""
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _train(cfg: Config, run_dir: Path, resume: bool, overwrite: bool, progress: bool, rank: Rank,
           parts: TrainerParts) -> float:
    """Everything that can fail on the user's input (the folder, the checkpoint, the data, the
    model, the resume) is checked before anything is written: a refused start leaves the folder,
    its config.yaml and an old run that --overwrite would replace exactly as they were."""
    last = run_dir / "checkpoints" / "last.pt"
    if rank.is_main:
        remove_stale_temp_files(run_dir)  # ours to remove: the lock proves no save is in flight
        check_run_dir(run_dir, resume, overwrite)
    distributed.barrier(rank)
    writes = parts.writes or SideWrites()  # one policy for the trainer's writes and the logger's
    parts = dataclasses.replace(parts, writes=writes)
    logger = run_logger(cfg, run_dir, writes) if rank.is_main else NullLogger()  # opens at its first write
    try:
        state = saved_cfg = None
        if resume:  # the checkpoint's own checks first: they say most precisely what is wrong
            saved = load_checkpoint(last)
            saved_cfg = config_of(saved, last)
            check_resumable(cfg, saved_cfg, last)
            state = training_state(saved, last)
        trainer = build_trainer(cfg, run_dir, logger, rank, progress, parts)
        if state is not None:
            trainer.resume(state, last)
            logger.resume_at(state.progress.step)
        distributed.barrier(rank)
        if rank.is_main:
            if overwrite and not resume and checkpoints_in(run_dir):
                clear_run(run_dir)
            if saved_cfg is not None:
                _keep_old_config(run_dir, saved_cfg, cfg, state.progress.step)
            _write_config(run_dir / "config.yaml", cfg)
        distributed.barrier(rank)
        return trainer.run_loop()
    finally:
        logger.close()

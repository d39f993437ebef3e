"""What a person sees of a training run: a progress bar on a terminal, plain lines in a log file.

A bar redraws itself with carriage returns; written to a file (Slurm, nohup, CI) every redraw
stays, and a long run becomes megabytes on one line. So the bar is drawn only when its stream is
a terminal (and ``--progress`` is on); otherwise one newline-terminated line is printed every
``train.log_every`` steps with the numbers the bar would show. Messages (evaluation results,
warnings) go through ``write``, above the bar or as lines of their own, flushed at once so a
file interleaves them in the order they happened.

The time left is the sooner of the two ends: the remaining steps at this job's pace, or what
is left of ``train.max_time`` (a budgeted run of ``max_steps: 1000000`` ends with its budget,
not in 163 hours).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import torch
from tqdm import tqdm

from nfgen.config.schema import TrainConfig
from nfgen.training.budget import Budget, format_seconds

if TYPE_CHECKING:
    from nfgen.training.trainer import Trainer


@dataclass(frozen=True)
class TimeLeft:
    seconds: float
    by: str  # "max_steps" or "max_time": whichever ends the job first

    def text(self) -> str:
        return f"{format_seconds(self.seconds)} ({self.by})" if math.isfinite(self.seconds) else "?"


def time_left(step: int, total: int, first_step: int, elapsed: float, budget: Budget | None = None) -> TimeLeft:
    """The job's time left: the remaining steps at the pace since ``first_step`` (where this job
    started), or the budget's remaining seconds, whichever is sooner (infinite before a step)."""
    done = step - first_step
    by_steps = (total - step) * elapsed / done if done > 0 else math.inf
    left = TimeLeft(by_steps, "max_steps")
    if budget is not None and budget.limited:
        by_time = max(0.0, budget.seconds - budget.elapsed())
        if by_time < by_steps:
            left = TimeLeft(by_time, "max_time")
    return left


class Console:
    """The bar or the lines of one training job (rank 0's; other ranks pass ``enabled=False``).

    Lines and messages go to ``out`` (stdout, where the evaluation lines always went), the bar
    to ``bar_stream`` (stderr, tqdm's), drawn only if that is a terminal; ``tty`` overrides the
    check (tests). The trainer calls ``log`` every ``train.log_every`` steps; ``budget`` gives
    the time left by ``train.max_time``; ``clock`` measures this job's pace.
    """

    def __init__(self, total: int, initial: int, *, metric: str, enabled: bool = True, bar: bool = True,
                 out: TextIO | None = None, bar_stream: TextIO | None = None, tty: bool | None = None,
                 budget: Budget | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.first_step, self.metric = total, initial, metric
        self.enabled, self.budget, self.clock = enabled, budget, clock
        self.out, bar_stream = out or sys.stdout, bar_stream or sys.stderr
        is_tty = bar_stream.isatty() if tty is None else tty
        self.bar: tqdm | None = None
        if enabled and bar and is_tty:
            # tqdm's own remaining time assumes max_steps is the end; ours (``left``) knows the budget.
            self.bar = tqdm(total=total, initial=initial, desc="train", file=bar_stream, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        self.started = clock()
        self.since, self.images = time.perf_counter(), 0  # the images/s of the steps since the last ``log``

    def left(self, step: int) -> TimeLeft:
        return time_left(step, self.total, self.first_step, self.clock() - self.started, self.budget)

    def step(self, step: int, value: float, images: int) -> float:
        """After every step of ``images`` images: the bar's numbers (one redraw per step).
        Returns the images per second since the last ``log``."""
        self.images += images
        images_per_sec = self.images / max(time.perf_counter() - self.since, 1e-9)
        if self.bar is not None:
            left = self.left(step).seconds
            self.bar.set_postfix({self.metric: f"{value:.3f}", "img/s": f"{images_per_sec:.0f}",
                                  "left": format_seconds(left) if math.isfinite(left) else "?"}, refresh=False)
            self.bar.update(step - self.bar.n)
        return images_per_sec

    def log(self, step: int, value: float, lr: float, images_per_sec: float) -> None:
        """At a logging step: without a bar, one line with the step's numbers."""
        self.since, self.images = time.perf_counter(), 0
        if not self.enabled or self.bar is not None:
            return
        width = len(str(self.total))
        self._print(f"step {step:>{width}}/{self.total}  {self.metric} {value:.4f}  lr {lr:.3g}  "
                    f"{images_per_sec:.0f} img/s  elapsed {format_seconds(self.clock() - self.started)}  "
                    f"left {self.left(step).text()}")

    def write(self, message: str) -> None:
        """A message of its own (an evaluation result, a budget stop), above the bar if there is one."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message, file=self.out)
        else:
            self._print(message)

    def warn(self, message: str) -> None:
        """A warning, on stderr (above the bar if there is one)."""
        if self.enabled:
            tqdm.write(message, file=sys.stderr)

    def reset(self, step: int) -> None:
        """Back to ``step`` (a rollback reloaded an earlier checkpoint)."""
        if self.bar is not None:
            self.bar.reset(total=self.total)
            self.bar.update(step)

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def banner(model: torch.nn.Module, device: torch.device, t: TrainConfig, n_train: int, n_test: int,
           run_dir: Path, world_size: int = 1, step: int = 0) -> str:
    """The lines a job starts with: what runs where, on how much data, and where it writes."""
    params = sum(p.numel() for p in model.parameters())
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    amp = ", bf16 autocast" if t.amp else ""
    procs = f" x {world_size} processes" if world_size > 1 else ""
    start = f"resuming at step {step} of {t.max_steps}" if step else f"{t.max_steps} steps"
    budget = f", train.max_time {t.max_time}" if t.max_time is not None else ""
    return (f"nfgen train: {params:,} parameters, {dtype} on {device}{procs}{amp}\n"
            f"data: {n_train:,} training / {n_test:,} test images, batch {t.batch_size}, seed {t.seed}; "
            f"{start}{budget}\n"
            f"run folder: {run_dir} (TensorBoard: {run_dir / 'tb'}, metrics: {run_dir / 'metrics.jsonl'})")


def start_console(trainer: Trainer) -> Console:
    """A job's start: the config to the run's logger (TensorBoard text and hparams), the banner,
    then the bar (on a terminal) or the log lines, counting from the step the job starts at."""
    t = trainer.t
    trainer.logger.config(trainer.cfg, f"test/{trainer.metric.tag}", trainer.step)
    console = Console(t.max_steps, trainer.step, metric=trainer.metric.tag, enabled=trainer.rank.is_main,
                      bar=trainer.show_bar, budget=trainer.budget, clock=trainer.budget.clock)
    console.write(banner(trainer.model, trainer.device, t, len(trainer.train_set), len(trainer.test_set),
                         trainer.run_dir, trainer.rank.world_size, trainer.step))
    return console


def log_step(trainer: Trainer, value: float, grad_norm: float, images_per_sec: float) -> None:
    """A logging step: the training scalars to the run's logger (TensorBoard and its mirrors),
    and the console's line."""
    lr = trainer.optim.lr
    trainer.logger.scalars({f"train/{trainer.metric.tag}": value, "train/grad_norm": grad_norm, "train/lr": lr,
                            "train/images_per_sec": images_per_sec, "train/skipped_steps": trainer.progress.bad_steps,
                            "time/train_seconds": trainer.state.train_seconds()}, trainer.step)
    trainer.console.log(trainer.step, value, lr, images_per_sec)

"""The fit loop: run_loop -> run_step -> (log | evaluate | sample | save)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, Subset

from nfgen.config import Config, parse_duration
from nfgen.devices import resolve_device
from nfgen.errors import ConfigError, DivergenceError
from nfgen.evaluate import bpd_values, metric, summarize
from nfgen.fidelity.monitor import FidMonitor
from nfgen.generate import grid, sample_grid, save_grid
from nfgen.labels import check_classes, split_batch, take
from nfgen.model import ImageFlow
from nfgen.training import distributed
from nfgen.training.augment import flip_draws, hflip
from nfgen.training.budget import Budget, estimate_batches, stop_report, timed_batches
from nfgen.training.checkpoint import (
    CheckpointError,
    Progress,
    TrainingState,
    check_data_classes,
    load_checkpoint,
    restore_model,
    save_checkpoint,
    training_state,
)
from nfgen.training.console import Console, log_step, start_console
from nfgen.training.distributed import Rank
from nfgen.training.loaders import iterate, stop_signals_to, worker_ignores_stop_signals
from nfgen.training.logging import RunLogger
from nfgen.training.rundir import resume_command
from nfgen.training.step import MicroBatch, cpu_has_native_bf16, initialize, lr_factor, make_forward, make_optimizer, train_step
from nfgen.training.writes import SideWrites


class TrainingInterrupted(Exception):
    """Raised after a clean stop on SIGINT / SIGTERM; ``last.pt`` has been written."""

    def __init__(self, signum: int, path: Path, then: str | None = None) -> None:
        then = then or f"continue with: {resume_command(path.parent.parent)}"  # path: <run>/checkpoints/last.pt
        super().__init__(f"stopped by {signal.Signals(signum).name}; saved {path}, {then}")
        self.signum = signum


class Trainer:
    """Trains one run in ``run_dir``; its model, data and logger are passed in (improved-diffusion's
    ``TrainLoop(model=, data=, ...)``), so nothing here builds them from the config and a test
    injects a fault by passing something. Writes nothing until training starts.

    Data-parallel under torchrun: ``train.batch_size`` is the global batch, each rank takes its
    slice of every global batch and of one global noise draw, so N processes compute what one
    process would; rank 0 alone logs, samples and writes checkpoints.

    ``train.max_time`` is a wall-clock budget for this job (``nfgen.training.budget``), read on
    ``clock`` (seconds; tests pass a virtual one).

    A class-conditional model (``model.num_classes`` > 0) takes ``Labelled`` data sets, both
    with the model's classes; each image's label travels with it through the shuffle, the
    ranks' slices and evaluation, and the class names go into every checkpoint.
    """

    def __init__(self, cfg: Config, run_dir: Path, logger: RunLogger, *, model: ImageFlow,
                 train_set: Dataset, test_set: Dataset, progress_bar: bool = True,
                 rank: Rank | None = None, writes: SideWrites | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self.t, self.run_dir, self.logger = cfg, cfg.train, run_dir, logger
        self.rank = rank or Rank()
        self.writes = writes or SideWrites()
        self.show_bar = progress_bar and self.rank.is_main
        self.device = distributed.local_device(resolve_device(self.t.device), self.rank)
        if self.t.batch_size % self.rank.world_size:
            raise ConfigError(f"train.batch_size {self.t.batch_size} (the global batch) is not divisible "
                              f"by the {self.rank.world_size} processes")
        self.local_batch = self.t.batch_size // self.rank.world_size
        if len(train_set) < self.t.batch_size:
            raise ConfigError(f"train.batch_size {self.t.batch_size} is larger than the "
                              f"{len(train_set)} training images; lower it")
        if self.t.amp and self.device.type == "cpu" and not cpu_has_native_bf16() and self.rank.is_main:
            print("warning: this CPU has no native bf16 (AVX512-BF16 or AMX), so train.amp makes "
                  "training slower; set train.amp: false", file=sys.stderr)
        self.model = model.to(self.device)
        self.train_set, self.test_set = train_set, test_set
        self.fid = FidMonitor(self.t, test_set, self.device) if self.t.fid_every and self.rank.is_main else None
        if self.fid is not None:
            self.fid.check()  # a missing feature extractor fails now, not at the first measurement
        self.class_names = check_classes(model.num_classes, train_set, test_set)
        self._drops = model.num_classes > 0 and model.label_dropout > 0
        self.optimizer = make_optimizer(self.model.parameters(), self.t)
        self.progress = Progress()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: self._lr_factor(s))
        self.ema: AveragedModel | None = None
        self.consecutive_bad = 0  # not saved: a checkpoint is only written after a good step
        self.forward: torch.nn.Module = self.model
        self._stop_signal: int | None = None
        # bits/dim, or in generation mode the noisy image's NLL: logs and checkpoints name which
        self.metric = metric(self.model.noise_sigma is not None)
        self.budget = Budget(parse_duration(self.t.max_time) or math.inf, clock)
        self.seconds_before = 0.0  # training time of the jobs before this one (a resumed run)
        self.stopped_by_budget = False
        self.console = Console(cfg.train.max_steps, 0, metric=self.metric.tag, enabled=False)

    # ----------------------------------------------------------------- state
    @property
    def step(self) -> int:
        return self.progress.step

    @property
    def eval_model(self) -> ImageFlow:
        return self.ema.module if self.ema is not None else self.model

    def _lr_factor(self, step: int) -> float:
        """The schedule (warm-up, then constant or cosine), times the rollbacks' reduction."""
        return self.progress.lr_scale * lr_factor(step, self.t)

    def _make_ema(self) -> None:
        # Created after the first update, so the copy holds initialised actnorm buffers.
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.t.ema_decay))

    def train_seconds(self) -> float:
        """Wall-clock seconds of training of the whole run: earlier jobs' and this one's so far."""
        return self.seconds_before + self.budget.elapsed()

    def state(self) -> dict:
        self.progress.train_seconds = self.train_seconds()
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "ema_state": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "progress": self.progress.to_dict(),
            "rng": rng,
            "metric": self.metric.tag,  # what the logs and progress.best_bpd measure: bpd | noisy_nll
            "class_names": self.class_names,  # label k names class_names[k]; None: unconditional
        }

    def resume(self, state: TrainingState, path: Path) -> None:
        """Continue from a validated checkpoint. Settings a resumed run may change take effect:
        ``train.lr`` and ``train.weight_decay`` replace the saved ones; ``train.ema_decay`` 0 drops
        the average (evaluation, best.pt and samples use the live weights), another nonzero decay
        continues the saved average with the new decay, and a run without an average starts one
        from its current weights at the next update."""
        reached = state.progress.step
        check_data_classes(state.class_names, self.train_set, path)  # the verbs' check, by the same function
        if self.t.max_steps <= reached:
            raise ConfigError(f"train.max_steps {self.t.max_steps} is not above step {reached}, which {path} has "
                              f"reached; set train.max_steps above {reached} to continue, e.g. "
                              f"{resume_command(self.run_dir, f'train.max_steps={2 * reached}')}")
        self.load_state(state, path)
        self.seconds_before = state.progress.train_seconds  # here, not in load_state: a rollback keeps the time spent

    def load_state(self, state: TrainingState, path: Path) -> None:
        restore_model(self.model, state.model, path)
        self.ema = None
        try:
            if state.ema is not None and self.t.ema_decay > 0:
                self._make_ema()
                self.ema.load_state_dict(state.ema)
            self.optimizer.load_state_dict(state.optimizer)
            self.scheduler.load_state_dict(state.scheduler)
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            raise CheckpointError(f"{path}: its optimizer, schedule or EMA state does not fit this model "
                                  f"({str(e).splitlines()[0]})") from None
        self.progress = dataclasses.replace(state.progress)
        self._apply_lr()
        torch.set_rng_state(state.rng["torch"])
        random.setstate(state.rng["python"])
        if state.rng.get("cuda") and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state.rng["cuda"])

    def _apply_lr(self) -> None:
        """The config's lr and weight decay, not the saved optimizer's, drive the next steps, so
        what config.yaml records is what runs; the schedule's position (warm-up, rollbacks'
        reduction) is kept. Without a change this recomputes the saved lr bit for bit."""
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.t.lr
            group["weight_decay"] = self.t.weight_decay
            group["lr"] = self.t.lr * self._lr_factor(self.scheduler.last_epoch)
        self.scheduler.base_lrs = [self.t.lr] * len(self.optimizer.param_groups)

    def save(self, name: str) -> Path:
        """Rank 0 writes; the other ranks wait, so a checkpoint is complete when any rank goes on."""
        path = self.run_dir / "checkpoints" / name
        with self.budget.timed("save"):
            self._save(path)
        return path

    def _save(self, path: Path) -> None:
        try:
            if self.rank.is_main:
                if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
                    raise CheckpointError(f"the model has non-finite parameters; {path} was not overwritten")
                save_checkpoint(path, self.state())
        finally:
            distributed.barrier(self.rank)

    def _side_save(self, name: str) -> bool:
        """A periodic save: a failure warns and training goes on (see ``SideWrites``). Every rank
        calls it and gets rank 0's outcome, so all ranks keep the same ``best_bpd`` and so make
        the same (collective) save calls later."""
        path = self.run_dir / "checkpoints" / name
        written = self.writes.attempt(f"checkpoint {name}", path, lambda: self.save(name))
        return not distributed.any_rank(not written, self.rank, self.device)

    # ------------------------------------------------------------------ data
    def _loader(self, dataset: Dataset[torch.Tensor], sampler: list[int] | None = None,
                generator: torch.Generator | None = None) -> DataLoader:
        return DataLoader(dataset, batch_size=self.local_batch, sampler=sampler, drop_last=sampler is not None,
                          num_workers=self.cfg.data.num_workers, pin_memory=self.device.type == "cuda",
                          generator=generator, worker_init_fn=worker_ignores_stop_signals)

    def _epoch_order(self) -> torch.Tensor:
        return torch.randperm(len(self.train_set),
                              generator=torch.Generator().manual_seed(self.t.seed * 100_003 + self.progress.epoch))

    def _train_batches(self) -> Iterator[MicroBatch]:
        """Endless micro-batches in a per-epoch order fixed by (seed, epoch), starting where a
        resumed run left off, so resuming replays exactly the same data. Each rank takes its
        slice of every global batch (each image with its label), and of one global noise draw."""
        big, small, r = self.t.batch_size, self.local_batch, self.rank.rank
        while True:
            order = self._epoch_order()
            n_batches = len(order) // big
            mine = [int(order[g * big + r * small + j])
                    for g in range(self.progress.batch_in_epoch, n_batches) for j in range(small)]
            # The loader gets its own generator: otherwise each new loader iterator draws a worker
            # seed from the global RNG, and the extra loader a resume creates would shift the
            # dequantization noise of every later step.
            batches = iterate(self._loader(self.train_set, mine, torch.Generator().manual_seed(self.progress.epoch)))
            try:
                for batch in batches:
                    self.progress.batch_in_epoch += 1
                    x, labels = split_batch(batch)
                    if self.cfg.data.hflip:  # one global draw per batch, sliced like the batch
                        flips = flip_draws(self.t.seed, self.progress.epoch, self.progress.batch_in_epoch, big)
                        x = hflip(x, flips[r * small:(r + 1) * small])
                    noise = self.model.draw_noise(big)[r * small:(r + 1) * small]
                    # Label dropout's draws too are one global draw, sliced: N ranks drop the
                    # labels one process would. None (no draw) when nothing is dropped.
                    drop = torch.rand(big, device=self.device)[r * small:(r + 1) * small] if self._drops else None
                    yield MicroBatch(x, noise, labels, drop)
            finally:
                batches.close()  # shut the workers down now, also when this generator is closed
            self.progress.epoch += 1
            self.progress.batch_in_epoch = 0

    def _initialize(self) -> None:
        """Actnorm's data-dependent init on the first global batch, identically on every rank;
        then wrap for data parallelism and compilation."""
        if self.step == 0:
            first = self._epoch_order()[: self.t.batch_size].tolist()
            x, labels = take(self.train_set, first)
            initialize(self.model, x.to(self.device), self.model.draw_noise(len(first)),
                       None if labels is None else labels.to(self.device))
        if self.rank.distributed:
            self.forward = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                **distributed.no_buffer_sync())
        self.forward = make_forward(self.forward, self.t)

    def _test_batches(self) -> Iterator:
        r = self.rank
        return iterate(self._loader(Subset(self.test_set, range(r.rank, len(self.test_set), r.world_size))))

    # ------------------------------------------------------------------ loop
    def run_step(self, micro_batches: list[MicroBatch]) -> tuple[float, float]:
        """One update over ``grad_accum`` micro-batches; a non-finite loss or gradient skips
        the update (the step still counts). Returns (train bits/dim, gradient norm)."""
        no_sync = self.forward.no_sync if isinstance(self.forward, DistributedDataParallel) else None
        result = train_step(self.forward, self.model, self.optimizer, micro_batches, self.t, self.device, no_sync)
        if result.applied:
            self.consecutive_bad = 0
            if self.t.ema_decay > 0:
                if self.ema is None:
                    self._make_ema()
                else:
                    self.ema.update_parameters(self.model)
        else:
            self.progress.bad_steps += 1
            self.consecutive_bad += 1
        self.scheduler.step()
        self.progress.step += 1
        return distributed.mean_over_ranks(result.bpd, self.rank, self.device), result.grad_norm

    def _forked_rng(self) -> contextlib.AbstractContextManager:
        """Evaluation and sample grids run on a forked RNG: they never shift the training noise."""
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])

    def evaluate(self) -> float:
        with self.budget.timed("eval"), self._forked_rng():  # best.pt's write below counts as a save
            torch.manual_seed(self.t.seed + 1 + self.rank.rank)
            values = self._eval_values(self._test_batches())
            result = summarize(distributed.gather(values, self.rank), self.eval_model.dims)
        tag = self.metric.tag
        self.logger.scalars({f"test/{tag}": result.bpd, f"test/{tag}_stderr": result.stderr,
                             "time/train_seconds": self.train_seconds()}, self.step)
        if math.isfinite(result.bpd) and result.bpd < self.progress.best_bpd:
            previous, self.progress.best_bpd = self.progress.best_bpd, result.bpd  # best.pt records it
            if not self._side_save("best.pt"):  # every rank calls it (it waits for rank 0's write)
                self.progress.best_bpd = previous  # best_bpd describes what best.pt holds
        return result.bpd

    def _eval_values(self, batches: Iterator) -> torch.Tensor:
        """The evaluation's work on this rank: per-image bits/dim of ``batches`` (closed after)."""
        try:
            return bpd_values(self.eval_model, batches, max_batches=self.t.eval_batches)
        finally:
            batches.close()

    def write_samples(self) -> None:
        if not self.rank.is_main:
            return
        with self.budget.timed("samples"):
            self._write_samples(self.run_dir / "samples", self.logger, self.writes)

    def _write_samples(self, out: Path, logger: RunLogger, writes: SideWrites) -> None:
        """Draw each temperature's grid, log it to TensorBoard and write it as a PNG in ``out``."""
        model = self.eval_model.eval()
        with self._forked_rng():
            for temperature in self.t.sample_temperatures:
                torch.manual_seed(self.t.seed + 2)  # same noise each time: watch one set evolve
                try:
                    images, nrow = sample_grid(model, self.t.sample_count, temperature)  # conditional: a row per class
                except FloatingPointError:
                    continue  # an early, unstable model; the next grid will try again
                logger.image(f"samples/temperature_{temperature:g}", grid(images, nrow), self.step)
                path = out / f"step{self.step:07d}_t{temperature:g}.png"

                def write(images: torch.Tensor = images, path: Path = path, nrow: int | None = nrow) -> None:
                    out.mkdir(parents=True, exist_ok=True)
                    save_grid(images, path, nrow)

                writes.attempt("sample grid", path, write)

    def _recover_from_divergence(self) -> None:
        """After ``max_bad_steps`` non-finite steps in a row: stop, leaving the last good
        checkpoint untouched, or (``on_divergence: rollback``) reload it with a lower lr."""
        t, last = self.t, self.run_dir / "checkpoints" / "last.pt"
        where = f"{self.consecutive_bad} non-finite steps in a row at step {self.step}"
        if not last.is_file():  # say so: pointing to a checkpoint that was never written helps nobody
            raise DivergenceError(f"training diverged ({where}) before any checkpoint was written; lower "
                                  "train.lr (or raise train.warmup_steps) and start again")
        if t.on_divergence == "stop":
            raise DivergenceError(f"training diverged ({where}); {last} is the last good checkpoint, "
                                  "untouched: lower train.lr, or set train.on_divergence: rollback")
        if self.progress.rollbacks >= t.max_rollbacks:
            raise DivergenceError(f"training diverged ({where}) after {self.progress.rollbacks} rollbacks; "
                                  f"{last} is untouched: lower train.lr or raise train.grad_clip")
        rollbacks, lr_scale = self.progress.rollbacks + 1, self.progress.lr_scale * t.rollback_lr_factor
        self.load_state(training_state(load_checkpoint(last), last), last)
        self.progress.rollbacks, self.progress.lr_scale, self.consecutive_bad = rollbacks, lr_scale, 0
        self._apply_lr()
        self.logger.scalars({"train/rollbacks": rollbacks}, self.step)
        if self.rank.is_main:
            self.console.warn(f"warning: {where}; rolled back to step {self.step} with lr x{lr_scale:g}")

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stop_signal = signum

    def run_loop(self) -> float:
        """Train to ``train.max_steps``; returns the last test bits/dim."""
        with stop_signals_to(self._on_signal):
            return self._loop()

    def _due(self, step: int) -> list[str]:
        """The budget's names of the periodic work at ``step`` (an evaluation may write best.pt)."""
        t = self.t
        return ((["eval", "save"] if step % t.eval_every == 0 else []) + (["samples"] if step % t.sample_every == 0 else [])
                + (["save"] if step % t.checkpoint_every == 0 else []))

    def _out_of_time(self) -> bool:
        """Whether this job's budget has no room for another step; true on every rank when it is
        on any, so all ranks stop at the same step."""
        if not self.budget.limited:
            return False
        return distributed.any_rank(not self.budget.allows_another_step(self._due(self.step)), self.rank, self.device)

    def _measure_final_phase(self) -> None:
        """Time the final phase's parts once, before the first step of a budgeted job, so the
        budget keeps room for them from the start, by running the functions the final phase
        runs: the evaluation on its first two test batches (the first also pays for starting the
        loader, the second is the cost of each further one), the sample grids drawn, logged to
        TensorBoard and written as PNGs (into a temporary folder), and a checkpoint written
        beside last.pt (then deleted). On a forked RNG: training then runs exactly as it would
        without a budget."""
        t = self.t
        n = math.ceil(len(range(self.rank.rank, len(self.test_set), self.rank.world_size)) / self.local_batch)
        n = min(n, t.eval_batches) if t.eval_batches else n
        times: list[float] = []
        with self._forked_rng(), torch.no_grad():
            self._eval_values(timed_batches(self._test_batches(), min(n, 2), self.budget.clock, times))
        self.budget.record("eval", estimate_batches(times, n))
        probe = self.run_dir / "checkpoints" / "budget-probe.pt"
        try:
            with self.budget.timed("save"):
                self._save(probe)  # every rank: it waits for rank 0's write
        except CheckpointError:
            pass  # a write that fails now will warn when it is due
        finally:
            if self.rank.is_main:
                probe.unlink(missing_ok=True)
        if not self.rank.is_main:
            return
        quiet = self.writes.quiet()  # the same write policy and logger kind, writing elsewhere
        with tempfile.TemporaryDirectory(prefix="nfgen-budget-") as tmp:
            logger = RunLogger(Path(tmp) / "tb", quiet, self.logger.make_writer)
            try:
                with self.budget.timed("samples"):
                    self._write_samples(Path(tmp) / "samples", logger, quiet)
                    logger.close()  # TensorBoard's writer encodes and flushes in its own thread
            finally:
                logger.close()

    def _report_budget_stop(self, path: Path) -> None:
        self.console.write(stop_report(self.budget, self.step, self.t.max_steps, path, resume_command(self.run_dir)))

    def _loop(self) -> float:
        t = self.t
        self.budget.start()
        self._initialize()
        if self.budget.limited:
            self._measure_final_phase()
        batches = self._train_batches()
        self.console = start_console(self)  # the bar or log lines, after the banner; the config to the logger
        test_bpd = math.nan
        try:
            while self.step < t.max_steps:
                with self.budget.timed("step"):
                    micro = [next(batches) for _ in range(t.grad_accum)]
                    bpd, grad_norm = self.run_step(micro)
                rate = self.console.step(self.step, bpd, t.batch_size * t.grad_accum)  # global images per step
                if self.step % t.log_every == 0 or self.step == 1:
                    log_step(self, bpd, grad_norm, rate)  # the scalars to the logger, a line to the console
                self.stopped_by_budget = self.step < t.max_steps and self._out_of_time()
                done = self.step == t.max_steps or self.stopped_by_budget
                if self.step % t.eval_every == 0 or done:
                    test_bpd = self.evaluate()
                    self.console.write(f"step {self.step}: test {self.metric.text} {test_bpd:.4f}")
                if self.fid is not None and self.step % t.fid_every == 0:  # beside bits/dim, on a forked RNG
                    with self.budget.timed("eval"), self._forked_rng():
                        self.logger.scalars(self.fid.measure(self.eval_model), self.step)
                if self.step % t.sample_every == 0 or done:
                    self.write_samples()
                if self.consecutive_bad >= t.max_bad_steps:
                    self._recover_from_divergence()
                    batches.close()
                    batches = self._train_batches()  # the data position came back with the checkpoint
                    self.console.reset(self.step)
                    continue
                if self.step % t.checkpoint_every == 0 and not done and self.consecutive_bad == 0:
                    self._side_save("last.pt")
                stop = distributed.any_rank(self._stop_signal is not None, self.rank, self.device)
                if done or stop:
                    path = self.save("last.pt")  # must succeed here: a failure is an error
                if stop:
                    raise TrainingInterrupted(self._stop_signal or signal.SIGTERM, path)
                if self.stopped_by_budget:
                    if self.rank.is_main:
                        self._report_budget_stop(path)
                    break
        finally:
            batches.close()  # stops DataLoader workers now, not whenever the generator is collected
            self.console.close()
        return test_bpd


"""The fit loop: a loop that pulls batches from a stream, steps, and hands the rest to its parts."""

from __future__ import annotations

import math
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from nfgen.config.schema import Config
from nfgen.core.devices import resolve_device
from nfgen.datasets.labels import check_classes
from nfgen.errors import ConfigError
from nfgen.model.image_flow import ImageFlow, initialize
from nfgen.tasks.evaluate import metric
from nfgen.tasks.fidelity.monitor import FidMonitor
from nfgen.training import distributed
from nfgen.training.budget import Budget, due, stop_report
from nfgen.training.checkpoint import Progress, TrainingState, load_checkpoint, training_state
from nfgen.training.console import Console, log_step, start_console
from nfgen.training.distributed import Rank
from nfgen.training.divergence import DivergencePolicy
from nfgen.training.evaluation import Evaluation
from nfgen.training.loaders import stop_signals_to
from nfgen.training.logging import RunLogger
from nfgen.training.parts import TrainerParts
from nfgen.training.rng import forked_rng
from nfgen.training.run_state import RunState
from nfgen.training.rundir import resume_command
from nfgen.training.samples import SampleGrids
from nfgen.training.step import MicroBatch, cpu_has_native_bf16, make_forward, train_step
from nfgen.training.stream import Drawn
from nfgen.training.writes import SideWrites


class TrainingInterrupted(Exception):
    """Raised after a clean stop on SIGINT / SIGTERM; ``last.pt`` has been written."""

    def __init__(self, signum: int, path: Path, then: str | None = None) -> None:
        then = then or f"continue with: {resume_command(path.parent.parent)}"  # path: <run>/checkpoints/last.pt
        super().__init__(f"stopped by {signal.Signals(signum).name}; saved {path}, {then}")
        self.signum = signum


class Trainer:
    """Trains one run in ``run_dir``; its model, data, logger and ``parts`` (batch stream, time
    budget, divergence policy, write policy: ``TrainerParts``) are passed in (improved-diffusion's
    ``TrainLoop(model=, data=, ...)``), so a test injects a fault by passing a part. Writes
    nothing until training starts.

    Data-parallel under torchrun: ``train.batch_size`` is the global batch, each rank takes its
    slice of every global batch and of one global noise draw (``BatchStream``), so N processes
    compute what one process would; rank 0 alone logs, samples and writes checkpoints.

    A class-conditional model (``model.num_classes`` > 0) takes ``Labelled`` data sets, both
    with the model's classes; each image's label travels with it through the shuffle, the
    ranks' slices and evaluation, and the class names go into every checkpoint.
    """

    def __init__(self, cfg: Config, run_dir: Path, logger: RunLogger, *, model: ImageFlow,
                 train_set: Dataset, test_set: Dataset, progress_bar: bool = True,
                 rank: Rank | None = None, parts: TrainerParts | None = None) -> None:
        parts = parts or TrainerParts()
        self.cfg, self.t, self.run_dir, self.logger = cfg, cfg.train, run_dir, logger
        self.rank = rank or Rank()
        self.writes = parts.writes or SideWrites()
        self.show_bar = progress_bar and self.rank.is_main
        self.device = distributed.local_device(resolve_device(self.t.device), self.rank)
        self._check(len(train_set))
        self.model = model.to(self.device)
        self.train_set, self.test_set = train_set, test_set
        self.fid = FidMonitor(self.t, test_set, self.device) if self.t.fid_every and self.rank.is_main else None
        if self.fid is not None:
            self.fid.check()  # a missing feature extractor fails now, not at the first measurement
        # bits/dim, or in generation mode the noisy image's NLL: logs and checkpoints name which
        self.metric = metric(self.model.noise_sigma is not None)
        self.budget = parts.budget or Budget.of(self.t, parts.clock)
        self.divergence = parts.divergence or DivergencePolicy(self.t)
        self.stream = parts.stream(train_set, self.model, cfg, self.rank, self.device)
        self.evaluation = Evaluation(test_set, cfg, self.rank, self.device)
        self.samples = SampleGrids(self.t, self.device)
        self.state = RunState(cfg, run_dir, self.model, self.metric.tag,
                              check_classes(model.num_classes, train_set, test_set),
                              self.rank, self.device, self.writes, self.budget)
        self.optim = self.state.optim
        self.consecutive_bad = 0  # not saved: a checkpoint is only written after a good step
        self.forward: torch.nn.Module = self.model
        self._stop_signal: int | None = None
        self.stopped_by_budget = False
        self.console = Console(cfg.train.max_steps, 0, metric=self.metric.tag, enabled=False)

    def _check(self, n_train: int) -> None:
        """What the device and the data set allow of the config, before anything is built on it."""
        t, world = self.t, self.rank.world_size
        if t.batch_size % world:
            raise ConfigError(f"train.batch_size {t.batch_size} (the global batch) is not divisible "
                              f"by the {world} processes")
        if n_train < t.batch_size:
            raise ConfigError(f"train.batch_size {t.batch_size} is larger than the "
                              f"{n_train} training images; lower it")
        if t.amp and self.device.type == "cpu" and not cpu_has_native_bf16() and self.rank.is_main:
            print("warning: this CPU has no native bf16 (AVX512-BF16 or AMX), so train.amp makes "
                  "training slower; set train.amp: false", file=sys.stderr)

    @property
    def progress(self) -> Progress:
        return self.state.progress

    @property
    def step(self) -> int:
        return self.state.progress.step

    @property
    def eval_model(self) -> ImageFlow:
        return self.optim.eval_model

    def resume(self, state: TrainingState, path: Path) -> None:
        """Continue from a validated checkpoint (``RunState.resume``)."""
        self.state.resume(state, path, self.train_set)

    # ------------------------------------------------------------------ loop
    def run_loop(self) -> float:
        """Train to ``train.max_steps`` (or until the budget or a stop signal ends the job);
        returns the last test bits/dim."""
        with stop_signals_to(self._on_signal):
            self.budget.start()
            self._initialize()
            if self.budget.limited:
                self.measure_final_phase()
            self.console = start_console(self)  # the bar or log lines, after the banner; the config to the logger
            try:
                return self._loop()
            finally:
                self.console.close()

    def measure_final_phase(self) -> None:
        """Before the first step of a budgeted job, the budget times what the final phase calls:
        the evaluation, a checkpoint write and the sample grids (written elsewhere), so it keeps
        room for them from the start. On forked RNGs: training then runs as without a budget."""
        self.budget.measure_final_phase(lambda k: self.evaluation.measure(self.eval_model, k),
                                        self.evaluation.batches(), self.state.probe_save,
                                        self._trial_samples if self.rank.is_main else None)

    def _loop(self) -> float:
        t, test_bpd = self.t, math.nan
        batches = self._batches()
        try:
            while self.step < t.max_steps:
                with self.budget.timed("step"):
                    bpd, grad_norm = self.run_step([self._pull(batches) for _ in range(t.grad_accum)])
                self._log(bpd, grad_norm)
                done = self._finished()
                if self.step % t.eval_every == 0 or done:
                    test_bpd = self.evaluate()
                if self.fid is not None and self.step % t.fid_every == 0:
                    self.measure_fid()
                if self.step % t.sample_every == 0 or done:
                    self.write_samples()
                if self.divergence.diverged(self.consecutive_bad):
                    self.roll_back()  # or stop, raising DivergenceError
                    batches.close()
                    batches = self._batches()  # the data position came back with the checkpoint
                    continue
                if self._save_or_stop(done):
                    break
        finally:
            batches.close()  # stops DataLoader workers now, not whenever the generator is collected
        return test_bpd

    def _batches(self) -> Iterator[Drawn]:
        return self.stream.batches(self.progress.epoch, self.progress.batch_in_epoch)

    def _pull(self, batches: Iterator[Drawn]) -> MicroBatch:
        """The next micro-batch; the run's position moves past it (a checkpoint resumes after it)."""
        drawn = next(batches)
        self.progress.epoch, self.progress.batch_in_epoch = drawn.epoch, drawn.batch_in_epoch
        return drawn.batch

    def _initialize(self) -> None:
        """Actnorm's data-dependent init on the first global batch, identically on every rank;
        then wrap for data parallelism and compilation."""
        if self.step == 0:
            x, labels = self.stream.first_batch()
            initialize(self.model, x.to(self.device), self.model.draw_noise(len(x)),
                       None if labels is None else labels.to(self.device))
        if self.rank.distributed:
            self.forward = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                **distributed.no_buffer_sync())
        self.forward = make_forward(self.forward, self.t)

    def run_step(self, micro_batches: list[MicroBatch]) -> tuple[float, float]:
        """One update over ``grad_accum`` micro-batches; a non-finite loss or gradient skips
        the update (the step still counts). Returns (train bits/dim, gradient norm)."""
        no_sync = self.forward.no_sync if isinstance(self.forward, DistributedDataParallel) else None
        result = train_step(self.forward, self.model, self.optim.optimizer, micro_batches, self.t, self.device, no_sync)
        self.optim.after_step(result.applied)
        self.consecutive_bad = 0 if result.applied else self.consecutive_bad + 1
        self.progress.bad_steps += not result.applied
        self.progress.step += 1
        return distributed.mean_over_ranks(result.bpd, self.rank, self.device), result.grad_norm

    def _log(self, bpd: float, grad_norm: float) -> None:
        rate = self.console.step(self.step, bpd, self.t.batch_size * self.t.grad_accum)  # global images per step
        if self.step % self.t.log_every == 0 or self.step == 1:
            log_step(self, bpd, grad_norm, rate)  # the scalars to the logger, a line to the console

    def _finished(self) -> bool:
        """Whether this step ends the job: ``max_steps`` reached, or no room in the budget for
        another step (then on every rank, so all ranks stop at the same step)."""
        t = self.t
        out = self.budget.limited and not self.budget.allows_another_step(due(self.step, t))
        self.stopped_by_budget = (self.step < t.max_steps and self.budget.limited
                                  and distributed.any_rank(out, self.rank, self.device))
        return self.step == t.max_steps or self.stopped_by_budget

    def evaluate(self) -> float:
        """Test bits/dim logged and printed; a new best is written to best.pt. Every rank calls it."""
        with self.budget.timed("eval"):  # best.pt's write below counts as a save
            result = self.evaluation.measure(self.eval_model)
        tag = self.metric.tag
        self.logger.scalars({f"test/{tag}": result.bpd, f"test/{tag}_stderr": result.stderr,
                             "time/train_seconds": self.state.train_seconds()}, self.step)
        if math.isfinite(result.bpd) and result.bpd < self.progress.best_bpd:
            previous, self.progress.best_bpd = self.progress.best_bpd, result.bpd  # best.pt records it
            if not self.state.side_save("best.pt"):  # every rank calls it (it waits for rank 0's write)
                self.progress.best_bpd = previous  # best_bpd describes what best.pt holds
        self.console.write(f"step {self.step}: test {self.metric.text} {result.bpd:.4f}")
        return result.bpd

    def measure_fid(self) -> None:
        """FID and its kin beside bits/dim (``train.fid_every``), on a forked RNG."""
        with self.budget.timed("eval"), forked_rng(self.device):
            self.logger.scalars(self.fid.measure(self.eval_model), self.step)

    def write_samples(self) -> None:
        if self.rank.is_main:
            with self.budget.timed("samples"):
                self.samples.write(self.eval_model, self.step, self.run_dir / "samples", self.logger, self.writes)

    def _trial_samples(self) -> None:
        self.samples.trial(self.eval_model, self.step, self.logger, self.writes)

    def roll_back(self) -> None:
        """After ``max_bad_steps`` non-finite steps in a row, what the divergence policy says:
        stop (it raises), or reload the last good checkpoint with a lower lr."""
        where = f"{self.consecutive_bad} non-finite steps in a row at step {self.step}"
        back = self.divergence.respond(where, self.run_dir / "checkpoints" / "last.pt", self.progress)
        self.state.load(training_state(load_checkpoint(back.path), back.path), back.path)
        self.progress.rollbacks, self.progress.lr_scale, self.consecutive_bad = back.rollbacks, back.lr_scale, 0
        self.optim.apply_config()
        self.logger.scalars({"train/rollbacks": back.rollbacks}, self.step)
        self.console.warn(f"warning: {where}; rolled back to step {self.step} with lr x{back.lr_scale:g}")
        self.console.reset(self.step)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stop_signal = signum

    def _save_or_stop(self, done: bool) -> bool:
        """The periodic checkpoint; at the end (``done``, or a stop signal on any rank) last.pt,
        which must be written. Returns whether the job ends here."""
        t = self.t
        if self.step % t.checkpoint_every == 0 and not done and self.consecutive_bad == 0:
            self.state.side_save("last.pt")
        stop = distributed.any_rank(self._stop_signal is not None, self.rank, self.device)
        if not (done or stop):
            return False
        path = self.state.save("last.pt")  # must succeed here: a failure is an error
        if stop:
            raise TrainingInterrupted(self._stop_signal or signal.SIGTERM, path)
        if self.stopped_by_budget and self.rank.is_main:
            self.console.write(stop_report(self.budget, self.step, t.max_steps, path, resume_command(self.run_dir)))
        return True

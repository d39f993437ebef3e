"""The fit loop: run_loop -> run_step -> (log | evaluate | sample | save)."""

from __future__ import annotations

import math
import random
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm import tqdm

from nfgen.config import Config
from nfgen.data import load_split, make_loader
from nfgen.evaluate import evaluate_bpd
from nfgen.generate import grid, save_grid
from nfgen.model import ImageFlow, build_model
from nfgen.training.checkpoint import CheckpointError, load_checkpoint, restore_model, save_checkpoint
from nfgen.training.logging import RunLogger


class DivergenceError(Exception):
    """Training produced only non-finite losses or gradients and could not recover."""


class TrainingInterrupted(Exception):
    """Raised after a clean stop on SIGINT / SIGTERM; ``last.pt`` has been written."""

    def __init__(self, signum: int, path: Path) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}; saved {path}, "
                         "continue with --resume")
        self.signum = signum


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(f"train.device is {name!r} but CUDA is not available; use auto or cpu")
    return torch.device(name)


class Trainer:
    """Trains one run in ``run_dir``; the logger is passed in (no process-global state)."""

    def __init__(self, cfg: Config, run_dir: Path, logger: RunLogger, progress: bool = True) -> None:
        self.cfg, self.t, self.run_dir, self.logger, self.progress = cfg, cfg.train, run_dir, logger, progress
        self.device = resolve_device(self.t.device)
        torch.manual_seed(self.t.seed)
        random.seed(self.t.seed)
        self.model: ImageFlow = build_model(cfg).to(self.device)
        opt_cls = torch.optim.Adam if self.t.optimizer == "adam" else torch.optim.Adamax
        self.optimizer = opt_cls(self.model.parameters(), lr=self.t.lr, weight_decay=self.t.weight_decay)
        warmup = self.t.warmup_steps
        self.lr_scale = 1.0  # lowered by each rollback after a divergence
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: self.lr_scale * (min(1.0, (s + 1) / warmup) if warmup else 1.0))
        self.ema: AveragedModel | None = None
        self.step = self.epoch = self.batch_in_epoch = self.bad_steps = 0
        self.consecutive_bad = self.rollbacks = 0
        self.best_bpd = math.inf
        self.train_set = load_split(cfg, "train")
        self.test_set = load_split(cfg, "test")
        self._stop_signal: int | None = None

    # ----------------------------------------------------------------- state
    @property
    def eval_model(self) -> ImageFlow:
        return self.ema.module if self.ema is not None else self.model

    def _make_ema(self) -> None:
        # Created after the first update, so the copy holds initialised actnorm buffers.
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.t.ema_decay))

    def state(self) -> dict:
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
            "progress": {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                         "best_bpd": self.best_bpd, "bad_steps": self.bad_steps,
                         "lr_scale": self.lr_scale, "rollbacks": self.rollbacks},
            "rng": rng,
        }

    def load_state(self, state: dict, path: Path) -> None:
        restore_model(self.model, state["model"], path)
        if state.get("ema_state") is not None:
            self._make_ema()
            self.ema.load_state_dict(state["ema_state"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        p = state["progress"]
        self.step, self.epoch, self.batch_in_epoch = p["step"], p["epoch"], p["batch_in_epoch"]
        self.best_bpd, self.bad_steps = p["best_bpd"], p["bad_steps"]
        self.lr_scale, self.rollbacks = p["lr_scale"], p["rollbacks"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def save(self, name: str) -> Path:
        path = self.run_dir / "checkpoints" / name
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise CheckpointError(f"the model has non-finite parameters; {path} was not overwritten")
        save_checkpoint(path, self.state())
        return path

    # ------------------------------------------------------------------ data
    def _train_batches(self) -> Iterator[torch.Tensor]:
        """Endless micro-batches in a per-epoch order fixed by (seed, epoch), starting where
        a resumed run left off, so resuming replays exactly the same data."""
        n, bs = len(self.train_set), min(self.t.batch_size, len(self.train_set))
        while True:
            epoch_rng = torch.Generator().manual_seed(self.t.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=epoch_rng)
            start = self.batch_in_epoch * bs
            # The loader gets its own generator: otherwise each new loader iterator draws a worker
            # seed from the global RNG, and the extra loader a resume creates would shift the
            # dequantization noise of every later step.
            loader = DataLoader(self.train_set, batch_size=bs, sampler=order[start:].tolist(),
                                drop_last=True, num_workers=self.cfg.data.num_workers,
                                pin_memory=self.device.type == "cuda", generator=epoch_rng)
            for x in loader:
                self.batch_in_epoch += 1
                yield x
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def _test_loader(self) -> DataLoader:
        return make_loader(self.test_set, self.t.batch_size, shuffle=False,
                           num_workers=self.cfg.data.num_workers, pin_memory=self.device.type == "cuda")

    # ------------------------------------------------------------------ loop
    def run_step(self, micro_batches: list[torch.Tensor]) -> tuple[float, float]:
        """One update over ``grad_accum`` micro-batches; a non-finite loss or gradient skips
        the update (the step still counts). Returns (train bits/dim, gradient norm)."""
        self.model.train()
        total = 0.0
        for x in micro_batches:
            bpd = self.model.bits_per_dim(x.to(self.device, non_blocking=True)).mean()
            (bpd / len(micro_batches)).backward()
            total += bpd.item() / len(micro_batches)
        clip = self.t.grad_clip if self.t.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip).item()
        if math.isfinite(total) and math.isfinite(grad_norm):
            self.consecutive_bad = 0
            self.optimizer.step()
            if self.t.ema_decay > 0:
                if self.ema is None:
                    self._make_ema()
                else:
                    self.ema.update_parameters(self.model)
        else:
            self.bad_steps += 1
            self.consecutive_bad += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return total, grad_norm

    def evaluate(self) -> float:
        # A forked, seeded RNG: evaluation never shifts the training noise stream.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.t.seed + 1)
            result = evaluate_bpd(self.eval_model, self._test_loader(), max_batches=self.t.eval_batches)
        self.logger.scalars({"test/bpd": result.bpd, "test/bpd_stderr": result.stderr}, self.step)
        if math.isfinite(result.bpd) and result.bpd < self.best_bpd:
            self.best_bpd = result.bpd
            self.save("best.pt")
        return result.bpd

    def write_samples(self) -> None:
        out = self.run_dir / "samples"
        out.mkdir(parents=True, exist_ok=True)
        model = self.eval_model.eval()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            for temperature in self.t.sample_temperatures:
                torch.manual_seed(self.t.seed + 2)  # same noise each time: watch one set evolve
                try:
                    images = model.sample(self.t.sample_count, temperature)
                except FloatingPointError:
                    continue  # an early, unstable model; the next grid will try again
                self.logger.image(f"samples/temperature_{temperature:g}", grid(images), self.step)
                save_grid(images, out / f"step{self.step:07d}_t{temperature:g}.png")

    def _try_save(self, bar: tqdm) -> None:
        """A periodic save that fails (disk full, permissions) warns and training goes on; the
        previous checkpoint is intact because saves are atomic."""
        try:
            self.save("last.pt")
        except CheckpointError as e:
            bar.write(f"warning: {e}", file=sys.stderr)

    def _recover_from_divergence(self) -> None:
        """After ``max_bad_steps`` non-finite steps in a row: stop, leaving the last good
        checkpoint untouched, or (``on_divergence: rollback``) reload it with a lower lr."""
        t, last = self.t, self.run_dir / "checkpoints" / "last.pt"
        where = f"{self.consecutive_bad} non-finite steps in a row at step {self.step}"
        if t.on_divergence == "stop" or not last.is_file():
            raise DivergenceError(f"training diverged ({where}); {last} is the last good checkpoint, "
                                  "untouched: lower train.lr, or set train.on_divergence: rollback")
        if self.rollbacks >= t.max_rollbacks:
            raise DivergenceError(f"training diverged ({where}) after {self.rollbacks} rollbacks; "
                                  f"{last} is untouched: lower train.lr or raise train.grad_clip")
        rollbacks, lr_scale = self.rollbacks + 1, self.lr_scale * t.rollback_lr_factor
        self.load_state(load_checkpoint(last), last)
        self.rollbacks, self.lr_scale, self.consecutive_bad = rollbacks, lr_scale, 0
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * self.scheduler.lr_lambdas[0](self.step)
        self.logger.scalars({"train/rollbacks": rollbacks}, self.step)
        tqdm.write(f"warning: {where}; rolled back to step {self.step} with lr x{lr_scale:g}", file=sys.stderr)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stop_signal = signum

    def run_loop(self) -> float:
        """Train to ``train.max_steps``; returns the last test bits/dim."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._loop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _loop(self) -> float:
        t = self.t
        batches = self._train_batches()
        bar = tqdm(total=t.max_steps, initial=self.step, disable=not self.progress, desc="train",
                   dynamic_ncols=True)
        test_bpd = math.nan
        clock, images = time.perf_counter(), 0
        while self.step < t.max_steps:
            micro = [next(batches) for _ in range(t.grad_accum)]
            bpd, grad_norm = self.run_step(micro)
            images += sum(x.shape[0] for x in micro)
            rate = images / max(time.perf_counter() - clock, 1e-9)
            bar.update(1)
            bar.set_postfix(bpd=f"{bpd:.3f}", img_s=f"{rate:.0f}")
            if self.step % t.log_every == 0 or self.step == 1:
                self.logger.scalars({"train/bpd": bpd, "train/grad_norm": grad_norm,
                                     "train/lr": self.scheduler.get_last_lr()[0],
                                     "train/images_per_sec": rate,
                                     "train/skipped_steps": self.bad_steps}, self.step)
                clock, images = time.perf_counter(), 0
            done = self.step == t.max_steps
            if self.step % t.eval_every == 0 or done:
                test_bpd = self.evaluate()
                bar.write(f"step {self.step}: test bits/dim {test_bpd:.4f}")
            if self.step % t.sample_every == 0 or done:
                self.write_samples()
            if self.consecutive_bad >= t.max_bad_steps:
                self._recover_from_divergence()
                batches = self._train_batches()  # the data position came back with the checkpoint
                bar.reset(total=t.max_steps)
                bar.update(self.step)
                continue
            if self.step % t.checkpoint_every == 0 and not done and self.consecutive_bad == 0:
                self._try_save(bar)
            if done:
                self.save("last.pt")  # the final save must succeed: a failure here is an error
            if self._stop_signal is not None:
                path = self.save("last.pt")
                bar.close()
                raise TrainingInterrupted(self._stop_signal, path)
        bar.close()
        return test_bpd

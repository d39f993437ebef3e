"""``nfgen density2d``: train a 2-D flow, then write its numbers, pictures and checkpoint.

Everything the user's input can break (the target, its quadrature, the flow, the run folder)
is checked before anything is written. The run folder is the image runs' (``nfgen.training``):
an OS lock, ``--overwrite`` to replace a run, atomic checkpoints, TensorBoard events under one
write policy. ``runs/<name>/``: ``config.yaml``, ``checkpoints/last.pt``, ``tb/``,
``figures/density.png`` and ``figures/training.png``, ``summary.json``.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from nfgen.core.atomic import atomic_write_text
from nfgen.core.devices import resolve_device
from nfgen.density2d.config import Density2DConfig
from nfgen.density2d.estimates import (
    Quadrature,
    QuadratureError,
    chunk_sizes,
    energy_estimates,
    grid_points,
    log_weights,
    point_log_probs,
    quadrature_log_z,
    sample_estimates,
)
from nfgen.density2d.model import build_density2d
from nfgen.density2d.plots import density_figure, histogram_density, save_png, to_image, training_figure
from nfgen.density2d.targets import EnergyTarget, SampleTarget, TargetError, build_target
from nfgen.errors import ConfigError, DataError, DivergenceError
from nfgen.training.checkpoint import save_checkpoint
from nfgen.training.loaders import stop_signals_to
from nfgen.training.logging import RunLogger
from nfgen.training.rundir import RunFolderLock, check_run_dir, checkpoints_in, clear_run
from nfgen.training.trainer import TrainingInterrupted
from nfgen.training.writes import SideWrites

OUTPUTS = ("figures", "summary.json")  # besides what clear_run removes: what --overwrite deletes


def describe_flow(cfg: Density2DConfig) -> str:
    f = cfg.flow
    if f.kind == "coupling":
        return f"{f.layers} {f.coupling} coupling steps ({f.permutation}, MLP {f.hidden}x{f.blocks + 1})"
    return f"{f.layers} {f.kind} layers"


def prepare_target(cfg: Density2DConfig) -> tuple[EnergyTarget | SampleTarget, Quadrature | None]:
    """The target and, for an energy, its quadrature ``log Z``; a user's bad formula or file is
    a ``ConfigError`` or ``DataError`` with one line."""
    t = cfg.target
    try:
        target = build_target(t.name, t.expression, t.csv, t.box, cfg.eval.samples, t.test_fraction, cfg.train.seed)
    except TargetError as e:
        raise DataError(f"target.csv: {e}") from None
    if isinstance(target, SampleTarget):
        return target, None
    try:
        quad = quadrature_log_z(target, cfg.eval.quadrature)
    except QuadratureError as e:
        raise ConfigError(f"{'target.expression' if t.name == 'expression' else f'target {t.name}'}: {e}") from None
    return target, quad


class _Training:
    """One training run's state: the loop, the evaluation, the pictures and the writes."""

    def __init__(self, cfg: Density2DConfig, run_dir: Path, target: EnergyTarget | SampleTarget,
                 quad: Quadrature | None, logger: RunLogger, writes: SideWrites, progress: bool) -> None:
        self.cfg, self.t, self.run_dir = cfg, cfg.train, run_dir
        self.target, self.quad, self.logger, self.writes, self.progress = target, quad, logger, writes, progress
        self.device = resolve_device(self.t.device)
        torch.manual_seed(self.t.seed)
        self.model = build_density2d(cfg.flow, cfg.objective).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.t.lr)
        self.data_rng = torch.Generator().manual_seed(self.t.seed * 100_003 + 7)  # training points only
        self.step = 0
        self.bad_steps = 0
        self.consecutive_bad = 0
        keys = ("step", "elbo", "iw") if cfg.objective == "energy" else ("step", "nll", "test_step", "test_ll")
        self.history: dict[str, list[float]] = {k: [] for k in keys}

    # ------------------------------------------------------------------ one step
    def _loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        if isinstance(self.target, EnergyTarget):
            x, log_q = self.model.sample(self.t.batch_size)
            log_p = self.target.log_unnormalized(x)
            beta = min(1.0, 0.01 + self.step / self.t.anneal_steps) if self.t.anneal_steps else 1.0
            log_w = (log_p - log_q).detach()
            stats = {"elbo": float(log_w.mean()),
                     "iw": float(torch.logsumexp(log_w, 0) - math.log(len(log_w))), "beta": beta}
            return (log_q - beta * log_p).mean(), stats
        x = self.target.batch(self.t.batch_size, self.data_rng).to(self.device, torch.get_default_dtype())
        loss = -self.model.log_prob(x).mean()
        return loss, {"nll": float(loss.detach())}

    def run_step(self) -> dict[str, float]:
        self.model.train()
        loss, stats = self._loss()
        loss.backward()
        clip = self.t.grad_clip if self.t.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        ok = math.isfinite(float(loss.detach())) and math.isfinite(grad_norm)
        if ok:
            self.optimizer.step()
            self.consecutive_bad = 0
        else:
            self.bad_steps += 1
            self.consecutive_bad += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if ok:
            self.history["step"].append(self.step)
            for k in ("elbo", "iw", "nll"):
                if k in stats:
                    self.history[k].append(stats[k])
        return {**stats, "grad_norm": grad_norm, "loss": float(loss.detach())}

    # ------------------------------------------------------------------ evaluation
    def _forked(self) -> Any:
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])

    def evaluate(self) -> dict[str, float]:
        """The final numbers (``summary.json``), on samples drawn from a fixed seed."""
        self.model.eval()
        with self._forked():
            torch.manual_seed(self.t.seed + 1)
            if isinstance(self.target, EnergyTarget):
                assert self.quad is not None
                log_w = log_weights(self.model, self.target, self.cfg.eval.samples, None)
                return energy_estimates(log_w, self.quad.log_z)
            return sample_estimates(self.model, self.target)

    def test_log_likelihood(self) -> float:
        assert isinstance(self.target, SampleTarget)
        self.model.eval()
        value = float(point_log_probs(self.model, self.target.test).mean())
        self.history["test_step"].append(self.step)
        self.history["test_ll"].append(value)
        return value

    @torch.no_grad()
    def pictures(self) -> tuple[Any, Any]:
        """The density figure (target, learned, samples) and the training curve."""
        self.model.eval()
        n, box = self.cfg.eval.grid, self.target.box
        bins = max(10, n // 4)  # histograms on a coarser grid: a few samples per cell are mostly noise
        points, _ = grid_points(box, n)
        learned = point_log_probs(self.model, points).exp().view(n, n)
        with self._forked():
            torch.manual_seed(self.t.seed + 2)
            drawn = torch.cat([self.model.sample(c)[0].cpu() for c in chunk_sizes(self.cfg.eval.samples)])
        sample_title = f"flow samples ({len(drawn):,}, histogram)"
        reference = None
        if isinstance(self.target, EnergyTarget):
            assert self.quad is not None
            density = torch.exp(self.target.log_unnormalized(points) - self.quad.log_z).view(n, n)
            title = f"target exp(-U) / Z ({self.target.name})"
            reference = self.quad.log_z
        elif self.target.log_density is not None:
            density = self.target.log_density(points).exp().view(n, n)
            title = f"true density ({self.target.name})"
            reference = float(self.target.log_density(self.target.test).double().mean())
        else:  # data are cheap: enough of them that the histogram's maximum, the colour scale, is stable
            data = self.target.batch(max(self.cfg.eval.samples, 200_000), torch.Generator().manual_seed(self.t.seed + 3))
            density = histogram_density(data, box, bins)
            title = f"data ({self.target.name}, histogram)"
        fig = density_figure(density, learned, histogram_density(drawn, box, bins), box, title, sample_title)
        return fig, training_figure(self.history, self.cfg.objective, reference)

    def write_pictures(self, final: bool) -> list[Path]:
        density, curve = self.pictures()
        dpi = self.cfg.eval.dpi
        self.logger.image("density", to_image(density, dpi), self.step)
        self.logger.image("training", to_image(curve, dpi), self.step)
        if not final:
            return []
        paths = [self.run_dir / "figures" / "density.png", self.run_dir / "figures" / "training.png"]
        for fig, path in zip((density, curve), paths):
            save_png(fig, path, dpi)
        return paths

    # ------------------------------------------------------------------ writes
    def save(self) -> Path:
        path = self.run_dir / "checkpoints" / "last.pt"
        save_checkpoint(path, {"kind": "density2d", "config": self.cfg.to_dict(), "model": self.model.state_dict(),
                               "optimizer": self.optimizer.state_dict(), "step": self.step})
        return path

    def _log(self, stats: dict[str, float]) -> None:
        values = {"train/loss": stats["loss"], "train/grad_norm": stats["grad_norm"], "train/skipped_steps": self.bad_steps}
        if "elbo" in stats:
            assert self.quad is not None
            values.update({"train/elbo": stats["elbo"], "train/log_z_importance": stats["iw"],
                           "train/reverse_kl": self.quad.log_z - stats["elbo"], "train/beta": stats["beta"]})
        else:
            values["train/nll"] = stats["nll"]
        self.logger.scalars(values, self.step)

    # ------------------------------------------------------------------ the loop
    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_signal = signum

    def _stopped(self, what: str) -> TrainingInterrupted:
        assert self.stop_signal is not None
        return TrainingInterrupted(self.stop_signal, self.run_dir / "checkpoints" / "last.pt", what)

    def run_loop(self) -> dict[str, Any]:
        """Train, then the final phase; SIGINT and SIGTERM (Ctrl-C, ``kill``, a scheduler) stop
        it cleanly, as they stop ``train``: the step or final piece under way finishes, is
        written, and then the run stops."""
        self.stop_signal: int | None = None
        with stop_signals_to(self._on_signal):
            return self._loop()

    def _loop(self) -> dict[str, Any]:
        t = self.t
        # The bar only on a terminal (as training's): redrawn into a log file it is megabytes on one
        # line. Off a terminal, a plain line every train.log_every steps instead.
        on_terminal = self.progress and sys.stderr.isatty()
        bar = tqdm(total=t.max_steps, disable=not on_terminal, desc="density2d", dynamic_ncols=True)
        clock = time.perf_counter()
        try:
            while self.step < t.max_steps:
                stats = self.run_step()
                bar.update(1)
                key = "elbo" if "elbo" in stats else "nll"
                bar.set_postfix({key: f"{stats[key]:.3f}"})
                if self.consecutive_bad >= t.max_bad_steps:
                    raise DivergenceError(f"training diverged: {self.consecutive_bad} non-finite losses or gradients "
                                          f"in a row at step {self.step}; lower train.lr or set train.grad_clip")
                if self.step % t.log_every == 0 or self.step == 1:
                    self._log(stats)
                    if self.progress and not on_terminal:
                        print(f"step {self.step} of {t.max_steps}: {key} {stats[key]:.4f}, "
                              f"{time.perf_counter() - clock:.1f} s", flush=True)
                done = self.step == t.max_steps
                if isinstance(self.target, SampleTarget) and (self.step % t.eval_every == 0 or done):
                    ll = self.test_log_likelihood()
                    self.logger.scalars({"test/log_likelihood": ll}, self.step)
                if t.picture_every and self.step % t.picture_every == 0 and not done:
                    self.write_pictures(final=False)
                if self.step % t.checkpoint_every == 0 and not done:
                    self.writes.attempt("checkpoint last.pt", self.run_dir / "checkpoints", self.save)
                if self.stop_signal is not None and not done:
                    self.save()
                    raise self._stopped(f"at step {self.step} of {t.max_steps}; density2d has no --resume: "
                                        "run it again with --overwrite to start over")
        finally:
            bar.close()
        train_time = time.perf_counter() - clock
        self.save()
        clock = time.perf_counter()
        # The final phase in pieces, each written as soon as it is done: a stop between them keeps
        # the numbers (summary.json) already computed.
        numbers = self.evaluate()
        summary = {
            "name": self.cfg.name, "objective": self.cfg.objective, "target": self.target.name,
            "flow": describe_flow(self.cfg), "parameters": sum(p.numel() for p in self.model.parameters()),
            "steps": self.step, "skipped_steps": self.bad_steps, "batch_size": t.batch_size,
            "train_seconds": round(train_time, 2), "eval_seconds": round(time.perf_counter() - clock, 2),
            **numbers, "pictures": [],
        }
        if self.quad is not None:
            summary["quadrature"] = {"cells_per_side": self.quad.n, "box": self.quad.box,
                                     "edge_fraction": self.quad.edge_fraction}
        self.logger.scalars({k: v for k, v in numbers.items() if isinstance(v, float) and math.isfinite(v)}, self.step)
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        if self.stop_signal is not None:
            raise self._stopped(f"and its final numbers in {self.run_dir / 'summary.json'}; the pictures were not "
                                "drawn (run it again with --overwrite for them)")
        paths = self.write_pictures(final=True)
        summary["pictures"] = [str(p.relative_to(self.run_dir)) for p in paths]
        summary["eval_seconds"] = round(time.perf_counter() - clock, 2)
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary


def train_density2d(cfg: Density2DConfig, run_dir: Path, overwrite: bool = False, progress: bool = True,
                    make_writer: Callable[[str], Any] = SummaryWriter) -> dict[str, Any]:
    """Train the 2-D flow of ``cfg`` in ``run_dir``; returns the summary (also ``summary.json``)."""
    resolve_device(cfg.train.device)
    target, quad = prepare_target(cfg)
    check_run_dir(run_dir, resume=False, overwrite=overwrite, resumable=False)
    lock = RunFolderLock(run_dir)
    writes = SideWrites()
    logger = RunLogger(run_dir / "tb", writes, make_writer)
    try:
        lock.acquire()
        check_run_dir(run_dir, resume=False, overwrite=overwrite, resumable=False)  # again, now that no one else can write
        training = _Training(cfg, run_dir, target, quad, logger, writes, progress)
        if overwrite and checkpoints_in(run_dir):
            clear_run(run_dir)
            shutil.rmtree(run_dir / "figures", ignore_errors=True)
            (run_dir / "summary.json").unlink(missing_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return training.run_loop()
    finally:
        logger.close()
        lock.release()

"""The optimizer, its learning-rate schedule and the weights' moving average (EMA), as one part:
what an update changes besides the weights, and what a checkpoint saves and restores of it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from nfgen.config.schema import TrainConfig
from nfgen.model.image_flow import ImageFlow
from nfgen.training.checkpoint import CheckpointError, TrainingState
from nfgen.training.step import lr_factor, make_optimizer


class Optimization:
    """``train.optimizer`` on ``model``'s parameters; the schedule (warm-up, then constant or
    cosine) times ``lr_scale()`` (the rollbacks' reduction, which the run's progress holds); an
    EMA of the weights when ``train.ema_decay`` > 0."""

    def __init__(self, model: ImageFlow, t: TrainConfig, lr_scale: Callable[[], float]) -> None:
        self.model, self.t, self.lr_scale = model, t, lr_scale
        self.optimizer = make_optimizer(model.parameters(), t)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.factor)
        self.ema: AveragedModel | None = None

    def factor(self, step: int) -> float:
        """The learning rate at ``step`` as a fraction of ``train.lr``."""
        return self.lr_scale() * lr_factor(step, self.t)

    @property
    def eval_model(self) -> ImageFlow:
        """What evaluation, best.pt's choice and samples use: the EMA, else the live weights."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def _make_ema(self) -> None:
        # Created after the first update, so the copy holds initialised actnorm buffers.
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.t.ema_decay))

    def after_step(self, applied: bool) -> None:
        """After each step (``applied``: its update was made): the EMA follows, the schedule moves."""
        if applied and self.t.ema_decay > 0:
            if self.ema is None:
                self._make_ema()
            else:
                self.ema.update_parameters(self.model)
        self.scheduler.step()

    def state(self) -> dict:
        return {"ema": self.ema.module.state_dict() if self.ema is not None else None,
                "ema_state": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load(self, state: TrainingState, path: Path) -> None:
        """The saved optimizer, schedule and EMA (``train.ema_decay`` 0 drops the average; another
        nonzero decay continues it), then ``apply_config``."""
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
        self.apply_config()

    def apply_config(self) -> None:
        """The config's lr and weight decay, not the saved optimizer's, drive the next steps, so
        what config.yaml records is what runs; the schedule's position (warm-up, rollbacks'
        reduction) is kept. Without a change this recomputes the saved lr bit for bit."""
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.t.lr
            group["weight_decay"] = self.t.weight_decay
            group["lr"] = self.t.lr * self.factor(self.scheduler.last_epoch)
        self.scheduler.base_lrs = [self.t.lr] * len(self.optimizer.param_groups)

"""What training does when it diverges (``train.on_divergence``): after ``train.max_bad_steps``
non-finite steps in a row, stop and leave the last good checkpoint untouched (``stop``), or reload
it with a lower learning rate (``rollback``, at most ``train.max_rollbacks`` times)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nfgen.config.schema import TrainConfig
from nfgen.errors import DivergenceError
from nfgen.training.checkpoint import Progress


@dataclass(frozen=True)
class Rollback:
    """Reload ``path``, then continue with these ``rollbacks`` and ``lr_scale``."""

    path: Path
    rollbacks: int
    lr_scale: float


class DivergencePolicy:
    """``train.on_divergence`` as a part: ``diverged`` says when, ``respond`` what to do."""

    def __init__(self, t: TrainConfig) -> None:
        self.t = t

    def diverged(self, bad_in_a_row: int) -> bool:
        return bad_in_a_row >= self.t.max_bad_steps

    def respond(self, where: str, last: Path, progress: Progress) -> Rollback:
        """Raise ``DivergenceError`` to stop (``where`` says what happened), or say how to roll
        back to ``last`` (the last good checkpoint) from ``progress``."""
        t = self.t
        if not last.is_file():  # say so: pointing to a checkpoint that was never written helps nobody
            raise DivergenceError(f"training diverged ({where}) before any checkpoint was written; lower "
                                  "train.lr (or raise train.warmup_steps) and start again")
        if t.on_divergence == "stop":
            raise DivergenceError(f"training diverged ({where}); {last} is the last good checkpoint, "
                                  "untouched: lower train.lr, or set train.on_divergence: rollback")
        if progress.rollbacks >= t.max_rollbacks:
            raise DivergenceError(f"training diverged ({where}) after {progress.rollbacks} rollbacks; "
                                  f"{last} is untouched: lower train.lr or raise train.grad_clip")
        return Rollback(last, progress.rollbacks + 1, progress.lr_scale * t.rollback_lr_factor)

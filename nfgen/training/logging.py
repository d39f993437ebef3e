"""The run's logger: TensorBoard scalars, image grids and config, and their mirrors (passed into
the trainer): ``metrics.jsonl`` (``metrics_file.py``) and optionally Weights & Biases
(``wandb_log.py``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from nfgen.config.schema import Config
from nfgen.training.writes import SideWrites


class Mirror(Protocol):
    """Somewhere else the same scalars (and, if it can show them, images) go."""

    def scalars(self, values: dict[str, float], step: int) -> None: ...


def flat_config(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``; lists and None as text (TensorBoard's
    hparams take numbers, strings and booleans)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


class RunLogger:
    """Writes to ``<run>/tb``; one instance per run, closed when training ends.

    The event file is opened at the first write, so building a trainer writes nothing into the
    run folder (a run that fails to start leaves an existing run untouched). Every write is a
    side write: a failure (disk full) warns once and later events are dropped, because
    TensorBoard's writer thread keeps failing once it has failed. ``make_writer`` builds the
    SummaryWriter-like object (tests pass one that fails). Each of ``mirrors`` gets every
    scalar (and image, if it has an ``image`` method), each a side write of its own.
    """

    def __init__(self, log_dir: str | Path, writes: SideWrites | None = None,
                 make_writer: Callable[[str], Any] = SummaryWriter, mirrors: Sequence[Mirror] = ()) -> None:
        self.log_dir = Path(log_dir)
        self.writes = writes or SideWrites()
        self.make_writer = make_writer
        self.writer: Any = None
        self.broken = False
        self.mirrors = list(mirrors)
        self.broken_mirrors: set[int] = set()

    def _mirror(self, method: str, *args: Any) -> None:
        for i, m in enumerate(self.mirrors):
            if i in self.broken_mirrors or not hasattr(m, method):
                continue
            what = getattr(m, "what", type(m).__name__)
            if not self.writes.attempt(what, Path(getattr(m, "path", self.log_dir)), lambda m=m: getattr(m, method)(*args)):
                self.broken_mirrors.add(i)

    def _write(self, action: Callable[[Any], object]) -> None:
        if self.broken:
            return

        def run() -> None:
            if self.writer is None:
                self.writer = self.make_writer(str(self.log_dir))
            action(self.writer)

        if not self.writes.attempt("TensorBoard events", self.log_dir, run):
            self.broken = True

    def scalars(self, values: dict[str, float], step: int) -> None:
        def add(w: Any) -> None:
            for tag, value in values.items():
                w.add_scalar(tag, value, step)

        self._write(add)
        self._mirror("scalars", values, step)

    def image(self, tag: str, grid: Tensor, step: int) -> None:
        self._write(lambda w: w.add_image(tag, grid, step))
        self._mirror("image", tag, grid, step)

    def config(self, cfg: Config, metric: str, step: int) -> None:
        """The resolved config as text (the YAML that config.yaml holds) and as hparams, with the
        test metric (``test/bpd`` or ``test/noisy_nll``) as the hparams view's metric."""
        text = "```yaml\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False) + "```"

        def add(w: Any) -> None:
            w.add_text("config", text, step)
            # SummaryWriter.add_hparams would open a second run folder and log the metric as NaN
            # there; its three summaries written into this run's file put the hparams beside its scalars.
            file_writer = getattr(w, "_get_file_writer", None)
            if file_writer is not None:
                for summary in hparams(flat_config(cfg.to_dict()), {metric: float("nan")}):
                    file_writer().add_summary(summary)

        self._write(add)

    def resume_at(self, step: int) -> None:
        """A resume from ``step``: mirrors that can (the metrics file) drop what came after it."""
        for m in self.mirrors:
            if hasattr(m, "resume_at"):
                m.resume_at(step)

    def close(self) -> None:
        self._mirror("close")
        if self.writer is None:
            return
        if not self.broken:
            self._write(lambda w: w.flush())
        try:
            self.writer.close()
        except OSError:
            pass  # already reported by the failing write; closing must not hide the real outcome
        self.writer = None


class NullLogger(RunLogger):
    """For ranks other than 0 in data-parallel training: logs nothing."""

    def __init__(self) -> None:
        pass

    def scalars(self, values: dict[str, float], step: int) -> None:
        pass

    def image(self, tag: str, grid: Tensor, step: int) -> None:
        pass

    def config(self, cfg: Config, metric: str, step: int) -> None:
        pass

    def resume_at(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass


def run_logger(cfg: Config, run_dir: Path, writes: SideWrites) -> RunLogger:
    """A run's logger: TensorBoard in ``<run>/tb``, mirrored to ``<run>/metrics.jsonl`` and, with
    ``train.wandb_project``, to Weights & Biases (a one-line error here if it is not installed)."""
    from nfgen.training.metrics_file import NAME, MetricsFile

    mirrors: list[Mirror] = [MetricsFile(run_dir / NAME)]
    if cfg.train.wandb_project:
        from nfgen.training.wandb_log import WandbLog

        mirrors.append(WandbLog(cfg, run_dir))
    return RunLogger(run_dir / "tb", writes, mirrors=mirrors)

"""What the ``nfgen`` verbs share: option checks (each a one-line error before any work), loading
a trained checkpoint, a conditional model's labels, and the error policy (``user_errors``)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from nfgen.config.schema import Config, apply_overrides, check_device_name, config_from_dict
from nfgen.errors import ConfigError, NumericalError, UserError

# Nothing here imports torch at import time: ``nfgen --help``, ``--version`` and a usage error
# answer without it. Each helper imports what it needs when a verb calls it.
if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

    from nfgen.model.image_flow import ImageFlow
    from nfgen.tasks.evaluate import BpdResult

from nfgen.core.user_input import parser


def _interrupted(e: Exception) -> bool:
    """Whether ``e`` is the trainer's stop by signal; looked up only if the trainer was imported
    (otherwise it cannot have been raised), so catching it imports no torch."""
    trainer = sys.modules.get("nfgen.training.trainer")
    return trainer is not None and isinstance(e, trainer.TrainingInterrupted)


Sets = Annotated[list[str] | None, typer.Option("--set", help="Override a config value, e.g. train.lr=3e-4 (repeatable).")]

T = TypeVar("T")


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn every error a user can cause (a ``nfgen.errors.UserError``) into one line on stderr
    and its class's exit code; a stop by signal exits 128 + the signal's number."""
    try:
        yield
    except UserError as e:
        fail(str(e), e.exit_code)
    except Exception as e:
        if _interrupted(e):
            typer.echo(str(e), err=True)
            raise typer.Exit(128 + e.signum) from None  # type: ignore[attr-defined]
        if isinstance(e, OSError):
            fail(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "))
        raise


def script_main(main: Callable[[], int | None]) -> int:
    """A script's ``main`` (scripts/) under the command line's error policy, ``user_errors``: a
    user's mistake is one line on stderr and a non-zero exit code, never a traceback."""
    try:
        with user_errors():
            return main() or 0
    except typer.Exit as e:
        return e.exit_code


def progress(items: Iterable[T], what: str) -> Iterable[T]:
    """``items`` with a progress bar on stderr, drawn only when stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(items, desc=what, leave=False, disable=not sys.stderr.isatty())


def in_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name} must be in {low}..{high}, got {value}")


def image_path(path: Path) -> Path:
    """An output image path whose extension an image writer knows (checked before any work)."""
    from PIL import Image

    if path.suffix.lower() not in Image.registered_extensions():
        raise ConfigError(f"{path}: no image writer knows the extension {path.suffix or '(none)'!r}; "
                          "use .png (or .jpg, .webp, ...)")
    return path


def torch_device(name: str) -> torch.device:
    from nfgen.core.devices import resolve_device

    return resolve_device(check_device_name(name))


def checked_split(name: str) -> str:
    from nfgen.datasets.registry import SPLITS

    if name not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {name!r}")
    return name


def output_path(path: Path) -> Path:
    """An output file checked by ``check_outputs`` before the work, about to be written: its
    folders are created now."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class Trained:
    """A trained checkpoint as the verbs use it."""

    model: ImageFlow
    cfg: Config  # the checkpoint's, with --set applied
    class_names: list[str]  # label k's name (a conditional model's; "0", "1", ... if it kept none)
    recorded: list[str] | None  # the class names the checkpoint recorded: what its data must have
    sha256: str  # of the bytes the model was loaded from
    path: Path

    def split(self, name: str) -> Dataset:
        """A split of the model's data, its class names checked against the model's."""
        from nfgen.training.checkpoint import load_model_split

        return load_model_split(self.cfg, name, self.recorded, self.path)


def load_trained(ckpt: Path, sets: list[str] | None, device: str, ema: bool = True) -> Trained:
    """The model, config and class names of a checkpoint; ``--set`` may change where data lives,
    not the model."""
    from nfgen.training.checkpoint import LOADED_SHA256, class_names_of, model_from_checkpoint, recorded_classes

    model, cfg, state = model_from_checkpoint(ckpt, ema=ema, device=torch_device(device))
    names = class_names_of(state, cfg, ckpt)
    if sets:
        new = config_from_dict(apply_overrides(cfg.to_dict(), sets))
        if new.model != cfg.model or new.dequantization != cfg.dequantization:
            raise ConfigError("--set may change data.* and train.* for a trained checkpoint, not the model")
        cfg = new
    return Trained(model, cfg, names, recorded_classes(state, ckpt), state[LOADED_SHA256], ckpt)


def trained(ckpt: Path, sets: list[str] | None, device: str, ema: bool = True) -> tuple[ImageFlow, Config]:
    """Model and config from a checkpoint (``load_trained``)."""
    t = load_trained(ckpt, sets, device, ema)
    return t.model, t.cfg


@parser("--label")
def label_index(value: str, names: list[str], null_learned: bool = False) -> int:
    """A ``--label``: a class name, else a class number (a name wins where the two disagree, as
    for folders named "1", "2", ...), or ``null``: the null class, the unconditional model that
    label dropout trains (``null_learned``), whose label is ``len(names)``."""
    if value in names:
        return names.index(value)
    if value == "null":
        if not null_learned:
            raise ConfigError("--label null samples the null class (the unconditional model), which a model "
                              "trained without model.label_dropout never learned")
        return len(names)
    # ASCII digits only: str.isdigit() accepts "³" and "①", which int() refuses.
    if re.fullmatch(r"[0-9]{1,9}", value.strip()) and int(value) < len(names):
        return int(value)
    listed = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    raise ConfigError(f"--label {value!r} is not a class of this model: give a number 0..{len(names) - 1}, "
                      f"a name ({listed}) or null")


def conditional_only(model: ImageFlow, what: str) -> None:
    if not model.num_classes:
        raise ConfigError(f"{what} needs a class-conditional model (model.num_classes > 0); this one is unconditional")


def sample_labels(model: ImageFlow, cfg: Config, names: list[str], given: list[str], n: int,
                   guidance: float, annealed: bool) -> tuple[torch.Tensor | None, int | None]:
    """A conditional model's grid labels (a row per ``--label``, or per class, ``n`` split evenly
    across the rows as training's grids are) and row length; ``(None, None)`` for an
    unconditional model. Every mismatch of options and model refused."""
    from nfgen.tasks.generate import class_rows, label_rows

    if not model.num_classes:
        if given or guidance or annealed:
            flag = "--label" if given else "--guidance" if guidance else "--annealed"
            conditional_only(model, flag)
        return None, None
    if guidance and not model.label_dropout:
        raise ConfigError("--guidance needs a model trained with model.label_dropout > 0 (its null class, the "
                          "unconditional model guidance contrasts with, never saw data); this one had 0")
    if annealed and cfg.model.arch != "tarflow":
        raise ConfigError(f"--annealed grows the guidance weight over TarFlow's tokens; this model is "
                          f"{cfg.model.arch}, whose guidance has no tokens: drop --annealed")
    if not given:
        return class_rows(model.num_classes, n)  # every class: training's grid
    rows = [label_index(v, names, model.label_dropout > 0) for v in given]
    per_row = max(1, n // len(rows))
    return label_rows(rows, per_row), per_row


def bpd_record(r: BpdResult) -> dict:
    return {"bits_per_dim": r.bpd, "stderr": r.stderr, "nats_per_image": r.nats_per_image}


def finite(n_nonfinite: int, n_images: int) -> None:
    if n_nonfinite:
        raise NumericalError(f"{n_nonfinite} of {n_images} images gave a non-finite "
                             "bits/dim; the model is numerically broken on them")


def item_names(data: Dataset) -> list[str]:
    """Each item's name: its file for a folder of images, else its index in the split."""
    files = getattr(getattr(data, "images", data), "files", None)
    return [str(f) for f in files] if files is not None else [str(i) for i in range(len(data))]  # type: ignore[arg-type]


def image_set(t: Trained, where: str | Path) -> tuple[str, Dataset]:
    """A split of the run's data (train, test; its classes checked) or a folder of images, with its name."""
    from nfgen.datasets.images import load_folder
    from nfgen.datasets.registry import SPLITS

    if isinstance(where, str) and where in SPLITS:
        return where, t.split(where)
    path = Path(where)
    return path.name or str(path), load_folder(path, t.model.shape)


def score_wanted(split: str | None, folder: Path | None, in_: str | None, ood: list[Path] | None,
                  hist: Path | None) -> tuple[list[str | Path], Path | None]:
    """The sets ``score`` reads (the in-distribution one first) and, when comparing, the picture."""
    if ood:
        if split is not None or folder is not None:
            raise ConfigError("with --ood, name the in-distribution set with --in (a split or a folder), "
                              "not --split/--folder")
        return [in_ or "test", *ood], image_path(hist or Path("score_hist.png"))
    if in_ is not None or hist is not None:
        raise ConfigError("--in and --hist go with --ood FOLDER; to score one set give --split or --folder")
    if split is not None and folder is not None:
        raise ConfigError("give one of --split or --folder")
    return [folder if folder is not None else checked_split(split or "test")], None

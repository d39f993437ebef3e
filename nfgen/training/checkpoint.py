"""Checkpoints: written atomically, loaded with checks that say what is wrong with a bad file."""

from __future__ import annotations

import dataclasses
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset, Subset

from nfgen import __version__
from nfgen.config.plugins import PluginError, load_plugins, plugin_names
from nfgen.config.schema import Config, config_from_dict
from nfgen.core.atomic import atomic_write
from nfgen.datasets.fingerprint import read_hashed
from nfgen.datasets.labels import Labelled
from nfgen.errors import CheckpointError, ConfigError, DataError
from nfgen.model.image_flow import ImageFlow, build_model

FORMAT = 1  # bump when the checkpoint layout changes; older nfgen refuses newer files
LOADED_SHA256 = "loaded_sha256"  # load_checkpoint's: the sha256 of the bytes the state came from


# save_checkpoint's temporary files: ".<name>.<8 random hex digits>.tmp" beside the target
# (nfgen.core.atomic's form; mkstemp's 8 random characters, which older nfgen left, match too).
_TEMP_NAME = re.compile(r"\.(?P<target>[^/]+)\.[a-z0-9_]{8}\.tmp")



@dataclass
class Progress:
    """Where a run stands; saved whole in every checkpoint (as a plain dict under "progress")
    and restored whole, so nothing about the position of a run lives outside it."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # global batches of ``epoch`` already trained on
    best_bpd: float = math.inf  # lowest test bits/dim so far (what best.pt holds; generation mode: noisy-image NLL)
    bad_steps: int = 0  # updates skipped for a non-finite loss or gradient, in total
    lr_scale: float = 1.0  # lowered by each rollback after a divergence
    rollbacks: int = 0
    train_seconds: float = 0.0  # wall-clock seconds of training, summed over every job of the run

    ADDED: ClassVar[tuple[str, ...]] = ("train_seconds",)  # absent from older checkpoints: default

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, path: str | Path = "checkpoint") -> Progress:
        """Validated: every field present with its type and range, else a CheckpointError; a field
        added after format 1 (``ADDED``) takes its default in a checkpoint written before it."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: 'progress' is not a mapping")
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in data and f.name in cls.ADDED:
                continue
            if f.name not in data:
                raise CheckpointError(f"{path}: 'progress' lacks '{f.name}'")
            v = data[f.name]
            if f.type == "int":
                ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
            else:  # best_bpd may be inf (no evaluation yet); lr_scale is a positive factor
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
                ok = ok and (v > 0 if f.name == "lr_scale" else True)
                ok = ok and (0 <= v < math.inf if f.name == "train_seconds" else True)
            if not ok:
                raise CheckpointError(f"{path}: progress.{f.name} is {v!r}, not a valid {f.type}")
            values[f.name] = float(v) if f.type == "float" else v
        return cls(**values)


@dataclass(frozen=True)
class TrainingState:
    """The parts of a checkpoint a resumed run uses, each checked for its type."""

    model: dict[str, torch.Tensor]
    ema: dict[str, Any] | None  # AveragedModel.state_dict(), or None when the run had no EMA
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    progress: Progress
    rng: dict[str, Any]
    class_names: list[str] | None = None  # a conditional model's classes; None: unconditional, or not kept


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``: a crash
    at any moment leaves either the old complete file or the new complete one."""
    path = Path(path)
    state = {"format": FORMAT, "nfgen_version": __version__,
             **{k: v for k, v in state.items() if k != LOADED_SHA256}}
    try:
        atomic_write(path, lambda f: torch.save(state, f))  # with the user's umask, as any file
    except OSError as e:
        raise CheckpointError(f"could not write checkpoint {path}: {e.strerror or e}; "
                              "the previous checkpoint, if any, is unchanged") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint; tensors land on the CPU. ``state[LOADED_SHA256]``: the
    sha256 of the bytes it was read from (not a field of the file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data, sha256 = read_hashed(path)  # hashed as read: the key of what is computed from this model
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:
        raise CheckpointError(f"{path} is not a readable nfgen checkpoint (truncated or corrupt?)") from None
    if not isinstance(state, dict) or "format" not in state or "model" not in state:
        raise CheckpointError(f"{path} is not an nfgen checkpoint")
    if state["format"] > FORMAT:
        raise CheckpointError(f"{path} was written by a newer nfgen ({state.get('nfgen_version')}, "
                              f"format {state['format']}); upgrade nfgen to read it")
    state[LOADED_SHA256] = sha256
    return state


def _check_tensors(value: Any, what: str, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in value.items()):
        raise CheckpointError(f"{path}: '{what}' is not a mapping of names to tensors")
    return value


def _is_byte_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1


def training_state(state: dict[str, Any], path: str | Path = "checkpoint") -> TrainingState:
    """The one place a checkpoint's training fields are validated before a resume uses them:
    a file with only a model (as ``sample`` accepts) or with fields of the wrong type gives a
    CheckpointError naming what is wrong, never a KeyError or TypeError from deep inside torch."""
    path = Path(path)
    missing = [k for k in ("optimizer", "scheduler", "progress", "rng") if k not in state]
    if missing:
        raise CheckpointError(f"{path} holds no training state ({', '.join(missing)} missing): it can be "
                              "sampled and evaluated but not resumed; start a new run")
    model = _check_tensors(state["model"], "model", path)
    ema = state.get("ema_state")
    if ema is not None and not (isinstance(ema, dict) and "n_averaged" in ema):
        raise CheckpointError(f"{path}: 'ema_state' is not the state of an averaged model")
    opt = state["optimizer"]
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict)
            and isinstance(opt.get("param_groups"), list) and all(isinstance(g, dict) for g in opt["param_groups"])):
        raise CheckpointError(f"{path}: 'optimizer' is not an optimizer state (state, param_groups)")
    sched = state["scheduler"]
    if not (isinstance(sched, dict) and isinstance(sched.get("last_epoch"), int)
            and isinstance(sched.get("base_lrs"), list)):
        raise CheckpointError(f"{path}: 'scheduler' is not a learning-rate schedule state")
    progress = Progress.from_dict(state["progress"], path)
    rng = state["rng"]
    py = rng.get("python") if isinstance(rng, dict) else None
    # random.getstate(): (version, tuple of 625 ints, gauss_next); setstate rejects anything else.
    py_ok = (isinstance(py, tuple) and len(py) == 3 and isinstance(py[0], int) and isinstance(py[1], tuple)
             and all(isinstance(x, int) for x in py[1]) and (py[2] is None or isinstance(py[2], float)))
    cuda = rng.get("cuda", []) if isinstance(rng, dict) else None
    if not (py_ok and _is_byte_tensor(rng.get("torch"))
            and isinstance(cuda, list) and all(_is_byte_tensor(t) for t in cuda)):
        raise CheckpointError(f"{path}: 'rng' does not hold valid random generator states")
    names = recorded_classes(state, path)
    return TrainingState(model, ema, opt, sched, progress, rng, names)


def remove_temp_files(folder: Path, targets: tuple[str, ...]) -> list[Path]:
    """Delete the temporary files ``save_checkpoint`` left for ``targets`` in ``folder`` when a
    process was killed mid-save. The caller must know no live process is writing them (the run
    folder's lock says so); other files, even similar-looking ones, are left alone."""
    removed = []
    for p in folder.glob(".*.tmp") if folder.is_dir() else []:
        m = _TEMP_NAME.fullmatch(p.name)
        if m and m["target"] in targets and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def config_of(state: dict[str, Any], path: str | Path = "checkpoint") -> Config:
    if state.get("kind") == "density2d":  # the same file format, another kind of model
        raise CheckpointError(f"{path} holds a 2-D flow of `nfgen density2d`, not an image model; "
                              "its pictures and numbers are in its run folder")
    try:
        names = plugin_names(state.get("config"))
        load_plugins(names, source=f"{path} (trained with plugins {', '.join(names)})")
        return config_from_dict(state["config"], drop_ignored=True)  # old nfgen stored options its arch ignored
    except PluginError as e:
        raise CheckpointError(str(e)) from None
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{path} holds an invalid config: {e}") from None


def class_names_of(state: dict[str, Any], cfg: Config, path: str | Path = "checkpoint") -> list[str]:
    """The names of a checkpoint's classes, label ``k`` named ``[k]``, checked against its config
    (``cfg``, from ``config_of``): one distinct non-empty name per class of ``model.num_classes``,
    none for an unconditional model. A conditional model's checkpoint written before class names
    were kept names its classes by number ("0", "1", ...)."""
    k = cfg.model.num_classes
    names = state.get("class_names")
    if names is None:
        return [str(i) for i in range(k)]
    if not (isinstance(names, list) and all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names)):
        raise CheckpointError(f"{path}: 'class_names' is not a list of distinct non-empty names")
    if len(names) != k:
        raise CheckpointError(f"{path} names {len(names)} classes but its model has {k} (model.num_classes): "
                              "the file is damaged or was edited")
    return names


def check_data_classes(recorded: list[str] | None, data: Dataset, path: str | Path = "checkpoint") -> None:
    """The one check every verb that reads labelled data for a trained model makes (through
    ``load_model_split``; ``train --resume`` too): the data's class names, label ``k`` named
    ``[k]``, are the ones the model learnt (``recorded``: the checkpoint's, None when it kept
    none). A renamed class folder would keep the count and silently change what each label means."""
    base = data.dataset if isinstance(data, Subset) else data
    if recorded is None or not isinstance(base, Labelled) or base.class_names == recorded:
        return
    raise DataError(f"{path} was trained on the classes {_listed(recorded)}, but the data now has "
                    f"{_listed(base.class_names)}: use the run's own data (or --set data.root=...) with "
                    "those class folders")


def _listed(names: list[str], most: int = 12) -> str:
    return ", ".join(names[:most]) + (f", ... ({len(names)} in all)" if len(names) > most else "")


def load_model_split(cfg: Config, split: str, recorded: list[str] | None, path: str | Path = "checkpoint") -> Dataset:
    """A split of a trained model's data (``cfg``: its checkpoint's, ``--set`` applied), its
    classes checked against the ones the model learnt (``check_data_classes``)."""
    from nfgen.datasets.splits import load_split  # the data sets need nothing of checkpoints; imported here to stay light

    data = load_split(cfg, split)
    check_data_classes(recorded, data, path)
    return data


def recorded_classes(state: dict[str, Any], path: str | Path = "checkpoint") -> list[str] | None:
    """The class names a checkpoint recorded, checked; None if it kept none (unconditional, or old)."""
    return class_names_of(state, config_of(state, path), path) if state.get("class_names") is not None else None


def restore_model(model: ImageFlow, weights: dict[str, Any], path: str | Path = "checkpoint") -> None:
    expected, given = model.state_dict(), weights
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    reshaped = [k for k in expected if k in given and tuple(given[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or reshaped:
        parts = [f"{len(v)} {name} (e.g. {v[0]})" for name, v in
                 (("missing", missing), ("unexpected", unexpected), ("reshaped", reshaped)) if v]
        raise CheckpointError(f"{path} does not match its model architecture: {'; '.join(parts)} "
                              "weights; was it written by another nfgen version?")
    model.load_state_dict(weights)


def model_from_checkpoint(path: str | Path, ema: bool = True,
                          device: str | torch.device = "cpu") -> tuple[ImageFlow, Config, dict]:
    """Rebuild the model from the config stored in the checkpoint; the EMA weights if present
    and ``ema`` is true, as they are what training evaluated and sampled."""
    state = load_checkpoint(path)
    cfg = config_of(state, path)
    class_names_of(state, cfg, path)  # checked now: the verbs that map names to labels read them later
    model = build_model(cfg)
    weights = state["ema"] if ema and state.get("ema") is not None else state["model"]
    restore_model(model, weights, path)
    return model.to(device).eval(), cfg, state

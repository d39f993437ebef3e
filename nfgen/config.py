"""Typed, validated configuration: a frozen dataclass tree loaded from YAML.

Every error is a ``ConfigError`` with a one-line message that names the offending key and
says what would be valid, raised before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration that cannot work, with a message meant for the user."""


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["mnist", "cifar10", "folder"] = "cifar10"
    root: str = "data"  # where torchvision data sets live, or the image folder itself
    download: bool = True  # torchvision data sets only; a folder is never downloaded
    test_fraction: float = 0.1  # folder without train/ and test/ subfolders: held-out share
    num_workers: int = 2


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["glow", "realnvp"] = "glow"
    image_shape: tuple[int, int, int] = (3, 32, 32)  # C, H, W; MNIST at 32 is zero-padded
    n_bits: int = 8  # Glow's CelebA-HQ results use 5-bit images: fewer levels, easier detail
    levels: int = 3  # scales L; H and W must be divisible by 2**L
    steps: int = 32  # Glow: steps per level; RealNVP: couplings per mask kind per scale
    hidden: int = 512  # conditioner width
    blocks: int = 8  # RealNVP: residual blocks per conditioner
    coupling: Literal["affine", "additive"] = "affine"
    permutation: Literal["conv1x1_lu", "conv1x1", "reverse", "shuffle"] = "conv1x1_lu"
    split_prior: Literal["learned", "standard"] = "learned"  # Glow only
    learn_top: bool = True  # Glow only
    preprocess: Literal["shift", "logit"] = "shift"  # Glow: shift; RealNVP: logit
    logit_alpha: float = 0.05  # RealNVP's alpha for CIFAR-10


@dataclass(frozen=True)
class DequantizationConfig:
    kind: Literal["uniform", "variational"] = "uniform"
    steps: int = 4  # variational: couplings in q(eps | x)
    hidden: int = 32  # variational: conditioner width


@dataclass(frozen=True)
class TrainConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    batch_size: int = 64
    grad_accum: int = 1  # micro-batches per update: effective batch = batch_size * grad_accum
    optimizer: Literal["adam", "adamax"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 500  # linear warm-up; Glow's large lr is unstable without it
    max_steps: int = 10000
    grad_clip: float = 50.0  # max global grad norm; 0 disables
    ema_decay: float = 0.0  # 0 disables; e.g. 0.999 evaluates and samples an averaged model
    log_every: int = 50
    eval_every: int = 1000
    eval_batches: int = 0  # 0 evaluates the whole test split
    sample_every: int = 1000
    sample_count: int = 64
    sample_temperatures: tuple[float, ...] = (0.7, 1.0)
    checkpoint_every: int = 500
    compile: bool = False  # torch.compile the flow body (first steps are slow while it compiles)
    amp: bool = False  # bf16 autocast for the conditioner nets (CUDA; CPUs with native bf16); log-dets and loss stay float32
    channels_last: bool = True  # channels-last memory order for the body's convolutions (same numbers, faster)
    memory_saving: bool = False  # backward reconstructs activations with the inverse instead of storing them
    max_bad_steps: int = 20  # consecutive non-finite losses/gradients (updates skipped) before acting
    on_divergence: Literal["stop", "rollback"] = "stop"  # rollback: reload last.pt, lower the lr
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 3


@dataclass(frozen=True)
class Config:
    name: str = "run"
    run_dir: str = ""  # empty: runs/<name>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    dequantization: DequantizationConfig = field(default_factory=DequantizationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            return v

        return plain(dataclasses.asdict(self))


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{hint}; valid keys: {', '.join(valid)}"


def _coerce(path: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if args[-1] is Ellipsis:
            return tuple(_coerce(f"{path}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(f"{path}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp}")  # a bug in this module, not user input


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise ConfigError(f"unknown key '{where}'{_suggest(str(key), names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, where)
        else:
            kwargs[key] = _coerce(where, value, tp)
    return cls(**kwargs)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def validate(cfg: Config) -> Config:
    """Value ranges and combinations that cannot work."""
    m, t, d, dq = cfg.model, cfg.train, cfg.data, cfg.dequantization
    c, h, w = m.image_shape
    _check(c >= 1 and h >= 1 and w >= 1, f"model.image_shape: all sizes must be >= 1, got {list(m.image_shape)}")
    _check(m.levels >= 1, f"model.levels must be >= 1, got {m.levels}")
    _check(m.steps >= 1, f"model.steps must be >= 1, got {m.steps}")
    _check(m.hidden >= 1, f"model.hidden must be >= 1, got {m.hidden}")
    _check(m.blocks >= 0, f"model.blocks must be >= 0, got {m.blocks}")
    _check(1 <= m.n_bits <= 8, f"model.n_bits must be in 1..8, got {m.n_bits}")
    _check(0 <= m.logit_alpha < 0.5, f"model.logit_alpha must be in [0, 0.5), got {m.logit_alpha}")
    k = 2**m.levels
    _check(h % k == 0 and w % k == 0,
           f"model.image_shape {h}x{w} is not divisible by 2**levels = {k}; "
           f"change the image size or model.levels")
    _check(dq.steps >= 1 and dq.hidden >= 1, "dequantization.steps and .hidden must be >= 1")
    _check(0 < d.test_fraction < 1, f"data.test_fraction must be in (0, 1), got {d.test_fraction}")
    _check(d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}")
    for name in ("batch_size", "grad_accum", "max_steps", "log_every", "eval_every",
                 "sample_every", "sample_count", "checkpoint_every"):
        _check(getattr(t, name) >= 1, f"train.{name} must be >= 1, got {getattr(t, name)}")
    _check(t.lr > 0, f"train.lr must be > 0, got {t.lr}")
    _check(t.warmup_steps >= 0 and t.eval_batches >= 0 and t.grad_clip >= 0,
           "train.warmup_steps, train.eval_batches and train.grad_clip must be >= 0")
    _check(t.max_bad_steps >= 1 and t.max_rollbacks >= 0,
           "train.max_bad_steps must be >= 1 and train.max_rollbacks >= 0")
    _check(0 < t.rollback_lr_factor < 1, f"train.rollback_lr_factor must be in (0, 1), got {t.rollback_lr_factor}")
    _check(0 <= t.ema_decay < 1, f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    _check(t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"),
           f"train.device must be auto, cpu, cuda or cuda:N, got {t.device!r}")
    _check(all(x > 0 for x in t.sample_temperatures), "train.sample_temperatures must be > 0")
    _check(bool(cfg.name) and "/" not in cfg.name, f"name must be a non-empty folder name, got {cfg.name!r}")
    return cfg


def check_data_matches_model(cfg: Config) -> Config:
    """The data set must produce images of the model's shape (checked for full run configs;
    ``build_model`` on a bare model config does not need a data set)."""
    d, m = cfg.data, cfg.model
    c, h, w = m.image_shape
    if d.dataset == "mnist":
        _check(c == 1 and h == w and h in (28, 32),
               f"MNIST images are 1x28x28 (or zero-padded to 1x32x32); model.image_shape is {list(m.image_shape)}")
    if d.dataset == "cifar10":
        _check(tuple(m.image_shape) == (3, 32, 32),
               f"CIFAR-10 images are 3x32x32; model.image_shape is {list(m.image_shape)}")
    _check(c in (1, 3) or d.dataset != "folder",
           f"an image folder gives 1 (grey) or 3 (RGB) channels, model.image_shape has {c}")
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    return validate(_build(Config, data, ""))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> ``(["train", "lr"], 0.0003)``; values parse as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.lr=3e-4)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: '{k}' is not a section")
        node[keys[-1]] = value
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (a path, or the bare name of a shipped one) and apply overrides."""
    path = resolve_config_path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}; fix the file") from None
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return check_data_matches_model(config_from_dict(apply_overrides(data, overrides or [])))


# The shipped configs live in the repository's top-level configs/ (an editable install).
SHIPPED = Path(__file__).resolve().parent.parent / "configs"


def shipped_configs() -> list[str]:
    return sorted(p.name for p in SHIPPED.glob("*.yaml"))


def resolve_config_path(path: str | Path) -> Path:
    p = Path(path)
    if p.exists():
        return p
    for name in (p.name, f"{p.name}.yaml"):
        if p.parent == Path(".") and (SHIPPED / name).exists():
            return SHIPPED / name
    raise ConfigError(f"config {str(path)!r} not found; give a path or one of: {', '.join(shipped_configs())}")


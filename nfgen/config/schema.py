"""Typed, validated configuration: a frozen dataclass tree loaded from YAML.

Every error is a ``ConfigError`` with a one-line message that names the offending key and
says what would be valid, raised before any work starts.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nfgen.config.keys import opt
from nfgen.config.parse import (  # noqa: F401  (ConfigError, _section_type, parse_duration: part of this module's API)
    MAX_DEPTH,
    ConfigError,
    _build,
    _depth,
    _section_type,
    apply_overrides,
    parse_duration,
    parse_override,
    plain_data,
    read_yaml,
    resolve_path,
    shipped_folder,
    shipped_names,
)
from nfgen.config.plugins import load_plugins, plugin_names
from nfgen.core.user_input import parser
from nfgen.datasets import DATASETS, dataset_named
from nfgen.flows.architectures import architecture_names, architecture_sections
from nfgen.flows.section import ArchSection, check_couplings


@dataclass(frozen=True)
class DataConfig:
    dataset: str = opt("cifar10", "a registered data set: " + ", ".join(sorted(DATASETS)) + " (docs/data.md)")
    root: str = opt("data", "the folder holding the data set's files (docs/data.md), or the image folder itself")
    download: bool = opt(True, "download a data set torchvision can fetch that is not under root (others never are)")
    test_fraction: float = opt(0.1, "a folder without train/ and test/ subfolders: the share held out for testing")
    num_workers: int = opt(2, "DataLoader worker processes (0: load in the training process)")
    labels: bool = opt(False, "a folder: each class's images in a subfolder (data sets with classes always have labels)")
    hflip: bool = opt(False, "random horizontal flips of training images (never test images), drawn from (seed, epoch, "
                             "batch) so resume stays exact; for photographs (TarFlow's ImageNet), not digits")


# The architectures: each has its own section under ``model`` (``model.glow``, ...), holding only
# the options it uses, so a key meant for another architecture is an error. An architecture and
# its section register themselves (``nfgen.flows.architectures.register_architecture``); the
# choices of ``model.arch`` and the sections a config may hold are read from that registry when a
# config is parsed, so an architecture a plugin registers later is a choice like the built-ins.
# Couplings and conditioners are named choices from registries (``nfgen.flows.transforms``,
# ``nfgen.flows.nets``): ``coupling_options`` / ``conditioner_options`` are handed to the chosen
# one and checked against its signature.


@dataclass(frozen=True)
class ModelConfig:
    arch: str = opt("glow", "the architecture; its options are the section model.<arch>", choices=architecture_names)
    image_shape: tuple[int, int, int] = opt((3, 32, 32), "C, H, W; MNIST at 32 is zero-padded")
    n_bits: int = opt(8, "bits per pixel value (Glow's CelebA-HQ results use 5: fewer levels, easier detail)")
    preprocess: Literal["shift", "logit"] = opt("shift", "Glow: shift to [-1/2, 1/2); RealNVP and Flow++: logit")
    logit_alpha: float = opt(0.05, "preprocess logit: RealNVP's alpha for CIFAR-10 (Flow++ too)")
    # Class-conditional (0: unconditional). A label is embedded once, class_dim wide; every latent
    # gets a class-conditional Gaussian prior, and with class_in_body the body's layers see the
    # embedding too (couplings' nets as class_dim constant channels; TarFlow's blocks, added to tokens).
    num_classes: int = opt(0, "classes of a class-conditional model (0: unconditional)")
    class_dim: int = opt(16, "width of the class embedding")
    class_in_body: bool = opt(True, "the body's layers see the class too (else only the latents' priors)")
    label_dropout: float = opt(0.0, "share of training labels swapped for the null class; > 0 makes guidance possible")
    null_class: Literal["learned", "mean"] = opt("learned", "the null class's embedding: its own learned row, or the mean "
                                                 "of the class embeddings (apple/ml-tarflow's)")
    # The section of ``arch``, under that name in YAML (``model.glow``); a registered architecture's
    # defaults when not given.
    options: ArchSection | None = opt(None, "the section of model.arch", sections=architecture_sections,
                                      chosen_by="arch")

    def __post_init__(self) -> None:
        sections = architecture_sections()
        if self.arch not in sections:
            raise ConfigError(f"model.arch: {self.arch!r} is not one of {', '.join(map(repr, sections))}")
        section = sections[self.arch][0]
        if self.options is None:
            object.__setattr__(self, "options", section())
        elif type(self.options) is not section:
            raise ConfigError(f"model.{self.arch} must be a {section.__name__}, got a {type(self.options).__name__}")

    def __getattr__(self, name: str) -> Any:
        """``model.glow``: the section of ``arch: glow`` (None under another arch), as in YAML."""
        if not name.startswith("_") and name in architecture_sections():
            return self.options if name == self.arch else None
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


# Options that lived directly under ``model`` before the per-architecture sections, and which of
# them each architecture used then: an old file or checkpoint still loads, each moved into the
# section of its ``arch``.
LEGACY_MODEL_KEYS = ("levels", "steps", "hidden", "blocks", "coupling", "permutation", "split_prior", "learn_top")
_LEGACY_USED = {"glow": ("levels", "steps", "hidden", "coupling", "permutation", "split_prior", "learn_top"),
                "realnvp": ("levels", "steps", "hidden", "blocks", "coupling")}
# The values the single old model section had: an old checkpoint stores them all, also those its
# architecture ignored, and those are dropped when they hold their old default.
_LEGACY_DEFAULTS = {"levels": 3, "steps": 32, "hidden": 512, "blocks": 8, "coupling": "affine",
                    "permutation": "conv1x1_lu", "split_prior": "learned", "learn_top": True}


@dataclass(frozen=True)
class DequantizationConfig:
    # uniform | variational: likelihood mode (exact bits/dim of the discrete image).
    # gaussian: generation mode (TarFlow, Zhai et al., 2025): noise N(0, sigma^2) on the bin centres,
    # and samples denoised by one Tweedie step; its numbers are no likelihood of the discrete image.
    kind: Literal["uniform", "variational", "gaussian"] = opt(
        "uniform", "uniform or variational: likelihood mode; gaussian: generation mode (noise, Tweedie denoising)")
    # gaussian: the noise std on nfgen's image scale, where the image spans [0, 1) (u-space, and the
    # same after preprocess: shift); a paper's sigma on [-1, 1] data is twice this (TarFlow's 0.05 -> 0.025).
    sigma: float = opt(0.0, "gaussian: the noise std on the [0, 1) image scale (TarFlow's 0.05 on [-1, 1] is 0.025); "
                            "0: unset")
    # variational: q(eps | x) is a flow of checkerboard couplings conditioned on features of x
    steps: int = opt(4, "variational: couplings in q(eps | x)")
    hidden: int = opt(32, "variational: conditioner width")
    blocks: int = opt(1, "variational: conditioner depth")
    conditioner: str = opt("glow", "variational: the conditioner (Flow++: attention)")
    conditioner_options: dict[str, Any] = opt(help="variational: options of the conditioner", factory=dict)
    coupling: str = opt("affine", "variational: the coupling transform (Flow++: logistic_mixture)")
    coupling_options: dict[str, Any] = opt(help="variational: options of the coupling transform", factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    device: str = opt("auto", "auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps")
    seed: int = opt(0, "seeds the model's initial weights, the data order and the noise")
    batch_size: int = opt(64, "images per update, over all processes")
    grad_accum: int = opt(1, "micro-batches per update: each holds batch_size / grad_accum images")
    optimizer: Literal["adam", "adamw", "adamax"] = opt("adam", "adamw: decoupled weight decay (TarFlow)")
    betas: tuple[float, float] = opt((0.9, 0.999), "the optimizer's betas (TarFlow: [0.9, 0.95])")
    lr: float = opt(1e-3, "peak learning rate")
    weight_decay: float = opt(0.0, "weight decay (adamw: decoupled)")
    warmup_steps: int = opt(500, "linear learning-rate warm-up; Glow's large lr is unstable without it")
    schedule: Literal["constant", "cosine"] = opt("constant", "after warm-up; cosine decays to final_lr_factor * lr at "
                                                              "max_steps")
    final_lr_factor: float = opt(0.0, "schedule cosine: the last learning rate, as a share of lr")
    max_steps: int = opt(10000, "updates in the whole run")
    # Wall-clock budget of each job (each start or --resume): seconds, or "90s", "10m", "2h", "1h30m",
    # "4:00:00"; training stops in time for its final evaluation, samples and last.pt. null: none.
    max_time: float | str | None = opt(None, "wall-clock budget of each job (start or --resume): seconds, or 90s, 10m, 2h, "
                                             "1h30m, 4:00:00; null: none")
    grad_clip: float = opt(50.0, "max global gradient norm; 0 disables")
    ema_decay: float = opt(0.0, "exponential moving average of the weights, evaluated and sampled (e.g. 0.999); 0: off")
    log_every: int = opt(50, "steps between logged scalars (TensorBoard, metrics.jsonl) and, off a terminal, log lines")
    eval_every: int = opt(1000, "steps between test evaluations")
    eval_batches: int = opt(0, "test batches per evaluation; 0: the whole test split")
    sample_every: int = opt(1000, "steps between sample grids")
    sample_count: int = opt(64, "samples per grid")
    sample_temperatures: tuple[float, ...] = opt((0.7, 1.0), "a grid at each of these temperatures")
    fid_every: int = opt(0, "steps between sample-quality measurements (nfgen eval-fid's numbers against the test "
                            "split, logged as test/fid, ...); 0: never")
    fid_samples: int = opt(1000, "samples per sample-quality measurement")
    fid_features: str = opt("", "TorchScript feature extractor for fid_every (empty: the FID Inception network)")
    checkpoint_every: int = opt(500, "steps between checkpoints (last.pt)")
    compile: bool = opt(False, "torch.compile the flow body (the first steps are slow while it compiles)")
    amp: bool = opt(False, "bf16 autocast for the conditioner nets (CUDA; CPUs with native bf16); log-dets and loss "
                           "stay float32")
    channels_last: bool = opt(True, "channels-last memory order for the body's convolutions (same numbers, faster)")
    memory_saving: bool = opt(False, "backward reconstructs activations with the inverse instead of storing them")
    max_bad_steps: int = opt(20, "consecutive non-finite losses or gradients (updates skipped) before on_divergence")
    on_divergence: Literal["stop", "rollback"] = opt("stop", "stop, or rollback: reload last.pt and lower the lr")
    rollback_lr_factor: float = opt(0.5, "rollback: the lr is multiplied by this")
    max_rollbacks: int = opt(3, "rollbacks before the run stops")
    wandb_project: str | None = opt(None, "Weights & Biases (pip install 'nfgen[wandb]'): mirror the scalars and "
                                          "sample grids to this project; null: off")
    wandb_entity: str | None = opt(None, "the W&B team or user; null: your default")
    wandb_run_name: str | None = opt(None, "the W&B run's name; null: the config's name")


@dataclass(frozen=True)
class Config:
    name: str = opt("run", "the run's name: its folder is runs/<name>")
    run_dir: str = opt("", "the run folder; empty: runs/<name>")
    plugins: tuple[str, ...] = opt((), "your own modules to import first, e.g. [my_flows]: the transforms, conditioners, "
                                        "... they register become valid names (docs/plugins.md)")
    data: DataConfig = opt(help="the images a model learns from", factory=DataConfig)
    model: ModelConfig = opt(help="the flow: image shape, architecture, class conditioning", factory=ModelConfig)
    dequantization: DequantizationConfig = opt(help="how discrete pixels become continuous values", factory=DequantizationConfig)
    train: TrainConfig = opt(help="optimisation, schedule, logging, evaluation, checkpoints", factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for YAML and checkpoints; unset sections (other architectures) left out."""

        return plain_data(self)


# Seeds feed torch's 64-bit generators after small arithmetic (seed * 100_003 + epoch).
MAX_SEED = 2**32 - 1


def _migrate_model(data: dict[str, Any], overriding: bool = False, drop_ignored: bool = False) -> dict[str, Any]:
    """Move the old flat model options (``model.steps``) into the section of ``model.arch``
    (``model.glow.steps``). An option the architecture never used is an error, unless it holds
    its old default (old nfgen wrote every option into config.yaml and checkpoints) or
    ``drop_ignored`` (an old checkpoint: the model it holds was built without it).
    ``overriding``: flat keys come from ``--set`` and replace the section's value."""
    model = data.get("model")
    if not isinstance(model, dict) or not any(k in model for k in LEGACY_MODEL_KEYS):
        return data
    model = dict(model)
    arch = model.get("arch", "glow")
    sections = architecture_sections()
    if arch not in sections:
        return data  # reported as an invalid model.arch
    section = dict(model.get(arch) or {})
    used = _LEGACY_USED.get(arch, ())
    for key in [k for k in LEGACY_MODEL_KEYS if k in model]:
        value = model.pop(key)
        if key not in used:
            if drop_ignored or value == _LEGACY_DEFAULTS[key]:
                continue
            raise ConfigError(f"model.{key} does not apply to arch {arch} (it would be ignored); remove it; "
                              f"model.{arch} options: {', '.join(f.name for f in dataclasses.fields(sections[arch][0]))}")
        if key in section and not overriding:
            raise ConfigError(f"model.{key} and model.{arch}.{key} are both set: keep model.{arch}.{key}")
        section[key] = value
    model[arch] = section
    return {**data, "model": model}


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


# The largest dequantization.sigma: noise of std half the image's range has drowned the image.
MAX_SIGMA = 0.5


def _validate_noise(dq: DequantizationConfig, m: ModelConfig) -> None:
    """Gaussian noise (generation mode) needs its sigma, and the shift preprocessing: the noisy
    image leaves [0, 1), where the logit is undefined. A sigma under another kind is an error."""
    if dq.kind != "gaussian":
        _check(dq.sigma == 0, f"dequantization.sigma is the noise std of kind gaussian, but kind is {dq.kind}: "
                              "remove it, or set dequantization.kind: gaussian")
        return
    _check(0 < dq.sigma <= MAX_SIGMA,
           f"dequantization.sigma must be in (0, {MAX_SIGMA}] with kind gaussian (the noise std on the [0, 1) "
           f"image scale; TarFlow's 0.05 on [-1, 1] is 0.025 here), got {dq.sigma:g}{' (unset)' if dq.sigma == 0 else ''}")
    _check(m.preprocess == "shift",
           "dequantization.kind gaussian needs model.preprocess: shift (Gaussian noise takes pixels "
           "outside [0, 1), where the logit is undefined)")


def validate(cfg: Config) -> Config:
    """Value ranges and combinations that cannot work."""
    m, t, d, dq = cfg.model, cfg.train, cfg.data, cfg.dequantization
    c, h, w = m.image_shape
    _check(1 <= c <= 64 and 1 <= h <= 4096 and 1 <= w <= 4096,
           f"model.image_shape: channels must be in 1..64 and sizes in 1..4096, got {list(m.image_shape)}")
    _check(1 <= m.n_bits <= 8, f"model.n_bits must be in 1..8, got {m.n_bits}")
    _check(0 <= m.logit_alpha < 0.5, f"model.logit_alpha must be in [0, 0.5), got {m.logit_alpha}")
    m.options.validate(f"model.{m.arch}", tuple(m.image_shape), t.memory_saving)
    _check(0 <= m.num_classes <= 100_000, f"model.num_classes must be in 0..100000 (0: unconditional), got {m.num_classes}")
    _check(1 <= m.class_dim <= 4096, f"model.class_dim must be in 1..4096, got {m.class_dim}")
    _check(0 <= m.label_dropout < 1, f"model.label_dropout must be in [0, 1), got {m.label_dropout}")
    _check(m.num_classes > 0 or m.label_dropout == 0,
           "model.label_dropout needs a class-conditional model (model.num_classes > 0)")
    _check(m.num_classes > 0 or m.null_class == "learned",
           "model.null_class needs a class-conditional model (model.num_classes > 0)")
    _validate_noise(dq, m)
    _check(1 <= dq.steps <= 256, f"dequantization.steps must be in 1..256, got {dq.steps}")
    check_couplings("dequantization", dq, memory_saving=False)
    _check(0 < d.test_fraction < 1, f"data.test_fraction must be in (0, 1), got {d.test_fraction}")
    _check(0 <= d.num_workers <= 256, f"data.num_workers must be in 0..256, got {d.num_workers}")
    _check(bool(d.root), "data.root must not be empty")
    dataset_named(d.dataset)
    for name in ("batch_size", "grad_accum", "max_steps", "log_every", "eval_every",
                 "sample_every", "sample_count", "checkpoint_every"):
        _check(getattr(t, name) >= 1, f"train.{name} must be >= 1, got {getattr(t, name)}")
    _check(t.sample_count <= 4096, f"train.sample_count must be <= 4096, got {t.sample_count}")
    _check(t.fid_every >= 0 and 2 <= t.fid_samples <= 1_000_000,
           f"train.fid_every must be >= 0 and train.fid_samples in 2..1000000, got {t.fid_every}, {t.fid_samples}")
    _check(0 <= t.seed <= MAX_SEED, f"train.seed must be in 0..{MAX_SEED}, got {t.seed}")
    _check(0 < t.lr <= 10, f"train.lr must be in (0, 10], got {t.lr}")
    _check(0 <= t.weight_decay <= 1, f"train.weight_decay must be in [0, 1], got {t.weight_decay}")
    _check(all(0 <= b < 1 for b in t.betas), f"train.betas must be two numbers in [0, 1), got {list(t.betas)}")
    _check(0 <= t.final_lr_factor <= 1, f"train.final_lr_factor must be in [0, 1], got {t.final_lr_factor}")
    _check(t.warmup_steps >= 0 and t.eval_batches >= 0 and t.grad_clip >= 0,
           "train.warmup_steps, train.eval_batches and train.grad_clip must be >= 0")
    _check(t.max_bad_steps >= 1 and t.max_rollbacks >= 0,
           "train.max_bad_steps must be >= 1 and train.max_rollbacks >= 0")
    parse_duration(t.max_time)
    _check(0 < t.rollback_lr_factor < 1, f"train.rollback_lr_factor must be in (0, 1), got {t.rollback_lr_factor}")
    _check(0 <= t.ema_decay < 1, f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    check_device_name(t.device, "train.device")
    _check(len(t.sample_temperatures) >= 1 and all(0 < x <= 100 for x in t.sample_temperatures),
           "train.sample_temperatures must be a non-empty list of numbers in (0, 100]")
    _check(bool(cfg.name) and "/" not in cfg.name and "\\" not in cfg.name and cfg.name not in (".", ".."),
           f"name must be a non-empty folder name, got {cfg.name!r}")
    return cfg


DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"


@parser("device")
def check_device_name(name: str, what: str = "--device") -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, by its form (whether the machine has
    it is checked when the device is used: ``nfgen.core.devices``)."""
    head, _, index = name.partition(":")
    ok = name in ("auto", "cpu", "cuda", "mps") or (head == "cuda" and re.fullmatch(r"[0-9]{1,3}", index) is not None)
    _check(ok, f"{what} must be {DEVICE_HELP}, got {name!r}")
    return name


def check_data_matches_model(cfg: Config) -> Config:
    """The data set must produce images of the model's shape, and its classes (checked for full run
    configs; ``build_model`` on a bare model config does not need a data set): asked of the
    registered data set (``nfgen.datasets``)."""
    dataset_named(cfg.data.dataset).check_config(cfg)
    return cfg


def config_from_dict(data: dict[str, Any], drop_ignored: bool = False) -> Config:
    """A validated Config from plain data (old flat model options are migrated, see
    ``_migrate_model``; ``drop_ignored`` for the configs stored in old checkpoints). Its
    ``plugins`` are imported first (``nfgen.config.plugins``): their registered names are valid choices."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    load_plugins(plugin_names(data))
    _check(_depth(data) <= MAX_DEPTH, f"the config is nested more than {MAX_DEPTH} levels deep; "
                                      "a config has sections of plain keys")
    return validate(_build(Config, _migrate_model(data, drop_ignored=drop_ignored), ""))


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (a path, or the bare name of a shipped one) and apply overrides."""
    path = resolve_config_path(path)
    data = read_yaml(path)
    # Plugins first, also one named by --set plugins=[...]: a plugin may sit beside the config file.
    load_plugins(plugin_names(apply_overrides(data, overrides or [])), [path.parent], f"{path}: plugins")
    # Old flat model options are moved into the arch's section before --set applies, so a flat
    # override (--set model.steps=8) replaces the file's value instead of clashing with it.
    data = apply_overrides(_migrate_model(data), overrides or [])
    return check_data_matches_model(config_from_dict(_migrate_model(data, overriding=True)))


# The shipped configs are package data (nfgen/configs/), found the same way in a checkout, an
# editable install and an installed wheel.
SHIPPED = shipped_folder()


def shipped_configs() -> list[str]:
    return shipped_names(SHIPPED)


def resolve_config_path(path: str | Path) -> Path:
    return resolve_path(path, SHIPPED)

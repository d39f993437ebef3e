"""The config of ``nfgen density2d``: frozen dataclasses built and overridden by the same
machinery as the image configs (``nfgen.config.parse``), validated with one-line errors.

The objective follows from the target: an energy (``ring``, ``u1``..``u4``, ``expression``) is
fitted by reverse KL, a sampler (``moons``, ..., ``csv``) by maximum likelihood.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nfgen.config.keys import opt
from nfgen.config.parse import (
    MAX_DEPTH,
    _build,
    _depth,
    apply_overrides,
    read_yaml,
    resolve_path,
    shipped_folder,
    shipped_names,
)
from nfgen.config.schema import MAX_SEED, check_device_name
from nfgen.density2d.expression import ExpressionError, compile_energy
from nfgen.density2d.targets import MAX_BOX, TARGET_NAMES, is_energy
from nfgen.errors import ConfigError

# The shipped 2-D configs: a folder of their own, so the image commands' list of shipped configs
# (nfgen/configs/*.yaml, each an image model) does not hold them.
SHIPPED = shipped_folder("density2d")


@dataclass(frozen=True)
class TargetConfig:
    name: str = opt("ring", "ring | u1..u4 | expression (energies); moons | circles | 8gaussians | checkerboard | "
                            "pinwheel | csv (samples)")
    expression: str = opt("", "name expression: the energy U(z1, z2), p~ = exp(-U), e.g. "
                              "0.5*((sqrt(z1**2+z2**2)-2)/0.4)**2")
    csv: str = opt("", "name csv: a file of x,y rows (a header line is allowed)")
    box: float = opt(0.0, "half-width of the square [-box, box]^2 of pictures and quadrature; 0: the target's own")
    test_fraction: float = opt(0.2, "csv: share of the points held out for the test log-likelihood")


@dataclass(frozen=True)
class FlowConfig:
    kind: Literal["planar", "radial", "coupling"] = opt("planar", "planar or radial flows (Rezende & Mohamed, 2015), "
                                                                  "or couplings")
    layers: int = opt(8, "planar or radial layers, or coupling steps (actnorm, permutation, coupling)")
    coupling: str = opt("affine", "coupling: a registered transform (affine | additive | spline | logistic_mixture)")
    coupling_options: dict[str, Any] = opt(help="coupling: the transform's options, e.g. {bins: 8, bound: 5.0} for "
                                                "spline", factory=dict)
    hidden: int = opt(64, "coupling: width of the MLP conditioner")
    blocks: int = opt(2, "coupling: hidden layers of the MLP beyond the first")
    permutation: Literal["conv1x1_lu", "conv1x1", "reverse", "shuffle"] = opt(
        "conv1x1_lu", "coupling: mixing of the two coordinates between couplings")


@dataclass(frozen=True)
class TrainConfig:
    device: str = opt("cpu", "cpu by default: a 2-D flow is a few thousand parameters, kernel launches dominate on a GPU")
    seed: int = opt(0, "seeds the initial weights and every draw")
    batch_size: int = opt(256, "flow samples (energy) or data points (samples) per step")
    lr: float = opt(1e-3, "Adam's learning rate")
    max_steps: int = opt(5000, "updates")
    grad_clip: float = opt(10.0, "max global gradient norm; 0 disables")
    anneal_steps: int = opt(0, "energy: log p~ weighted by min(1, 0.01 + step / anneal_steps) (Rezende & Mohamed); 0: off")
    log_every: int = opt(50, "steps between logged losses")
    eval_every: int = opt(500, "samples: test log-likelihood every so many steps (and at the end)")
    checkpoint_every: int = opt(1000, "steps between checkpoints")
    picture_every: int = opt(0, "TensorBoard pictures every so many steps; 0: at the end only")
    max_bad_steps: int = opt(20, "consecutive non-finite losses (updates skipped) before stopping")


@dataclass(frozen=True)
class EvalConfig:
    samples: int = opt(100_000, "flow samples for the final bound and importance-weighted log Z; synthetic test points")
    quadrature: int = opt(1000, "cells per side of the grid that integrates exp(-U) for the true log Z")
    grid: int = opt(200, "cells per side of the pictures")
    dpi: int = opt(80, "resolution of the pictures")


@dataclass(frozen=True)
class Density2DConfig:
    name: str = opt("density2d", "the run's name: its folder is runs/<name>")
    run_dir: str = opt("", "the run folder; empty: runs/<name>")
    target: TargetConfig = opt(help="what the flow fits: an energy exp(-U) (reverse KL) or points (likelihood)",
                               factory=TargetConfig)
    flow: FlowConfig = opt(help="the 2-D flow over N(0, I)", factory=FlowConfig)
    train: TrainConfig = opt(help="optimisation and logging", factory=TrainConfig)
    eval: EvalConfig = opt(help="the final estimates and the pictures", factory=EvalConfig)

    @property
    def objective(self) -> str:
        """``energy`` (reverse KL to exp(-U)) or ``samples`` (maximum likelihood)."""
        return "energy" if is_energy(self.target.name) else "samples"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _validate_flow(f: FlowConfig) -> None:
    from nfgen.flows.section import _check_choice  # the image configs' check of a named transform

    _check(1 <= f.layers <= 1024, f"flow.layers must be in 1..1024, got {f.layers}")
    _check(1 <= f.hidden <= 65536, f"flow.hidden must be in 1..65536, got {f.hidden}")
    _check(0 <= f.blocks <= 64, f"flow.blocks must be in 0..64, got {f.blocks}")
    if f.kind == "coupling":
        _check_choice("flow.coupling", f.coupling, f.coupling_options, "transform")
    else:
        _check(not f.coupling_options, f"flow.coupling_options apply to flow.kind coupling, not {f.kind}; remove them")


def validate(cfg: Density2DConfig) -> Density2DConfig:
    t, f, tr, ev = cfg.target, cfg.flow, cfg.train, cfg.eval
    _check(t.name in TARGET_NAMES, f"target.name {t.name!r} is not one of {', '.join(TARGET_NAMES)}")
    _check(0 <= t.box <= MAX_BOX, f"target.box must be in [0, {MAX_BOX:g}] (0: the target's own), got {t.box}")
    if t.name == "expression":
        _check(t.box > 0, "target.name expression needs target.box > 0: the square its mass lies in")
        try:
            compile_energy(t.expression)
        except ExpressionError as e:
            raise ConfigError(f"target.expression: {e}") from None
    else:
        _check(not t.expression, f"target.expression applies to target.name expression, not {t.name}; remove it")
    if t.name == "csv":
        _check(bool(t.csv), "target.name csv needs target.csv: the path of a file of x,y rows")
    else:
        _check(not t.csv, f"target.csv applies to target.name csv, not {t.name}; remove it")
    _check(0 < t.test_fraction < 1, f"target.test_fraction must be in (0, 1), got {t.test_fraction}")
    _validate_flow(f)
    check_device_name(tr.device, "train.device")
    _check(0 <= tr.seed <= MAX_SEED, f"train.seed must be in 0..{MAX_SEED}, got {tr.seed}")
    _check(2 <= tr.batch_size <= 1 << 20, f"train.batch_size must be in 2..{1 << 20}, got {tr.batch_size}")
    _check(0 < tr.lr <= 10, f"train.lr must be in (0, 10], got {tr.lr}")
    for name in ("max_steps", "log_every", "eval_every", "checkpoint_every", "max_bad_steps"):
        _check(getattr(tr, name) >= 1, f"train.{name} must be >= 1, got {getattr(tr, name)}")
    for name in ("grad_clip", "anneal_steps", "picture_every"):
        _check(getattr(tr, name) >= 0, f"train.{name} must be >= 0, got {getattr(tr, name)}")
    _check(2 <= ev.samples <= 10_000_000, f"eval.samples must be in 2..10000000, got {ev.samples}")
    _check(10 <= ev.quadrature <= 8000, f"eval.quadrature must be in 10..8000, got {ev.quadrature}")
    _check(10 <= ev.grid <= 2000, f"eval.grid must be in 10..2000, got {ev.grid}")
    _check(20 <= ev.dpi <= 600, f"eval.dpi must be in 20..600, got {ev.dpi}")
    _check(bool(cfg.name) and "/" not in cfg.name and "\\" not in cfg.name and cfg.name not in (".", ".."),
           f"name must be a non-empty folder name, got {cfg.name!r}")
    return cfg


def config_from_dict(data: dict[str, Any]) -> Density2DConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    _check(_depth(data) <= MAX_DEPTH, f"the config is nested more than {MAX_DEPTH} levels deep")
    return validate(_build(Density2DConfig, data, ""))


def shipped_configs() -> list[str]:
    return shipped_names(SHIPPED)


def resolve_config_path(path: str | Path) -> Path:
    """A path, or the bare name of a shipped 2-D config (``ring_planar`` or ``ring_planar.yaml``)."""
    return resolve_path(path, SHIPPED)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Density2DConfig:
    return config_from_dict(apply_overrides(read_yaml(resolve_config_path(path)), overrides or []))

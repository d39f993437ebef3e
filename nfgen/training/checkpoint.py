"""Checkpoints: written atomically, loaded with checks that say what is wrong with a bad file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

import nfgen
from nfgen.config import Config, ConfigError, config_from_dict
from nfgen.model import ImageFlow, build_model

FORMAT = 1  # bump when the checkpoint layout changes; older nfgen refuses newer files


class CheckpointError(Exception):
    """A checkpoint that cannot be written or used, with a message meant for the user."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``: a crash
    at any moment leaves either the old complete file or the new complete one."""
    path = Path(path)
    state = {"format": FORMAT, "nfgen_version": nfgen.__version__, **state}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise CheckpointError(f"could not write checkpoint {path}: {e.strerror or e}; "
                              "the previous checkpoint, if any, is unchanged") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint; tensors land on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise CheckpointError(f"{path} is not a readable nfgen checkpoint (truncated or corrupt?)") from None
    if not isinstance(state, dict) or "format" not in state or "model" not in state:
        raise CheckpointError(f"{path} is not an nfgen checkpoint")
    if state["format"] > FORMAT:
        raise CheckpointError(f"{path} was written by a newer nfgen ({state.get('nfgen_version')}, "
                              f"format {state['format']}); upgrade nfgen to read it")
    return state


def config_of(state: dict[str, Any], path: str | Path = "checkpoint") -> Config:
    try:
        return config_from_dict(state["config"])
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{path} holds an invalid config: {e}") from None


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
    model = build_model(cfg)
    weights = state["ema"] if ema and state.get("ema") is not None else state["model"]
    restore_model(model, weights, path)
    return model.to(device).eval(), cfg, state

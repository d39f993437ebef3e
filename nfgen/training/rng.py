"""The random state of a training run: saved in every checkpoint and restored on resume, and
forked around the work that must not shift it (evaluation, sample grids, FID)."""

from __future__ import annotations

import contextlib
import random

import torch


def forked_rng(device: torch.device) -> contextlib.AbstractContextManager:
    """A block whose draws leave the training noise that follows it exactly as it would be."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def rng_state(device: torch.device) -> dict:
    """torch's and Python's generators (and CUDA's on a GPU), as a checkpoint holds them."""
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(rng: dict, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng.get("cuda") and device.type == "cuda":
        torch.cuda.set_rng_state_all(rng["cuda"])

"""nfgen: normalizing-flow image generators (RealNVP and Glow)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nfgen.config import Config, load_config
from nfgen.model import ImageFlow, build_model

if TYPE_CHECKING:
    import torch

__version__ = "0.1.0"
__all__ = ["Config", "ImageFlow", "__version__", "build_model", "load", "load_config"]


def load(path: str | Path, device: str | torch.device = "cpu", ema: bool = True) -> ImageFlow:
    """A trained model from a checkpoint file or an ``nfgen export`` folder, in evaluation mode,
    with ``model.config`` and ``model.class_names`` attached (see ``nfgen.api.load``)."""
    from nfgen.api import load as load_model  # imported on use: ``import nfgen`` stays light

    return load_model(path, device, ema)

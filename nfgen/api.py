"""``nfgen.load``: a trained model, ready to use from Python."""

from __future__ import annotations

from pathlib import Path

import torch

from nfgen.model.image_flow import ImageFlow
from nfgen.training.checkpoint import class_names_of, model_from_checkpoint


def load(path: str | Path, device: str | torch.device = "cpu", ema: bool = True) -> ImageFlow:
    """The model of a checkpoint file (``runs/NAME/checkpoints/last.pt``) or an export folder
    (``nfgen export``), in evaluation mode on ``device``: a checkpoint's EMA weights where it
    has them (unless ``ema`` is false; an export holds the weights it was exported with), with
    ``model.config`` (its Config) and ``model.class_names`` (None if unconditional) attached.
    Raises ``CheckpointError`` with a one-line message for anything that is not a model."""
    path = Path(path)
    if path.is_dir():
        from nfgen.training.export import read_export

        model, cfg, names = read_export(path, device)
    else:
        model, cfg, state = model_from_checkpoint(path, ema=ema, device=device)
        names = class_names_of(state, cfg, path) if cfg.model.num_classes else None
    model.config, model.class_names = cfg, names
    return model

"""Sample grids and latent interpolation."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import make_grid, save_image

from nfgen.model import ImageFlow


def to_float(images: Tensor) -> Tensor:
    return images.float() / 255.0


def grid(images: Tensor, nrow: int | None = None) -> Tensor:
    """uint8 images -> a float grid [3, H', W'] for TensorBoard."""
    nrow = nrow or max(1, int(math.sqrt(images.shape[0])))
    return make_grid(to_float(images).cpu(), nrow=nrow, padding=2)


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None) -> None:
    nrow = nrow or max(1, int(math.sqrt(images.shape[0])))
    save_image(to_float(images).cpu(), str(path), nrow=nrow, padding=2)


def class_rows(num_classes: int, count: int) -> tuple[Tensor, int]:
    """Labels for a grid of about ``count`` samples with one row per class: row ``k`` holds
    ``count // num_classes`` (at least 1) samples of class ``k``. Returns the labels (int64, in
    grid order) and the row length, ``nrow`` for ``grid`` / ``save_grid``."""
    per_class = max(1, count // num_classes)
    return torch.arange(num_classes).repeat_interleave(per_class), per_class


def sample_grid(model: ImageFlow, count: int, temperature: float = 1.0,
                generator: torch.Generator | None = None) -> tuple[Tensor, int | None]:
    """Samples for a grid and its row length: ``count`` of them (``nrow`` None: the default
    square grid), or for a class-conditional model one row per class (``class_rows``)."""
    if not model.num_classes:
        return model.sample(count, temperature, generator), None
    labels, nrow = class_rows(model.num_classes, count)
    return model.sample(len(labels), temperature, generator, labels=labels), nrow


def slerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """Spherical interpolation per sample, treating each latent as one vector."""
    fa, fb = a.flatten(1), b.flatten(1)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)).clamp_min(1e-12)
    omega = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))[:, None]
    so = torch.sin(omega)
    out = torch.sin((1 - t) * omega) / so * fa + torch.sin(t * omega) / so * fb
    return out.view_as(a)


@torch.no_grad()
def interpolate(model: ImageFlow, x_a: Tensor, x_b: Tensor, steps: int,
                spherical: bool = False, denoise: bool | None = None) -> Tensor:
    """Rows ``[x_a, decode(z(t_1)), ..., decode(z(t_steps)), x_b]`` with ``t`` from 0 to 1,
    interpolating the latent of every scale; each decoded point is denoised as the model's
    samples are (``ImageFlow.denoises``). Returns uint8 ``[pairs, steps + 2, C, H, W]``."""
    za, zb = model.encode(x_a), model.encode(x_b)
    denoise = model.denoises(denoise)
    rows = [x_a.to(za[0].device)]
    for t in torch.linspace(0, 1, steps).tolist():
        mix = [slerp(a, b, t) if spherical else torch.lerp(a, b, t) for a, b in zip(za, zb)]
        rows.append(model.decode(mix, denoise))
    rows.append(x_b.to(za[0].device))
    return torch.stack(rows, dim=1)

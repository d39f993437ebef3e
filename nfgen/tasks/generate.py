"""Sample grids and latent interpolation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from nfgen.core.atomic import atomic_write
from nfgen.core.costs import check_grid
from nfgen.model.image_flow import ImageFlow


def to_float(images: Tensor) -> Tensor:
    return images.float() / 255.0


def grid_nrow(n: int, nrow: int | None = None) -> int:
    """Images per row of a grid of ``n``: ``nrow``, or a square."""
    return nrow or max(1, int(math.sqrt(n)))


def check_grid_size(n: int, shape: tuple[int, int, int], nrow: int | None, lower: str) -> None:
    """Refuse, before anything is sampled, a grid over the one bound on pictures
    (``costs.check_grid``); ``lower`` names the option that sets ``n``."""
    check_grid(n, grid_nrow(n, nrow), shape, lower)


def grid(images: Tensor, nrow: int | None = None) -> Tensor:
    """uint8 images -> a float grid [3, H', W'] for TensorBoard."""
    nrow = grid_nrow(images.shape[0], nrow)
    check_grid(images.shape[0], nrow, tuple(images.shape[1:]), "the number of images")
    return make_grid(to_float(images).cpu(), nrow=nrow, padding=2)


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None) -> None:
    """A grid picture, written atomically (``nfgen.core.atomic``) in the format of its extension."""
    from PIL import Image

    path = Path(path)
    nrow = grid_nrow(images.shape[0], nrow)
    check_grid(images.shape[0], nrow, tuple(images.shape[1:]), "the number of images")
    form = Image.registered_extensions().get(path.suffix.lower())
    if form is None:
        raise ValueError(f"{path}: no image writer knows the extension {path.suffix or '(none)'!r}")
    atomic_write(path, lambda f: save_image(to_float(images).cpu(), f, format=form, nrow=nrow, padding=2))


def class_rows(num_classes: int, count: int) -> tuple[Tensor, int]:
    """Labels for a grid of about ``count`` samples with one row per class: row ``k`` holds
    ``count // num_classes`` samples of class ``k``. With more classes than ``count`` (ImageNet's
    1,000 in a grid of 64), ``isqrt(count)`` classes spread evenly over the labels get a row each
    instead. Returns the labels (int64, in grid order) and the row length, ``nrow`` for ``grid`` /
    ``save_grid``."""
    if num_classes <= count:
        rows = torch.arange(num_classes)
    else:
        shown = max(1, math.isqrt(count))
        rows = torch.linspace(0, num_classes - 1, shown).round().long()
    per_class = max(1, count // len(rows))
    return rows.repeat_interleave(per_class), per_class


def sample_grid(model: ImageFlow, count: int, temperature: float = 1.0,
                generator: torch.Generator | None = None) -> tuple[Tensor, int | None]:
    """Samples for a grid and its row length: ``count`` of them (``nrow`` None: the default
    square grid), or for a class-conditional model one row per class (``class_rows``)."""
    if not model.num_classes:
        return model.sample(count, temperature, generator), None
    labels, nrow = class_rows(model.num_classes, count)
    return model.sample(len(labels), temperature, generator, labels=labels), nrow


def sample_in_batches(model: ImageFlow, n: int, batch_size: int, temperature: float = 1.0,
                      generator: torch.Generator | None = None, labels: Tensor | None = None,
                      progress: bool = False, **options: Any) -> Tensor:
    """``model.sample`` of ``n`` images, ``batch_size`` at a time (memory grows with the batch,
    not with ``n``), with a progress bar if ``progress``; ``labels`` ``[n]`` are split with them,
    ``options`` (denoise, guidance, annealed) passed on. One batch covering all ``n`` draws what
    one ``model.sample`` call does; smaller batches draw other samples of the same distribution,
    the same for the same generator seed and batch size."""
    chunks = []
    with tqdm(total=n, desc="sample", unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            chunks.append(model.sample(stop - start, temperature, generator=generator,
                                       labels=None if labels is None else labels[start:stop], **options).cpu())
            bar.update(stop - start)
    return torch.cat(chunks)


def slerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """Spherical interpolation per sample, treating each latent as one vector."""
    fa, fb = a.flatten(1), b.flatten(1)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)).clamp_min(1e-12)
    omega = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))[:, None]
    so = torch.sin(omega)
    out = torch.sin((1 - t) * omega) / so * fa + torch.sin(t * omega) / so * fb
    return out.view_as(a)


def label_rows(labels: Sequence[int], per_row: int) -> Tensor:
    """Labels for a grid with one row per entry of ``labels``, ``per_row`` samples each (int64,
    in grid order): ``nfgen sample --label``'s grid; ``class_rows`` is every class's."""
    if per_row < 1 or not labels:
        raise ValueError(f"a grid needs at least one label and one sample per row, got {list(labels)}, {per_row}")
    return torch.tensor(list(labels), dtype=torch.long).repeat_interleave(per_row)


def same_class_pairs(labels: Tensor, pairs: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Indices ``(a, b)`` of ``pairs`` random pairs of distinct images with ``labels[a] ==
    labels[b]``: interpolation on a class-conditional model walks within one class. Each pair's
    first image is drawn among the images whose class has another one; its partner among the
    rest of its class. Raises ``ValueError`` if no class has two images."""
    counts = torch.bincount(labels)
    eligible = torch.nonzero(counts[labels] >= 2).flatten()
    if len(eligible) == 0:
        raise ValueError("no class has two images to interpolate between")
    firsts = eligible[torch.randint(len(eligible), (pairs,), generator=generator)]
    seconds = []
    for a in firsts.tolist():
        mates = torch.nonzero(labels == labels[a]).flatten()
        mates = mates[mates != a]
        seconds.append(int(mates[torch.randint(len(mates), (1,), generator=generator)]))
    return firsts, torch.tensor(seconds, dtype=torch.long)


@torch.no_grad()
def interpolate(model: ImageFlow, x_a: Tensor, x_b: Tensor, steps: int,
                spherical: bool = False, denoise: bool | None = None, labels: Tensor | None = None) -> Tensor:
    """Rows ``[x_a, decode(z(t_1)), ..., decode(z(t_steps)), x_b]`` with ``t`` from 0 to 1,
    interpolating the latent of every scale; each decoded point is denoised as the model's
    samples are (``ImageFlow.denoises``). Returns uint8 ``[pairs, steps + 2, C, H, W]``.

    A class-conditional model needs ``labels`` ``[pairs]``, each pair's one class: both ends are
    encoded and every point decoded with it, so the walk keeps the class (and ``t`` = 0 and 1
    decode to the pair's own images). A pair of two classes has no such path: there is no
    label to decode with, so the caller picks pairs within a class (``same_class_pairs``)."""
    za, zb = model.encode(x_a, labels), model.encode(x_b, labels)
    denoise = model.denoises(denoise)
    rows = [x_a.to(za[0].device)]
    for t in torch.linspace(0, 1, steps).tolist():
        mix = [slerp(a, b, t) if spherical else torch.lerp(a, b, t) for a, b in zip(za, zb)]
        rows.append(model.decode(mix, denoise, labels))
    rows.append(x_b.to(za[0].device))
    return torch.stack(rows, dim=1)

"""The two sides of an evaluation as features: a reference set of images (cached by content) and
a generated set, either images or a checkpoint sampled in batches exactly as ``nfgen sample``
samples it. Non-finite samples are counted and reported, never silently dropped."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from nfgen.datasets.labels import split_batch
from nfgen.datasets.loading import make_loader
from nfgen.errors import NumericalError
from nfgen.model.image_flow import ImageFlow
from nfgen.tasks.fidelity import cache
from nfgen.tasks.fidelity.features import Features
from nfgen.tasks.fidelity.metrics import statistics


@dataclass
class Generated:
    """A generated set's features ``[M, F]`` (float64), its class logits (features with a
    ``logits`` method), the class each image was asked for (``-1``: the null class; None:
    unconditional or images from a folder), and how many draws were not finite."""

    features: Tensor
    logits: Tensor | None
    requested: Tensor | None
    n_requested: int
    n_nonfinite: int


def _images(dataset: Dataset, batch_size: int, num_workers: int = 0):
    for batch in make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers, pin_memory=False):
        yield split_batch(batch)[0]


def _features(images_batches, features: Features, total: int, progress: bool, desc: str) -> tuple[Tensor, Tensor | None]:
    feats, logits = [], []
    with torch.no_grad(), tqdm(total=total, disable=not progress, desc=desc, unit="img", dynamic_ncols=True) as bar:
        for x in images_batches:
            feats.append(features.extract(x).double().cpu())
            if features.logits is not None:
                logits.append(features.logits(x).double().cpu())
            bar.update(len(x))
    return torch.cat(feats), torch.cat(logits) if logits else None


def reference(dataset: Dataset, features: Features, cache_dir: Path | None, batch_size: int,
              progress: bool = False, num_workers: int = 0) -> tuple[cache.Reference, str]:
    """The reference set's features and statistics, from the cache when its content (hashed over
    every image) and the features match an entry; returns it and ``"hit"``, ``"miss"`` (computed
    and stored) or ``"off"`` (no cache)."""
    content, n = cache.content_sha256(_images(dataset, batch_size, num_workers))
    if n == 0:
        raise ValueError("the reference set has no images")
    if cache_dir is not None:
        hit = cache.load(cache_dir, content, features.sha256)
        if hit is not None:
            return hit, "hit"
    feats, logits = _features(_images(dataset, batch_size, num_workers), features, n, progress, "reference features")
    ref = cache.Reference(feats, statistics(feats), logits, content, features.sha256)
    if cache_dir is not None:
        cache.save(cache_dir, ref)
    return ref, "off" if cache_dir is None else "miss"


def from_images(dataset: Dataset, features: Features, batch_size: int, progress: bool = False,
                num_workers: int = 0) -> Generated:
    n = len(dataset)  # type: ignore[arg-type]
    feats, logits = _features(_images(dataset, batch_size, num_workers), features, n, progress, "generated features")
    return Generated(feats, logits, None, n, 0)


def request_labels(rows: list[int], n: int, null: int) -> tuple[Tensor, Tensor]:
    """``n`` labels cycling through ``rows`` (every class in turn: balanced to within one image),
    and the class each asks for (``-1`` for the null class ``null``)."""
    labels = torch.tensor(rows, dtype=torch.long)[torch.arange(n) % len(rows)]
    return labels, torch.where(labels == null, -1, labels)


def from_model(model: ImageFlow, features: Features, n: int, batch_size: int, temperature: float = 1.0,
               labels: Tensor | None = None, guidance: float = 0.0, annealed: bool = False,
               denoise: bool = True, seed: int = 0, progress: bool = False, requested: Tensor | None = None) -> Generated:
    """``n`` samples drawn in batches from one generator seeded by ``seed`` (the draws of
    ``nfgen sample --seed`` for the same batch), each batch turned into features at once (no
    image set kept in memory). A draw whose decoded image is not finite is counted in
    ``n_nonfinite`` and has no features: the metrics then cover the finite ones, and the record
    says how many were left out."""
    model.eval()
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    feats, logits, kept, bad = [], [], [], 0
    with tqdm(total=n, disable=not progress, desc="sampling", unit="img", dynamic_ncols=True) as bar:
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            y = None if labels is None else labels[start:start + b]
            u = model.sample_continuous(b, temperature, generator, denoise, y, guidance, annealed)
            ok = torch.isfinite(u).flatten(1).all(1)
            bad += int((~ok).sum())
            if ok.any():
                x = model._to_images(u[ok])
                with torch.no_grad():
                    feats.append(features.extract(x).double().cpu())
                    if features.logits is not None:
                        logits.append(features.logits(x).double().cpu())
                if requested is not None:
                    kept.append(requested[start:start + b][ok.cpu()])
            bar.update(b)
    if not feats:
        raise NumericalError(f"all {n} samples were non-finite; the model is numerically broken")
    return Generated(torch.cat(feats), torch.cat(logits) if logits else None,
                     torch.cat(kept) if kept else None, n, bad)

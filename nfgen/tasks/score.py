"""Anomaly scores of images under a trained flow; higher is more anomalous for every score.

- ``bpd``: bits/dim, ``-log2 p(x) / D`` (the dequantization bound, or its importance-weighted
  estimate; of a class-conditional model the marginal ``p(x) = mean_y p(x | y)``, as an image
  to score has no known class). A poor score alone: flows give simple images from another data set more likelihood
  than their own test set (Nalisnick et al., 2019, "Do deep generative models know what they
  don't know?").
- ``corrected_<codec>``: ``bpd(x) - L(x) / D``, with ``L(x)`` the bits of ``x`` losslessly
  compressed by ``codec`` (``nfgen.tasks.complexity``), Serrà et al. (2020), "Input complexity and
  out-of-distribution detection with likelihood-based generative models".
- ``typicality``: ``|bpd(x) - mean training bpd|``, the per-image form of Nalisnick et al.
  (2019), "Detecting out-of-distribution inputs to deep generative models using typicality";
  ``batch_typicality`` is their batch test.

The training split's bits/dim are computed once per checkpoint and kept beside it
(``<checkpoint>.train-bpd.json``), keyed by the content they were computed from
(``nfgen.datasets.fingerprint``): the bytes the model was loaded from and the images and labels measured.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from nfgen.core.atomic import atomic_write_text
from nfgen.datasets.fingerprint import Fingerprint, of_batches
from nfgen.datasets.images import ImageFiles
from nfgen.datasets.labels import Labelled, split_batch
from nfgen.datasets.loading import make_loader
from nfgen.errors import DataError, NumericalError
from nfgen.model.image_flow import ImageFlow
from nfgen.tasks.complexity import compressed_bits
from nfgen.tasks.ood_metrics import format_table, separation

STATS_SUFFIX = ".train-bpd.json"
STATS_FORMAT = 2  # 2: keyed by content (1 keyed the data by its folder path)


@dataclass(frozen=True)
class Measured:
    """What the model and the codecs say about each image of a set."""

    names: list[str]  # each image's path, or its index in a split that has no files
    bpd: np.ndarray  # bits/dim under the model
    complexity: dict[str, np.ndarray]  # codec -> L(x) / D, bits/dim
    data_fingerprint: str = ""  # of the images (and labels) measured, nfgen.datasets.fingerprint

    def columns(self, train_mean: float) -> dict[str, np.ndarray]:
        """Every per-image column, the anomaly scores among them (``score_names``)."""
        out = {"bpd": self.bpd}
        for codec, bits in self.complexity.items():
            out[f"{codec}_bits_per_dim"] = bits
            out[f"corrected_{codec}"] = self.bpd - bits
        out["typicality"] = np.abs(self.bpd - train_mean)
        return out


def score_names(codecs: Sequence[str]) -> list[str]:
    """The columns that are anomaly scores (higher = more anomalous)."""
    return ["bpd", *(f"corrected_{c}" for c in codecs), "typicality"]


def _names(dataset: Dataset) -> list[str]:
    base, index = dataset, None
    if isinstance(dataset, Subset):
        base, index = dataset.dataset, list(dataset.indices)
    if isinstance(base, Labelled):
        base = base.images
    index = index if index is not None else list(range(len(dataset)))  # type: ignore[arg-type]
    if isinstance(base, ImageFiles):
        return [str(base.files[i]) for i in index]
    return [str(i) for i in index]


def bits_per_dim(model: ImageFlow, x: torch.Tensor, n_samples: int = 1) -> torch.Tensor:
    """Per-image bits/dim as the scores use them: of a class-conditional model the marginal
    ``-log2 mean_y p(x | y) / D`` (``ImageFlow.log_prob_marginal``, K passes), since an image to
    be scored (from another data set, say) has no class of the model's."""
    if model.num_classes:
        return -model.log_prob_marginal(x, n_samples) / (model.dims * math.log(2))
    return model.bits_per_dim(x, n_samples=n_samples)


@torch.no_grad()
def measure(model: ImageFlow, dataset: Dataset[torch.Tensor], what: str, codecs: Sequence[str] = ("png",),
            n_samples: int = 1, batch_size: int = 64, num_workers: int = 0, progress: bool = False) -> Measured:
    """Bits/dim (``n_samples`` dequantization draws) and each codec's ``L(x)/D`` of every image
    of ``dataset``, in order. A non-finite bits/dim is a ``NumericalError`` naming ``what``."""
    model.eval()
    loader = make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers, pin_memory=False)
    bpd, bits = [], {c: [] for c in codecs}
    seen = Fingerprint()
    for batch in tqdm(loader, desc=what, disable=not progress, leave=False):
        seen.batch(batch)
        x, _ = split_batch(batch)  # a split's labels are not used: see bits_per_dim
        bpd.append(bits_per_dim(model, x, n_samples).double().cpu().numpy())
        for c in codecs:
            bits[c].append(compressed_bits(x, model.n_bits, c) / model.dims)
    values = np.concatenate(bpd)
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise NumericalError(f"{bad} of {len(values)} images of {what} gave a non-finite bits/dim; "
                                 "the model is numerically broken on them")
    return Measured(_names(dataset), values, {c: np.concatenate(v) for c, v in bits.items()}, seen.hexdigest())


@dataclass(frozen=True)
class TrainStats:
    """Bits/dim of (a fixed subset of) the training split: the typical set's estimate."""

    bpd: np.ndarray
    key: dict

    @property
    def mean(self) -> float:
        return float(self.bpd.mean())

    @property
    def std(self) -> float:
        return float(self.bpd.std(ddof=1)) if len(self.bpd) > 1 else math.nan

    def summary(self) -> dict:
        return {"mean_bpd": self.mean, "std_bpd": None if math.isnan(self.std) else self.std, "n_images": len(self.bpd)}


def stats_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + STATS_SUFFIX)


def stats_key(model_sha256: str, data_fingerprint: str, n_samples: int, limit: int) -> dict:
    """What the training statistics depend on, by content (``nfgen.datasets.fingerprint``): the bytes the
    model was loaded from, the images and labels measured, and the estimator."""
    return {"format": STATS_FORMAT, "checkpoint_sha256": model_sha256, "data_fingerprint": data_fingerprint,
            "importance_samples": n_samples, "max_images": limit}


def load_stats(path: Path, key: dict) -> TrainStats | None:
    """The stored statistics if ``path`` holds them for ``key``; None if absent, unreadable or
    for anything else (another checkpoint, estimator or data)."""
    try:
        record = json.loads(path.read_text())
        if record["key"] != key:
            return None
        values = np.asarray(record["train_bpd"], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return TrainStats(values, key) if values.ndim == 1 and len(values) and np.isfinite(values).all() else None


def save_stats(path: Path, stats: TrainStats) -> None:
    """Atomically (a temporary file in the same folder, renamed over ``path``)."""
    record = {"key": stats.key, **stats.summary(), "train_bpd": stats.bpd.tolist()}
    atomic_write_text(path, json.dumps(record))


def subset(data: Dataset, limit: int = 0) -> Dataset:
    """A fixed random subset of ``limit`` of ``data``'s images, in order (0: all)."""
    if 0 < limit < len(data):  # type: ignore[arg-type]
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))  # type: ignore[arg-type]
        data = Subset(data, sorted(order[:limit].tolist()))
    return data


def training_stats(model: ImageFlow, train_data: Dataset, ckpt: Path, model_sha256: str, n_samples: int = 1,
                   limit: int = 0, batch_size: int = 64, num_workers: int = 0, progress: bool = False,
                   warn: Callable[[str], None] = print) -> TrainStats:
    """The bits/dim of the training split ``train_data`` under the model (at most ``limit``
    images, a fixed random subset; 0: all), read from beside ``ckpt`` when stored there for this
    model (``model_sha256``: of the bytes it was loaded from) and these very images, else computed
    and stored there under the fingerprint of the images measured. Failing to store them only
    warns: they are a cache."""
    data = subset(train_data, limit)
    loader = make_loader(data, batch_size, shuffle=False, num_workers=num_workers, pin_memory=False)
    path = stats_path(ckpt)
    stats = load_stats(path, stats_key(model_sha256, of_batches(loader), n_samples, limit))
    if stats is not None:
        return stats
    torch.manual_seed(0)  # the dequantization noise: the same statistics every time
    m = measure(model, data, "the train split", (), n_samples, batch_size, num_workers, progress)
    stats = TrainStats(m.bpd, stats_key(model_sha256, m.data_fingerprint, n_samples, limit))
    try:
        save_stats(path, stats)
    except OSError as e:
        warn(f"warning: could not store the training statistics in {path} ({e.strerror or e}); "
             "they will be computed again next time")
    return stats


def score_sets(model: ImageFlow, train_data: Dataset, ckpt: Path, model_sha256: str,
               sets: dict[str, Dataset[torch.Tensor]], codecs: Sequence[str] = ("png",), n_samples: int = 1,
               stats_images: int = 0, batch_size: int = 64, num_workers: int = 0, progress: bool = False,
               warn: Callable[[str], None] = print) -> tuple[TrainStats, dict[str, Measured]]:
    """Every set measured, each with the same seeded dequantization noise, then the training
    statistics (stored beside ``ckpt``, see ``training_stats``): an image of ``sets`` that
    cannot be decoded stops the work before anything is written."""
    measured = {}
    for name, data in sets.items():
        torch.manual_seed(0)
        measured[name] = measure(model, data, name, codecs, n_samples, batch_size, num_workers, progress)
    return training_stats(model, train_data, ckpt, model_sha256, n_samples, stats_images, batch_size,
                          num_workers, progress, warn), measured


@dataclass(frozen=True)
class BatchTest:
    """Nalisnick et al. (2019)'s typicality test on batches of ``batch_size`` images: a batch is
    out of distribution when ``|mean bpd - mean training bpd| > epsilon``, with ``epsilon`` the
    ``1 - alpha`` quantile of that statistic over bootstrap batches of held-out in-distribution
    images (their Algorithm 1 calibrates on a validation set: a model fitted to its training
    images gives them lower bits/dim than new ones, so the training images would set epsilon
    too small and flag the model's own test set)."""

    batch_size: int
    alpha: float
    draws: int
    epsilon: float
    flagged: dict[str, float]  # set -> share of its bootstrap batches flagged out of distribution

    def as_dict(self) -> dict:
        return {"batch_size": self.batch_size, "alpha": self.alpha, "draws": self.draws,
                "epsilon": self.epsilon, "flagged": self.flagged}


def batch_typicality(train_mean: float, calibration: np.ndarray, sets: dict[str, np.ndarray], batch_size: int,
                     alpha: float = 0.01, draws: int = 1000, seed: int = 0) -> BatchTest:
    """Batches drawn with replacement (a bootstrap), ``draws`` per set, from a seeded generator;
    ``calibration``: in-distribution bits/dim that ``sets`` do not hold."""
    rng = np.random.default_rng(seed)

    def statistic(values: np.ndarray) -> np.ndarray:
        return np.abs(values[rng.integers(0, len(values), (draws, batch_size))].mean(1) - train_mean)

    epsilon = float(np.quantile(statistic(calibration), 1 - alpha))
    flagged = {name: float((statistic(v) > epsilon).mean()) for name, v in sets.items()}
    return BatchTest(batch_size, alpha, draws, epsilon, flagged)


def write_rows(measured: dict[str, Measured], train_mean: float, out: TextIO, as_json: bool, header: dict) -> None:
    """One row per image (the set's name first when there are several): CSV, or JSON with the
    ``header``'s fields beside the rows, to the text stream ``out``."""
    several = len(measured) > 1
    rows = []
    for name, m in measured.items():
        columns = m.columns(train_mean)
        for i, image in enumerate(m.names):
            rows.append({**({"set": name} if several else {}), "image": image,
                         **{k: float(v[i]) for k, v in columns.items()}})
    if as_json:
        json.dump({**header, "images": rows}, out, indent=1)
        out.write("\n")
        return
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)


def ood_report(measured: dict[str, Measured], in_name: str, stats: TrainStats, codecs: Sequence[str],
               batch_size: int) -> dict:
    """For each out-of-distribution set and each score, AUROC / AUPR / FPR@95 against the
    in-distribution set; the batch typicality test at ``batch_size``; each set's size and mean
    bits/dim."""
    names = score_names(codecs)
    scores = {s: m.columns(stats.mean) for s, m in measured.items()}
    ours = scores[in_name]
    metrics = {s: {k: separation(ours[k], v[k]) for k in names} for s, v in scores.items() if s != in_name}
    # The batch test calibrates on one half of the in-distribution set and is judged on the other.
    ours_bpd = measured[in_name].bpd
    if len(ours_bpd) < 2:
        raise DataError(f"the in-distribution set {in_name} has {len(ours_bpd)} image(s); comparing needs at least 2")
    half = np.random.default_rng(0).permutation(len(ours_bpd))[: len(ours_bpd) // 2]
    held = np.ones(len(ours_bpd), dtype=bool)
    held[half] = False
    test = batch_typicality(stats.mean, ours_bpd[~held], {**{s: m.bpd for s, m in measured.items()},
                                                          in_name: ours_bpd[held]}, batch_size)
    sets = {s: {"n_images": len(m.bpd), "mean_bpd": float(m.bpd.mean()),
                **{f"mean_{c}_bits_per_dim": float(m.complexity[c].mean()) for c in codecs}}
            for s, m in measured.items()}
    return {"in_distribution": in_name, "positive_class": "out-of-distribution", "scores": names,
            "metrics": metrics, "sets": sets, "train": stats.summary(), "batch_typicality_test": test.as_dict()}


def format_report(report: dict) -> str:
    """The metrics table, then the batch test as a sentence per set."""
    sets = report["sets"]
    sizes = {s: v["n_images"] for s, v in sets.items()}
    t = report["batch_typicality_test"]
    lines = [format_table(report["metrics"], sizes), "",
             f"mean bits/dim: train {report['train']['mean_bpd']:.3f} ({report['train']['n_images']} images), "
             + ", ".join(f"{s} {v['mean_bpd']:.3f}" for s, v in sets.items()),
             f"batch typicality test (Nalisnick et al. 2019), batches of {t['batch_size']}, "
             f"alpha {t['alpha']:g}, epsilon {t['epsilon']:.4f} bits/dim (calibrated on half of {report['in_distribution']}): "
             f"share of {t['draws']} batches flagged out of distribution: "
             + ", ".join(f"{s} {v:.3f}" for s, v in t["flagged"].items())]
    return "\n".join(lines)

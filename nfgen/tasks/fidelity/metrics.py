"""FID, KID and precision/recall on feature vectors, through torch-fidelity's implementations.

- FID (Heusel et al., 2017): ``|mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))`` between
  Gaussians fitted to the two sets' features (unbiased covariances, as every FID code uses).
- KID (Binkowski et al., 2018): the unbiased estimate of the squared MMD under the cubic
  polynomial kernel ``(x.y / F + 1)^3``, averaged over random subsets; its std over the subsets
  says how much the number moves with the draw.
- Precision and recall (Kynkaenniemi et al., 2019): each set's manifold is the union of balls
  around its points reaching their k-th nearest neighbour (k = 3); precision is the share of
  generated points inside the real manifold, recall the share of real points inside the
  generated one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nfgen.tasks.fidelity.features import need_torch_fidelity


@dataclass(frozen=True)
class Stats:
    """A set's features summarised for FID: mean ``[F]`` and covariance ``[F, F]`` (float64)."""

    mu: np.ndarray
    sigma: np.ndarray


def statistics(features: Tensor) -> Stats:
    need_torch_fidelity()
    from torch_fidelity.metric_fid import fid_features_to_statistics

    s = fid_features_to_statistics(features.detach().cpu().double())
    return Stats(np.asarray(s["mu"], dtype=np.float64), np.atleast_2d(np.asarray(s["sigma"], dtype=np.float64)))


def frechet_distance(a: Stats, b: Stats) -> float:
    need_torch_fidelity()
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    out = fid_statistics_to_metric({"mu": a.mu, "sigma": a.sigma}, {"mu": b.mu, "sigma": b.sigma}, False)
    return float(out["frechet_inception_distance"])


def kid(generated: Tensor, reference: Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float, int]:
    """KID's mean and std over ``subsets`` random subsets of ``min(subset_size, n_1, n_2)`` images
    per side; returns (mean, std, the subset size used)."""
    need_torch_fidelity()
    from torch_fidelity.metric_kid import kid_features_to_metric

    size = min(subset_size, len(generated), len(reference))
    if size < 2:
        raise ValueError(f"KID needs at least 2 images per side, got {len(generated)} and {len(reference)}")
    out = kid_features_to_metric(generated.detach().cpu().double(), reference.detach().cpu().double(),
                                 kid_subsets=subsets, kid_subset_size=size, kid_kernel="poly", kid_kernel_poly_degree=3,
                                 kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1, rng_seed=seed, verbose=False)
    return float(out["kernel_inception_distance_mean"]), float(out["kernel_inception_distance_std"]), size


def precision_recall(generated: Tensor, reference: Tensor, k: int = 3) -> tuple[float, float]:
    need_torch_fidelity()
    from torch_fidelity.metric_prc import prc_features_to_metric

    if min(len(generated), len(reference)) <= k:
        raise ValueError(f"precision/recall with k = {k} needs more than {k} images per side, "
                         f"got {len(generated)} and {len(reference)}")
    out = prc_features_to_metric(generated.detach().cpu().double(), reference.detach().cpu().double(),
                                 prc_neighborhood=k, prc_batch_size=10000, save_cpu_ram=True, verbose=False)
    return float(out["precision"]), float(out["recall"])


def read_shares(logits: Tensor, threshold: float, requested: Tensor | None = None) -> dict[str, float | int | None]:
    """The classifier-read share: the fraction of images whose largest softmax probability is at
    least ``threshold`` (the classifier reads them confidently as some class); with
    ``requested`` labels (class-conditional samples, the null class ``-1`` left out), also the
    fraction read confidently AS the requested class."""
    p = torch.softmax(logits.double(), dim=1)
    conf, cls = p.max(dim=1)
    sure = conf >= threshold
    out: dict[str, float | int | None] = {"read_share": float(sure.double().mean()) if len(p) else None,
                                          "n_images": len(p)}
    if requested is not None:
        keep = requested >= 0
        hit = sure & (cls == requested.to(cls.device))
        out["read_as_requested_share"] = float(hit[keep].double().mean()) if keep.any() else None
        out["n_labelled"] = int(keep.sum())
    return out

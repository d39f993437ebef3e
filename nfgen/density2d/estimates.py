"""What a fitted 2-D flow is worth, in numbers.

Energy targets: ``Z = integral of exp(-U)`` by quadrature on a fine grid gives the true ``log Z``.
Against it the flow's samples give the evidence lower bound ``E_q[log p~ - log q] <= log Z``,
whose gap is the reverse KL divergence ``KL(q || p)``, and the importance-weighted estimate
``log mean_i p~(x_i) / q(x_i)``, which tends to ``log Z`` as the samples grow (Burda et al.,
2016), with its effective sample size. Sample targets: the test log-likelihood, beside the
true density's where it is known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nfgen.density2d.model import Density2D
from nfgen.density2d.targets import EnergyTarget, SampleTarget

CHUNK = 65_536  # points per batch for evaluations that need no gradient
# The outermost ring of quadrature cells may hold at most this share of the mass its area would hold
# at the box's mean density (4e-4 of the mass with 1000 cells a side): more, and the box cuts the
# density off, so log Z by quadrature would be the cut box's, not the target's. Relative to the
# ring's area, so that a finer quadrature does not let a cut density through.
MAX_EDGE_DENSITY = 0.1


def chunk_sizes(n: int, size: int = CHUNK) -> list[int]:
    """``n`` split into batches of at most ``size``."""
    return [size] * (n // size) + ([n % size] if n % size else [])


def grid_points(box: float, n: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, float]:
    """The centres ``[n * n, 2]`` of an ``n x n`` grid of cells over ``[-box, box]^2`` (row
    ``i`` holds ``z2`` = the ``i``-th cell from the bottom, column ``j`` ``z1``), and a cell's area."""
    h = 2 * box / n
    centres = -box + h * (torch.arange(n, dtype=dtype) + 0.5)
    z2, z1 = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], 1), h * h


@dataclass(frozen=True)
class Quadrature:
    log_z: float
    edge_fraction: float  # mass in the outermost ring of cells: near 0 when the box holds the mass
    n: int
    box: float


class QuadratureError(ValueError):
    """An energy that cannot be integrated (NaN, or infinite or zero mass on the box)."""


@torch.no_grad()
def quadrature_log_z(target: EnergyTarget, n: int) -> Quadrature:
    """``log Z`` by the midpoint rule on an ``n x n`` grid over the target's box, in float64
    (the error of the midpoint rule falls as ``1/n^2`` for smooth ``exp(-U)``)."""
    points, area = grid_points(target.box, n)
    log_p = torch.cat([target.log_unnormalized(c) for c in points.split(CHUNK)]).view(n, n)
    bad = torch.isnan(log_p) | (log_p == math.inf)
    if bad.any():
        at = points[bad.view(-1).nonzero()[0, 0]].tolist()
        raise QuadratureError(f"the energy is {'NaN' if torch.isnan(log_p).any() else '-inf'} at "
                              f"(z1, z2) = ({at[0]:.3g}, {at[1]:.3g}); it must be finite (or +inf) on the whole box")
    total = torch.logsumexp(log_p.view(-1), 0)
    if not torch.isfinite(total):
        raise QuadratureError(f"exp(-U) has no mass on the box [-{target.box:g}, {target.box:g}]^2; "
                              "check the formula or widen target.box")
    inner = torch.logsumexp(log_p[1:-1, 1:-1].reshape(-1), 0)
    edge = float(-torch.expm1(inner - total))
    ring_share = 1 - ((n - 2) / n) ** 2  # of the box's area
    if edge > MAX_EDGE_DENSITY * ring_share:  # every energy, built-in or a user's: the box cuts the mass off
        raise QuadratureError(f"{edge:.1%} of exp(-U)'s mass on the box [-{target.box:g}, {target.box:g}]^2 lies in "
                              "its outermost cells: the density is not normalisable, or the box is too small "
                              "(raise target.box, or 0: the target's own)")
    return Quadrature(float(total + math.log(area)), edge, n, target.box)


def _mean_stderr(v: Tensor) -> tuple[float, float]:
    return float(v.mean()), float(v.std() / math.sqrt(len(v)))


@torch.no_grad()
def log_weights(model: Density2D, target: EnergyTarget, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``log p~(x) - log q(x)`` for ``n`` flow samples ``x ~ q``."""
    out = []
    for size in chunk_sizes(n):
        x, log_q = model.sample(size, generator)
        out.append(target.log_unnormalized(x) - log_q)
    return torch.cat(out).double()


def energy_estimates(log_w: Tensor, log_z: float) -> dict[str, float]:
    """The bound, the importance-weighted estimate and their standard errors from log weights.

    The bound's standard error is the sample mean's. The importance-weighted estimate's is the
    delta method's, ``sd(w) / (mean(w) sqrt(n))`` with ``w`` the weights (trustworthy when the
    effective sample size ``(sum w)^2 / sum w^2`` is a fair share of ``n``)."""
    n = len(log_w)
    finite = log_w[torch.isfinite(log_w)]
    bound, bound_se = _mean_stderr(log_w)
    iw = float(torch.logsumexp(log_w, 0) - math.log(n))
    w = torch.exp(finite - finite.max())
    ess = float(w.sum() ** 2 / (w**2).sum()) if len(finite) else 0.0
    iw_se = float(w.std() / (w.mean() * math.sqrt(n))) if len(finite) > 1 else math.nan
    return {"log_z_quadrature": log_z, "elbo": bound, "elbo_stderr": bound_se, "reverse_kl": log_z - bound,
            "log_z_importance": iw, "log_z_importance_stderr": iw_se, "effective_sample_size": ess, "samples": n}


@torch.no_grad()
def point_log_probs(model: Density2D, x: Tensor) -> Tensor:
    """``log q(x)`` of each point, in float64 on the CPU."""
    p = next(model.parameters())
    return torch.cat([model.log_prob(c.to(p)) for c in x.split(CHUNK)]).double().cpu()


def sample_estimates(model: Density2D, target: SampleTarget) -> dict[str, float]:
    """Test log-likelihood (mean over the test points, with its standard error); where the true
    density is known, the true one on the same points and the gap between them (a paired
    difference, far more precise than either mean: it estimates KL(p || q))."""
    log_q = point_log_probs(model, target.test)
    ll, se = _mean_stderr(log_q)
    out = {"test_log_likelihood": ll, "test_log_likelihood_stderr": se, "test_points": len(target.test)}
    if target.log_density is not None:
        true = target.log_density(target.test).double().cpu()
        out["true_test_log_likelihood"], out["true_test_log_likelihood_stderr"] = _mean_stderr(true)
        out["gap"], out["gap_stderr"] = _mean_stderr(true - log_q)
    return out

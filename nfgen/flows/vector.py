"""Flows over vectors ``[B, D]``: planar and radial layers (Rezende & Mohamed, 2015, "Variational
inference with normalizing flows", section 4 and appendix A), and ``OnVectors``, which runs any
image flow (actnorm, 1x1 convolution, coupling) on vectors seen as ``[B, D, 1, 1]`` images.

Each layer's ``forward`` is the paper's explicit map ``f``; a 2-D energy model puts it in the
sampling direction (``nfgen.density2d.model``), where the paper uses it.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfgen.flows.base import Flow

# m(a) = -1 + softplus(a) is 0 at a = log(e - 1): a planar layer whose w^T u is this has u_hat = 0.
_IDENTITY_WU = math.log(math.e - 1)
# The least slope 1 + m tanh' of a planar layer along w: -1 + softplus(a) rounds to -1 below
# a ~ -37 in float64 (~ -17 in float32), which would make the layer singular.
MIN_SLOPE = 1e-6


class Planar(Flow):
    """``f(z) = z + u_hat * tanh(w^T z + b)`` (Rezende & Mohamed, 2015, eq. 10).

    Log-det by the matrix determinant lemma: ``det(I + u_hat psi^T) = 1 + u_hat^T psi`` with
    ``psi = tanh'(w^T z + b) w``, so ``log|det| = log(1 + m tanh'(w^T z + b))``, O(D) per sample.

    Invertibility (appendix A.1): ``u_hat = u + (m(w^T u) - w^T u) w / |w|^2`` with
    ``m(a) = -1 + softplus(a)``, so ``w^T u_hat = m(w^T u) > -1`` for any raw ``u, w``, and as
    ``0 < tanh' <= 1`` every ``1 + m tanh'`` is positive: ``f`` is a bijection. In floats
    ``-1 + softplus(a)`` rounds to -1 for very negative ``a``, so softplus is floored at
    ``MIN_SLOPE``: every layer keeps a slope of at least 1e-6 along ``w`` (tested for any raw
    parameters; ``w^T u_hat`` equals ``m`` to rounding relative to ``|w^T u|``). ``w = 0`` is the
    identity.

    Inverse: along ``w`` the map is the scalar ``a -> a + m tanh(a + b)`` with ``a = w^T z``,
    strictly increasing, and the rest of ``z`` moves by ``u_hat tanh(a + b)``. So the inverse
    solves one scalar equation per sample: ``bisect_steps`` bisections of the bracket
    ``w^T y -+ |m|`` (``|tanh| <= 1``), which shrink it by ``2**-bisect_steps``, then one Newton
    step that carries the gradient (implicit-function rule), as ``LogisticMixtureCDF`` does. It
    costs ~``bisect_steps`` tanh evaluations per sample where the forward costs one (measured in
    docs/guides/density2d.md). ``inverse_tol`` bounds the float64 round trip for parameters of moderate size
    (tested); where ``1 + m tanh'`` is tiny (``m`` near -1) the point along ``w`` is
    ill-conditioned and the error grows as its reciprocal.

    Initialised at the identity: ``w`` random, ``u`` such that ``m(w^T u) = 0`` (``u_hat = 0``),
    plus a little noise so the first gradients differ between layers.
    """

    numbered = True
    any_size = True
    inverse_tol: ClassVar[float] = 1e-10
    bisect_steps: ClassVar[int] = 60

    def __init__(self, dim: int, noise: float = 0.01) -> None:
        super().__init__()
        w = torch.randn(dim) / math.sqrt(dim)
        self.w = nn.Parameter(w)
        self.u = nn.Parameter(_IDENTITY_WU * w / w.dot(w) + noise * torch.randn(dim))
        self.b = nn.Parameter(torch.zeros(()))

    def constrained(self) -> tuple[Tensor, Tensor]:
        """``u_hat`` and ``m = w^T u_hat`` (> -1, computed as ``m(w^T u)``, not as the dot product)."""
        wu = self.w.dot(self.u)
        m = -1 + F.softplus(wu).clamp(min=MIN_SLOPE)
        norm2 = self.w.dot(self.w)
        safe = torch.where(norm2 > 0, norm2, torch.ones_like(norm2))  # w = 0: no correction (and no 0/0)
        u_hat = self.u + torch.where(norm2 > 0, (m - wu) / safe, torch.zeros_like(norm2)) * self.w
        return u_hat, m

    def _log_slope(self, a: Tensor, m: Tensor) -> Tensor:
        """``log(1 + m tanh'(a + b))``: the log-det at a point with ``w^T z = a``."""
        t = torch.tanh(a + self.b)
        return torch.log1p(m * (1 - t * t))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u_hat, m = self.constrained()
        a = x @ self.w
        return x + u_hat * torch.tanh(a + self.b)[:, None], self._log_slope(a, m)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u_hat, m = self.constrained()
        c = z @ self.w  # = a + m tanh(a + b): solve for a
        with torch.no_grad():
            lo, hi = c - m.abs(), c + m.abs()
            b, md = self.b.detach(), m.detach()
            for _ in range(self.bisect_steps):
                mid = 0.5 * (lo + hi)
                below = mid + md * torch.tanh(mid + b) < c
                lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
            a_star = 0.5 * (lo + hi)
        # One Newton step with gradients: at the root it moves a by ~nothing, and it makes da/dc
        # and da/dparams the implicit-function derivatives instead of those of the search.
        t = torch.tanh(a_star + self.b)
        a = a_star - (a_star + m * t - c) / (1 + m * (1 - t * t))
        return z - u_hat * torch.tanh(a + self.b)[:, None], -self._log_slope(a, m)

    def describe(self) -> str:
        return "Planar"


class Radial(Flow):
    """``f(z) = z + beta h(alpha, r) (z - z0)``, ``h = 1 / (alpha + r)``, ``r = |z - z0|``
    (Rezende & Mohamed, 2015, eq. 14).

    ``alpha = softplus(raw_alpha) > 0`` and ``beta = -alpha + softplus(raw_beta) >= -alpha``
    (appendix A.2), so ``r -> r (1 + beta h)`` is increasing and ``f`` a bijection; zero raw
    values give ``beta = 0``, the identity. Log-det:
    ``(D - 1) log(1 + beta h) + log(1 + beta alpha / (alpha + r)^2)``. The inverse is exact: the
    radius solves a quadratic, taken in the form that never subtracts nearly equal numbers.
    """

    numbered = True
    any_size = True

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.z0 = nn.Parameter(torch.randn(dim))
        self.raw_alpha = nn.Parameter(torch.zeros(()))
        self.raw_beta = nn.Parameter(torch.zeros(()))

    def constrained(self) -> tuple[Tensor, Tensor]:
        alpha = F.softplus(self.raw_alpha)
        return alpha, -alpha + F.softplus(self.raw_beta)

    def _logdet(self, r: Tensor, dim: int) -> Tensor:
        alpha, beta = self.constrained()
        return (dim - 1) * torch.log1p(beta / (alpha + r)) + torch.log1p(beta * alpha / (alpha + r) ** 2)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        alpha, beta = self.constrained()
        d = x - self.z0
        r = d.norm(dim=1)
        return x + (beta / (alpha + r))[:, None] * d, self._logdet(r, x.shape[1])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        alpha, beta = self.constrained()
        d = z - self.z0
        r_out = d.norm(dim=1)
        # r + beta r / (alpha + r) = r_out  <=>  r^2 + q r - alpha r_out = 0, q = alpha + beta - r_out;
        # the positive root as 2 alpha r_out / (q + s) for q > 0 and (s - q) / 2 otherwise.
        q = alpha + beta - r_out
        s = torch.sqrt(q * q + 4 * alpha * r_out)
        pos = q > 0
        r = torch.where(pos, 2 * alpha * r_out / torch.where(pos, q + s, torch.ones_like(q)), (s - q) / 2)
        return self.z0 + d / (1 + beta / (alpha + r))[:, None], -self._logdet(r, z.shape[1])

    def describe(self) -> str:
        return "Radial"


class OnVectors(Flow):
    """Runs a flow made for images ``[B, C, H, W]`` on vectors ``[B, D]`` as ``[B, D, 1, 1]``:
    actnorm, 1x1 convolutions and channel couplings then act on the ``D`` coordinates (a 2-D
    RealNVP or neural spline flow), with no second copy of their logic. A context ``[B, K]``
    travels as ``[B, K, 1, 1]``."""

    any_size = True

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    @staticmethod
    def _image(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[:, :, None, None]

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, logdet = self.flow(self._image(x), self._image(context))
        return z.flatten(1), logdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, logdet = self.flow.inverse(self._image(z), self._image(context))
        return x.flatten(1), logdet

    def describe(self) -> str:
        return f"OnVectors: {self.flow.describe()}"

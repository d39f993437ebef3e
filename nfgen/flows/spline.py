"""Monotonic rational-quadratic spline (Durkan et al., 2019, "Neural Spline Flows", section 3).

On ``[-bound, bound]`` the map is a monotonic piecewise rational-quadratic through ``bins + 1``
knots; outside it is the identity (linear tails of slope 1, as in the paper), and the
derivatives at the two boundary knots are fixed to 1, so the whole map is C1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from nfgen.flows.transforms import ElementwiseTransform, register_transform


def _knots(raw: Tensor, bins: int, minimum: float, bound: float) -> tuple[Tensor, Tensor]:
    """Knot positions ``[bins + 1, ...]`` on ``[-bound, bound]`` and bin sizes ``[bins, ...]``
    from raw values ``[bins, ...]`` (bins on the first axis, see ``_spline``).

    ``minimum + (1 - minimum * bins) * softmax`` keeps every bin at least ``minimum`` of the
    interval (so no bin's slope degenerates), and zero raw values give equal bins."""
    sizes = minimum + (1 - minimum * bins) * torch.softmax(raw, dim=0)
    inner = torch.cumsum(sizes[:-1], dim=0) * (2 * bound) - bound
    # The ends are set exactly rather than summed: a rounding error away from `bound` would
    # break the match with the identity tails there.
    end = torch.full_like(inner[:1] if bins > 1 else sizes[:1], bound)
    knots = torch.cat([-end, inner, end], dim=0)
    return knots, knots[1:] - knots[:-1]


def _at(t: Tensor, k: Tensor) -> Tensor:
    """``t[k]`` along the first (bins) axis, elementwise."""
    return torch.gather(t, 0, k[None]).squeeze(0)


@register_transform("spline")
class RationalQuadraticSpline(ElementwiseTransform):
    """Monotonic rational-quadratic spline (Durkan et al., 2019, "Neural Spline Flows").

    ``params`` per value: ``bins`` raw widths, ``bins`` raw heights, ``bins - 1`` raw inner-knot
    derivatives (``params_per_dim = 3 * bins - 1``). Widths and heights are softmaxes (each bin at
    least ``min_width`` / ``min_height`` of the interval); derivatives are
    ``min_derivative + softplus(raw + c)`` with ``c`` chosen so a zero raw value gives exactly 1.
    All-zero raw parameters therefore give equal bins of slope 1 with unit derivatives: the
    identity (to rounding). The inverse is the closed-form root of the bin's quadratic.

    Knot derivatives are >= ``min_derivative``, but inside a bin the slope can be far smaller
    (about 1e-8 with |raw| ~ 50), where ``x`` given ``y`` is ill-conditioned. In float64 the round
    trip is below 1e-10 for |raw| <~ 1 (tested); for |raw| up to 50 the error times
    ``min(1, dy/dx)`` stays below 1e-10 (tested; measured 1e-11), i.e. the inverse is exact to
    the problem's conditioning.
    """

    def __init__(
        self,
        bins: int = 8,
        bound: float = 3.0,
        min_width: float = 1e-3,
        min_height: float = 1e-3,
        min_derivative: float = 1e-3,
    ) -> None:
        super().__init__()
        if bins < 1:
            raise ValueError(f"spline bins must be >= 1, got {bins}")
        if not bound > 0:
            raise ValueError(f"spline bound must be > 0, got {bound}")
        if not (0 <= min_width * bins < 1 and 0 <= min_height * bins < 1):
            raise ValueError(f"spline min_width and min_height must be in [0, 1/bins), got {min_width}, {min_height}")
        if not 0 <= min_derivative < 1:
            raise ValueError(f"spline min_derivative must be in [0, 1), got {min_derivative}")
        self.bins, self.bound = bins, bound
        self.min_width, self.min_height, self.min_derivative = min_width, min_height, min_derivative
        self.params_per_dim = 3 * bins - 1
        # softplus(c) = 1 - min_derivative, so a zero raw derivative is exactly slope 1.
        self._shift = math.log(math.expm1(1 - min_derivative))

    def _spline(self, params: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Knots and derivatives ``[bins (+ 1), N]`` for the ``N`` values ``v``."""
        if params.shape != (*v.shape, self.params_per_dim):
            raise ValueError(f"spline with {self.bins} bins needs params of shape {(*v.shape, self.params_per_dim)} "
                             f"for values of shape {tuple(v.shape)}, got {tuple(params.shape)}")
        # Bins on the first axis: softmax, cumsum and the bin lookup over a short last axis are
        # many times slower on CPU than over a leading axis of contiguous slices (measured 25x
        # for softmax with 8 bins); one copy of the parameters buys that.
        raw = params.reshape(-1, self.params_per_dim).T.contiguous()  # [P, N]: 2-D keeps cat cheap
        raw_w, raw_h, raw_d = raw.split([self.bins, self.bins, self.bins - 1], dim=0)
        xk, w = _knots(raw_w, self.bins, self.min_width, self.bound)
        yk, h = _knots(raw_h, self.bins, self.min_height, self.bound)
        inner = self.min_derivative + F.softplus(raw_d + self._shift)
        # Boundary derivatives 1 match the identity tails' slope: the map is C1 at +-bound.
        one = torch.ones_like(raw_w[:1])
        d = torch.cat([one, inner, one], dim=0)
        return xk, w, yk, h, d

    @staticmethod
    def _bin(knots: Tensor, v: Tensor) -> Tensor:
        # k with knots[k] <= v < knots[k + 1] for v in [-bound, bound] (v = bound: the last bin),
        # counted over the inner knots, which needs no search and no clamp.
        return (v.detach() >= knots[1:-1].detach()).sum(0)

    def _locate(self, v: Tensor, knots: Tensor, spline: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Which values lie inside the bound, the values clamped into it, and the bin of each
        (found among ``knots``: x's knots forward, y's inverse): its left x and y knots, width,
        height and the derivatives at both ends. Clamping first keeps the spline branch away
        from out-of-range values: ``torch.where`` would pass NaN gradients back from it."""
        xk, w, yk, h, d = spline
        inside = (v >= -self.bound) & (v <= self.bound)
        vc = v.clamp(-self.bound, self.bound)
        k = self._bin(knots, vc)
        return inside, vc, _at(xk, k), _at(w, k), _at(yk, k), _at(h, k), _at(d, k), _at(d, k + 1)

    @staticmethod
    def _log_slope(theta: Tensor, s: Tensor, d0: Tensor, d1: Tensor) -> Tensor:
        """``log dy/dx`` inside a bin (Durkan et al., eq. 5)."""
        one_minus = 1 - theta
        denom = s + (d0 + d1 - 2 * s) * theta * one_minus
        numer = s**2 * (d1 * theta**2 + 2 * s * theta * one_minus + d0 * one_minus**2)
        return torch.log(numer) - 2 * torch.log(denom)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        xk, w, yk, h, d = self._spline(params, x)
        shape, x = x.shape, x.reshape(-1)
        inside, xc, x0, w_k, y0, h_k, d0, d1 = self._locate(x, xk, (xk, w, yk, h, d))
        s = h_k / w_k
        theta = ((xc - x0) / w_k).clamp(0, 1)
        one_minus = 1 - theta
        y_in = y0 + h_k * (s * theta**2 + d0 * theta * one_minus) / (s + (d0 + d1 - 2 * s) * theta * one_minus)
        ld_in = self._log_slope(theta, s, d0, d1)
        return torch.where(inside, y_in, x).view(shape), torch.where(inside, ld_in, torch.zeros_like(ld_in)).view(shape)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        xk, w, yk, h, d = self._spline(params, y)
        shape, y = y.shape, y.reshape(-1)
        inside, yc, x0, w_k, y0, h_k, d0, d1 = self._locate(y, yk, (xk, w, yk, h, d))
        s = h_k / w_k
        dy = yc - y0
        curv = d0 + d1 - 2 * s
        # theta solves a theta^2 + b theta + c = 0 (Durkan et al., eqs. 6-8); c <= 0 and the root
        # in [0, 1] is written as 2c / (-b - sqrt(b^2 - 4ac)), which never subtracts nearly equal
        # numbers (the textbook (-b + sqrt(...)) / 2a does when a is small).
        a = h_k * (s - d0) + dy * curv
        b = h_k * d0 - dy * curv
        c = -s * dy
        disc = (b**2 - 4 * a * c).clamp(min=0)  # >= 0 exactly; clamp only rounding
        theta = (2 * c / (-b - torch.sqrt(disc))).clamp(0, 1)
        x_in = x0 + theta * w_k
        ld_in = -self._log_slope(theta, s, d0, d1)
        return torch.where(inside, x_in, y).view(shape), torch.where(inside, ld_in, torch.zeros_like(ld_in)).view(shape)

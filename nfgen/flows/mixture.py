"""Flow++'s logistic-mixture CDF coupling transform (Ho et al., 2019, "Flow++", section 3.2).

``y = exp(a) * logit(F(x)) + b`` with ``F(x) = sum_k pi_k * sigmoid((x - mu_k) / s_k)``. Everything
is computed in log space, ``logit(F) = log F - log(1 - F)`` with each term a log-sum-exp of
log-sigmoids, so the tails never round ``F`` to 0 or 1: far from the components
``logit(F(x))`` grows linearly in ``x`` instead of saturating to +-inf.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from nfgen.flows.transforms import ElementwiseTransform, register_transform

# Log-scales are soft-clamped to (-7, 7). Flow++'s code clamps them below at -7 (a component
# narrower than e^-7 makes the density spike and the inverse ill-conditioned); the upper bound
# keeps the inverse's bracket (which grows with s * |t|) finite. tanh keeps slope 1 at 0.
LOG_SCALE_BOUND = 7.0


class _Mixture(NamedTuple):
    """Mixture parameters, components on the first axis: ``[K, N]`` for ``N`` values."""

    log_pi: Tensor
    mu: Tensor
    log_s: Tensor
    inv_s: Tensor  # exp(-log_s), computed once for the many evaluations of the inverse


def _logit_and_log_slope(x: Tensor, m: _Mixture) -> tuple[Tensor, Tensor]:
    """``logit(F(x))`` and ``log dlogit(F)/dx`` for values ``x`` shaped ``[N]``."""
    z = (x - m.mu) * m.inv_s
    log_cdf_k, log_sf_k = F.logsigmoid(z), F.logsigmoid(-z)
    log_cdf = torch.logsumexp(m.log_pi + log_cdf_k, dim=0)
    log_sf = torch.logsumexp(m.log_pi + log_sf_k, dim=0)
    logit = log_cdf - log_sf
    # d logit(F) / dx = f / (F (1 - F)) with f = sum_k pi_k sigmoid(z_k) sigmoid(-z_k) / s_k.
    # In the right tail log f and log(1 - F) are both huge (~ -z) and nearly equal, so their
    # difference would lose every digit in float32 at |z| ~ 1e7; instead write
    # f / (1 - F) = sum_k w_k sigmoid(z_k) / s_k with weights w = softmax(log pi + log(1 - F_k)),
    # where the huge terms cancel inside the softmax. Mirror image (1 - F) in the left tail.
    right = log_cdf > log_sf  # F > 1/2: the other factor, log F, is in [-log 2, 0]
    weights = torch.log_softmax(m.log_pi + torch.where(right, log_sf_k, log_cdf_k), dim=0)
    ratio = torch.logsumexp(weights + torch.where(right, log_cdf_k, log_sf_k) - m.log_s, dim=0)
    return logit, ratio - torch.where(right, log_cdf, log_sf)


@register_transform("logistic_mixture")
class LogisticMixtureCDF(ElementwiseTransform):
    """Flow++'s mixture-of-logistics CDF coupling (Ho et al., 2019, "Flow++", section 3.2).

    ``params`` per value (``params_per_dim = 3 * components + 2``): ``K`` mixture logits, ``K``
    means, ``K`` raw log-scales, then raw ``a`` and ``b``. Mixture weights are a softmax; means
    and ``b`` are used as given; log-scales are ``7 * tanh(raw / 7)`` and the outer log-scale
    ``a = clamp * tanh(raw / clamp)`` (as in ``Affine``). All-zero raw parameters give ``K``
    identical standard logistics, ``logit(sigmoid(x)) = x``: the identity (to rounding).

    The inverse has no closed form: it bisects a bracket derived from the parameters, then takes
    safeguarded Newton steps, a fixed number of each (``bisect_steps``, ``newton_steps``), and one
    last Newton step that carries the gradient (implicit-function rule). ``inverse_tol`` bounds
    the float64 round-trip error for raw parameters of moderate size (|raw| <~ 1, tested; measured
    ~3e-14); in float32 it is ~1e-6 * (1 + |x|) (tested to 1e-4). Where the map is nearly flat
    (a gap between narrow, distant components, slopes down to e^-60 with |raw| ~ 3) ``x`` is
    ill-conditioned given ``y``: the inverse still returns a point whose image matches ``y`` to
    rounding (tested: relative 1e-12 in float64 for |raw| up to 50 and |x| up to 1e4), and its
    error times ``min(1, dy/dx)`` stays below 1e-10. Finite in float32 for |x| <= 1e4 and
    |raw| <= 50 (tested); nothing there saturates, as ``logit(F)`` is never formed from ``F``.
    """

    inverse_tol = 1e-10
    bisect_steps = 24
    newton_steps = 8

    def __init__(self, components: int = 4, clamp: float = 2.0) -> None:
        super().__init__()
        if components < 1:
            raise ValueError(f"logistic_mixture components must be >= 1, got {components}")
        if not clamp > 0:
            raise ValueError(f"logistic_mixture clamp must be > 0, got {clamp}")
        self.components, self.clamp = components, clamp
        self.params_per_dim = 3 * components + 2

    def _unpack(self, params: Tensor, v: Tensor) -> tuple[_Mixture, Tensor, Tensor]:
        """The mixture ``[K, N]`` and ``a``, ``b`` ``[N]`` for the ``N`` values ``v``."""
        if params.shape != (*v.shape, self.params_per_dim):
            raise ValueError(f"logistic_mixture with {self.components} components needs params of shape "
                             f"{(*v.shape, self.params_per_dim)} for values of shape {tuple(v.shape)}, "
                             f"got {tuple(params.shape)}")
        # Components on the first axis: log-sum-exp over a short last axis is several times
        # slower on CPU than over a leading axis of contiguous slices; one copy buys that.
        raw = params.reshape(-1, self.params_per_dim).T.contiguous()
        k = self.components
        logits, mu, raw_s, raw_a, b = raw.split([k, k, k, 1, 1], dim=0)
        log_s = LOG_SCALE_BOUND * torch.tanh(raw_s / LOG_SCALE_BOUND)
        a = self.clamp * torch.tanh(raw_a[0] / self.clamp)
        return _Mixture(torch.log_softmax(logits, dim=0), mu, log_s, torch.exp(-log_s)), a, b[0]

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        m, a, b = self._unpack(params, x)
        logit, log_slope = _logit_and_log_slope(x.reshape(-1), m)
        return (torch.exp(a) * logit + b).view(x.shape), (a + log_slope).view(x.shape)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        m, a, b = self._unpack(params, y)
        t = (y.reshape(-1) - b) * torch.exp(-a)  # the target logit(F(x))
        with torch.no_grad():
            x_star = self._solve(t, _Mixture(*(v.detach() for v in m)))
        # One more Newton step, now with gradients: at the root it moves x by ~nothing, but it
        # makes dx/dt = 1 / g'(x) and dx/dparams = -(dg/dparams) / g'(x), the implicit-function
        # derivatives, instead of derivatives of the (non-differentiable) search.
        g, log_slope = _logit_and_log_slope(x_star, m)
        # The clamp keeps exp finite where the map is flat to rounding (g' underflows); there the
        # step is huge, and a step beyond 1e-3 * (1 + |x|) (a converged root never needs one) is
        # rejected, keeping x_star (whose dx/dy is then left at 0: it is ~1/g', astronomically large).
        step = (g - t) * torch.exp(-log_slope.clamp(min=-_max_log(x_star.dtype)))
        x = x_star - step
        x = torch.where(step.abs() <= _step_cap(x_star), x, x_star)
        # The log-det at the differentiable x (not x_star), so its gradient includes dx/dparams.
        return x.view(y.shape), -(a + _logit_and_log_slope(x, m)[1]).view(y.shape)

    def _solve(self, t: Tensor, m: _Mixture) -> Tensor:
        """``x`` with ``logit(F(x)) = t``, by a fixed number of bisection then Newton steps."""
        # Bracket: at x_k = mu_k + s_k t component k's CDF is exactly sigmoid(t). At the largest
        # x_k every component's standardised value is >= t, so every CDF, hence their convex
        # combination F, is >= sigmoid(t); at the smallest x_k, F <= sigmoid(t). F increases, so
        # the root lies between them (and is exact when all components agree).
        ends = m.mu + t / m.inv_s
        lo, hi = ends.amin(0), ends.amax(0)
        # Bisection only needs the sign of F(mid) - sigmoid(t). Compare the logs of whichever of F
        # and 1 - F is the small one at the root (log F for t < 0, log(1 - F) for t > 0): it keeps
        # its digits in the tails, and costs one log-sigmoid and one log-sum-exp, not two each.
        sign = torch.where(t > 0, -1.0, 1.0).to(t.dtype)
        target = F.logsigmoid(sign * t)
        for _ in range(self.bisect_steps):
            mid = 0.5 * (lo + hi)
            log_tail = torch.logsumexp(m.log_pi + F.logsigmoid(sign * (mid - m.mu) * m.inv_s), dim=0)
            below = sign * (log_tail - target) < 0
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        x = 0.5 * (lo + hi)
        cap = _max_log(t.dtype)
        for _ in range(self.newton_steps):
            g, log_slope = _logit_and_log_slope(x, m)
            below = g < t
            lo, hi = torch.where(below, x, lo), torch.where(below, hi, x)
            newton = x - (g - t) * torch.exp(-log_slope.clamp(min=-cap))
            # Safeguard: a Newton point outside the current bracket is replaced by its midpoint,
            # so every step keeps the root bracketed and the search cannot diverge.
            x = torch.where((newton >= lo) & (newton <= hi), newton, 0.5 * (lo + hi))
        return x


def _max_log(dtype: torch.dtype) -> float:
    # Half the log of the largest float: exp(+-this) and products of two such stay finite.
    return 0.5 * math.log(torch.finfo(dtype).max)


def _step_cap(x: Tensor) -> Tensor:
    # The final Newton step only polishes a converged root; a larger step means g' underflowed.
    return 1e-3 * (1 + x.abs())

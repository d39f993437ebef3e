"""Elementwise transforms for couplings: the one seam a new coupling kind plugs into.

A coupling is a mask, a conditioner and an elementwise transform (nflows' ``CouplingTransform``,
zuko's ``GeneralCouplingTransform``). The transform maps every transformed value ``x`` with its
own parameters: ``params`` has the shape of ``x`` plus a last axis of ``params_per_dim`` raw,
unconstrained values produced by the conditioner, and both directions return the elementwise
``log|dy/dx|`` (shape of ``x``), which the coupling masks and sums. A raw parameter vector of
zeros should give (close to) the identity, because conditioners start with a zero last layer.

A new transform is one subclass registered by name, e.g. in a user's own module::

    @register_transform("cubic")
    class Cubic(ElementwiseTransform):
        params_per_dim = 2
        def forward(self, x, params): ...
        def inverse(self, y, params): ...

after which ``coupling: cubic`` selects it in a config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from nfgen.flows.registry import build_named

TRANSFORMS: dict[str, type[ElementwiseTransform]] = {}


def register_transform(name: str) -> Callable[[type[ElementwiseTransform]], type[ElementwiseTransform]]:
    """Class decorator: make a transform selectable by ``name`` (config ``coupling: name``)."""

    def add(cls: type[ElementwiseTransform]) -> type[ElementwiseTransform]:
        TRANSFORMS[name] = cls
        cls.name = name
        return cls

    return add


def make_transform(name: str, **options: object) -> ElementwiseTransform:
    """The registered transform ``name`` built with ``options``; a ``ValueError`` with a one-line
    message names the valid transforms or options when they do not fit."""
    return build_named("coupling transform", TRANSFORMS, name, options)


class ElementwiseTransform(nn.Module):
    """A bijection of each value given its parameters (see the module docstring)."""

    name = "?"
    params_per_dim: int = 0
    # Round-trip accuracy in float64. Exact inverses keep the default; a numerical inverse
    # (bisection) states its own, and the test harness then checks the round trip to it and
    # skips autograd through the inverse (the derivative of a bisection is not the inverse's).
    inverse_tol: ClassVar[float] = 1e-10

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def scale(self, x: Tensor, params: Tensor) -> Tensor:
        """``|dy/dx|`` at ``x`` (for diagnostics: a tiny scale makes the inverse ill-conditioned)."""
        return self.forward(x, params)[1].exp()


@register_transform("affine")
class Affine(ElementwiseTransform):
    """``y = x * exp(s) + t`` with a soft-clamped log-scale ``s = clamp * tanh(raw / clamp)``:
    the identity near zero (so a zero-initialised net gives an identity coupling, unlike Glow's
    ``sigmoid(raw + 2)``), yet every scale stays in ``[e^-clamp, e^clamp]``, so one bad step
    cannot blow activations up through many stacked layers."""

    params_per_dim = 2

    def __init__(self, clamp: float = 2.0) -> None:
        super().__init__()
        if not clamp > 0:
            raise ValueError(f"affine clamp must be > 0, got {clamp}")
        self.clamp = clamp

    def _shift_log_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = params.unbind(-1)
        return shift, self.clamp * torch.tanh(raw / self.clamp)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_s = self._shift_log_scale(params)
        return x * torch.exp(log_s) + shift, log_s

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_s = self._shift_log_scale(params)
        return (y - shift) * torch.exp(-log_s), -log_s


@register_transform("additive")
class Additive(ElementwiseTransform):
    """``y = x + t`` (NICE; Glow's additive coupling): volume preserving."""

    params_per_dim = 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x + params[..., 0], torch.zeros_like(x)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return y - params[..., 0], torch.zeros_like(y)


from nfgen.flows import mixture, spline  # noqa: E402,F401  (registers them)

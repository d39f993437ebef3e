"""Elementwise transforms for couplings: the one seam a new coupling kind plugs into.

A coupling is a mask, a conditioner and an elementwise transform (nflows' ``CouplingTransform``,
zuko's ``GeneralCouplingTransform``). The transform maps every transformed value ``x`` with its
own parameters: ``params`` has the shape of ``x`` plus a last axis of ``params_per_dim`` raw,
unconstrained values produced by the conditioner, and both directions return the elementwise
``log|dy/dx|`` (shape of ``x``), which the coupling masks and sums. A raw parameter vector of
zeros should give (close to) the identity, because conditioners start with a zero last layer.

A new transform is one subclass registered by name, in its own module::

    from nfgen import ElementwiseTransform, register_transform

    @register_transform("cubic")
    class Cubic(ElementwiseTransform):
        params_per_dim = 2
        def forward(self, x, params): ...
        def inverse(self, y, params): ...

after which ``coupling: cubic`` selects it in a config. A built-in's module is listed in
``nfgen.flows.builtins``; a user's module is named in the config's ``plugins:`` (docs/plugins.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from torch import Tensor, nn

from nfgen.core.registry import Registry, build_named

# The built-in transforms register in their own modules, listed in nfgen.flows.builtins.
TRANSFORMS: Registry[type[ElementwiseTransform]] = Registry("coupling transform", "nfgen.flows.builtins")


def register_transform(name: str) -> Callable[[type[ElementwiseTransform]], type[ElementwiseTransform]]:
    """Class decorator: make a transform selectable by ``name`` (config ``coupling: name``)."""

    def add(cls: type[ElementwiseTransform]) -> type[ElementwiseTransform]:
        TRANSFORMS.register(name, cls)
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

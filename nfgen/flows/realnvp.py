"""RealNVP's multi-scale body (Dinh, Sohl-Dickstein & Bengio, 2017, section 3.6)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nfgen.flows.base import Flow, Sequential
from nfgen.flows.coupling import ChannelMask, CheckerboardMask, Coupling
from nfgen.flows.multiscale import Level, MultiScaleFlow, Shape
from nfgen.flows.nets import make_conditioner
from nfgen.flows.reshape import Squeeze
from nfgen.flows.transforms import make_transform


def build_realnvp(shape: Shape, levels: int, steps: int = 3, hidden: int = 64, blocks: int = 8,
                  coupling: str = "affine", conditioner: str = "resnet",
                  coupling_options: Mapping[str, Any] | None = None,
                  conditioner_options: Mapping[str, Any] | None = None, context_dim: int = 0) -> MultiScaleFlow:
    """Each scale but the last: ``steps`` checkerboard couplings, squeeze, ``steps`` channel
    couplings, split. The last scale: ``steps + 1`` checkerboard couplings (the paper: 3, 3, 4).
    Parities alternate so every dimension is transformed.

    Couplings use the registered elementwise transform ``coupling`` (with ``coupling_options``)
    and the registered ``conditioner`` of width ``hidden`` and depth ``blocks`` (RealNVP's: a
    resnet of ``blocks`` residual blocks), with its extra ``conditioner_options``. The keyword
    names are those of the config's ``model.realnvp`` section; ``context_dim`` is the size of the
    class embedding the couplings' nets see (0: unconditional)."""
    net = make_conditioner(conditioner, hidden, blocks, **(conditioner_options or {}))

    def make_coupling(mask: ChannelMask | CheckerboardMask) -> Coupling:
        return Coupling(mask, net, make_transform(coupling, **(coupling_options or {})), context_dim)

    c, h, w = shape
    built = []
    for i in range(levels):
        in_shape = (c, h, w)
        last = i == levels - 1
        n_checker = steps + 1 if last else steps
        flows: list[Flow] = [make_coupling(CheckerboardMask(c, (h, w), parity=k % 2)) for k in range(n_checker)]
        if not last:
            c, h, w = 4 * c, h // 2, w // 2
            flows.append(Squeeze())
            flows += [make_coupling(ChannelMask(c, parity=k % 2)) for k in range(steps)]
        built.append(Level(Sequential(*flows), in_shape, (c, h, w), split=not last))
        if not last:
            c //= 2
    return MultiScaleFlow(built)

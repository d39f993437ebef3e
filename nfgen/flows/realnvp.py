"""RealNVP's multi-scale body (Dinh, Sohl-Dickstein & Bengio, 2017, section 3.6)."""

from __future__ import annotations

from nfgen.flows.base import Flow
from nfgen.flows.coupling import ChannelMask, CheckerboardMask, Coupling
from nfgen.flows.multiscale import MultiScaleFlow, Shape, squeezed, stack_levels
from nfgen.flows.realnvp_section import RealNVPConfig
from nfgen.flows.reshape import Squeeze


def build_realnvp(shape: Shape, section: RealNVPConfig, context_dim: int = 0) -> MultiScaleFlow:
    """Each scale but the last: ``steps`` checkerboard couplings, squeeze, ``steps`` channel
    couplings, split. The last scale: ``steps + 1`` checkerboard couplings (the paper: 3, 3, 4).
    Parities alternate so every dimension is transformed.

    Couplings use the section's registered transform and conditioner (``CouplingSpec``:
    RealNVP's is a resnet of ``blocks`` residual blocks); the options are ``RealNVPConfig``, the
    config's ``model.realnvp``; ``context_dim`` is the size of the class embedding the couplings'
    nets see (0: unconditional)."""
    s, net = section, section.net()

    def make_coupling(mask: ChannelMask | CheckerboardMask) -> Coupling:
        return Coupling(mask, net, s.transform(), context_dim)

    def level(i: int, in_shape: Shape, last: bool) -> tuple[list[Flow], Shape]:
        c, h, w = in_shape
        n_checker = s.steps + 1 if last else s.steps
        flows: list[Flow] = [make_coupling(CheckerboardMask(c, (h, w), parity=k % 2)) for k in range(n_checker)]
        if last:
            return flows, in_shape
        out_shape = squeezed(in_shape)
        flows.append(Squeeze())
        flows += [make_coupling(ChannelMask(out_shape[0], parity=k % 2)) for k in range(s.steps)]
        return flows, out_shape

    return stack_levels(shape, s.levels, level)

"""RealNVP's multi-scale body (Dinh, Sohl-Dickstein & Bengio, 2017, section 3.6)."""

from __future__ import annotations

from nfgen.flows.base import Flow, Sequential
from nfgen.flows.coupling import Coupling
from nfgen.flows.multiscale import Level, MultiScaleFlow, Shape
from nfgen.flows.nets import resnet
from nfgen.flows.reshape import Squeeze


def build_realnvp(shape: Shape, levels: int, steps: int = 3, hidden: int = 64, blocks: int = 8,
                  coupling: str = "affine", memory_saving: bool = False,
                  channels_last: bool = False) -> MultiScaleFlow:
    """Each scale but the last: ``steps`` checkerboard couplings, squeeze, ``steps`` channel
    couplings, split. The last scale: ``steps + 1`` checkerboard couplings (the paper: 3, 3, 4).
    Parities alternate so every dimension is transformed."""
    net = resnet(hidden, blocks)
    c, h, w = shape
    built = []
    for i in range(levels):
        in_shape = (c, h, w)
        last = i == levels - 1
        n_checker = steps + 1 if last else steps
        flows: list[Flow] = [
            Coupling(c, net, mask="checkerboard", parity=k % 2, transform=coupling, size=(h, w))
            for k in range(n_checker)
        ]
        if not last:
            c, h, w = 4 * c, h // 2, w // 2
            flows.append(Squeeze(channels_last))
            flows += [Coupling(c, net, mask="channel", parity=k % 2, transform=coupling)
                      for k in range(steps)]
        built.append(Level(Sequential(*flows, memory_saving=memory_saving), in_shape, (c, h, w), split=not last))
        if not last:
            c //= 2
    return MultiScaleFlow(built)

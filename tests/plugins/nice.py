"""NICE (Dinh, Krueger & Bengio, 2014) as ``arch: nice``, a plugin module outside nfgen: its config
section, builder and registration in this one file. Additive couplings on alternating
checkerboard halves, then a diagonal scaling (a learned per-dimension scale and shift); one
scale, so no levels.

    plugins: [nice]                          # in a config, with this folder on PYTHONPATH
    model: {arch: nice, nice: {couplings: 4, hidden: 64}}

``pytest --plugin nice`` runs every architecture-parametrized test on it too (tests/conftest.py).
"""

from dataclasses import dataclass

from nfgen import ArchSection, CouplingSpec, register_architecture
from nfgen.config.keys import opt
from nfgen.flows.base import Sequential
from nfgen.flows.coupling import CheckerboardMask, Coupling
from nfgen.flows.multiscale import Level, MultiScaleFlow
from nfgen.flows.priors import LearnedGaussian
from nfgen.flows.section import check


def build_nice(shape, section, context_dim=0):
    c, h, w = shape
    net = section.net()
    flows = [Coupling(CheckerboardMask(c, (h, w), parity=k % 2), net, section.transform(), context_dim)
             for k in range(section.couplings)]
    return MultiScaleFlow([Level(Sequential(*flows, LearnedGaussian(shape)), shape, shape, split=False)])


@register_architecture("nice", build=build_nice, help="NICE (Dinh et al., 2014): arch nice's options",
                       preprocess="logit", tiny=lambda shape, depth, width: {"couplings": 2 * depth, "hidden": width})
@dataclass(frozen=True)
class NiceConfig(CouplingSpec, ArchSection):
    couplings: int = opt(4, "additive couplings, alternating checkerboard parity")
    coupling: str = opt("additive", "NICE: additive")

    def validate(self, where, image_shape, memory_saving):
        check(1 <= self.couplings <= 64, f"{where}.couplings must be in 1..64, got {self.couplings}")
        super().validate(where, image_shape, memory_saving)

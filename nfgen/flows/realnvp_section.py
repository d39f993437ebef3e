"""``model.realnvp``: RealNVP's options (Dinh et al., 2017), registered as ``arch: realnvp``; the
builder is ``nfgen.flows.realnvp.build_realnvp``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nfgen.config.keys import opt
from nfgen.flows.architectures import register_architecture
from nfgen.flows.section import CouplingSpec, MultiScaleSection, coupling_field, tiny_multiscale


def _tiny(shape: tuple[int, int, int], depth: int, width: int) -> dict[str, Any]:
    return {**tiny_multiscale(shape, depth, width), "blocks": 1}


@register_architecture("realnvp", build="nfgen.flows.realnvp:build_realnvp", tiny=_tiny, preprocess="logit",
                       help="RealNVP (Dinh et al., 2017): arch realnvp's options")
@dataclass(frozen=True)
class RealNVPConfig(CouplingSpec, MultiScaleSection):
    """RealNVP (Dinh et al., 2017): per scale, checkerboard couplings, squeeze, channel couplings, split."""

    levels: int = opt(2, "scales; H and W must be divisible by 2**levels")
    steps: int = opt(3, "couplings per mask kind per scale (the paper: 3, and 4 checkerboard at the last)")
    blocks: int = coupling_field("blocks", 8, "RealNVP: 8")
    conditioner: str = coupling_field("conditioner", "resnet", "RealNVP: resnet")

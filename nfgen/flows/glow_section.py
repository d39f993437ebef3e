"""``model.glow``: Glow's options (Kingma & Dhariwal, 2018), registered as ``arch: glow``; the
builder is ``nfgen.flows.glow.build_glow``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nfgen.config.keys import opt
from nfgen.flows.architectures import register_architecture
from nfgen.flows.section import CouplingSpec, MultiScaleSection, Permutation, coupling_field, tiny_multiscale


@register_architecture("glow", build="nfgen.flows.glow:build_glow", tiny=tiny_multiscale,
                       help="Glow (Kingma & Dhariwal, 2018): arch glow's options")
@dataclass(frozen=True)
class GlowConfig(CouplingSpec, MultiScaleSection):
    """Glow (Kingma & Dhariwal, 2018): levels x [squeeze -> steps x (actnorm, 1x1 conv, coupling) -> split]."""

    levels: int = opt(3, "scales L; H and W must be divisible by 2**L")
    steps: int = opt(32, "K steps of flow (actnorm, permutation, coupling) per level")
    hidden: int = coupling_field("hidden", 512, "Glow: 512")
    permutation: Permutation = opt(
        "conv1x1_lu", "channel mixing before each coupling: Glow's invertible 1x1 conv (LU-factored or not), or fixed")
    split_prior: Literal["learned", "standard"] = opt("learned", "openai/glow's learned conditional prior per split, "
                                                                  "or N(0, I)")
    learn_top: bool = opt(True, "learned mean and log-std of the top latent")

"""``model.glow``: Glow's options (Kingma & Dhariwal, 2018), registered as ``arch: glow``; the
builder is ``nfgen.flows.glow.build_glow``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from nfgen.config_keys import opt
from nfgen.flows.architectures import register_architecture
from nfgen.flows.section import CouplingSpec, MultiScaleSection, coupling_field

PERMUTATIONS = Literal["conv1x1_lu", "conv1x1", "reverse", "shuffle"]


def tiny_multiscale(shape: tuple[int, int, int], depth: int, width: int) -> dict[str, Any]:
    """A tiny multi-scale body for the tests: two levels where the image allows, else one."""
    levels = 2 if shape[1] % 4 == 0 and shape[2] % 4 == 0 else 1
    return {"levels": levels, "steps": depth, "hidden": width}


@register_architecture("glow", build="nfgen.flows.glow:build_glow", tiny=tiny_multiscale,
                       help="Glow (Kingma & Dhariwal, 2018): arch glow's options")
@dataclass(frozen=True)
class GlowConfig(CouplingSpec, MultiScaleSection):
    """Glow (Kingma & Dhariwal, 2018): levels x [squeeze -> steps x (actnorm, 1x1 conv, coupling) -> split]."""

    levels: int = opt(3, "scales L; H and W must be divisible by 2**L")
    steps: int = opt(32, "K steps of flow (actnorm, permutation, coupling) per level")
    hidden: int = coupling_field("hidden", 512, "Glow: 512")
    permutation: PERMUTATIONS = opt(
        "conv1x1_lu", "channel mixing before each coupling: Glow's invertible 1x1 conv (LU-factored or not), or fixed")
    split_prior: Literal["learned", "standard"] = opt("learned", "openai/glow's learned conditional prior per split, "
                                                                  "or N(0, I)")
    learn_top: bool = opt(True, "learned mean and log-std of the top latent")

"""``model.flowpp``: Flow++'s options (Ho et al., 2019), registered as ``arch: flowpp``; the
builder is ``nfgen.flows.flowpp.build_flowpp``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nfgen.config.keys import opt
from nfgen.flows.architectures import register_architecture
from nfgen.flows.section import CouplingSpec, MultiScaleSection, Permutation, check, coupling_field


def _tiny(shape: tuple[int, int, int], depth: int, width: int) -> dict[str, Any]:
    # Two levels where the image allows (channel couplings after the squeeze only: a single
    # channel has none to split before it), else one level of checkerboard couplings: one more than depth, with
    # 3 components (with 2 and 2, a trained model's importance-weighted likelihood still varies
    # by 4% at 1,000 draws: the exact-probability test measures the estimator's noise instead).
    if shape[1] % 2 or shape[2] % 2 or shape[1] * shape[2] < 16:
        return {"levels": 1, "channel": [0], "checkerboard": [depth + 1], "hidden": width, "blocks": 1,
                "coupling_options": {"components": 3}}
    return {"levels": 2, "channel": [0, 1], "checkerboard": [depth, 1], "hidden": width, "blocks": 1,
            "coupling_options": {"components": 2}}


@register_architecture("flowpp", build="nfgen.flows.flowpp:build_flowpp", tiny=_tiny, preprocess="logit",
                       dequantizer={"conditioner": "attention", "coupling": "logistic_mixture",
                                    "coupling_options": {"components": 2}},
                       help="Flow++ (Ho et al., 2019): arch flowpp's options")
@dataclass(frozen=True)
class FlowppConfig(CouplingSpec, MultiScaleSection):
    """Flow++ (Ho et al., 2019): per level (a squeeze first from the second on), channel then
    checkerboard couplings, each after actnorm and a 1x1 conv. Defaults: the paper's CIFAR-10 body."""

    levels: int = opt(2, "levels; H and W must be divisible by 2**(levels - 1)")
    channel: tuple[int, ...] = opt((0, 2), "channel-mask couplings per level")
    checkerboard: tuple[int, ...] = opt((4, 3), "checkerboard couplings per level")
    split: bool = opt(False, "factor half the channels out after each level but the last (Flow++'s CIFAR model: no)")
    hidden: int = coupling_field("hidden", 96, "the paper: 96")
    blocks: int = coupling_field("blocks", 10, "the paper: 10")
    conditioner: str = coupling_field("conditioner", "attention", "Flow++: gated convolutions with self-attention")
    coupling: str = coupling_field("coupling", "logistic_mixture", "Flow++: a mixture of logistics CDF, "
                                                                   "coupling_options components: 32")
    permutation: Permutation = opt(
        "conv1x1_lu", "channel mixing after each actnorm: invertible 1x1 conv (LU-factored or not), or fixed")

    @property
    def squeezes(self) -> int:
        return self.levels - 1  # the first level works on the image itself

    def check(self, where: str, image_shape: tuple[int, int, int]) -> None:
        for name in ("channel", "checkerboard"):
            counts = getattr(self, name)
            check(len(counts) == self.levels and all(0 <= n <= 256 for n in counts),
                  f"{where}.{name} must list {self.levels} coupling counts in 0..256 (one per level), got {list(counts)}")
        check(not self.split or self.levels == 1 or image_shape[0] % 2 == 0,
              f"{where}.split needs an even number of image channels (the first level has no squeeze), "
              f"got {image_shape[0]}; set split: false")
        check(image_shape[0] >= 2 or self.channel[0] == 0,
              f"{where}.channel[0] must be 0: a {image_shape[0]}-channel image has no channels to split "
              "before the first squeeze")

"""``model.tarflow``: TarFlow's options (Zhai et al., 2025), registered as ``arch: tarflow``; the
builder is ``nfgen.flows.tarflow.build_tarflow``. A one-scale body: no levels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from nfgen.config.keys import opt
from nfgen.flows.architectures import register_architecture
from nfgen.flows.section import ArchSection, check


def _tiny(shape: tuple[int, int, int], depth: int, width: int) -> dict[str, Any]:
    # Patches of 2x2 where they leave several tokens, else one pixel per token.
    patch = 2 if shape[1] % 2 == 0 and shape[2] % 2 == 0 and shape[1] * shape[2] >= 16 else 1
    return {"patch": patch, "blocks": depth, "layers": [1], "width": width, "heads": 2}


@register_architecture("tarflow", build="nfgen.flows.tarflow:build_tarflow", tiny=_tiny,
                       help="TarFlow (Zhai et al., 2025): arch tarflow's options")
@dataclass(frozen=True)
class TarflowConfig(ArchSection):
    """TarFlow (Zhai et al., 2025): patchify, then blocks of affine autoregressive flows over the
    patch sequence, each conditioned by a causal Transformer, alternating direction. Defaults:
    the paper's ImageNet 64x64 likelihood model (patch 2, 8 blocks x 8 layers, width 768)."""

    patch: int = opt(2, "p: tokens are p x p patches; H and W must be divisible by p")
    blocks: int = opt(8, "T autoregressive flow blocks")
    layers: tuple[int, ...] = opt((8,), "Transformer layers: one count for all blocks, or one per block in data-to-latent "
                                        "order ([2, 2, 2, 8]: STARFlow's deep-shallow layout, the deep block last)")
    width: int = opt(768, "Transformer width")
    heads: int = opt(12, "attention heads (head size width / heads; the paper: 64)")
    mlp_ratio: int = opt(4, "MLP hidden width / width")
    scale: Literal["affine", "additive"] = opt("affine", "affine, or additive: volume-preserving (shifts only)")
    max_log_scale: float = opt(4.0, "|log-scale| per block is soft-clamped below this")

    def image_multiple(self) -> int:
        return self.patch

    def validate(self, where: str, image_shape: tuple[int, int, int], memory_saving: bool) -> None:
        c, h, w = image_shape
        check(1 <= self.patch <= 64 and h % self.patch == 0 and w % self.patch == 0,
              f"{where}.patch must tile the {h}x{w} image (a divisor of both), got {self.patch}")
        check(1 <= self.blocks <= 256, f"{where}.blocks must be in 1..256, got {self.blocks}")
        check(len(self.layers) in (1, self.blocks) and all(1 <= n <= 256 for n in self.layers),
              f"{where}.layers must be one count in 1..256 for every block, or {self.blocks} (one per block), "
              f"got {list(self.layers)}")
        check(1 <= self.heads <= 1024 and 1 <= self.width <= 65536 and self.width % self.heads == 0,
              f"{where}.width must be a multiple of {where}.heads (both >= 1), got {self.width} and {self.heads}")
        check(1 <= self.mlp_ratio <= 64, f"{where}.mlp_ratio must be in 1..64, got {self.mlp_ratio}")
        check(0 < self.max_log_scale <= 20, f"{where}.max_log_scale must be in (0, 20], got {self.max_log_scale}")
        tokens = (h // self.patch) * (w // self.patch)
        check(tokens >= 2, f"{where}.patch {self.patch} leaves a single token: nothing to condition on; use a smaller patch")

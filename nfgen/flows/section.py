"""What an architecture's config section (``model.<arch>``) promises, and the parts several share:
the coupling options (one spec, one validation) and a multi-scale body's levels.

Torch-free: sections are parsed and listed (``nfgen config --keys``) without torch; the checks
that build a transform or conditioner import it when they run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from nfgen.config.keys import opt
from nfgen.config.parse import ConfigError

if TYPE_CHECKING:  # torch-free at run time
    from nfgen.flows.nets import NetFactory
    from nfgen.flows.transforms import ElementwiseTransform


def check(cond: bool, message: str) -> None:
    """A ``ConfigError`` with ``message`` (one line naming the key) unless ``cond``."""
    if not cond:
        raise ConfigError(message)


class ArchSection:
    """The contract of every architecture's section: ``validate`` its options against the image
    (a ``ConfigError`` naming the key), and say what H and W must be multiples of
    (``image_multiple``). Nothing more: a one-scale body has no levels to fake."""

    def image_multiple(self) -> int:
        """H and W must be multiples of this (1: any size)."""
        return 1

    def divisibility(self, where: str, h: int, w: int, k: int) -> str:
        """The message when the image is not a multiple of ``k``: what to change."""
        return f"model.image_shape {h}x{w} is not divisible by {k}; change the image size or {where}"

    def validate(self, where: str, image_shape: tuple[int, int, int], memory_saving: bool) -> None:
        h, w = image_shape[1:]
        k = self.image_multiple()
        check(h % k == 0 and w % k == 0, self.divisibility(where, h, w, k))


@dataclass(frozen=True)
class MultiScaleSection(ArchSection):
    """A multi-scale body: ``levels`` of flows with 2x2 squeezes between them (``squeezes`` from
    the image to the top), and, if the section has them, ``steps`` per level."""

    levels: int = opt(2, "scales; H and W must be divisible by 2**levels")

    @property
    def squeezes(self) -> int:
        """2x2 squeezes from the image to the top: H and W must be divisible by 2**squeezes."""
        return self.levels

    def image_multiple(self) -> int:
        return 2**self.squeezes

    def divisibility(self, where: str, h: int, w: int, k: int) -> str:
        return (f"model.image_shape {h}x{w} is not divisible by 2**{self.squeezes} = {k} ({self.levels} levels); "
                f"change the image size or {where}.levels")

    def check(self, where: str, image_shape: tuple[int, int, int]) -> None:
        """Checks of the architecture's own options, after the shared ones."""

    def validate(self, where: str, image_shape: tuple[int, int, int], memory_saving: bool) -> None:
        check(1 <= self.levels <= 16, f"{where}.levels must be in 1..16, got {self.levels}")
        steps = getattr(self, "steps", 1)
        check(1 <= steps <= 4096, f"{where}.steps must be in 1..4096, got {steps}")
        super().validate(where, image_shape, memory_saving)
        self.check(where, image_shape)


def tiny_multiscale(shape: tuple[int, int, int], depth: int, width: int) -> dict[str, Any]:
    """A tiny multi-scale body of couplings for the tests: two levels where the image allows,
    else one; ``depth`` steps, nets ``width`` wide."""
    levels = 2 if shape[1] % 4 == 0 and shape[2] % 4 == 0 else 1
    return {"levels": levels, "steps": depth, "hidden": width}


# Channel mixing before a coupling: Glow's invertible 1x1 conv (LU-factored or not), or fixed.
Permutation = Literal["conv1x1_lu", "conv1x1", "reverse", "shuffle"]
TRANSFORMS_HELP = "affine | additive | spline | logistic_mixture (nfgen.flows.transforms.TRANSFORMS)"
CONDITIONERS_HELP = "glow | resnet | attention (nfgen.flows.nets.CONDITIONERS)"


def coupling_field(name: str, default: Any, note: str = "") -> Any:
    """A section's own default for one of ``CouplingSpec``'s options, with the spec's help (and
    ``note``, e.g. what the paper used): the option is described once."""
    return opt(default, COUPLING_HELP[name] + (f"; {note}" if note else ""))


COUPLING_HELP = {"hidden": "conditioner width", "blocks": "conditioner depth (glow: hidden 1x1 layers; resnet and "
                 "attention: blocks)", "conditioner": CONDITIONERS_HELP, "coupling": TRANSFORMS_HELP}


@dataclass(frozen=True)
class CouplingSpec:
    """The coupling options several sections share, each described and validated once: the
    elementwise transform of every coupling (``coupling``, ``coupling_options``: a registered
    transform and its options) and its conditioner net (``conditioner`` of width ``hidden`` and
    depth ``blocks``, with ``conditioner_options``). A section mixes it into its dataclass
    (``@dataclass(frozen=True) class GlowConfig(CouplingSpec, MultiScaleSection)``) and
    overrides a default with ``coupling_field``."""

    hidden: int = opt(64, COUPLING_HELP["hidden"])
    blocks: int = opt(1, COUPLING_HELP["blocks"])
    conditioner: str = opt("glow", CONDITIONERS_HELP)
    conditioner_options: dict[str, Any] = opt(help="options of the conditioner, e.g. {heads: 4} for attention",
                                              factory=dict)
    coupling: str = opt("affine", TRANSFORMS_HELP)
    coupling_options: dict[str, Any] = opt(help="options of the coupling transform, e.g. {bins: 8, bound: 3.0} for "
                                                "spline", factory=dict)

    def validate(self, where: str, image_shape: tuple[int, int, int], memory_saving: bool) -> None:
        check_couplings(where, self, memory_saving)
        super().validate(where, image_shape, memory_saving)  # type: ignore[misc]

    def net(self) -> NetFactory:
        """The conditioner factory ``(c_in, c_out) -> nn.Module`` these options name."""
        from nfgen.flows.nets import make_conditioner

        return make_conditioner(self.conditioner, self.hidden, self.blocks, **self.conditioner_options)

    def transform(self) -> ElementwiseTransform:
        """A fresh elementwise transform of the kind these options name."""
        from nfgen.flows.transforms import make_transform

        return make_transform(self.coupling, **self.coupling_options)


def _check_choice(path: str, name: str, options: dict[str, Any], registry: str, **given: Any) -> None:
    """A registered transform or conditioner name and its options, checked by building one."""
    import torch

    from nfgen.flows import nets, transforms  # the registries; imported late: they import torch

    try:
        if registry == "transform":
            transforms.make_transform(name, **options)
        else:
            # On the meta device: no memory, however wide; forked RNG: no shift of the seeds' draws.
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                nets.make_conditioner(name, **given, **options)(2, 2)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path}: {str(e).splitlines()[0]}") from None


def check_couplings(where: str, a: Any, memory_saving: bool) -> None:
    """Coupling options (``coupling``, ``conditioner``, ``hidden``, ``blocks`` and their options)
    of any section that has them: an architecture's, or the variational dequantizer's."""
    check(1 <= a.hidden <= 65536, f"{where}.hidden must be in 1..65536, got {a.hidden}")
    check(0 <= a.blocks <= 1024, f"{where}.blocks must be in 0..1024, got {a.blocks}")
    _check_choice(f"{where}.coupling", a.coupling, a.coupling_options, "transform")
    _check_choice(f"{where}.conditioner", a.conditioner, a.conditioner_options, "conditioner",
                  hidden=a.hidden, blocks=a.blocks)
    # Memory saving recomputes each conditioner in backward: dropout would draw another mask there.
    check(not (memory_saving and a.conditioner_options.get("dropout", 0)),
          f"{where}.conditioner_options.dropout needs train.memory_saving: false (backward would redraw it)")

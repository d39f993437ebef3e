"""The multi-scale body: levels of flows, each but the last factoring half its channels out
(RealNVP, section 3.6; Glow, figure 2)."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from nfgen.flows.base import Flow, Sequential, cascade

Shape = tuple[int, int, int]


class Level(nn.Module):
    """One scale: a flow that maps ``in_shape`` to ``out_shape``, then optionally a split that
    factors the second half of the channels out as a latent."""

    def __init__(self, flow: Flow, in_shape: Shape, out_shape: Shape, split: bool) -> None:
        super().__init__()
        if split and out_shape[0] % 2:
            raise ValueError(f"cannot split {out_shape[0]} channels in half (shape {out_shape})")
        self.flow, self.in_shape, self.out_shape, self.split = flow, in_shape, out_shape, split

    @property
    def kept_shape(self) -> Shape:
        c, h, w = self.out_shape
        return (c // 2, h, w) if self.split else self.out_shape

    def forward(self, x: Tensor, context: Tensor | None, factored: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The level's flow, then the split: the factored-out half is appended to ``factored``."""
        x, logdet = self.flow(x, context)
        if self.split:
            x, z = x.chunk(2, dim=1)
            factored.append(z)
        return x, logdet

    def inverse(self, x: Tensor, context: Tensor | None, factored: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Undo the split with the last latent left in ``factored`` (popped), then the flow."""
        if self.split:
            x = torch.cat([x, factored.pop()], dim=1)
        return self.flow.inverse(x, context)


class MultiScaleFlow(nn.Module):
    """Maps ``[B, C, H, W]`` to ``(zs, logdet)``: one latent per factored-out half plus the
    final one, whose sizes add up to ``C * H * W``. Latent shapes are fixed at build time.

    Learned priors are bijections inside the levels (see ``nfgen.flows.priors``), so every latent is
    standard normal under the model and sampling at temperature T draws ``T * N(0, I)``.
    """

    def __init__(self, levels: list[Level]) -> None:
        super().__init__()
        for prev, nxt in zip(levels, levels[1:]):
            if prev.kept_shape != nxt.in_shape:
                raise ValueError(f"level shapes do not chain: {prev.kept_shape} -> {nxt.in_shape}")
        if levels[-1].split:
            raise ValueError("the last level must not split")
        self.levels = nn.ModuleList(levels)
        self.input_shape: Shape = levels[0].in_shape
        # One latent per level that factors half out (a level may also hand all it has on), and
        # the last level's output.
        self.latent_shapes: list[Shape] = [
            (lv.out_shape[0] - lv.kept_shape[0], *lv.out_shape[1:]) for lv in levels if lv.split
        ] + [levels[-1].out_shape]
        assert sum(math.prod(s) for s in self.latent_shapes) == math.prod(self.input_shape)

    def block_names(self) -> list[list[str]]:
        """Each level's blocks' names, data side first (``level0.actnorm0``, ``level0.coupling1``,
        ...): a block's ``stem``, numbered within its level where it says so. The one naming of a
        body's blocks, for every tool that lists them (the doctor's report rows)."""
        names = []
        for i, level in enumerate(self.levels):
            counts: dict[str, int] = {}
            names.append([])
            for block in level.flow.flows:
                stem = block.stem or type(block).__name__.lower()
                k = counts[stem] = counts.get(stem, -1) + 1
                names[-1].append(f"level{i}.{stem}{k if block.numbered else ''}")
        return names

    def _check(self, name: str, expected: Shape, actual: tuple[int, ...]) -> None:
        if tuple(actual[1:]) != tuple(expected):
            raise ValueError(f"{name}: expected shape [B, {', '.join(map(str, expected))}], "
                             f"got {list(actual)}")

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        self._check("input", self.input_shape, x.shape)
        zs: list[Tensor] = []
        x, logdet = cascade(x, [partial(level, factored=zs) for level in self.levels], context)
        return [*zs, x], logdet

    def inverse(self, zs: list[Tensor], context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if len(zs) != len(self.latent_shapes):
            raise ValueError(f"expected {len(self.latent_shapes)} latents, got {len(zs)}")
        for i, (z, shape) in enumerate(zip(zs, self.latent_shapes)):
            self._check(f"latent {i}", shape, z.shape)
        factored = list(zs[:-1])
        return cascade(zs[-1], [partial(level.inverse, factored=factored) for level in reversed(self.levels)], context)


def squeezed(shape: Shape) -> Shape:
    """The shape after a 2x2 squeeze: four times the channels, half the height and width."""
    c, h, w = shape
    return (4 * c, h // 2, w // 2)


# A level's flows and its output shape, from its index, input shape and whether it is the last.
LevelFlows = Callable[[int, Shape, bool], tuple[list[Flow], Shape]]


def stack_levels(shape: Shape, levels: int, level: LevelFlows, split: bool = True) -> MultiScaleFlow:
    """``levels`` levels from an image of ``shape``: ``level(i, in_shape, last)`` gives level
    ``i``'s flows and output shape; with ``split``, each level but the last factors half its
    channels out, and the next level starts from the half it keeps. The loop every multi-scale
    builder (Glow, RealNVP, Flow++) shares."""
    built = []
    for i in range(levels):
        last = i == levels - 1
        flows, out_shape = level(i, shape, last)
        built.append(Level(Sequential(*flows), shape, out_shape, split=split and not last))
        shape = built[-1].kept_shape
    return MultiScaleFlow(built)

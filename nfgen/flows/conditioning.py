"""Class conditioning: one class embedding, the class-conditional prior on every latent, and
classifier-free guidance (Ho & Salimans, 2022) as a context that conditional flows understand.

The model embeds a label once (``ClassEmbedding``) and hands the vector ``[B, dim]`` to its body
as the flows' ``context``; each conditional flow maps it to what it needs (a coupling's net sees
it as extra constant channels, a TarFlow block adds a projection of it to its tokens, a
``ClassPrior`` turns it into a mean and log-scale). Row ``num_classes`` of the table is the null
class: training swaps labels for it at the label-dropout rate, so the same model also learns the
unconditional density, which guidance contrasts with the conditional one.

Guidance is a context too (``Guided``): a conditional flow computes its parameters for the
class and for the null class and combines them, ``(1 + w) f(x, y) - w f(x, null)`` (the TarFlow
paper's convention, on the shift and log-scale), so weight 0 is the plain conditional model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import is_fake

from nfgen.flows.base import Flow

T = TypeVar("T", Tensor, tuple[Tensor, ...])


NULL_CLASSES = ("learned", "mean")


class ClassEmbedding(nn.Module):
    """Labels ``0..num_classes-1`` (and ``num_classes``, the null class) to vectors ``[B, dim]``.

    The null class's vector is its own learned row (``null="learned"``), or the mean of the
    class rows (``"mean"``: apple/ml-tarflow's choice, so the unconditional model is the average
    class, and its training moves every class row). Every layer maps the embedding linearly,
    and a linear map of the mean is the mean of the maps: the mean here is the reference's mean
    of its per-block class embeddings. The table keeps its ``num_classes + 1`` rows either way
    (under ``"mean"`` the last is unused), so both kinds of checkpoint have one shape."""

    def __init__(self, num_classes: int, dim: int, null: str = "learned") -> None:
        super().__init__()
        if num_classes < 1 or dim < 1:
            raise ValueError(f"a class embedding needs num_classes >= 1 and dim >= 1, got {num_classes}, {dim}")
        if null not in NULL_CLASSES:
            raise ValueError(f"null must be one of {', '.join(NULL_CLASSES)}, got {null!r}")
        self.num_classes, self.null_kind = num_classes, null
        self.table = nn.Embedding(num_classes + 1, dim)

    @property
    def null(self) -> int:
        return self.num_classes

    def forward(self, labels: Tensor) -> Tensor:
        if labels.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"labels must be integers, got {labels.dtype}")
        # Fake tensors (nfgen.core.costs sizing a model before it is built) have no values to check.
        if labels.numel() and not is_fake(labels) and (labels.min() < 0 or labels.max() > self.num_classes):
            raise ValueError(f"labels must be in 0..{self.num_classes - 1} (or {self.num_classes}, the null "
                             f"class), got {labels.min().item()}..{labels.max().item()}")
        labels = labels.to(self.table.weight.device)
        if self.null_kind == "learned":
            return self.table(labels)
        is_null = (labels == self.num_classes)[:, None]
        mean = self.table.weight[: self.num_classes].mean(0)
        return torch.where(is_null, mean, self.table(labels.clamp(max=self.num_classes - 1)))


@dataclass(frozen=True)
class Guided:
    """The context of classifier-free guidance: the class's and the null class's embeddings and
    the weight ``w``. ``annealed``: the weight grows over an autoregressive flow's tokens,
    ``w (i + 1) / (N - 1)`` at token ``i + 1`` of ``N`` (the TarFlow paper's annealing); other
    flows use ``w``."""

    cond: Tensor
    null: Tensor
    weight: float
    annealed: bool = False

    def __getitem__(self, rows: slice) -> Guided:
        """The guidance of a slice of the batch."""
        return Guided(self.cond[rows], self.null[rows], self.weight, self.annealed)

    def weight_at(self, token: int | None = None, tokens: int | None = None) -> float:
        if not self.annealed or token is None or tokens is None or tokens < 2:
            return self.weight
        return self.weight * (token + 1) / (tokens - 1)

    def mix(self, cond: T, null: T, weight: float | Tensor | None = None) -> T:
        """``(1 + w) cond - w null``, elementwise (over tuples too; ``weight`` may be a tensor that
        broadcasts, one weight per token)."""
        w = self.weight if weight is None else weight
        if isinstance(cond, Tensor):
            return cond + w * (cond - null)
        return tuple(c + w * (c - u) for c, u in zip(cond, null))  # type: ignore[return-value]


def conditioned(fn: Callable[[Tensor | None], T], context: Tensor | Guided | None) -> T:
    """``fn(context)``, or under guidance the two contexts' results mixed: the one rule every
    conditional flow's parameters follow."""
    if isinstance(context, Guided):
        return context.mix(fn(context.cond), fn(context.null))
    return fn(context)


class ClassPrior(Flow):
    """A class-conditional Gaussian prior on one latent ``[B, C, H, W]``, written as the
    standardising bijection ``z = (x - mean_y) exp(-log_std_y)`` with a per-channel mean and
    log-std from a zero-initialised linear map of the class embedding (openai/glow's ``ycond``,
    which conditions the top prior this way); it starts as the identity. The model puts one on
    every latent, so a split prior's factored-out half is class-conditional too."""

    stem = "class_prior"
    any_size = True

    def __init__(self, channels: int, dim: int) -> None:
        super().__init__()
        self.channels = channels
        self.linear = nn.Linear(dim, 2 * channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def _params(self, context: Tensor | Guided | None) -> tuple[Tensor, Tensor]:
        if context is None:
            raise ValueError("a class prior needs the class embedding as its context")

        def params(c: Tensor | None) -> tuple[Tensor, Tensor]:
            mean, log_std = self.linear(c)[:, :, None, None].chunk(2, dim=1)
            return mean, log_std

        return conditioned(params, context)

    def forward(self, x: Tensor, context: Tensor | Guided | None = None) -> tuple[Tensor, Tensor]:
        mean, log_std = self._params(context)
        mean, log_std = mean.to(x.dtype), log_std.to(x.dtype)
        return (x - mean) * torch.exp(-log_std), -log_std.flatten(1).sum(1) * x.shape[2] * x.shape[3]

    def inverse(self, z: Tensor, context: Tensor | Guided | None = None) -> tuple[Tensor, Tensor]:
        mean, log_std = self._params(context)
        mean, log_std = mean.to(z.dtype), log_std.to(z.dtype)
        return z * torch.exp(log_std) + mean, log_std.flatten(1).sum(1) * z.shape[2] * z.shape[3]

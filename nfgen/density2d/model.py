"""A 2-D flow model: a body (the flow contract, data -> latent) over a standard normal base.

Planar layers have an explicit map one way and a numerical inverse the other, so each objective
puts the explicit direction where training needs it: reverse KL samples (latent -> data), so
its body is the inverse of the stack of layers, whose ``forward`` then draws the samples as in
Rezende & Mohamed (2015); maximum likelihood evaluates data (data -> latent), so its body is the
stack itself. Couplings and radial layers are exact both ways.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from nfgen.density2d.config import FlowConfig
from nfgen.flows.base import Flow, Inverse, Sequential
from nfgen.flows.glow import glow_step
from nfgen.flows.nets import make_conditioner
from nfgen.flows.vector import OnVectors, Planar, Radial

DIM = 2


def build_stack(f: FlowConfig) -> Flow:
    """``f.layers`` planar or radial layers, or coupling steps (actnorm, permutation or 2x2 LU
    mixing, affine/spline/... coupling with an MLP conditioner) run on the points as 2-channel
    1x1 images."""
    if f.kind == "planar":
        return Sequential(*[Planar(DIM) for _ in range(f.layers)])
    if f.kind == "radial":
        return Sequential(*[Radial(DIM) for _ in range(f.layers)])
    net = make_conditioner("mlp", f.hidden, f.blocks)
    return OnVectors(Sequential(*[glow_step(DIM, net, f.coupling, f.permutation, f.coupling_options)
                                  for _ in range(f.layers)]))


class Density2D(nn.Module):
    """``log q(x) = log N(z; 0, I) + log|det dz/dx|`` with ``z = body(x)``; ``sample`` draws
    ``x = body^-1(z)`` with its ``log q(x)``."""

    def __init__(self, body: Flow) -> None:
        super().__init__()
        self.body = body

    @staticmethod
    def base_log_prob(z: Tensor) -> Tensor:
        return -0.5 * (z**2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)

    def log_prob(self, x: Tensor) -> Tensor:
        z, logdet = self.body(x)
        return self.base_log_prob(z) + logdet

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        p = next(self.parameters())
        z = torch.randn(n, DIM, generator=generator, dtype=p.dtype).to(p.device)
        x, logdet = self.body.inverse(z)  # logdet = log|det dx/dz|
        return x, self.base_log_prob(z) - logdet


def build_density2d(f: FlowConfig, objective: str) -> Density2D:
    stack = build_stack(f)
    return Density2D(Inverse(stack) if objective == "energy" else stack)

"""Channel mixing: Glow's invertible 1x1 convolution and fixed permutations."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfgen.flows.base import Flow


def _random_rotation(channels: int, generator: torch.Generator | None = None) -> Tensor:
    w = torch.randn(channels, channels, generator=generator)
    q, _ = torch.linalg.qr(w)
    return q


class InvConv1x1(Flow):
    """Invertible 1x1 convolution (Glow, section 3.2), log-det by ``slogdet`` of the weight."""

    any_size = True

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(_random_rotation(channels))

    def matrix(self) -> Tensor:
        return self.weight

    def log_abs_det(self) -> Tensor:
        return torch.linalg.slogdet(self.weight)[1]

    def diagnostics(self, x: Tensor, context: Tensor | None = None) -> dict[str, float]:
        """``cond``: the weight's condition number; inverting it loses ``log10(cond)`` digits
        (Glow's "not invertible" is this matrix drifting to singular). NaN if it holds a NaN."""
        w = self.matrix()
        return {"cond": torch.linalg.cond(w).item() if torch.isfinite(w).all() else float("nan")}

    def _conv(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        # Always in the parameters' precision, also under autocast: a bf16 weight or channel mix
        # would make the flow only approximately invertible.
        with torch.autocast(device_type=x.device.type, enabled=False):
            w = self.matrix()  # computed once per pass (the LU product is not free)
            if inverse:
                w = torch.linalg.inv(w)
            logdet = (self.log_abs_det() * x.shape[2] * x.shape[3]).expand(x.shape[0])
            return F.conv2d(x.to(w.dtype), w[:, :, None, None]), -logdet if inverse else logdet

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._conv(x, inverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._conv(z, inverse=True)


class InvConv1x1LU(InvConv1x1):
    """LU-parametrised 1x1 convolution, ``W = P L (U + diag(sign * exp(log_s)))``.

    Glow's fast variant: the log-det is ``sum(log_s)``, O(C) instead of O(C^3).
    """

    def __init__(self, channels: int) -> None:
        nn.Module.__init__(self)
        p, lower, upper = torch.linalg.lu(_random_rotation(channels))
        diag = torch.diagonal(upper)
        self.register_buffer("perm", torch.argmax(p, dim=1))  # P @ M == M[perm]: a gather, not a matmul
        self.register_buffer("sign_s", torch.sign(diag))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(diag.abs()))

    def matrix(self) -> Tensor:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return (lower @ upper)[self.perm]

    def log_abs_det(self) -> Tensor:
        return self.log_s.sum()


class Permute(Flow):
    """A fixed channel permutation (RealNVP's reverse, or a random shuffle); log-det zero."""

    any_size = True

    def __init__(self, channels: int, kind: str = "reverse") -> None:
        super().__init__()
        if kind == "reverse":
            perm = torch.arange(channels - 1, -1, -1)
        elif kind == "shuffle":
            perm = torch.randperm(channels)
        else:
            raise ValueError(f"unknown permutation {kind!r}; expected 'reverse' or 'shuffle'")
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z[:, self.inv_perm], z.new_zeros(z.shape[0])

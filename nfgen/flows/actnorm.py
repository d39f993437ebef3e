"""Activation normalisation (Kingma & Dhariwal, 2018, "Glow", section 3.1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nfgen.flows.base import Flow


class ActNorm(Flow):
    """Per-channel affine ``z = (x + loc) * exp(log_scale)`` (Glow).

    Data-dependent initialisation: the first forward pass in training mode sets ``loc`` and
    ``log_scale`` so that the batch has zero mean and unit variance per channel. The
    ``initialized`` flag is a buffer, so it is saved in the state dict and a loaded model is
    never re-initialised.
    """

    any_size = True

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))
        self.eps = eps
        # Reading the buffer every training forward would sync a GPU (and break torch.compile
        # graphs); once it has been seen True, this Python flag answers instead.
        self._seen_initialized = False

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        self.loc.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)
        self._seen_initialized = True

    def initialize_once(self, x: Tensor) -> None:
        """Data-dependent init on the first training batch; a loaded model is never re-initialised."""
        if self.training and not self._seen_initialized:
            if not bool(self.initialized):
                self.initialize(x)
            self._seen_initialized = True

    def _logdet(self, x: Tensor) -> Tensor:
        return (self.log_scale.sum() * x.shape[2] * x.shape[3]).expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.initialize_once(x)
        return (x + self.loc) * torch.exp(self.log_scale), self._logdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z * torch.exp(-self.log_scale) - self.loc, -self._logdet(z)

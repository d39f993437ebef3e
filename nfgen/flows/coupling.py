"""Affine and additive coupling layers (Dinh et al., 2017, "RealNVP"; Glow, section 3.3)."""

from __future__ import annotations

import torch
from torch import Tensor

from nfgen.flows.base import Flow, Rebuilt
from nfgen.flows.nets import NetFactory

MASKS = ("channel", "checkerboard")
TRANSFORMS = ("affine", "additive")


def checkerboard(height: int, width: int, parity: int) -> Tensor:
    """``[1, 1, H, W]`` mask, 1 where ``(i + j) % 2 == parity`` (the conditioning pixels)."""
    i = torch.arange(height)[:, None]
    j = torch.arange(width)[None, :]
    return ((i + j) % 2 == parity).float()[None, None]


class Coupling(Flow):
    """``z = x_b * exp(s(x_a)) + t(x_a)`` on one part of the input, identity on the other.

    ``mask="channel"`` splits the channels in half (Glow, and RealNVP's channel-wise mask);
    ``mask="checkerboard"`` keeps the pixels of one checkerboard parity (RealNVP), and the net
    sees the masked input plus the mask itself. ``context_channels`` lets a conditional flow
    (variational dequantization) feed extra features to the net.

    The log-scale is soft-clamped, ``s = clamp * tanh(raw / clamp)``: it is the identity near
    zero (so a zero-initialised net gives an identity coupling, unlike Glow's
    ``sigmoid(raw + 2)``) yet bounds every scale to ``[e^-clamp, e^clamp]``, so one bad step
    cannot blow activations up through many stacked layers.
    """

    def __init__(
        self,
        channels: int,
        net_factory: NetFactory,
        mask: str = "channel",
        parity: int = 0,
        transform: str = "affine",
        context_channels: int = 0,
        clamp: float = 2.0,
        size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if mask not in MASKS:
            raise ValueError(f"unknown coupling mask {mask!r}; expected one of {MASKS}")
        if transform not in TRANSFORMS:
            raise ValueError(f"unknown coupling {transform!r}; expected one of {TRANSFORMS}")
        self.mask_kind, self.parity, self.affine, self.clamp = mask, parity, transform == "affine", clamp
        per_param = 2 if self.affine else 1
        if mask == "channel":
            if channels < 2:
                raise ValueError(f"a channel coupling needs at least 2 channels, got {channels}")
            half = channels // 2
            self.c_cond, self.c_trans = (half, channels - half) if parity == 0 else (channels - half, half)
            self.net = net_factory(self.c_cond + context_channels, per_param * self.c_trans)
        else:
            if size is None:
                raise ValueError("a checkerboard coupling needs the image size")
            self.register_buffer("mask", checkerboard(*size, parity))
            self.net = net_factory(channels + 1 + context_channels, per_param * channels)

    def _params(self, x_cond: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        h = x_cond if context is None else torch.cat([x_cond, context], dim=1)
        h = self.net(h).to(x_cond.dtype)  # nets may run in bf16 (amp); the flow's maths does not
        if not self.affine:
            return h, torch.zeros_like(h)
        shift, raw = h.chunk(2, dim=1)
        return shift, self.clamp * torch.tanh(raw / self.clamp)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a, b = x.split([self.c_cond, self.c_trans] if self.parity == 0 else [self.c_trans, self.c_cond], 1)
        return (a, b) if self.parity == 0 else (b, a)

    def _join(self, cond: Tensor, trans: Tensor) -> Tensor:
        return torch.cat([cond, trans] if self.parity == 0 else [trans, cond], dim=1)

    def _checker_params(self, x_masked: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """Checkerboard: the net sees the conditioning pixels ``x * m`` and the mask; the shift
        and log-scale are zero on those pixels, which stay as they are."""
        m = self.mask
        shift, log_s = self._params(torch.cat([x_masked, m.expand(x_masked.shape[0], 1, -1, -1)], dim=1),
                                    context)
        return shift * (1 - m), log_s * (1 - m)

    def _conditioned(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x_cond, x_trans, shift, log_s)``: the part that stays, the part that is transformed,
        and its shift and log-scale (zero on a checkerboard's conditioning pixels)."""
        if self.mask_kind == "channel":
            x_cond, x_trans = self._split(x)
            return (x_cond, x_trans, *self._params(x_cond, context))
        x_cond = x * self.mask
        return (x_cond, x, *self._checker_params(x_cond, context))

    def _transform(self, x: Tensor, context: Tensor | None, sign: int) -> tuple[Tensor, Tensor]:
        x_cond, x_trans, shift, log_s = self._conditioned(x, context)
        if sign > 0:
            y = x_trans * torch.exp(log_s) + shift
        else:
            y = (x_trans - shift) * torch.exp(-log_s)
        logdet = sign * log_s.flatten(1).sum(1)
        return (self._join(x_cond, y) if self.mask_kind == "channel" else y), logdet

    def log_scale(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The (soft-clamped) log-scale ``s`` that ``forward(x)`` applies, for diagnostics.

        Channel mask: shape of the transformed half. Checkerboard: shape of ``x``, zero on the
        conditioning pixels (they are not scaled). Additive couplings: all zeros.
        """
        return self._conditioned(x, context)[3]

    def rebuild(self, z: Tensor) -> Rebuilt:
        """The conditioning part passes through unchanged, so the net runs once, on a leaf holding
        it, and serves both the reconstruction of the transformed part and its recomputation."""
        if self.mask_kind == "channel":
            z_cond, z_trans = self._split(z)
            cond = z_cond.detach().requires_grad_()
            shift, log_s = self._params(cond, None)
        else:
            cond = (z * self.mask).detach().requires_grad_()
            shift, log_s = self._checker_params(cond, None)
            z_trans = z
        with torch.no_grad():
            x_trans = (z_trans - shift) * torch.exp(-log_s)
        trans = x_trans.detach().requires_grad_()
        y = trans * torch.exp(log_s) + shift
        logdet = log_s.flatten(1).sum(1)
        if self.mask_kind == "channel":
            return Rebuilt(self._join(z_cond, x_trans), [cond, trans], self._join(cond, y), logdet,
                           lambda g: self._join(*g))
        # checkerboard: the net saw x * m, so the input's gradient is the direct one plus m * that
        return Rebuilt(x_trans, [cond, trans], y, logdet, lambda g: g[1] + g[0] * self.mask)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._transform(x, context, +1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._transform(z, context, -1)

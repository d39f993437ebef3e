"""Coupling layers: a mask, a conditioner and an elementwise transform (Dinh et al., 2017,
"RealNVP"; Glow, section 3.3; nflows' ``CouplingTransform``).

The mask splits the input into a conditioning part, which passes unchanged, and a part to
transform; the conditioner net maps the conditioning part (and an optional context) to the
transform's raw parameters; the elementwise transform (``nfgen.flows.transforms``) maps each
transformed value with its own parameters. A new mask is a ``Mask`` subclass, a new transform
one registered ``ElementwiseTransform`` class; the coupling itself does not change.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from nfgen.flows.base import Flow, Rebuilt
from nfgen.flows.conditioning import Guided, conditioned
from nfgen.flows.nets import NetFactory
from nfgen.flows.transforms import ElementwiseTransform, make_transform


class Mask(nn.Module):
    """Which values a coupling conditions on and which it transforms.

    ``split(x) -> (cond, x_t)``: the conditioning part and the values the transform maps;
    ``join(cond, y_t)`` puts an output together (``join(*split(x)) == x``);
    ``split_grad(g_cond, g_t)`` is the input gradient from those two parts' gradients (the
    adjoint of ``split``); ``net_input(cond)`` is what the conditioner sees; and
    ``transformed_only(t, fill)`` sets the conditioning positions of an elementwise tensor
    shaped like ``x_t`` to ``fill`` (to sum a log-det or take a minimum over what is transformed).
    ``net_channels`` and ``transformed_channels`` are the conditioner's input channels and
    ``x_t``'s channels.
    """

    kind = "?"
    any_size = True
    net_channels: int
    transformed_channels: int

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def join(self, cond: Tensor, y_t: Tensor) -> Tensor:
        raise NotImplementedError

    def split_grad(self, g_cond: Tensor, g_t: Tensor) -> Tensor:
        raise NotImplementedError

    def net_input(self, cond: Tensor) -> Tensor:
        return cond

    def transformed_only(self, t: Tensor, fill: float) -> Tensor:
        return t


class ChannelMask(Mask):
    """Conditions on one half of the channels and transforms the other (Glow; RealNVP's
    channel-wise mask). ``parity=0`` conditions on the first ``channels // 2``, ``parity=1`` on
    the last ``channels // 2``, so alternating parities transform every channel."""

    kind = "channel"

    def __init__(self, channels: int, parity: int = 0) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a channel coupling needs at least 2 channels, got {channels}")
        half = channels // 2
        self.parity = parity
        self.net_channels, self.transformed_channels = (half, channels - half) if parity == 0 else (channels - half, half)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.parity == 0:
            cond, x_t = x.split([self.net_channels, self.transformed_channels], dim=1)
        else:
            x_t, cond = x.split([self.transformed_channels, self.net_channels], dim=1)
        return cond, x_t

    def join(self, cond: Tensor, y_t: Tensor) -> Tensor:
        return torch.cat([cond, y_t] if self.parity == 0 else [y_t, cond], dim=1)

    def split_grad(self, g_cond: Tensor, g_t: Tensor) -> Tensor:
        return self.join(g_cond, g_t)


def checkerboard(height: int, width: int, parity: int) -> Tensor:
    """``[1, 1, H, W]`` mask, 1 where ``(i + j) % 2 == parity`` (the conditioning pixels)."""
    i = torch.arange(height)[:, None]
    j = torch.arange(width)[None, :]
    return ((i + j) % 2 == parity).float()[None, None]


class CheckerboardMask(Mask):
    """Conditions on the pixels of one checkerboard parity, in every channel (RealNVP). The
    net sees ``x * m`` plus the mask itself. The transform runs on every pixel and the
    conditioning ones are restored, ``y = m x + (1 - m) f(x)``, with the log-det summed over
    ``1 - m``: so any transform works, not only those whose zero parameters are the identity.
    (The transform must stay finite on the conditioning pixels, whose result is discarded.)"""

    kind = "checkerboard"
    any_size = False  # the pattern is a buffer of the image's size

    def __init__(self, channels: int, size: tuple[int, int], parity: int = 0) -> None:
        super().__init__()
        # Not saved: it follows from size and parity (checkpoints before the mask objects held
        # it as the coupling's ``mask``; Coupling drops that key when loading them).
        self.register_buffer("pattern", checkerboard(*size, parity), persistent=False)
        self.parity = parity
        self.net_channels, self.transformed_channels = channels + 1, channels

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * self.pattern, x

    def join(self, cond: Tensor, y_t: Tensor) -> Tensor:
        # where, not m * cond + (1 - m) * y: a non-finite discarded value cannot leak in as 0 * inf
        return torch.where(self.pattern.bool(), cond, y_t)

    def split_grad(self, g_cond: Tensor, g_t: Tensor) -> Tensor:
        return g_t + g_cond * self.pattern

    def net_input(self, cond: Tensor) -> Tensor:
        return torch.cat([cond, self.pattern.to(cond.dtype).expand(cond.shape[0], 1, -1, -1)], dim=1)

    def transformed_only(self, t: Tensor, fill: float) -> Tensor:
        return torch.where(self.pattern.bool(), fill, t)


class Coupling(Flow):
    """``y_t = f(x_t; net(x_cond, context))`` on the part the mask transforms, identity on the
    rest, with ``f`` an elementwise transform (affine by default) and ``net`` a conditioner.

    The net's ``transformed_channels * P`` output channels (``P = transform.params_per_dim``)
    are grouped parameter-major: channel ``p * C_t + c`` is parameter ``p`` of transformed
    channel ``c`` (so an affine coupling's first ``C_t`` channels are its shifts, as before the
    transforms were split out). ``context_channels`` lets a conditional flow feed extra
    features to the net: the image's for variational dequantization, or a class embedding
    (broadcast over space) in a class-conditional body.
    """

    stem = "coupling"
    numbered = True

    def __init__(self, mask: Mask, net_factory: NetFactory, transform: ElementwiseTransform | str = "affine",
                 context_channels: int = 0, **transform_options: Any) -> None:
        super().__init__()
        self.mask = mask
        self.transform = make_transform(transform, **transform_options) if isinstance(transform, str) else transform
        self.any_size = mask.any_size
        self.net = net_factory(mask.net_channels + context_channels,
                               self.transform.params_per_dim * mask.transformed_channels)
        self._register_load_state_dict_pre_hook(self._drop_stored_mask)

    @staticmethod
    def _drop_stored_mask(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Checkpoints written before masks were objects hold the checkerboard as ``<prefix>mask``.
        state_dict.pop(prefix + "mask", None)

    def describe(self) -> str:
        return f"Coupling: {self.transform.name}, {self.mask.kind}"

    def _params(self, cond: Tensor, context: Tensor | Guided | None) -> Tensor:
        """The transform's parameters ``[B, C_t, H, W, P]`` from the conditioning part (and the
        context: features ``[B, C_c, H, W]``, or a vector ``[B, C_c]`` such as a class embedding,
        seen as constant channels; under guidance, the class's and the null class's mixed)."""
        return conditioned(lambda c: self._net_params(cond, c), context)

    def _net_params(self, cond: Tensor, context: Tensor | None) -> Tensor:
        h = self.mask.net_input(cond)
        if context is not None:
            if context.dim() == 2:
                context = context[:, :, None, None].expand(-1, -1, *h.shape[2:])
            h = torch.cat([h, context.to(h.dtype)], dim=1)
        h = self.net(h).to(cond.dtype)  # nets may run in bf16 (amp); the flow's maths does not
        return h.unflatten(1, (self.transform.params_per_dim, self.mask.transformed_channels)).movedim(1, -1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        cond, x_t = self.mask.split(x)
        y_t, ld = self.transform(x_t, self._params(cond, context))
        return self.mask.join(cond, y_t), self.mask.transformed_only(ld, 0.0).flatten(1).sum(1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        cond, z_t = self.mask.split(z)
        x_t, ld = self.transform.inverse(z_t, self._params(cond, context))
        return self.mask.join(cond, x_t), self.mask.transformed_only(ld, 0.0).flatten(1).sum(1)

    def diagnostics(self, x: Tensor, context: Tensor | None = None) -> dict[str, float]:
        """``min_scale``: the smallest ``|dy/dx|`` over the transformed values at ``x``."""
        cond, x_t = self.mask.split(x)
        scale = self.transform.scale(x_t, self._params(cond, context))
        return {"min_scale": self.mask.transformed_only(scale, float("inf")).min().item()}

    def rebuild(self, z: Tensor, context: Tensor | None = None) -> Rebuilt:
        """The conditioning part passes through unchanged, so the net runs once, on a leaf holding
        it, and serves both the reconstruction of the input and its recomputation."""
        cond_z, z_t = self.mask.split(z)
        cond = cond_z.detach().requires_grad_()
        params = self._params(cond, context)
        with torch.no_grad():
            x = self.mask.join(cond_z, self.transform.inverse(z_t, params)[0])
        trans = self.mask.split(x)[1].detach().requires_grad_()  # exactly the forward's x_t
        y_t, ld = self.transform(trans, params)
        logdet = self.mask.transformed_only(ld, 0.0).flatten(1).sum(1)
        return Rebuilt(x, [cond, trans], self.mask.join(cond, y_t), logdet, lambda g: self.mask.split_grad(*g))

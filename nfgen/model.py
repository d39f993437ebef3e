"""ImageFlow: dequantization, preprocessing, multi-scale body and prior, with one likelihood."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from nfgen.config import Config, config_from_dict
from nfgen.dequantize import UniformDequantizer, VariationalDequantizer
from nfgen.flows.base import Flow, set_memory_saving
from nfgen.flows.flowpp import build_flowpp
from nfgen.flows.glow import build_glow
from nfgen.flows.multiscale import MultiScaleFlow
from nfgen.flows.preprocess import Logit, Shift
from nfgen.flows.realnvp import build_realnvp
from nfgen.flows.reshape import set_channels_last, to_layout
from nfgen.flows.tarflow import build_tarflow
from nfgen.priors import sample_standard_normal, standard_normal_log_prob


class ImageFlow(nn.Module):
    """A normalizing flow over uint8 images ``[B, C, H, W]`` (pixel values 0..255).

    The model keeps the top ``n_bits`` bits of each pixel (Glow trains on 5-bit images), so the
    data has ``K = 2**n_bits`` levels per dimension and all likelihoods are those of the
    ``n_bits`` image.

    ``channels_last`` (set with the body's squeezes by ``set_channels_last``) hands the body its
    input and latents in channels-last memory order, which oneDNN and cuDNN convolutions run
    faster on; the numbers are the same.
    """

    def __init__(self, body: MultiScaleFlow, preprocess: Flow, dequantizer: nn.Module, n_bits: int = 8) -> None:
        super().__init__()
        if not 1 <= n_bits <= 8:
            raise ValueError(f"n_bits must be in 1..8, got {n_bits}")
        self.body, self.preprocess, self.dequantizer, self.n_bits = body, preprocess, dequantizer, n_bits
        self.channels_last = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.body.input_shape

    @property
    def levels(self) -> int:
        return 2**self.n_bits

    @property
    def dims(self) -> int:
        return math.prod(self.shape)

    def _ref(self) -> Tensor:
        return next(self.parameters())

    def _reduce(self, x: Tensor) -> Tensor:
        """uint8 0..255 -> integer levels 0..K-1 as floats of the model's dtype."""
        if x.dtype != torch.uint8:
            raise TypeError(f"images must be uint8 (0..255), got {x.dtype}")
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"expected images of shape [B, {', '.join(map(str, self.shape))}], "
                             f"got {list(x.shape)}")
        ref = self._ref()
        return torch.div(x.to(ref.device), 2 ** (8 - self.n_bits), rounding_mode="floor").to(ref.dtype)

    def _to_images(self, u: Tensor) -> Tensor:
        bad = (~torch.isfinite(u)).flatten(1).any(1)
        if bad.any():
            raise FloatingPointError(f"{int(bad.sum())} of {u.shape[0]} decoded images are not "
                                     "finite; the model is numerically broken at this input")
        q = torch.floor(u * self.levels).clamp(0, self.levels - 1)
        return (q * 2 ** (8 - self.n_bits)).to(torch.uint8)

    def _bound(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """One-draw lower bound on log P(x) in nats, per image (x: integer levels)."""
        u, log_q = self.dequantizer(x, self.levels, noise)
        y, logdet_pre = self.preprocess(u)
        zs, logdet_body = self.body(to_layout(y, self.channels_last))
        log_p_u = standard_normal_log_prob(zs) + logdet_pre + logdet_body
        return log_p_u - log_q - self.dims * math.log(self.levels)

    def log_prob(self, x: Tensor, n_samples: int = 1, max_batch: int = 4096,
                 noise: Tensor | None = None) -> Tensor:
        """Per-image log P(x) in nats of the discrete ``n_bits`` image.

        ``n_samples=1``: the dequantization lower bound with one noise draw. More: the
        importance-weighted estimate ``log mean_k exp(bound_k)`` over ``n_samples`` draws,
        evaluated ``max_batch`` rows at a time. ``noise`` fixes the dequantizer's base noise
        (one draw; see ``draw_noise``).
        """
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        x = self._reduce(x)
        if n_samples == 1:
            return self._bound(x, noise)
        if noise is not None:
            raise ValueError("noise can only be given for a single draw (n_samples=1)")
        per_chunk = max(1, max_batch // x.shape[0])
        bounds = []
        for start in range(0, n_samples, per_chunk):
            k = min(per_chunk, n_samples - start)
            bounds.append(self._bound(x.repeat(k, 1, 1, 1)).view(k, x.shape[0]))
        return torch.logsumexp(torch.cat(bounds), dim=0) - math.log(n_samples)

    def bits_per_dim(self, x: Tensor, n_samples: int = 1, noise: Tensor | None = None) -> Tensor:
        """Per-image bits per dimension, ``-log P(x) / (D ln 2)``."""
        return -self.log_prob(x, n_samples, noise=noise) / (self.dims * math.log(2))

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """Per-image training loss (bits/dim, one draw): what DDP and torch.compile wrap."""
        return self.bits_per_dim(x, noise=noise)

    def draw_noise(self, n: int) -> Tensor:
        """Base noise for ``n`` images, drawn as a single call of the model would draw it."""
        return self.dequantizer.draw_noise((n, *self.shape), self._ref())

    def encode(self, x: Tensor) -> list[Tensor]:
        """Latents of images, dequantised deterministically at the centre of each bin."""
        y, _ = self.preprocess((self._reduce(x) + 0.5) / self.levels)
        return self.body(to_layout(y, self.channels_last))[0]

    def _to_unit(self, zs: list[Tensor]) -> Tensor:
        """Latents -> ``u``-space (before quantisation)."""
        zs = [to_layout(z, self.channels_last) for z in zs]
        return self.preprocess.inverse(self.body.inverse(zs)[0])[0]

    def decode(self, zs: list[Tensor]) -> Tensor:
        """uint8 images from latents; ``decode(encode(x)) == x`` for n_bits images."""
        return self._to_images(self._to_unit(zs))

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> Tensor:
        """``n`` uint8 images, latents drawn from ``N(0, temperature^2 I)``."""
        return self._to_images(self.sample_continuous(n, temperature, generator))

    @torch.no_grad()
    def sample_continuous(self, n: int, temperature: float = 1.0,
                          generator: torch.Generator | None = None) -> Tensor:
        """Samples in ``u``-space (before quantisation), for checking probability mass."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        ref = self._ref()
        zs = sample_standard_normal(self.body.latent_shapes, n, temperature, ref.device,
                                    ref.dtype, generator)
        return self._to_unit(zs)


# Each architecture's builder takes the image shape and the keys of its config section
# (``model.glow``, ...) as keyword arguments.
ARCHITECTURES: dict[str, Callable[..., MultiScaleFlow]] = {
    "glow": build_glow,
    "realnvp": build_realnvp,
    "flowpp": build_flowpp,
    "tarflow": build_tarflow,
}


def build_model(config: Config | Mapping[str, Any]) -> ImageFlow:
    """Build an ImageFlow from a Config, or a dict with ``model`` / ``dequantization`` keys; the
    training options that change how it computes, not what (memory saving, channels-last), are
    applied to the built model."""
    if not isinstance(config, Config):
        config = config_from_dict(dict(config))
    m, dq, t = config.model, config.dequantization, config.train
    shape = tuple(m.image_shape)
    body: MultiScaleFlow = ARCHITECTURES[m.arch](shape, **dataclasses.asdict(m.options))
    preprocess = Shift() if m.preprocess == "shift" else Logit(m.logit_alpha)
    if dq.kind == "uniform":
        dequantizer: nn.Module = UniformDequantizer()
    else:
        options = dataclasses.asdict(dq)
        del options["kind"]  # which dequantizer; the rest configures the variational one
        dequantizer = VariationalDequantizer(shape, **options)
    model = ImageFlow(body, preprocess, dequantizer, m.n_bits)
    set_memory_saving(model, t.memory_saving)
    set_channels_last(model, t.channels_last)
    return model

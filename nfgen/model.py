"""ImageFlow: dequantization, preprocessing, multi-scale body and prior, with one likelihood."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from nfgen.config import Config, config_from_dict
from nfgen.dequantize import GaussianDequantizer, UniformDequantizer, VariationalDequantizer
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
    ``n_bits`` image (likelihood mode: uniform or variational dequantization). With Gaussian noise
    (generation mode, ``noise_sigma`` set) the model's density is that of the noisy continuous
    image instead, and samples are denoised by one Tweedie step (``denoise``).

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

    @property
    def noise_sigma(self) -> float | None:
        """The std of the Gaussian noise the model was trained on, in ``u``'s scale (generation
        mode), or None (likelihood mode); asked of the dequantizer."""
        return getattr(self.dequantizer, "sigma", None)

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

    def log_density(self, u: Tensor) -> Tensor:
        """The model's log-density of continuous images ``u`` (``u``-space, where the image spans
        [0, 1)), in nats per image: the prior plus every log-det (preprocessing and body)."""
        y, logdet_pre = self.preprocess(u)
        zs, logdet_body = self.body(to_layout(y, self.channels_last))
        return standard_normal_log_prob(zs) + logdet_pre + logdet_body

    def _bound(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """One-draw lower bound on log P(x) in nats, per image (x: integer levels); in generation
        mode the log-density of the noisy image in pixel-level units (``log q`` is zero)."""
        u, log_q = self.dequantizer(x, self.levels, noise)
        return self.log_density(u) - log_q - self.dims * math.log(self.levels)

    def log_prob(self, x: Tensor, n_samples: int = 1, max_batch: int = 4096,
                 noise: Tensor | None = None) -> Tensor:
        """Per-image log P(x) in nats of the discrete ``n_bits`` image.

        ``n_samples=1``: the dequantization lower bound with one noise draw. More: the
        importance-weighted estimate ``log mean_k exp(bound_k)`` over ``n_samples`` draws,
        evaluated ``max_batch`` rows at a time. ``noise`` fixes the dequantizer's base noise
        (one draw; see ``draw_noise``).

        Generation mode (Gaussian noise): the log-density of one noisy draw ``(x + 1/2 + K sigma n)``
        in pixel-level units, the training objective; not a likelihood of the discrete image (the
        noise leaves the pixel's bin), so there is no importance-weighted estimate of one.
        """
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        if n_samples > 1 and self.noise_sigma is not None:
            raise ValueError("n_samples > 1 estimates the likelihood of the discrete image, which a model "
                             "trained with Gaussian noise does not give; use n_samples=1")
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
        """Per-image bits per dimension, ``-log P(x) / (D ln 2)`` (generation mode: the noisy
        image's negative log-density in the same units; see ``log_prob``)."""
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

    def decode(self, zs: list[Tensor], denoise: bool = False) -> Tensor:
        """uint8 images from latents; ``decode(encode(x)) == x`` for n_bits images. ``denoise``
        applies the Tweedie step first (generation mode's samples and interpolations)."""
        u = self._to_unit(zs)
        return self._to_images(self.denoise(u) if denoise else u)

    def denoises(self, denoise: bool | None = None) -> bool:
        """Whether sampling denoises: ``denoise``, or by default in generation mode."""
        return self.noise_sigma is not None if denoise is None else denoise

    def score(self, u: Tensor, max_batch: int = 64) -> Tensor:
        """``grad_u log p(u)``, the model's score in ``u``-space, by autograd ``max_batch`` images
        at a time, in the model's own dtype (autocast off: a bf16 gradient would be too coarse
        for a step of size sigma^2). Works under ``no_grad`` and ``inference_mode``."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        grads = []
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(u.device.type, enabled=False):
            for chunk in u.split(max_batch):
                leaf = chunk.detach().clone().requires_grad_(True)  # a clone: u may be an inference tensor
                (grad,) = torch.autograd.grad(self.log_density(leaf).sum(), leaf)
                grads.append(grad)
        return torch.cat(grads)

    def denoise(self, u: Tensor, sigma: float | None = None, max_batch: int = 64) -> Tensor:
        """One Tweedie step, ``u + sigma^2 grad_u log p(u)``: for ``u = c + sigma n`` with
        ``n ~ N(0, I)``, the posterior mean ``E[c | u]`` under the density of the noisy images,
        which the model learned (Robbins, 1956; Efron, 2011; TarFlow's denoising, Zhai et al.,
        2025). ``sigma``: the model's own (``noise_sigma``) unless given."""
        sigma = self.noise_sigma if sigma is None else sigma
        if sigma is None:
            raise ValueError("this model was trained without Gaussian noise (likelihood mode): "
                             "there is no sigma to denoise with; give one")
        return (u + sigma**2 * self.score(u, max_batch)).detach()

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
               denoise: bool | None = None) -> Tensor:
        """``n`` uint8 images, latents drawn from ``N(0, temperature^2 I)``; denoised by one
        Tweedie step in generation mode (``denoise=False``: the raw samples)."""
        return self._to_images(self.sample_continuous(n, temperature, generator, denoise))

    @torch.no_grad()
    def sample_continuous(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
                          denoise: bool | None = None) -> Tensor:
        """Samples in ``u``-space (before quantisation), for checking probability mass; denoised
        as ``sample`` says."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        ref = self._ref()
        zs = sample_standard_normal(self.body.latent_shapes, n, temperature, ref.device,
                                    ref.dtype, generator)
        u = self._to_unit(zs)
        return self.denoise(u) if self.denoises(denoise) else u


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
    elif dq.kind == "gaussian":
        dequantizer = GaussianDequantizer(dq.sigma)
    else:
        options = dataclasses.asdict(dq)
        del options["kind"], options["sigma"]  # which dequantizer, gaussian's noise; the rest configures the variational one
        dequantizer = VariationalDequantizer(shape, **options)
    model = ImageFlow(body, preprocess, dequantizer, m.n_bits)
    set_memory_saving(model, t.memory_saving)
    set_channels_last(model, t.channels_last)
    return model

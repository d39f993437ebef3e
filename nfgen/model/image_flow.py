"""ImageFlow: dequantization, preprocessing, multi-scale body and prior, with one likelihood."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from nfgen.config.schema import Config, config_from_dict
from nfgen.core.costs import Memory, available_memory, check_memory, format_count, model_cost
from nfgen.errors import NumericalError
from nfgen.flows.architectures import Builders, architecture
from nfgen.flows.base import Flow, set_memory_saving
from nfgen.flows.conditioning import ClassEmbedding, ClassPrior, Guided
from nfgen.flows.multiscale import MultiScaleFlow
from nfgen.flows.preprocess import Logit, Shift
from nfgen.flows.priors import sample_standard_normal, standard_normal_log_prob
from nfgen.flows.reshape import set_channels_last, to_layout
from nfgen.model.dequantize import GaussianDequantizer, UniformDequantizer, VariationalDequantizer


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

    Class-conditional (``classes`` given): every call takes ``labels`` ``[B]``, embedded once; each
    latent has a class-conditional prior (``ClassPrior``), and a body built with the embedding's
    size as ``context_dim`` (``class_in_body``) gets the embedding as its context. Label
    ``num_classes`` is the null class, which training with ``label_dropout`` teaches the
    unconditional density (``drop_labels``), for classifier-free guidance at sampling.

    A model from ``nfgen.load`` carries the ``config`` it was built from and its ``class_names``
    (label ``k`` is ``class_names[k]``; ``None`` for an unconditional model).
    """

    config: Config | None = None
    class_names: list[str] | None = None

    def __init__(self, body: MultiScaleFlow, preprocess: Flow, dequantizer: nn.Module, n_bits: int = 8,
                 classes: ClassEmbedding | None = None, class_in_body: bool = False, label_dropout: float = 0.0) -> None:
        super().__init__()
        if not 1 <= n_bits <= 8:
            raise ValueError(f"n_bits must be in 1..8, got {n_bits}")
        self.body, self.preprocess, self.dequantizer, self.n_bits = body, preprocess, dequantizer, n_bits
        self.channels_last = False
        self.classes = classes
        self.class_priors = None if classes is None else nn.ModuleList(
            ClassPrior(s[0], classes.table.embedding_dim) for s in body.latent_shapes)
        self.class_in_body, self.label_dropout = classes is not None and class_in_body, label_dropout

    @property
    def num_classes(self) -> int:
        """0 for an unconditional model."""
        return 0 if self.classes is None else self.classes.num_classes

    def context(self, labels: Tensor | None, n: int) -> Tensor | None:
        """The class embedding of ``labels`` ``[n]`` (None for an unconditional model, which
        ignores labels)."""
        if self.classes is None:
            return None
        if labels is None:
            raise ValueError(f"this model is class-conditional ({self.num_classes} classes): give labels")
        if tuple(labels.shape) != (n,):
            raise ValueError(f"expected {n} labels, got shape {list(labels.shape)}")
        return self.classes(labels)

    def drop_labels(self, labels: Tensor, draws: Tensor | None = None) -> Tensor:
        """Labels with each swapped for the null class at the rate ``label_dropout`` (training for
        guidance); ``draws`` are the uniform numbers deciding it (drawn here if not given, so
        data-parallel ranks can share one draw)."""
        if self.classes is None or not self.label_dropout:
            return labels
        draws = torch.rand(labels.shape, device=labels.device) if draws is None else draws.to(labels.device)
        return torch.where(draws < self.label_dropout, torch.full_like(labels, self.classes.null), labels)

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
            raise NumericalError(f"{int(bad.sum())} of {u.shape[0]} decoded images are not "
                                 "finite; the model is numerically broken at this input")
        q = torch.floor(u * self.levels).clamp(0, self.levels - 1)
        return (q * 2 ** (8 - self.n_bits)).to(torch.uint8)

    def _body_context(self, context: Tensor | Guided | None) -> Tensor | Guided | None:
        return context if self.class_in_body else None

    def _latents(self, zs: list[Tensor], context: Tensor | Guided | None) -> tuple[list[Tensor], Tensor]:
        """The body's latents standardised by the class priors (unchanged when unconditional)."""
        logdet = zs[0].new_zeros(zs[0].shape[0])
        if self.class_priors is None:
            return zs, logdet
        out = []
        for prior, z in zip(self.class_priors, zs):
            z, ld = prior(z, context)
            out.append(z)
            logdet = logdet + ld
        return out, logdet

    def log_density(self, u: Tensor, context: Tensor | None = None) -> Tensor:
        """The model's log-density of continuous images ``u`` (``u``-space, where the image spans
        [0, 1)), in nats per image: the prior plus every log-det (preprocessing and body);
        ``context``: the class embedding of a conditional model (``context(labels, n)``)."""
        y, logdet_pre = self.preprocess(u)
        zs, logdet_body = self.body(to_layout(y, self.channels_last), self._body_context(context))
        zs, logdet_prior = self._latents(zs, context)
        return standard_normal_log_prob(zs) + logdet_pre + logdet_body + logdet_prior

    def _bound(self, x: Tensor, noise: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        """One-draw lower bound on log P(x) in nats, per image (x: integer levels); in generation
        mode the log-density of the noisy image in pixel-level units (``log q`` is zero)."""
        u, log_q = self.dequantizer(x, self.levels, noise)
        return self.log_density(u, context) - log_q - self.dims * math.log(self.levels)

    def log_prob(self, x: Tensor, n_samples: int = 1, max_batch: int = 4096,
                 noise: Tensor | None = None, labels: Tensor | None = None) -> Tensor:
        """Per-image log P(x) in nats of the discrete ``n_bits`` image (a conditional model:
        log P(x | y) for ``labels`` y).

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
        context = self.context(labels, x.shape[0])
        x = self._reduce(x)
        if n_samples == 1:
            return self._bound(x, noise, context)
        if noise is not None:
            raise ValueError("noise can only be given for a single draw (n_samples=1)")
        per_chunk = max(1, max_batch // x.shape[0])
        bounds = []
        for start in range(0, n_samples, per_chunk):
            k = min(per_chunk, n_samples - start)
            c = None if context is None else context.repeat(k, 1)
            bounds.append(self._bound(x.repeat(k, 1, 1, 1), context=c).view(k, x.shape[0]))
        return torch.logsumexp(torch.cat(bounds), dim=0) - math.log(n_samples)

    def log_prob_classes(self, x: Tensor, n_samples: int = 1, max_batch: int = 4096) -> Tensor:
        """``[B, K]``: log P(x | y) for every class y, each with the same dequantization draws
        (common random numbers: differences between classes are not noise). ``n_samples > 1``:
        importance-weighted, as ``log_prob``."""
        if self.classes is None:
            raise ValueError("this model is unconditional: it has no per-class likelihoods")
        if n_samples > 1 and self.noise_sigma is not None:
            raise ValueError("n_samples > 1 needs a likelihood-mode model (see log_prob)")
        b, k = x.shape[0], self.num_classes
        levels = self._reduce(x)
        per_chunk = max(1, max_batch // b)
        bounds = []  # [draws, B, K]
        for start in range(0, n_samples, per_chunk):
            s = min(per_chunk, n_samples - start)
            rows = levels.repeat(s, 1, 1, 1)
            noise = self.draw_noise(rows.shape[0])
            per_class = [self._bound(rows, noise, self.context(torch.full((rows.shape[0],), y, dtype=torch.long,
                                                                          device=rows.device), rows.shape[0]))
                         for y in range(k)]
            bounds.append(torch.stack(per_class, 1).view(s, b, k))
        return torch.logsumexp(torch.cat(bounds), dim=0) - math.log(n_samples)

    def log_prob_marginal(self, x: Tensor, n_samples: int = 1, max_batch: int = 4096) -> Tensor:
        """log P(x) = log mean_y P(x | y) under a uniform class prior (per image, nats): each
        class's estimate is unbiased in P, so their mean is too, and its log a lower bound."""
        return torch.logsumexp(self.log_prob_classes(x, n_samples, max_batch), 1) - math.log(self.num_classes)

    def bits_per_dim(self, x: Tensor, n_samples: int = 1, noise: Tensor | None = None,
                     labels: Tensor | None = None) -> Tensor:
        """Per-image bits per dimension, ``-log P(x) / (D ln 2)`` (generation mode: the noisy
        image's negative log-density in the same units; see ``log_prob``)."""
        return -self.log_prob(x, n_samples, noise=noise, labels=labels) / (self.dims * math.log(2))

    def forward(self, x: Tensor, noise: Tensor | None = None, labels: Tensor | None = None,
                drop: Tensor | None = None) -> Tensor:
        """Per-image training loss (bits/dim, one draw): what DDP and torch.compile wrap. In
        training mode a conditional model's labels go through ``drop_labels`` (with ``drop``)."""
        if self.training and labels is not None:
            labels = self.drop_labels(labels, drop)
        return self.bits_per_dim(x, noise=noise, labels=labels)

    def draw_noise(self, n: int) -> Tensor:
        """Base noise for ``n`` images, drawn as a single call of the model would draw it."""
        return self.dequantizer.draw_noise((n, *self.shape), self._ref())

    def encode(self, x: Tensor, labels: Tensor | None = None) -> list[Tensor]:
        """Latents of images, dequantised deterministically at the centre of each bin (a
        conditional model: given their ``labels``, standardised by the class priors)."""
        context = self.context(labels, x.shape[0])
        y, _ = self.preprocess((self._reduce(x) + 0.5) / self.levels)
        zs = self.body(to_layout(y, self.channels_last), self._body_context(context))[0]
        return self._latents(zs, context)[0]

    def _to_unit(self, zs: list[Tensor], context: Tensor | Guided | None = None) -> Tensor:
        """Latents -> ``u``-space (before quantisation)."""
        zs = [to_layout(z, self.channels_last) for z in zs]
        if self.class_priors is not None:
            zs = [prior.inverse(z, context)[0] for prior, z in zip(self.class_priors, zs)]
        return self.preprocess.inverse(self.body.inverse(zs, self._body_context(context))[0])[0]

    def decode(self, zs: list[Tensor], denoise: bool = False, labels: Tensor | None = None) -> Tensor:
        """uint8 images from latents; ``decode(encode(x, y), labels=y) == x`` for n_bits images.
        ``denoise`` applies the Tweedie step first (generation mode's samples and interpolations)."""
        context = self.context(labels, zs[0].shape[0])
        u = self._to_unit(zs, context)
        return self._to_images(self.denoise(u, context=context) if denoise else u)

    def denoises(self, denoise: bool | None = None) -> bool:
        """Whether sampling denoises: ``denoise``, or by default in generation mode."""
        return self.noise_sigma is not None if denoise is None else denoise

    def score(self, u: Tensor, max_batch: int = 64, context: Tensor | None = None) -> Tensor:
        """``grad_u log p(u)``, the model's score in ``u``-space, by autograd ``max_batch`` images
        at a time, in the model's own dtype (autocast off: a bf16 gradient would be too coarse
        for a step of size sigma^2). Works under ``no_grad`` and ``inference_mode``."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        grads = []
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(u.device.type, enabled=False):
            contexts = [None] * len(u.split(max_batch)) if context is None else context.split(max_batch)
            for chunk, c in zip(u.split(max_batch), contexts):
                leaf = chunk.detach().clone().requires_grad_(True)  # a clone: u may be an inference tensor
                c = None if c is None else c.detach().clone()
                (grad,) = torch.autograd.grad(self.log_density(leaf, c).sum(), leaf)
                grads.append(grad)
        return torch.cat(grads)

    def denoise(self, u: Tensor, sigma: float | None = None, max_batch: int = 64,
                context: Tensor | None = None) -> Tensor:
        """One Tweedie step, ``u + sigma^2 grad_u log p(u)``: for ``u = c + sigma n`` with
        ``n ~ N(0, I)``, the posterior mean ``E[c | u]`` under the density of the noisy images,
        which the model learned (Robbins, 1956; Efron, 2011; TarFlow's denoising, Zhai et al.,
        2025). ``sigma``: the model's own (``noise_sigma``) unless given."""
        sigma = self.noise_sigma if sigma is None else sigma
        if sigma is None:
            raise ValueError("this model was trained without Gaussian noise (likelihood mode): "
                             "there is no sigma to denoise with; give one")
        return (u + sigma**2 * self.score(u, max_batch, context)).detach()

    def guided(self, labels: Tensor | None, n: int, guidance: float, annealed: bool = False) -> Tensor | Guided:
        """The context for sampling ``labels`` ``[n]`` with classifier-free guidance weight
        ``guidance``: ``(1 + w) f(x, y) - w f(x, null)`` in every conditional layer (w = 0: the
        plain class)."""
        context = self.context(labels, n)
        if guidance == 0:
            return context
        if not self.label_dropout:
            raise ValueError("guidance needs a model trained with model.label_dropout > 0: this one's null "
                             "class never saw data")
        null = self.classes(torch.full_like(labels, self.classes.null))
        return Guided(context, null, float(guidance), annealed)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
               denoise: bool | None = None, labels: Tensor | None = None, guidance: float = 0.0,
               annealed: bool = False) -> Tensor:
        """``n`` uint8 images, latents drawn from ``N(0, temperature^2 I)``; denoised by one
        Tweedie step in generation mode (``denoise=False``: the raw samples). A conditional model
        samples the classes ``labels`` ``[n]`` (the null class, ``num_classes``: the unconditional
        model), with classifier-free guidance of weight ``guidance`` (see ``guided``)."""
        return self._to_images(self.sample_continuous(n, temperature, generator, denoise, labels, guidance, annealed))

    @torch.no_grad()
    def sample_continuous(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
                          denoise: bool | None = None, labels: Tensor | None = None, guidance: float = 0.0,
                          annealed: bool = False) -> Tensor:
        """Samples in ``u``-space (before quantisation), for checking probability mass; denoised
        and conditioned as ``sample`` says."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if self.classes is None and (labels is not None or guidance):
            raise ValueError("this model is unconditional: labels and guidance need a model trained with "
                             "model.num_classes > 0")
        context = None if self.classes is None else self.guided(labels, n, guidance, annealed)
        ref = self._ref()
        zs = sample_standard_normal(self.body.latent_shapes, n, temperature, ref.device,
                                    ref.dtype, generator)
        u = self._to_unit(zs, context)
        if not self.denoises(denoise):
            return u
        return self.denoise(u, context=None if labels is None else self.context(labels, n))


# Each registered architecture's builder (``nfgen.flows.architectures``), by name, as the registry
# holds them when read: ``build(shape, section, context_dim=0)``, the section being the config's
# ``model.<arch>`` and ``context_dim`` the size of the class embedding its conditional layers see
# (0: unconditional).
ARCHITECTURES: Mapping[str, Callable[..., MultiScaleFlow]] = Builders()


def build_model(config: Config | Mapping[str, Any], memory: Memory = available_memory) -> ImageFlow:
    """Build an ImageFlow from a Config, or a dict with ``model`` / ``dequantization`` keys; the
    training options that change how it computes, not what (memory saving, channels-last), are
    applied to the built model. A model whose parameters would not fit in the machine's memory
    (``memory``, injectable) is refused (``ConfigError``) before any is allocated."""
    if not isinstance(config, Config):
        config = config_from_dict(dict(config))
    cost = model_cost(lambda: build_unchecked(config))
    check_memory(cost.parameters, "cpu", f"a {config.model.arch} model of {format_count(cost.parameters // 4)} "
                 "parameters", model_sizes(config), memory)
    return build_unchecked(config)


def model_sizes(config: Config) -> str:
    """What to lower when a model is too large: its section's sizes (``model.tarflow.width``, ...)."""
    m = config.model
    keys = [f"model.{m.arch}.{k}" for k, v in dataclasses.asdict(m.options).items()
            if isinstance(v, int | list) and not isinstance(v, bool)]
    return f"its sizes ({', '.join(keys)})" if keys else f"the sizes in model.{m.arch}"


def build_unchecked(config: Config) -> ImageFlow:
    """``build_model`` without the memory check (what the check itself builds on fake tensors)."""
    m, dq, t = config.model, config.dequantization, config.train
    shape = tuple(m.image_shape)
    context_dim = m.class_dim if m.num_classes and m.class_in_body else 0
    body: MultiScaleFlow = architecture(m.arch).builder()(shape, m.options, context_dim=context_dim)
    preprocess = Shift() if m.preprocess == "shift" else Logit(m.logit_alpha)
    if dq.kind == "uniform":
        dequantizer: nn.Module = UniformDequantizer()
    elif dq.kind == "gaussian":
        dequantizer = GaussianDequantizer(dq.sigma)
    else:
        options = dataclasses.asdict(dq)
        del options["kind"], options["sigma"]  # which dequantizer, gaussian's noise; the rest configures the variational one
        dequantizer = VariationalDequantizer(shape, **options)
    classes = ClassEmbedding(m.num_classes, m.class_dim, m.null_class) if m.num_classes else None
    model = ImageFlow(body, preprocess, dequantizer, m.n_bits, classes, m.class_in_body, m.label_dropout)
    set_memory_saving(model, t.memory_saving)
    set_channels_last(model, t.channels_last)
    return model


def initialize(model: ImageFlow, x: Tensor, noise: Tensor | None = None, labels: Tensor | None = None) -> None:
    """Actnorm's data-dependent initialisation, run once on the first (global) batch."""
    model.train()
    with torch.no_grad():
        model(x, noise, labels=labels)

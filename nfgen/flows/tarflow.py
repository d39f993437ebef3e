"""TarFlow: Transformer autoregressive flows on image patches (Zhai et al., 2025, "Normalizing
Flows are Capable Generative Models").

The image is cut into ``p x p`` patches, a sequence of ``N = (H/p)(W/p)`` tokens of ``C p^2``
values. Each block is an affine autoregressive flow over that sequence (a masked autoregressive
flow, Papamakarios et al., 2017, with a causal Transformer as its conditioner): token ``i`` is
shifted and scaled by parameters computed from the tokens before it, and the blocks alternate
the direction of the sequence, so every token is conditioned on every other one somewhere in the
stack.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfgen.flows.base import Flow, Sequential
from nfgen.flows.conditioning import Guided
from nfgen.flows.multiscale import Level, MultiScaleFlow, Shape
from nfgen.flows.priors import LearnedGaussian
from nfgen.flows.tarflow_section import TarflowConfig
from nfgen.flows.transformer import CausalTransformer, KVCache


class Patchify(Flow):
    """``[B, C, H, W] -> [B, C p^2, H/p, W/p]``: each ``p x p`` patch becomes one position's
    channels (PyTorch's pixel unshuffle; channel ``c p^2 + i p + j`` holds pixel ``(i, j)`` of
    the patch in channel ``c``). A permutation: log-det zero."""

    any_size = True

    def __init__(self, patch: int) -> None:
        super().__init__()
        self.patch = patch

    def describe(self) -> str:
        return f"Patchify: {self.patch}x{self.patch}"

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h, w = x.shape[-2:]
        if h % self.patch or w % self.patch:
            raise ValueError(f"patches of {self.patch}x{self.patch} do not tile a {h}x{w} image")
        return F.pixel_unshuffle(x, self.patch), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return F.pixel_shuffle(z, self.patch), z.new_zeros(z.shape[0])


class AutoregressiveBlock(Flow):
    """One TarFlow block on ``[B, D, h, w]`` (the patchified image: ``N = h w`` tokens of ``D``
    values, in raster order, reversed when ``reverse``).

    Forward (data to latent), one parallel pass: ``z_i = (x_i - mu_i) exp(-alpha_i)`` with
    ``(mu_i, alpha_i)`` the Transformer's output at position ``i - 1``, so they depend on ``x_<i``
    only; the first token has nothing before it and passes unchanged (``mu_0 = alpha_0 = 0``, as
    in the paper's code), which the next block, running the other way, conditions on everything.
    The Jacobian is triangular: ``log|det| = -sum alpha``, exact.

    The log-scale is soft-clamped, ``alpha = c tanh(raw / c)`` with ``c = max_log_scale``: one
    block scales a value by at most ``e^c`` either way, so neither direction can overflow however
    the Transformer's output drifts, and the clamp is the identity near zero (where every block
    starts: the output projection is zero-initialised). ``scale="additive"`` is the paper's
    volume-preserving variant: shifts only, log-det zero (the body then learns the prior's scale).

    The inverse is sequential over tokens: each token is one Transformer step against the cached
    keys and values of the tokens before it (``kv_cache``; off, every step reruns the Transformer
    over the whole prefix: the reference the cache is tested against). A parallel Jacobi
    fixed-point inverse was tried and dropped: on a trained model it needed 13 of 16 iterations
    and sampled 5.9x slower than the cache on a CPU (docs/architectures.md, TarFlow).

    Class-conditional (``context_dim > 0``): a linear map of the class embedding is added to every
    token (the paper adds a per-block class embedding). Under guidance (a ``Guided`` context) the
    shift and log-scale of token ``i`` are ``(1 + w_i) f(y) - w_i f(null)``, each stream with its
    own key/value cache, ``w_i`` annealed over the tokens if asked.
    """

    stem = "block"
    numbered = True
    cheap_inverse: ClassVar[bool] = False  # memory saving checkpoints it instead of inverting it

    def __init__(self, channels: int, size: tuple[int, int], width: int, layers: int, heads: int,
                 reverse: bool = False, scale: str = "affine", max_log_scale: float = 4.0, mlp_ratio: int = 4,
                 context_dim: int = 0) -> None:
        super().__init__()
        if scale not in ("affine", "additive"):
            raise ValueError(f"scale must be affine or additive, got {scale!r}")
        self.channels, self.tokens = channels, size[0] * size[1]
        self.reverse, self.scale, self.max_log_scale = reverse, scale, max_log_scale
        self.kv_cache = True
        self.layer_count, self.width = layers, width
        self.pos = nn.Parameter(torch.randn(self.tokens, width) * 0.02)  # learned, one per patch position
        out = 2 * channels if scale == "affine" else channels
        self.net = CausalTransformer(channels, out, width, layers, heads, mlp_ratio)
        self.class_proj = nn.Linear(context_dim, width) if context_dim else None

    def describe(self) -> str:
        order = "reversed" if self.reverse else "raster"
        return f"AutoregressiveBlock: {self.layer_count} layers x {self.width}, {self.scale}, {order} order"

    # -- the token sequence ------------------------------------------------------------------------
    def _tokens(self, x: Tensor) -> Tensor:
        t = x.flatten(2).transpose(1, 2)  # [B, N, D], raster order
        return t.flip(1) if self.reverse else t

    def _image(self, t: Tensor, like: Tensor) -> Tensor:
        t = t.flip(1) if self.reverse else t
        return t.transpose(1, 2).reshape(like.shape)

    def _pos(self) -> Tensor:
        return self.pos.flip(0) if self.reverse else self.pos  # each patch keeps its embedding

    # -- shift and log-scale ---------------------------------------------------------------------
    def _affine(self, out: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``(mu, alpha)`` from Transformer outputs, in the flow's dtype (the net may run in bf16)."""
        out = out.to(dtype)
        if self.scale == "additive":
            return out, torch.zeros_like(out)
        mu, raw = out.chunk(2, dim=-1)
        c = self.max_log_scale
        return mu, c * torch.tanh(raw / c)

    def _class(self, context: Tensor | None) -> Tensor | None:
        """The class embedding's projection added to every token (None: unconditional)."""
        return None if self.class_proj is None or context is None else self.class_proj(context)

    def _params(self, t: Tensor, context: Tensor | Guided | None = None) -> tuple[Tensor, Tensor]:
        """``(mu, alpha)`` for every token: position ``i``'s come from the output at ``i - 1``."""
        if isinstance(context, Guided):
            cond, null = self._params(t, context.cond), self._params(t, context.null)
            w = t.new_tensor([context.weight_at(i - 1, self.tokens) for i in range(self.tokens)])[:, None]
            return context.mix(cond, null, w)
        out = self.net(t, self._pos().to(t.dtype), self._class(context))
        out = torch.cat([torch.zeros_like(out[:, :1]), out[:, :-1]], dim=1)
        return self._affine(out, t.dtype)

    def forward(self, x: Tensor, context: Tensor | Guided | None = None) -> tuple[Tensor, Tensor]:
        t = self._tokens(x)
        mu, alpha = self._params(t, context)
        z = (t - mu) * torch.exp(-alpha)
        return self._image(z, x), -alpha.flatten(1).sum(1)

    def inverse(self, z: Tensor, context: Tensor | Guided | None = None) -> tuple[Tensor, Tensor]:
        t = self._tokens(z)
        pos = self._pos().to(t.dtype)
        xs, alphas = [t[:, 0]], [torch.zeros_like(t[:, 0])]
        # One stream per context (two under guidance), each with its own cache.
        contexts = [context.cond, context.null] if isinstance(context, Guided) else [context]
        streams = [(self._class(c), KVCache(self.tokens)) for c in contexts]
        for i in range(self.tokens - 1):
            params = []
            for c, cache in streams:
                if self.kv_cache:
                    out = self.net.step(xs[i][:, None], pos[i : i + 1], i, cache, c)[:, 0]
                else:
                    out = self.net(torch.stack(xs, 1), pos[: i + 1], c)[:, -1]
                params.append(self._affine(out, t.dtype))
            mu, alpha = params[0]
            if isinstance(context, Guided):
                mu, alpha = context.mix(params[0], params[1], context.weight_at(i, self.tokens))
            xs.append(t[:, i + 1] * torch.exp(alpha) + mu)
            alphas.append(alpha)
        return self._image(torch.stack(xs, 1), z), torch.stack(alphas, 1).flatten(1).sum(1)

    def diagnostics(self, x: Tensor, context: Tensor | None = None) -> dict[str, float]:
        """``min_scale``: the smallest ``|dz/dx| = exp(-alpha)`` at ``x``."""
        _, alpha = self._params(self._tokens(x), context)
        return {"min_scale": torch.exp(-alpha).min().item()}


def set_kv_cache(module: nn.Module, on: bool) -> None:
    """Whether every TarFlow block in ``module`` inverts with its key/value cache (the default)
    or by rerunning the Transformer over each prefix: a sampling option, the numbers of the model
    do not change."""
    for m in module.modules():
        if isinstance(m, AutoregressiveBlock):
            m.kv_cache = on


def build_tarflow(shape: Shape, section: TarflowConfig, context_dim: int = 0) -> MultiScaleFlow:
    """Patchify, then ``blocks`` autoregressive blocks alternating direction. ``layers`` is one
    count for every block, or one per block, in data-to-latent order: STARFlow's deep-shallow
    design (Gu et al., 2025) is ``[2, 2, 2, 8]``: shallow blocks next to the data and one deep
    block last, next to the latent, where generation starts (apple/ml-starflow runs its deep
    "top" block last in the forward pass and first when sampling). The latent is the patchified
    image. The options are ``TarflowConfig``, the config's ``model.tarflow``; ``context_dim`` is
    the size of the class embedding every block sees (0: unconditional)."""
    s = section
    patch, blocks, scale = s.patch, s.blocks, s.scale
    layers = list(s.layers)
    if len(layers) == 1:
        layers *= blocks
    if len(layers) != blocks:
        raise ValueError(f"layers gives one count for every block or one per block ({blocks}), got {layers}")
    c, h, w = shape
    if h % patch or w % patch:
        raise ValueError(f"patches of {patch}x{patch} do not tile a {h}x{w} image")
    d, size = c * patch * patch, (h // patch, w // patch)
    flows: list[Flow] = [Patchify(patch)] + [
        AutoregressiveBlock(d, size, s.width, n, s.heads, reverse=k % 2 == 1, scale=scale,
                            max_log_scale=s.max_log_scale, mlp_ratio=s.mlp_ratio, context_dim=context_dim)
        for k, n in enumerate(layers)
    ]
    if scale == "additive":
        # Shifts alone cannot change volume, so the latent's scale is learned in the prior (the
        # paper's code learns the prior's variance in this mode too).
        flows.append(LearnedGaussian((d, *size)))
    return MultiScaleFlow([Level(Sequential(*flows), shape, (d, *size), split=False)])

"""A causal Transformer with a key/value cache: the conditioner of TarFlow's autoregressive blocks.

GPT-style pre-norm layers (Radford et al., 2019) on PyTorch's scaled-dot-product attention. The
output at position ``i`` depends on input tokens ``0..i`` only, which makes a flow built on it
autoregressive. ``step`` runs one position at a time against a cache of the keys and values of the
positions before it, so a sequential pass over ``N`` tokens costs ``N`` single-token steps (the
attention itself still reads the ``i`` cached positions at step ``i``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KVCache:
    """Keys and values of the positions run so far, per layer, in preallocated ``[B, heads, N,
    head_dim]`` buffers (allocated at the first step, in the dtype attention runs in)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.keys: dict[int, Tensor] = {}
        self.values: dict[int, Tensor] = {}

    def append(self, layer: int, at: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k, v`` (``[B, heads, T, d]``) at positions ``at..at+T-1``; all keys and values up
        to there."""
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            # Differentiated (a Jacobian check of the inverse): no in-place writes, autograd would
            # see the buffer change under it. Concatenation copies what attention reads anyway.
            if layer in self.keys:
                k, v = torch.cat([self.keys[layer], k], dim=2), torch.cat([self.values[layer], v], dim=2)
            self.keys[layer], self.values[layer] = k, v
            return k, v
        if layer not in self.keys:
            shape = (k.shape[0], k.shape[1], self.length, k.shape[3])
            self.keys[layer], self.values[layer] = k.new_empty(shape), v.new_empty(shape)
        end = at + k.shape[2]
        self.keys[layer][:, :, at:end] = k
        self.values[layer][:, :, at:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class CausalLayer(nn.Module):
    """Pre-norm causal self-attention then an MLP, each added to the residual stream."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, h: Tensor, cache: KVCache | None = None, layer: int = 0, at: int = 0) -> Tensor:
        b, t, w = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        if cache is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # the new positions see every cached one and, causally, each other
            k, v = cache.append(layer, at, k, v)
            mask = None
            if t > 1:
                mask = torch.ones(t, k.shape[2], dtype=torch.bool, device=h.device).tril(k.shape[2] - t)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        h = h + self.proj(a.transpose(1, 2).reshape(b, t, w))
        return h + self.mlp(self.norm2(h))


class CausalTransformer(nn.Module):
    """Tokens ``[B, N, dim_in]`` (plus position embeddings ``[N, width]`` the caller owns, so a flow
    can permute them with its tokens) to ``[B, N, dim_out]``; the output projection starts at zero.
    ``context`` ``[B, width]``, if given, is added to every token (a class embedding)."""

    def __init__(self, dim_in: int, dim_out: int, width: int, layers: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim_in, width)
        self.layers = nn.ModuleList(CausalLayer(width, heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, dim_out)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def _embed(self, x: Tensor, pos: Tensor, context: Tensor | None) -> Tensor:
        h = self.proj_in(x) + pos
        return h if context is None else h + context[:, None]

    def _out(self, h: Tensor) -> Tensor:
        """The final norm and output projection in the weights' own precision (float32), autocast
        or not: a flow's shifts and log-scales come out of it, and a bf16 projection would round
        every log-det term to 8 bits of mantissa (the reference too computes its scales in
        float32; its likelihood models train without autocast at all)."""
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self.proj_out(self.norm(h.to(self.proj_out.weight.dtype)))

    def forward(self, x: Tensor, pos: Tensor, context: Tensor | None = None) -> Tensor:
        h = self._embed(x, pos, context)
        for layer in self.layers:
            h = layer(h)
        return self._out(h)

    def step(self, x: Tensor, pos: Tensor, at: int, cache: KVCache, context: Tensor | None = None) -> Tensor:
        """Outputs at positions ``at..at+T-1`` from their tokens ``x`` ``[B, T, dim_in]``, given
        the cache of the positions before (which it extends)."""
        h = self._embed(x, pos, context)
        for i, layer in enumerate(self.layers):
            h = layer(h, cache, i, at)
        return self._out(h)

"""Flow++'s coupling conditioner: gated residual convolutions with self-attention
(Ho et al., 2019, "Flow++", section 3.3).

Each block is a gated residual convolution and a gated multi-head self-attention over all
``H * W`` positions, each followed by a layer norm over channels. Layer norm (not batch norm)
keeps every sample's output a function of that sample alone, so log-dets do not depend on the
batch. Departures from the paper's code, each for a reason: plain convolutions and linear maps
(Flow++ uses weight normalisation with data-dependent init; the layer norms already keep the
activations' scale, and no init pass is needed), ``F.scaled_dot_product_attention`` (torch's
fused kernel), and a zero-initialised output convolution so every coupling starts as the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfgen.flows.nets import NetFactory, ZeroConv2d, register_conditioner


def concat_elu(x: Tensor) -> Tensor:
    """``[elu(x), elu(-x)]`` on channels (PixelCNN++'s nonlinearity, used by Flow++): keeps both
    signs' information, so the gate downstream sees a full-rank input."""
    return F.elu(torch.cat([x, -x], dim=1))


class GatedConv(nn.Module):
    """``concat_elu -> conv3x3 -> concat_elu -> dropout -> conv1x1 -> a * sigmoid(b)`` (the
    residual is added by the caller). The gated linear unit lets a block start near "off"."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.gate = nn.Conv2d(2 * channels, 2 * channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.gate(self.drop(concat_elu(self.conv(concat_elu(x)))))
        a, b = h.chunk(2, dim=1)
        return a * torch.sigmoid(b)


def positional_encoding(length: int, channels: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Sinusoidal encoding ``[length, channels]`` of the flattened position (Vaswani et al., 2017;
    Flow++ adds it before attention, which is otherwise blind to where a pixel is). Computed per
    call, so any image size works."""
    half = channels // 2
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / max(half, 1))
    enc = torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], dim=1)
    return F.pad(enc, (0, channels - 2 * half)).to(dtype)


class GatedAttention(nn.Module):
    """Multi-head self-attention over positions, gated by ``a * sigmoid(b)`` on its output."""

    def __init__(self, channels: int, heads: int, dropout: float) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention needs hidden channels divisible by heads, got {channels} and {heads}")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.gate = nn.Linear(channels, 2 * channels)

    def forward(self, x: Tensor) -> Tensor:  # x: [B, L, C]
        b, length, c = x.shape
        h = x + positional_encoding(length, c, x.device, x.dtype)
        q, k, v = self.qkv(h).view(b, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        a, g = self.gate(out.transpose(1, 2).reshape(b, length, c)).chunk(2, dim=-1)
        return a * torch.sigmoid(g)


class ConvAttentionBlock(nn.Module):
    """Flow++'s block: ``x = LN(x + gated_conv(x)); x = LN(x + gated_attention(x))``."""

    def __init__(self, channels: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.conv = GatedConv(channels, dropout)
        self.norm1 = nn.LayerNorm(channels)
        self.attn = GatedAttention(channels, heads, dropout)
        self.norm2 = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:  # x: [B, C, H, W]
        b, c, height, width = x.shape
        x = x + self.conv(x)
        seq = self.norm1(x.flatten(2).transpose(1, 2))  # [B, H*W, C]: layer norm over channels
        seq = self.norm2(seq + self.attn(seq))
        return seq.transpose(1, 2).reshape(b, c, height, width)


class GatedAttentionNet(nn.Module):
    """Input conv3x3 to ``hidden``, ``blocks`` conv-attention blocks, zero-initialised output conv."""

    def __init__(self, c_in: int, c_out: int, hidden: int, blocks: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.inp = nn.Conv2d(c_in, hidden, 3, padding=1)
        self.blocks = nn.Sequential(*[ConvAttentionBlock(hidden, heads, dropout) for _ in range(blocks)])
        self.out = ZeroConv2d(hidden, c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.blocks(self.inp(x)))


@register_conditioner("attention")
def gated_attention_net(hidden: int, blocks: int, heads: int = 4, dropout: float = 0.0) -> NetFactory:
    """Flow++'s conditioner (Ho et al., 2019, section 3.3) as a ``(c_in, c_out)`` factory. Flow++
    uses ``hidden=96, blocks=10, heads=4, dropout=0.2`` on CIFAR-10."""
    if hidden < 1 or blocks < 0 or heads < 1 or not 0 <= dropout < 1:
        raise ValueError(f"gated_attention_net: bad hidden={hidden}, blocks={blocks}, heads={heads}, dropout={dropout}")
    if hidden % heads:
        raise ValueError(f"gated_attention_net: hidden ({hidden}) must be divisible by heads ({heads})")

    def build(c_in: int, c_out: int) -> nn.Module:
        return GatedAttentionNet(c_in, c_out, hidden, blocks, heads, dropout)

    return build

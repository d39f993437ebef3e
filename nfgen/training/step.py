"""One optimisation step, shared by the trainer and the benchmark."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from nfgen.config.schema import TrainConfig
from nfgen.model.image_flow import ImageFlow


class MicroBatch(NamedTuple):
    """What one forward pass of training gets: uint8 images ``[B, C, H, W]``, the dequantization
    base noise (None: the model draws it), the images' classes (int64 ``[B]``; None for an
    unconditional model) and the uniform draws deciding label dropout (None: the model draws
    them; ``ImageFlow.drop_labels``). A plain ``(images, noise)`` pair is a micro-batch without
    labels."""

    images: Tensor
    noise: Tensor | None = None
    labels: Tensor | None = None
    drop: Tensor | None = None


@dataclass(frozen=True)
class StepResult:
    bpd: float  # mean train bits/dim over the micro-batches
    grad_norm: float  # global gradient norm before clipping
    applied: bool  # False when a non-finite loss or gradient made the step skip its update


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked: the conditioner nets run in bf16, while the flow's own maps,
    log-dets and the loss stay in float32 (see ``InvConv1x1`` and ``Coupling``)."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without them bf16 convolutions are emulated and slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True  # cannot tell; do not warn


def make_optimizer(params, t: TrainConfig) -> torch.optim.Optimizer:
    """Adam and AdamW run as one fused kernel over all parameters (CPU and CUDA, torch >= 2.4):
    a per-parameter loop costs ~5% of a small Glow's CPU step. Adamax has no fused kernel."""
    betas = tuple(t.betas)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, betas=betas, weight_decay=t.weight_decay, fused=True)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, betas=betas, weight_decay=t.weight_decay, fused=True)
    return torch.optim.Adamax(params, lr=t.lr, betas=betas, weight_decay=t.weight_decay, foreach=True)


def lr_factor(step: int, t: TrainConfig) -> float:
    """The learning rate at ``step`` as a fraction of ``t.lr``: a linear warm-up over
    ``warmup_steps``, then constant, or a cosine decay reaching ``final_lr_factor`` at
    ``max_steps`` (a resumed run with more ``max_steps`` continues on the longer curve)."""
    factor = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else 1.0
    if t.schedule == "cosine":
        done = min(1.0, max(0.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)))
        factor *= t.final_lr_factor + (1 - t.final_lr_factor) * 0.5 * (1 + math.cos(math.pi * done))
    return factor


def make_forward(model: nn.Module, t: TrainConfig) -> nn.Module:
    """The module training calls for per-image bits/dim: the model, or its compiled version."""
    return torch.compile(model) if t.compile else model


def train_step(forward: Callable[..., Tensor], model: ImageFlow, optimizer: torch.optim.Optimizer,
               micro_batches: list[MicroBatch], t: TrainConfig,
               device: torch.device, no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
               ) -> StepResult:
    """Accumulate gradients over micro-batches, clip, and update unless the loss or the
    gradient is non-finite. ``no_sync`` (DDP) skips all-reduces but on the last."""
    model.train()
    total = 0.0
    n = len(micro_batches)
    for i, (x, noise, labels, drop) in enumerate(MicroBatch(*mb) for mb in micro_batches):
        sync = no_sync is None or i == n - 1
        labels = None if labels is None else labels.to(device, non_blocking=True)
        with contextlib.nullcontext() if sync else no_sync(), autocast(device, t.amp):
            bpd = forward(x.to(device, non_blocking=True), noise, labels=labels, drop=drop).float().mean()
        (bpd / n).backward()
        total += bpd.item() / n
    clip = t.grad_clip if t.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip).item()
    applied = math.isfinite(total) and math.isfinite(grad_norm)
    if applied:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(total, grad_norm, applied)

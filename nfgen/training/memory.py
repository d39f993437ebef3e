"""What a forward pass keeps alive for its backward pass: the activation memory that
``train.memory_saving`` removes, measured exactly instead of through the allocator; and the
check that a training run fits its device before it starts."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from nfgen.config.schema import Config
from nfgen.core.costs import Memory, ModelCost, available_memory, check_memory, format_bytes, model_cost
from nfgen.model.image_flow import build_unchecked, model_sizes
from nfgen.training.step import autocast


def saved_activation_bytes(loss_fn: Callable[[], Tensor], *modules: nn.Module) -> int:
    """Bytes of the distinct storages autograd saves while ``loss_fn()`` builds its graph,
    parameters and buffers of ``modules`` excluded (they exist anyway). The graph is freed
    after counting, so nothing is trained."""
    own = {t.untyped_storage().data_ptr() for m in modules for t in (*m.parameters(), *m.buffers())}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    del loss
    return sum(seen.values())


def check_training_fits(cfg: Config, device: torch.device, micro_batch: int,
                        memory: Memory = available_memory) -> ModelCost:
    """Refuse (``ConfigError``, one line with the figure) a training run whose model, optimizer
    state and one micro-batch's activations would not fit in ``device``'s free memory
    (``memory``, injectable), before the real model is built on it. Estimated on fake tensors by
    ``costs.model_cost``, on the training device and under training's autocast: exact for the
    parameters and for the activations autograd keeps (on CPU tested equal to the real count)."""
    try:
        cost = model_cost(lambda: build_unchecked(cfg), micro_batch, tuple(cfg.model.image_shape), device,
                          lambda: autocast(device, cfg.train.amp))
    except Exception:  # noqa: BLE001
        if device.type == "cpu":
            raise
        # A kernel that fake tensors of this device cannot run: the parameters are still sized
        # exactly (on the meta device); the activations are left to the device's own error.
        cost = model_cost(lambda: build_unchecked(cfg))
    # The weights, their gradients and the optimizer's two moments (Adam, AdamW, Adamax all keep
    # two), plus the EMA's copy when there is one.
    copies = 4 + (cfg.train.ema_decay > 0)
    need = copies * cost.parameters + cost.activations
    what = (f"training ({format_bytes(cost.parameters)} of parameters kept {copies} times: weights, gradients, "
            f"the optimizer's two moments{', the EMA' if copies == 5 else ''}; and {format_bytes(cost.activations)} "
            f"of activations for a batch of {micro_batch})")
    check_memory(need, device, what, f"train.batch_size (or raise train.grad_accum; train.memory_saving: true "
                 f"keeps fewer activations) or {model_sizes(cfg)}", memory)
    return cost

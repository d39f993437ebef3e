"""What a forward pass keeps alive for its backward pass: the activation memory that
``train.memory_saving`` removes, measured exactly instead of through the allocator."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


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

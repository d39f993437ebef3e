"""The flow contract and the one container that composes flows.

Every bijection maps data to latent in ``forward`` and returns ``(z, logdet)`` with
``logdet = log|det dz/dx|`` per sample (shape ``[B]``); ``inverse`` returns ``(x, logdet)``
with the opposite sign, so a forward pass followed by an inverse pass has zero total log-det.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class Rebuilt:
    """A flow's forward pass rebuilt from its output, for backpropagation without stored
    activations: ``out, logdet`` are recomputed with a graph from the leaf tensors ``leaves``,
    ``x`` is the input's value and ``grad_x`` maps the leaves' gradients to the input's."""

    x: Tensor
    leaves: list[Tensor]
    out: Tensor
    logdet: Tensor
    grad_x: Callable[[list[Tensor]], Tensor]


class Flow(nn.Module):
    """A bijection with a tractable log-determinant (the nflows / FrEIA contract)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # data -> latent
        raise NotImplementedError

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:  # latent -> data
        raise NotImplementedError

    def rebuild(self, z: Tensor) -> Rebuilt:
        """Reconstruct the input from the output ``z`` with ``inverse``, then run ``forward``
        from it with a graph. Flows whose inverse repeats the forward's expensive part
        (couplings: the conditioner net) override this to compute that part once."""
        with torch.no_grad():
            x = self.inverse(z)[0]
        leaf = x.detach().requires_grad_()
        out, logdet = self(leaf)
        return Rebuilt(x, [leaf], out, logdet, lambda grads: grads[0])


def _leaf_flows(flows: nn.ModuleList) -> list[Flow]:
    out: list[Flow] = []
    for flow in flows:
        out += _leaf_flows(flow.flows) if isinstance(flow, Sequential) else [flow]
    return out


def _autocast(enabled: bool, dtype: torch.dtype, device: str) -> torch.autocast:
    # Autocast caches the low-precision copies of parameters for the rest of the region. A copy
    # made by the no-grad forward has no graph, and a backward run inside the same region would
    # rebuild from it and lose those parameters' gradients, so neither pass uses the cache.
    return torch.autocast(device, dtype=dtype, enabled=enabled, cache_enabled=False)


class _RecomputeFromOutput(torch.autograd.Function):
    """Runs a chain of flows without keeping any activation but its output; backward walks the
    chain in reverse, reconstructing each flow's input from its output (RevNet's trick, Gomez
    et al., 2017), so training memory does not grow with the number of flows. The parameters
    are explicit inputs, so their gradients flow through autograd as usual (DDP's hooks fire)."""

    @staticmethod
    def forward(ctx, x: Tensor, flows: list[Flow], *params: Tensor) -> tuple[Tensor, Tensor]:
        device = x.device.type
        ctx.flows, ctx.params = flows, params
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device), device)
        with _autocast(*ctx.autocast):  # autograd runs a Function's forward without grad
            logdet = x.new_zeros(x.shape[0])
            for flow in flows:
                x, ld = flow(x)
                logdet = logdet + ld
        ctx.save_for_backward(x)
        return x, logdet

    @staticmethod
    def backward(ctx, grad_z: Tensor, grad_logdet: Tensor) -> tuple[Tensor | None, ...]:
        (z,) = ctx.saved_tensors
        grads: dict[int, Tensor] = {}
        for flow in reversed(ctx.flows):
            params = [p for p in flow.parameters() if p.requires_grad]
            with torch.enable_grad(), _autocast(*ctx.autocast):
                r = flow.rebuild(z)
            pairs = [(t, g) for t, g in ((r.out, grad_z), (r.logdet, grad_logdet)) if t.requires_grad]
            found = torch.autograd.grad([t for t, _ in pairs], [*r.leaves, *params],
                                        [g for _, g in pairs], allow_unused=True)
            grad_z = r.grad_x([g if g is not None else torch.zeros_like(leaf)
                               for g, leaf in zip(found, r.leaves)])
            for p, g in zip(params, found[len(r.leaves):]):
                if g is not None:
                    grads[id(p)] = g if id(p) not in grads else grads[id(p)] + g
            z = r.x.detach()
        return (grad_z, None, *(grads.get(id(p)) for p in ctx.params))


class Sequential(Flow):
    """Composition of flows; the one place where log-dets are summed.

    ``memory_saving=True`` trains without storing activations: the chain keeps only its output
    and backward reconstructs every flow's input from its output with the inverse (see
    ``_RecomputeFromOutput``). Activation memory then no longer grows with the number of
    flows, at the cost of about one more forward pass of the conditioner nets. Gradients equal
    the stored-activation ones up to the round-off of the reconstruction.
    """

    def __init__(self, *flows: Flow, memory_saving: bool = False) -> None:
        super().__init__()
        self.flows = nn.ModuleList(flows)
        self.memory_saving = memory_saving
        self._chain = _leaf_flows(self.flows) if memory_saving else []  # nested steps, flattened once

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.memory_saving and torch.is_grad_enabled():
            params = [p for p in self.parameters() if p.requires_grad]
            if params or x.requires_grad:
                return _RecomputeFromOutput.apply(x, self._chain, *params)
        logdet = x.new_zeros(x.shape[0])
        for flow in self.flows:
            x, ld = flow(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        logdet = z.new_zeros(z.shape[0])
        for flow in reversed(self.flows):
            z, ld = flow.inverse(z)
            logdet = logdet + ld
        return z, logdet


class Inverse(Flow):
    """Swaps the two directions of a flow."""

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.flow.inverse(x)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.flow(z)

"""The flow contract, the one cascade that composes flows, and memory saving.

Every bijection maps data to latent in ``forward(x, context=None)`` and returns ``(z, logdet)``
with ``logdet = log|det dz/dx|`` per sample (shape ``[B]``); ``inverse(z, context=None)``
returns ``(x, logdet)`` with the opposite sign, so a forward pass followed by an inverse pass
has zero total log-det. ``context`` is an optional conditioning tensor (features of the image
for variational dequantization, a class embedding ``[B, class_dim]`` in a class-conditional
model, or a ``Guided`` pair of them for classifier-free guidance: ``nfgen.flows.conditioning``);
flows that are not conditional ignore it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

Step = Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]]

# torch 2.4's own checkpoint recomputation calls its deprecated ``torch.cpu.amp.autocast`` and
# warns about it on every backward pass (later releases do not): a warning the user cannot act on.
warnings.filterwarnings("ignore", message=r"`torch\.cpu\.amp\.autocast\(args\.\.\.\)` is deprecated",
                        category=FutureWarning, module=r"torch\.utils\.checkpoint")


def cascade(x: Tensor, steps: Iterable[Step], context: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Run ``steps`` in order, each ``(x, context) -> (x, logdet)``, and sum their log-dets: the
    one loop that composes flows (nflows' ``CompositeTransform._cascade``). A forward pass gives
    it the flows themselves, an inverse pass their ``inverse`` methods in reverse order."""
    logdet = x.new_zeros(x.shape[0])
    for step in steps:
        x, ld = step(x, context)
        logdet = logdet + ld
    return x, logdet


@dataclass
class Rebuilt:
    """A flow's forward pass rebuilt from its output, for backpropagation without stored
    activations: ``out, logdet`` are recomputed with a graph from the leaf tensors ``leaves``
    (and the context given to ``rebuild``), ``x`` is the input's value and ``grad_x`` maps the
    leaves' gradients to the input's."""

    x: Tensor
    leaves: list[Tensor]
    out: Tensor
    logdet: Tensor
    grad_x: Callable[[list[Tensor]], Tensor]


class Flow(nn.Module):
    """A bijection with a tractable log-determinant (the nflows / FrEIA contract).

    Besides its two directions, a flow answers the questions tools ask of it (the doctor asks,
    rather than keeping a list of types): ``describe()``, ``diagnostics(x)``, ``any_size``, and
    the ``stem`` and ``numbered`` that name its row in a report.
    """

    # True if the flow holds nothing sized to the image, so it works on any spatial crop (the
    # doctor checks its log-det on a small crop). False is always safe: the full size is used.
    any_size: bool = False
    # False if the inverse costs far more than the forward (an autoregressive flow inverts one
    # position at a time): memory saving then checkpoints the flow (keeps its input, reruns its
    # forward in backward) instead of reconstructing its input with the inverse.
    cheap_inverse: ClassVar[bool] = True
    stem: ClassVar[str] = ""  # a report row's name stem; "" means the class name in lower case
    numbered: ClassVar[bool] = False  # rows of this kind repeat within a level: step0, step1, ...

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:  # data -> latent
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:  # latent -> data
        raise NotImplementedError

    def describe(self) -> str:
        """A one-line kind for reports, e.g. ``"Coupling: affine, channel"``."""
        return type(self).__name__

    def diagnostics(self, x: Tensor, context: Tensor | None = None) -> dict[str, float]:
        """This flow's own health measures at its input ``x`` (not its sub-flows'). Known keys:
        ``min_scale``, the smallest ``|dy/dx|`` of an elementwise map (the inverse divides by
        it); ``cond``, the condition number of a channel-mixing matrix."""
        return {}

    def rebuild(self, z: Tensor, context: Tensor | None = None) -> Rebuilt:
        """Reconstruct the input from the output ``z`` with ``inverse``, then run ``forward``
        from it with a graph. Flows whose inverse repeats the forward's expensive part
        (couplings: the conditioner net) override this to compute that part once."""
        with torch.no_grad():
            x = self.inverse(z, context)[0]
        leaf = x.detach().requires_grad_()
        out, logdet = self(leaf, context)
        return Rebuilt(x, [leaf], out, logdet, lambda grads: grads[0])


def _leaf_flows(flows: Iterable[Flow]) -> list[Flow]:
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
    are explicit inputs, so their gradients flow through autograd as usual (DDP's hooks fire).
    A context is an input too: every flow's rebuild sees one leaf holding it, and the gradients
    it collects across the chain are summed."""

    @staticmethod
    def forward(ctx, x: Tensor, context: Tensor | None, flows: list[Flow], *params: Tensor) -> tuple[Tensor, Tensor]:
        device = x.device.type
        ctx.flows, ctx.params = flows, params
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device), device)
        with _autocast(*ctx.autocast):  # autograd runs a Function's forward without grad
            z, logdet = cascade(x, flows, context)
        ctx.save_for_backward(z, context)
        return z, logdet

    @staticmethod
    def backward(ctx, grad_z: Tensor, grad_logdet: Tensor) -> tuple[Tensor | None, ...]:
        z, context = ctx.saved_tensors
        leaf_context = None if context is None else context.detach().requires_grad_(ctx.needs_input_grad[1])
        extra = [leaf_context] if ctx.needs_input_grad[1] else []
        grads: dict[int, Tensor] = {}
        grad_context = None
        for flow in reversed(ctx.flows):
            params = [p for p in flow.parameters() if p.requires_grad]
            with torch.enable_grad(), _autocast(*ctx.autocast):
                r = flow.rebuild(z, leaf_context)
            pairs = [(t, g) for t, g in ((r.out, grad_z), (r.logdet, grad_logdet)) if t.requires_grad]
            found = torch.autograd.grad([t for t, _ in pairs], [*r.leaves, *extra, *params],
                                        [g for _, g in pairs], allow_unused=True)
            grad_z = r.grad_x([g if g is not None else torch.zeros_like(leaf)
                               for g, leaf in zip(found, r.leaves)])
            found = found[len(r.leaves):]
            if extra and found[0] is not None:
                grad_context = found[0] if grad_context is None else grad_context + found[0]
            for p, g in zip(params, found[len(extra):]):
                if g is not None:
                    grads[id(p)] = g if id(p) not in grads else grads[id(p)] + g
            z = r.x.detach()
        return (grad_z, grad_context, None, *(grads.get(id(p)) for p in ctx.params))


class Sequential(Flow):
    """Composition of flows through the one ``cascade``, in both directions.

    With memory saving on (``set_memory_saving``) it trains without storing activations: the
    chain keeps only its output and backward reconstructs every flow's input from its output
    with the inverse (see ``_RecomputeFromOutput``). Activation memory then no longer grows
    with the number of flows, at the cost of about one more forward pass of the conditioner
    nets. Gradients equal the stored-activation ones up to the round-off of the reconstruction.
    A flow whose inverse is expensive (``cheap_inverse = False``: TarFlow's blocks) is
    checkpointed instead: its input is kept and its forward rerun in backward.
    """

    any_size = True  # itself; its flows answer for themselves
    stem = "step"
    numbered = True

    def __init__(self, *flows: Flow) -> None:
        super().__init__()
        self.flows = nn.ModuleList(flows)
        self.memory_saving = False
        self._chain: list[Flow] = []

    def set_memory_saving(self, on: bool) -> None:
        """Turn memory saving on or off; on, the nested flows are flattened into one chain here,
        once (so replace flows before turning it on)."""
        self.memory_saving = on
        self._chain = _leaf_flows(self.flows) if on else []

    def describe(self) -> str:
        return "Sequential: " + ", ".join(type(f).__name__ for f in self.flows)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.memory_saving and torch.is_grad_enabled():
            if any(p.requires_grad for p in self.parameters()) or x.requires_grad or (
                    context is not None and context.requires_grad):
                return cascade(x, _saving_steps(self._chain), context)
        return cascade(x, self.flows, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return cascade(z, [flow.inverse for flow in reversed(self.flows)], context)


def _saving_steps(chain: list[Flow]) -> list[Step]:
    """The chain as memory-saving steps: each run of flows with a cheap inverse is one
    ``_RecomputeFromOutput`` (nothing stored but its output), each other flow is checkpointed
    (its input stored, its forward rerun in backward)."""
    steps: list[Step] = []
    run: list[Flow] = []

    def close_run() -> None:
        if run:
            flows = list(run)
            params = list({id(p): p for f in flows for p in f.parameters() if p.requires_grad}.values())
            steps.append(lambda x, c: _RecomputeFromOutput.apply(x, c, flows, *params))
            run.clear()

    for flow in chain:
        if flow.cheap_inverse:
            run.append(flow)
        else:
            close_run()
            steps.append(lambda x, c, f=flow: torch.utils.checkpoint.checkpoint(f, x, c, use_reentrant=False))
    close_run()
    return steps


def set_memory_saving(module: nn.Module, on: bool) -> None:
    """Turn memory saving on or off for every outermost ``Sequential`` in ``module`` (each
    level's chain; the steps nested in it are flattened into that chain). A training option,
    applied to a built model: builders know nothing of it."""
    if isinstance(module, Sequential):
        module.set_memory_saving(on)
        return
    for child in module.children():
        set_memory_saving(child, on)


class Inverse(Flow):
    """Swaps the two directions of a flow."""

    any_size = True  # itself; the wrapped flow answers for itself

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def describe(self) -> str:
        return f"Inverse: {self.flow.describe()}"

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.flow.inverse(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.flow(z, context)

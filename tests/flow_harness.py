"""One harness that checks any flow the same way (STYLE.md, habit 6)."""

from __future__ import annotations

import torch
from torch import Tensor

from nfgen.flows.actnorm import ActNorm
from nfgen.flows.base import Flow, Inverse, Sequential
from nfgen.flows.checks import Parts, flat_parts, jacobian_logdet
from nfgen.flows.transforms import ElementwiseTransform

ROUND_TRIP_TOL = 1e-10  # float64 rounds at ~1e-16; an exact inverse loses a few digits at most
LOGDET_TOL = 1e-8  # analytic log-det against slogdet of the autograd Jacobian, float64
GRAD_TOL = 1e-9  # memory-saving gradients against stored-activation ones, relative


@torch.no_grad()
def randomize(module: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Move every parameter off its (often identity) initialisation, and initialise actnorms,
    so a check cannot pass merely because a layer starts as the identity."""
    for m in module.modules():
        if isinstance(m, ActNorm):
            m.initialized.fill_(True)
    for p in module.parameters():
        p.add_(scale * torch.randn_like(p))
    return module


def round_trip_tol(flow: torch.nn.Module) -> float:
    """The loosest round-trip tolerance any transform or layer inside states (``inverse_tol``:
    elementwise transforms, and flows with a numerical inverse such as the planar layer)."""
    stated = [m.inverse_tol for m in flow.modules() if isinstance(m, (ElementwiseTransform, Flow)) and hasattr(m, "inverse_tol")]
    return max([ROUND_TRIP_TOL] + stated)


def check_round_trip(flow: Flow, x: Tensor, context: Tensor | None = None, tol: float = ROUND_TRIP_TOL) -> None:
    z, ld = flow(x, context)
    x_back, ld_inv = flow.inverse(z, context)
    assert ld.shape == (x.shape[0],) and ld_inv.shape == (x.shape[0],)
    assert (x_back - x).abs().max().item() < tol
    # A log-det is a sum over every dimension: float64 rounds it relative to its size.
    assert (ld + ld_inv).abs().max().item() < tol * max(1.0, ld.abs().max().item())


def check_logdet_matches_jacobian(flow: Flow, x: Tensor, context: Tensor | None = None, tol: float = LOGDET_TOL) -> None:
    _, ld = flow(x, context)
    expected = jacobian_logdet(flow, x, context)
    assert (ld - expected).abs().max().item() < tol, (ld, expected)


def check_inverse_logdet_matches_jacobian(flow: Flow, x: Tensor, context: Tensor | None = None,
                                          tol: float = LOGDET_TOL) -> None:
    z, _ = flow(x, context)
    _, ld_inv = flow.inverse(z, context)
    expected = jacobian_logdet(flow.inverse, z, context)
    assert (ld_inv - expected).abs().max().item() < tol, (ld_inv, expected)


def check_every_parameter_gets_gradient(flow: Flow, x: Tensor, context: Tensor | None = None) -> None:
    flow.zero_grad()
    z, ld = flow(x, context)
    loss = (flat_parts(z) ** 2).sum() - ld.sum()
    loss.backward()
    missing = [n for n, p in flow.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient reaches {missing}"


def check_memory_saving_gradients(flow: Flow, x: Tensor, context: Tensor | None = None, tol: float = GRAD_TOL) -> None:
    """Backprop through the flow reconstructed from its output (memory saving) gives the
    gradients of the stored-activation pass, for the input, the context and every parameter."""
    g = torch.randn_like(flat_parts(flow(x, context)[0]))  # a random linear loss
    h = torch.randn(x.shape[0], dtype=x.dtype, device=x.device)
    results = []
    for saving in (False, True):
        flow.zero_grad()
        xi = x.clone().requires_grad_()
        ci = None if context is None else context.clone().requires_grad_()
        chain = Sequential(flow)
        chain.set_memory_saving(saving)
        z, ld = chain(xi, ci)
        ((flat_parts(z) * g).sum() + (ld * h).sum()).backward()
        results.append([xi.grad] + ([] if ci is None else [ci.grad]) + [p.grad for p in flow.parameters()])
    for a, b in zip(*results):
        assert a is not None and b is not None, "a gradient is missing"
        assert (a - b).abs().max().item() <= tol * max(1.0, a.abs().max().item())


def check_composition_with_inverse(flow: Flow, x: Tensor, context: Tensor | None = None, tol: float = ROUND_TRIP_TOL) -> None:
    """nflows' neatest test: a flow followed by its inverse is the identity with zero log-det,
    through the same cascade that composes every model."""
    y, ld = Sequential(flow, Inverse(flow))(x, context)
    assert (y - x).abs().max().item() < tol and ld.abs().max().item() < tol


def check_flow(flow: Flow, x: Parts, context: Tensor | None = None) -> None:
    """Every check, at the tolerances the flow's transforms state. A numerical inverse (a
    transform with a looser ``inverse_tol``) is not differentiated: its log-det is checked
    against the forward's by the round trip instead."""
    tol = round_trip_tol(flow)
    check_round_trip(flow, x, context, tol)
    check_logdet_matches_jacobian(flow, x, context)
    if tol <= ROUND_TRIP_TOL:
        check_inverse_logdet_matches_jacobian(flow, x, context)
    if any(True for _ in flow.parameters()):
        check_every_parameter_gets_gradient(flow, x, context)
    if not isinstance(flow(x, context)[0], (list, tuple)):  # a multi-scale body is no Flow
        check_memory_saving_gradients(flow, x, context, max(GRAD_TOL, 10 * tol))
        check_composition_with_inverse(flow, x, context, tol)

"""One harness that checks any flow the same way (STYLE.md, habit 6)."""

from __future__ import annotations

import torch

from nfgen.flows.actnorm import ActNorm
from nfgen.flows.base import Sequential


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


def _flat(out) -> torch.Tensor:
    if isinstance(out, (list, tuple)):
        return torch.cat([o.flatten(1) for o in out], dim=1)
    return out.flatten(1)


def check_round_trip(flow, x, tol=1e-10):
    z, ld = flow(x)
    x_back, ld_inv = flow.inverse(z)
    assert ld.shape == (x.shape[0],) and ld_inv.shape == (x.shape[0],)
    assert (x_back - x).abs().max().item() < tol
    assert (ld + ld_inv).abs().max().item() < tol
    return z, ld


def check_logdet_matches_jacobian(flow, x, tol=1e-8):
    _, ld = flow(x)
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        jac = torch.autograd.functional.jacobian(
            lambda v, xi=xi: _flat(flow(v.view_as(xi))[0])[0], xi.flatten()
        )
        expected = torch.linalg.slogdet(jac)[1]
        assert abs(ld[i].item() - expected.item()) < tol, (ld[i].item(), expected.item())


def check_inverse_logdet_matches_jacobian(flow, x, tol=1e-8):
    z, _ = flow(x)
    _, ld_inv = flow.inverse(z)
    for i in range(x.shape[0]):
        if isinstance(z, list):
            zi = [t[i : i + 1] for t in z]
            sizes = [t[0].numel() for t in zi]

            def f(v, zi=zi, sizes=sizes):
                parts = v.split(sizes)
                return flow.inverse([p.view_as(t) for p, t in zip(parts, zi)])[0].flatten()

            v0 = _flat(zi)[0]
        else:
            zi = z[i : i + 1]

            def f(v, zi=zi):
                return flow.inverse(v.view_as(zi))[0].flatten()

            v0 = zi.flatten()
        jac = torch.autograd.functional.jacobian(f, v0)
        assert abs(ld_inv[i].item() - torch.linalg.slogdet(jac)[1].item()) < tol


def check_every_parameter_gets_gradient(flow, x):
    flow.zero_grad()
    z, ld = flow(x)
    loss = (_flat(z) ** 2).sum() - ld.sum()
    loss.backward()
    missing = [n for n, p in flow.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient reaches {missing}"


def check_memory_saving_gradients(flow, x, tol=1e-9):
    """Backprop through the flow reconstructed from its output (``memory_saving``) gives the
    gradients of the stored-activation pass, for the input and every parameter."""
    g = torch.randn_like(x.new_empty(_flat(flow(x)[0]).shape))  # a random linear loss
    h = torch.randn(x.shape[0], dtype=x.dtype)
    results = []
    for saving in (False, True):
        flow.zero_grad()
        xi = x.clone().requires_grad_()
        z, ld = Sequential(flow, memory_saving=saving)(xi)
        ((_flat(z) * g).sum() + (ld * h).sum()).backward()
        results.append([xi.grad] + [p.grad for p in flow.parameters()])
    for a, b in zip(*results):
        assert (a - b).abs().max().item() <= tol * max(1.0, a.abs().max().item())


def check_flow(flow, x):
    check_round_trip(flow, x)
    check_logdet_matches_jacobian(flow, x)
    check_inverse_logdet_matches_jacobian(flow, x)
    if any(True for _ in flow.parameters()):
        check_every_parameter_gets_gradient(flow, x)
    if not isinstance(flow(x)[0], (list, tuple)):
        check_memory_saving_gradients(flow, x)

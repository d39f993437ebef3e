"""The log-det-versus-autograd check, shared by the test harness and ``nfgen check``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

Parts = Tensor | list[Tensor]  # a flow's input or output: one tensor, or a multi-scale list


def flat_parts(parts: Parts) -> Tensor:
    """``[B, D]``: every part of every sample, flattened and concatenated."""
    return torch.cat([p.flatten(1) for p in parts], dim=1) if isinstance(parts, (list, tuple)) else parts.flatten(1)


def _unflat(v: Tensor, like: Parts) -> Parts:
    """One sample's flat vector back into the shape of ``like`` (one sample of it)."""
    if not isinstance(like, (list, tuple)):
        return v.view_as(like)
    pieces = v.split([p[0].numel() for p in like])
    return [piece.view_as(p) for piece, p in zip(pieces, like)]


def jacobian_logdet(flow: Callable[..., tuple[Any, Tensor]], x: Parts, context: Tensor | None = None) -> Tensor:
    """``log|det d flow(x)[0] / dx|`` per sample (shape ``[B]``), from the dense autograd
    Jacobian of each sample: what a flow's analytic log-det must equal. ``flow`` is a flow or
    its ``inverse`` (any ``(x, context) -> (out, logdet)``); ``x`` and the output may be a list
    of tensors (a multi-scale latent). A singular Jacobian gives ``-inf``, a non-finite one NaN.
    The Jacobian is ``D x D``: use tiny inputs, in float64."""
    results = []
    for i in range(flat_parts(x).shape[0]):
        xi = [p[i : i + 1] for p in x] if isinstance(x, (list, tuple)) else x[i : i + 1]
        ci = None if context is None else context[i : i + 1]

        def fn(v: Tensor, xi: Parts = xi, ci: Tensor | None = ci) -> Tensor:
            return flat_parts(flow(_unflat(v, xi), ci)[0])[0]

        with torch.enable_grad():
            jac = torch.autograd.functional.jacobian(fn, flat_parts(xi)[0].detach(), vectorize=True)
        if not torch.isfinite(jac).all():
            results.append(jac.new_tensor(float("nan")))
        else:
            results.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(results)

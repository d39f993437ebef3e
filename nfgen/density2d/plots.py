"""Pictures of a 2-D fit (matplotlib, drawn off-screen: no pyplot, no global figure state).

``density_figure``: the target density, the learned density on the same grid and colour scale,
and a histogram of flow samples on that grid and scale (it matches the middle panel when the
flow's sampling direction and its density agree). ``training_figure``: the training curve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from nfgen.core.atomic import atomic_write
from nfgen.core.costs import check_figure


def histogram_density(points: Tensor, box: float, n: int) -> Tensor:
    """Empirical density ``[n, n]`` (rows: z2 from the bottom) of points on the grid of cells
    over ``[-box, box]^2``; normalised by all points, those outside the box included."""
    p = points.detach().double().cpu()
    h = 2 * box / n
    idx = torch.floor((p + box) / h).long()
    inside = ((idx >= 0) & (idx < n)).all(1)
    flat = idx[inside, 1] * n + idx[inside, 0]
    counts = torch.bincount(flat, minlength=n * n).double()
    return (counts / (len(p) * h * h)).view(n, n)


def _smooth(values: Sequence[float], width: int) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if width <= 1 or len(v) < width:
        return v
    kernel = np.ones(width) / width
    return np.convolve(v, kernel, mode="valid")


def density_figure(target: Tensor, learned: Tensor, samples: Tensor, box: float, target_title: str,
                   sample_title: str) -> Figure:
    """Three panels on one colour scale (0 to the target's maximum): target, learned, samples."""
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    vmax = float(target.max()) if torch.isfinite(target).any() and float(target.max()) > 0 else 1.0
    extent = (-box, box, -box, box)
    image = None
    for ax, values, title in zip(axes, (target, learned, samples), (target_title, "learned density q", sample_title)):
        image = ax.imshow(values.cpu().numpy(), origin="lower", extent=extent, cmap="viridis", vmin=0, vmax=vmax,
                          interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([-math.floor(box), 0, math.floor(box)])
        ax.set_yticks([-math.floor(box), 0, math.floor(box)])
    fig.colorbar(image, ax=list(axes), shrink=0.9, label="density")
    return fig


def training_figure(history: dict[str, list[float]], objective: str, reference: float | None) -> Figure:
    """Energy: the reverse KL estimate (``log Z - ELBO`` per batch) and the two estimates of
    ``log Z`` per batch, against the quadrature ``log Z`` (``reference``). Samples: train and
    test negative log-likelihood, against the true density's (``reference``: its mean test
    log-likelihood) where it is known."""
    energy = objective == "energy"
    fig = Figure(figsize=(10, 3.8) if energy else (5.5, 3.8))
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(1, 2)) if energy else [fig.subplots(1, 1)]
    steps = history["step"]
    width = max(1, len(steps) // 50)
    cut = steps[width - 1:] if len(steps) >= width else steps

    def curve(ax: Any, values: list[float], color: str, label: str) -> None:
        ax.plot(steps, values, color=color, alpha=0.25, lw=0.8)
        ax.plot(cut, _smooth(values, width), color=color, label=label)

    if energy:
        assert reference is not None
        left, right = axes
        kl = [reference - e for e in history["elbo"]]
        curve(left, kl, "tab:blue", "log Z - ELBO (batch)")
        left.axhline(0, color="black", lw=0.8)
        left.set_title("reverse KL(q || p), nats", fontsize=10)
        left.set_ylim(-0.1, max(float(np.percentile(kl, 95)) if kl else 1.0, 0.5))
        curve(right, history["elbo"], "tab:orange", "ELBO (lower bound)")
        curve(right, history["iw"], "tab:green", "importance-weighted")
        right.axhline(reference, color="black", ls="--", lw=1, label=f"quadrature log Z = {reference:.3f}")
        right.set_title("estimates of log Z (per batch)", fontsize=10)
        low = float(np.percentile(history["elbo"], 5)) if history["elbo"] else reference - 1
        right.set_ylim(min(low, reference - 0.5), reference + 0.5)
    else:
        (ax,) = axes
        curve(ax, history["nll"], "tab:blue", "train (batch)")
        ax.plot(history["test_step"], [-v for v in history["test_ll"]], "o-", color="tab:orange", ms=3, label="test")
        if reference is not None:
            ax.axhline(-reference, color="black", ls="--", lw=1, label=f"true density: {-reference:.3f}")
        ax.set_title("negative log-likelihood, nats", fontsize=10)
        if history["nll"]:
            ax.set_ylim(top=float(np.percentile(history["nll"], 90)))
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_png(fig: Figure, path: Path, dpi: int) -> None:
    """Written beside its target and renamed over it: a picture is whole or absent."""
    check_figure(*fig.get_size_inches(), dpi, f"the picture {path.name}", "eval.dpi")
    atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format="png"))


def to_image(fig: Figure, dpi: int) -> Tensor:
    """The figure as an RGB tensor ``[3, H, W]`` in ``[0, 1]`` (for TensorBoard)."""
    check_figure(*fig.get_size_inches(), dpi, "a TensorBoard picture", "eval.dpi")
    fig.set_dpi(dpi)
    canvas = fig.canvas
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255

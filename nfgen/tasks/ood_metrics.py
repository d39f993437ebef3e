"""How well a score separates in-distribution images from out-of-distribution ones.

Out-of-distribution is the positive class and a higher score means more anomalous, as in
Hendrycks & Gimpel (2017), "A baseline for detecting misclassified and out-of-distribution
examples", whose three measures these are:

- AUROC: the probability that a random out-of-distribution image scores above a random
  in-distribution one, ties counting one half (the trapezoid under the ROC curve).
- AUPR: the area under the precision-recall curve as average precision,
  ``sum_k (R_k - R_{k-1}) P_k`` over the distinct thresholds (no interpolation).
- FPR@95: the share of in-distribution images flagged at the highest threshold that flags at
  least 95% of the out-of-distribution ones.

Images with equal scores are flagged together: every threshold is a distinct score value.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nfgen.core.costs import check_figure


def _curve(in_scores: np.ndarray, out_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (false positives, true positives) flagging ``score >= t`` for each distinct
    score ``t``, highest first, starting from (0, 0)."""
    scores = np.concatenate([out_scores, in_scores]).astype(np.float64)
    positive = np.concatenate([np.ones(len(out_scores)), np.zeros(len(in_scores))])
    if np.isnan(scores).any() or not len(in_scores) or not len(out_scores):
        raise ValueError("scores must be non-empty and not NaN on both sides")
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    last_of_value = np.r_[scores[1:] != scores[:-1], True]  # one threshold per distinct value
    tp = np.cumsum(positive)[last_of_value]
    fp = np.cumsum(1 - positive)[last_of_value]
    return np.r_[0.0, fp], np.r_[0.0, tp]


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    fp, tp = _curve(in_scores, out_scores)
    x, y = fp / fp[-1], tp / tp[-1]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))  # trapezoids: a tie counts one half


def aupr(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    fp, tp = _curve(in_scores, out_scores)
    precision = tp[1:] / (tp[1:] + fp[1:])
    return float(np.sum(np.diff(tp / tp[-1]) * precision))


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr: float = 0.95) -> float:
    fp, tp = _curve(in_scores, out_scores)
    first = int(np.argmax(tp / tp[-1] >= tpr))  # the last point reaches 1, so one exists
    return float(fp[first] / fp[-1])


def separation(in_scores: np.ndarray, out_scores: np.ndarray) -> dict[str, float]:
    return {"auroc": auroc(in_scores, out_scores), "aupr": aupr(in_scores, out_scores),
            "fpr95": fpr_at_tpr(in_scores, out_scores)}


def format_table(metrics: dict[str, dict[str, dict[str, float]]], sizes: dict[str, int]) -> str:
    """``metrics[set][score] = {auroc, aupr, fpr95}`` as an aligned text table."""
    width = max([len(f"{s} ({sizes[s]})") for s in metrics] + [len("out-of-distribution set")])
    score_width = max(len(k) for m in metrics.values() for k in m)
    lines = [f"{'out-of-distribution set':<{width}}  {'score':<{score_width}}   AUROC    AUPR  FPR@95"]
    for name, by_score in metrics.items():
        for i, (score, m) in enumerate(by_score.items()):
            label = f"{name} ({sizes[name]})" if i == 0 else ""
            lines.append(f"{label:<{width}}  {score:<{score_width}}  {m['auroc']:6.3f}  {m['aupr']:6.3f}  {m['fpr95']:6.3f}")
    return "\n".join(lines)


def histogram(scores: dict[str, dict[str, np.ndarray]], in_name: str, names: Sequence[str], path: Path,
              title: str = "") -> None:
    """One panel per score (``names``), each set's scores as a density histogram on shared bins:
    the in-distribution set filled, every other set outlined. ``scores[set][score]``.

    Each panel spans the in-distribution scores' range widened by that range on both sides:
    where the sets overlap is what matters, and a flow's bits/dim of far-off images can be
    thousands of times its test set's. Scores outside are left out (each set's bars keep the
    height of its whole set's density) and their share is given in the legend."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    size = (3.3 * len(names), 2.8)
    check_figure(*size, 80, f"the histogram of {len(names)} scores", "the number of scores (--codec)")
    fig, axes = plt.subplots(1, len(names), figsize=size, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, score in zip(axes[0], names):
        ours = scores[in_name][score]
        width = float(ours.max() - ours.min()) or 1.0
        every = np.concatenate([s[score] for s in scores.values()])
        lo, hi = max(float(ours.min()) - width, float(every.min())), min(float(ours.max()) + width, float(every.max()))
        bins = np.linspace(lo, hi, 61)
        for i, (name, s) in enumerate(scores.items()):
            inside = s[score][(s[score] >= lo) & (s[score] <= hi)]
            off = 1 - len(inside) / len(s[score])
            label = f"{name} (in)" if name == in_name else name
            label += f", {off:.0%} off-scale" if off else ""
            style = ({"color": "0.6", "alpha": 0.7} if name == in_name
                     else {"histtype": "step", "lw": 1.4, "color": colours[(i - 1) % len(colours)]})
            weight = np.full(len(inside), 1 / (len(s[score]) * (bins[1] - bins[0])))
            ax.hist(inside, bins=bins, weights=weight, label=label, **style)
        ax.set_xlabel(f"{score} (higher = more anomalous)", fontsize=8)
        ax.set_yticks([])
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, frameon=False, loc="best")
    axes[0][0].set_ylabel("density", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)  # the dpi check_figure was given
    plt.close(fig)

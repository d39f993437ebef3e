"""The generative classifier behind ``nfgen classify``: a class-conditional flow's Bayes rule.

A conditional flow gives ``log p(x | y)`` for every class, so under a uniform class prior the
posterior is ``p(y | x) = softmax_y log p(x | y)`` and the Bayes classifier is
``argmax_y log p(x | y)``: no classifier is trained, the likelihoods decide. It is the plainest
check that conditioning works (a model that ignores its labels is at chance), and a known weak
classifier where the likelihood is dominated by what classes share (Fetaya et al., 2020,
"Understanding the limitations of conditional generative models"; Nalisnick et al., 2019,
"Hybrid models with deep and invertible features", train a flow's features for both).

Each image's classes are scored with the same dequantization draws
(``ImageFlow.log_prob_classes``), so the comparison between classes carries no noise of its
own; more draws (``n_samples``) tighten each ``log p(x | y)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from nfgen.core.costs import figure_side, format_count, max_pixels
from nfgen.model.image_flow import ImageFlow
from nfgen.tasks.evaluate import class_log_probs

MAX_ANNOTATED = 30  # classes up to which the picture writes each cell's count (more are unreadable)
MIN_NAMED_CELL = 14  # pixels a cell needs for its class name beside it: 10-point text at 100 dpi


@dataclass(frozen=True)
class Classification:
    """Per-image ``log p(x | y)`` (nats, float64 ``[N, K]``), the true labels ``[N]`` and the
    class names; everything else follows from them."""

    log_probs: Tensor
    labels: Tensor
    class_names: list[str]

    @property
    def posterior(self) -> Tensor:
        """``p(y | x)`` under a uniform class prior, ``[N, K]``."""
        return torch.softmax(self.log_probs, dim=1)

    @property
    def predicted(self) -> Tensor:
        return self.log_probs.argmax(dim=1)

    @property
    def accuracy(self) -> float:
        return (self.predicted == self.labels).double().mean().item()

    @property
    def correct(self) -> int:
        return int((self.predicted == self.labels).sum())

    def confusion(self) -> Tensor:
        """Counts ``[K, K]``: row = true class, column = predicted class."""
        k = len(self.class_names)
        return torch.bincount(self.labels * k + self.predicted, minlength=k * k).view(k, k)

    def records(self, names: Sequence[str] | None = None) -> list[dict]:
        """One dict per image: its name (a file, or its index in the split), true and predicted
        labels and the posterior."""
        names = names if names is not None else [str(i) for i in range(len(self.labels))]
        return [{"image": name, "label": int(y), "predicted": int(p), "posterior": post}
                for name, y, p, post in zip(names, self.labels.tolist(), self.predicted.tolist(),
                                            self.posterior.tolist())]


def classify(model: ImageFlow, batches: Iterable, class_names: Sequence[str], n_samples: int = 1,
             progress: bool = False) -> Classification:
    """The Bayes classifier ``argmax_y log p(x | y)`` (uniform class prior) on every image of
    ``batches`` (``[images, labels]``); ``n_samples`` > 1: importance-weighted likelihoods."""
    if len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model of {model.num_classes} classes")
    log_probs, labels = class_log_probs(model, batches, n_samples, progress)
    return Classification(log_probs, labels, list(class_names))


def format_confusion(result: Classification) -> str:
    """The confusion matrix as a table: a row per true class, a column per predicted class, and
    each row's recall (its diagonal count over its total)."""
    conf = result.confusion().tolist()
    names = result.class_names
    head = ["true \\ predicted", *names, "recall"]
    rows = [head] + [[name, *map(str, row), f"{row[i] / max(1, sum(row)):.3f}"] for i, (name, row) in enumerate(zip(names, conf))]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                     for r in rows)


def draw_confusion(result: Classification, path: str | Path, title: str = "") -> str | None:
    """The confusion matrix as a picture: each cell shaded by its share of the true class's
    images (rows sum to 1), with its count written in it; class names label the axes.

    Pictures are bounded by one rule (``costs.max_pixels``): with many classes (a 1,000-class
    model would want 45,000 pixels a side) the picture is drawn at the largest size under it,
    without the names where a cell is too small for them; the returned note says so (None when
    nothing was left out). The numbers are in the table and the JSON."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    conf = result.confusion()
    k = conf.shape[0]
    share = (conf.double() / conf.sum(1, keepdim=True).clamp(min=1)).numpy()
    dpi = 100
    wanted = max(3.5, 0.45 * k + 1.8)
    side = figure_side(wanted, 0.8, dpi)
    named = side * dpi / k >= MIN_NAMED_CELL  # pixels per cell
    note = None
    if side < wanted:
        note = (f"the confusion matrix of {k} classes is drawn at {round((side + 0.8) * dpi)} x {round(side * dpi)} "
                f"pixels, under the limit of {format_count(max_pixels())} for a picture, instead of "
                f"{round((wanted + 0.8) * dpi)} x {round(wanted * dpi)}"
                + ("" if named else ", without class names (too small to read)") + "; the JSON and the table hold every count")
    fig, ax = plt.subplots(figsize=(side + 0.8, side))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if named:
        ax.set_xticks(range(k), result.class_names, rotation=90 if max(map(len, result.class_names)) > 2 else 0)
        ax.set_yticks(range(k), result.class_names)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= MAX_ANNOTATED:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(conf[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(title or f"accuracy {result.accuracy:.3f} ({result.correct} of {len(result.labels)})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return note

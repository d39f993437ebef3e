"""Bits per dimension over a data split, with its standard error; what the number is called."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from nfgen.config.schema import Config
from nfgen.datasets.labels import split_batch
from nfgen.errors import NotALikelihoodError
from nfgen.model.image_flow import ImageFlow


def check_likelihood(model: ImageFlow | Config) -> None:
    """Refuse, in one line saying why, to measure bits/dim of a generation-mode model: a built
    one, or one a config describes (before it is trained: a script that tables bits/dim)."""
    if isinstance(model, ImageFlow):
        sigma = model.noise_sigma
    else:
        sigma = model.dequantization.sigma if model.dequantization.kind == "gaussian" else None
    if sigma is not None:
        raise NotALikelihoodError(
            f"this model was trained with Gaussian noise augmentation (sigma {sigma:g}): its density "
            "is of the noisy continuous image, not a likelihood of the discrete image, so it has no bits/dim; "
            "train with dequantization.kind uniform or variational to measure bits/dim")


@dataclass(frozen=True)
class Metric:
    """What training's per-image number is called: bits/dim of the discrete image (likelihood
    mode), or the noisy image's negative log-density in the same units (generation mode),
    which ``bpd`` would misname. Either way lower is better, and best.pt is chosen by it."""

    tag: str  # TensorBoard tags (train/<tag>, test/<tag>), the progress bar, the checkpoint
    text: str  # in sentences: "test <text> 3.1234"


LIKELIHOOD = Metric("bpd", "bits/dim")
NOISY_NLL = Metric("noisy_nll", "noisy-image NLL in bits/dim (not a likelihood)")


def metric(generation: bool) -> Metric:
    """The metric of a model in generation mode (Gaussian noise) or likelihood mode."""
    return NOISY_NLL if generation else LIKELIHOOD


@dataclass(frozen=True)
class BpdResult:
    bpd: float  # mean bits per dimension over the images
    stderr: float  # standard error of that mean (across images)
    nats_per_image: float
    n_images: int
    n_nonfinite: int  # images whose bound was NaN or infinite; they make bpd non-finite

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def bpd_values(model: ImageFlow, batches: Iterable, n_samples: int = 1,
               max_batches: int = 0, progress: bool = False) -> torch.Tensor:
    """Per-image bits/dim (float64, CPU) over ``batches`` (of images, or of ``[images, labels]``
    for a class-conditional model: then ``-log p(x | y)`` with the true labels); ``max_batches``
    > 0 stops early. In generation mode the noisy-image NLL (``Metric``), which training logs."""
    model.eval()
    values = []
    for i, batch in enumerate(tqdm(batches, desc="eval", disable=not progress, leave=False)):
        if max_batches and i >= max_batches:
            break
        x, labels = split_batch(batch)
        values.append(model.bits_per_dim(x, n_samples=n_samples, labels=labels).double().cpu())
    return torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)


def summarize(bpd: torch.Tensor, dims: int) -> BpdResult:
    """Mean, standard error across images, and the count of non-finite values."""
    if bpd.numel() == 0:
        raise ValueError("no images to evaluate")
    n = bpd.numel()
    mean = bpd.mean().item()
    stderr = bpd.std().item() / math.sqrt(n) if n > 1 else float("nan")
    return BpdResult(mean, stderr, mean * dims * math.log(2), n, int((~torch.isfinite(bpd)).sum()))


def evaluate_bpd(model: ImageFlow, batches: Iterable, n_samples: int = 1,
                 max_batches: int = 0, progress: bool = False) -> BpdResult:
    """Exact bits/dim (the dequantization bound, or its importance-weighted estimate with
    ``n_samples`` > 1) over every image of ``batches``; a generation-mode model is refused
    (``NotALikelihoodError``): it has no bits/dim."""
    check_likelihood(model)
    return summarize(bpd_values(model, batches, n_samples, max_batches, progress), model.dims)


@torch.no_grad()
def class_log_probs(model: ImageFlow, batches: Iterable, n_samples: int = 1,
                    progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p(x | y)`` in nats for every image of ``batches`` (``[images, labels]``) and every
    class y, each image's classes scored with the same dequantization draws
    (``ImageFlow.log_prob_classes``): float64 ``[N, K]`` on the CPU, and the true labels ``[N]``.
    The shared core of conditional ``eval-bpd`` and the generative classifier; a class-conditional
    likelihood-mode model only."""
    check_likelihood(model)
    if not model.num_classes:
        raise ValueError("this model is unconditional: it has no per-class likelihoods")
    model.eval()
    values, labels = [], []
    for batch in tqdm(batches, desc="classes", disable=not progress, leave=False):
        x, y = split_batch(batch)
        if y is None:
            raise ValueError("per-class likelihoods need the images' true labels")
        values.append(model.log_prob_classes(x, n_samples).double().cpu())
        labels.append(y.long().cpu())
    if not values:
        raise ValueError("no images to evaluate")
    return torch.cat(values), torch.cat(labels)


@dataclass(frozen=True)
class ConditionalBpd:
    """A class-conditional model's bits/dim on a split: ``conditional``, ``-log p(x | y)`` with
    each image's true label; ``marginal``, ``-log p(x)`` with ``p(x) = mean_y p(x | y)`` (a
    uniform class prior: the unconditional model the conditional one defines)."""

    conditional: BpdResult
    marginal: BpdResult
    num_classes: int


def conditional_bpd(log_probs: torch.Tensor, labels: torch.Tensor, dims: int) -> ConditionalBpd:
    """Both bits/dim from ``class_log_probs``' ``[N, K]`` nats and true labels. Per image the
    marginal lies between the best and the worst class's bits/dim, and at most ``log2(K) / D``
    above the true class's."""
    k = log_probs.shape[1]
    to_bpd = -1.0 / (dims * math.log(2))
    conditional = log_probs.gather(1, labels[:, None])[:, 0] * to_bpd
    marginal = (torch.logsumexp(log_probs, 1) - math.log(k)) * to_bpd
    return ConditionalBpd(summarize(conditional, dims), summarize(marginal, dims), k)

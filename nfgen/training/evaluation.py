"""Training's evaluation: test bits/dim (generation mode: the noisy image's NLL) over the test
split, each rank on its share, gathered; on a forked RNG so it never shifts the training noise."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Subset

from nfgen.config.schema import Config
from nfgen.model.image_flow import ImageFlow
from nfgen.tasks.evaluate import BpdResult, bpd_values, summarize
from nfgen.training import distributed
from nfgen.training.distributed import Rank
from nfgen.training.loaders import data_loader, iterate
from nfgen.training.rng import forked_rng


class Evaluation:
    """``measure`` is what the trainer calls at every evaluation, and what the time budget times."""

    def __init__(self, test_set: Dataset, cfg: Config, rank: Rank, device: torch.device) -> None:
        self.cfg, self.t, self.rank, self.device = cfg, cfg.train, rank, device
        self.share = Subset(test_set, range(rank.rank, len(test_set), rank.world_size))  # this rank's images
        self.local_batch = cfg.train.batch_size // rank.world_size

    def test_batches(self) -> Iterator:
        """This rank's test batches, in order (each ``[images, labels]`` for labelled data)."""
        return iterate(data_loader(self.share, self.local_batch, self.cfg.data.num_workers, self.device))

    def batches(self) -> int:
        """How many batches one evaluation reads on this rank (``train.eval_batches`` bounds it)."""
        n = math.ceil(len(self.share) / self.local_batch)
        return min(n, self.t.eval_batches) if self.t.eval_batches else n

    def measure(self, model: ImageFlow, max_batches: int | None = None) -> BpdResult:
        """The evaluation over all ranks' test images (``max_batches`` per rank, default
        ``train.eval_batches``); every rank calls it. Seeded per rank, on a forked RNG."""
        with forked_rng(self.device):
            torch.manual_seed(self.t.seed + 1 + self.rank.rank)
            batches = self.test_batches()
            try:
                values = bpd_values(model, batches, max_batches=self.t.eval_batches if max_batches is None
                                    else max_batches)
            finally:
                batches.close()
            return summarize(distributed.gather(values, self.rank), model.dims)

"""The batch stream training pulls from: which images, in which order, on which rank, with which
noise, label-dropout and flip draws.

Exact resume rests here. The order of an epoch is fixed by (seed, epoch); a stream started at a
position (epoch, global batches of it already trained on) replays exactly what an uninterrupted
run would have drawn from there. Each rank takes its slice of every global batch (each image
with its label) and of one global noise draw, so N processes compute what one process would.

The stream never touches the run's progress: each item says the position *after* its batch, and
the loop records it (``Progress``) when it trains on the batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Protocol

import torch
from torch import Tensor
from torch.utils.data import Dataset

from nfgen.config.schema import Config
from nfgen.datasets.labels import split_batch, take
from nfgen.model.image_flow import ImageFlow
from nfgen.training.augment import flip_draws, hflip
from nfgen.training.distributed import Rank
from nfgen.training.loaders import data_loader, iterate
from nfgen.training.step import MicroBatch


class Drawn(NamedTuple):
    """One micro-batch and the stream's position after it: ``epoch`` and the global batches of
    that epoch drawn so far (``Progress.epoch`` / ``Progress.batch_in_epoch``)."""

    batch: MicroBatch
    epoch: int
    batch_in_epoch: int


class BatchStream:
    """Endless training micro-batches from ``train_set`` for ``rank``, with ``model``'s noise draws
    (on the global RNG, which checkpoints save and restore) and ``cfg``'s order, flips and label
    dropout. ``local_batch`` is this rank's share of ``train.batch_size``."""

    def __init__(self, train_set: Dataset, model: ImageFlow, cfg: Config, rank: Rank, device: torch.device) -> None:
        self.train_set, self.model, self.cfg, self.rank, self.device = train_set, model, cfg, rank, device
        self.global_batch = cfg.train.batch_size
        self.local_batch = self.global_batch // rank.world_size
        self.drops = model.num_classes > 0 and model.label_dropout > 0

    def epoch_order(self, epoch: int) -> Tensor:
        """The permutation of the training images in ``epoch``, the same on every rank."""
        seed = self.cfg.train.seed * 100_003 + epoch
        return torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(seed))

    def first_batch(self) -> tuple[Tensor, Tensor | None]:
        """The first global batch of the run (images, labels): actnorm's data-dependent init."""
        return take(self.train_set, self.epoch_order(0)[: self.global_batch].tolist())

    def batches(self, epoch: int = 0, batch_in_epoch: int = 0) -> Iterator[Drawn]:
        """Endless micro-batches from the position (``epoch``, ``batch_in_epoch``) on. Close the
        generator to shut the loader's workers down."""
        big, small, r = self.global_batch, self.local_batch, self.rank.rank
        while True:
            order = self.epoch_order(epoch)
            mine = [int(order[g * big + r * small + j])
                    for g in range(batch_in_epoch, len(order) // big) for j in range(small)]
            # The loader gets its own generator: otherwise each new loader iterator draws a worker
            # seed from the global RNG, and the extra loader a resume creates would shift the
            # dequantization noise of every later step.
            loader = data_loader(self.train_set, small, self.cfg.data.num_workers, self.device, mine,
                                 torch.Generator().manual_seed(epoch))
            batches = iterate(loader)
            try:
                for batch in batches:
                    batch_in_epoch += 1
                    yield Drawn(self._draw(batch, epoch, batch_in_epoch), epoch, batch_in_epoch)
            finally:
                batches.close()  # shut the workers down now, also when this generator is closed
            epoch, batch_in_epoch = epoch + 1, 0

    def _draw(self, batch: object, epoch: int, batch_in_epoch: int) -> MicroBatch:
        """This rank's slice of the global draws for one batch: flips, noise, label dropout."""
        big, small, r = self.global_batch, self.local_batch, self.rank.rank
        mine = slice(r * small, (r + 1) * small)
        x, labels = split_batch(batch)
        if self.cfg.data.hflip:
            x = hflip(x, flip_draws(self.cfg.train.seed, epoch, batch_in_epoch, big)[mine])
        noise = self.model.draw_noise(big)[mine]
        # None (no draw) when nothing is dropped: N ranks drop the labels one process would.
        drop = torch.rand(big, device=self.device)[mine] if self.drops else None
        return MicroBatch(x, noise, labels, drop)


class StreamFactory(Protocol):
    """What ``TrainerParts.stream`` is: ``BatchStream`` itself, or a test's faulty stream."""

    def __call__(self, train_set: Dataset, model: ImageFlow, cfg: Config, rank: Rank,
                 device: torch.device) -> BatchStream: ...

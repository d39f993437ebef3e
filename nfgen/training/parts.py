"""The parts a ``Trainer`` is handed besides its model, data and logger; each defaults to what
the config says. A test injects a fault by passing a faulty part (a stream that poisons a batch,
a write policy whose disk is full), not by patching a class."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from nfgen.training.budget import Budget
from nfgen.training.divergence import DivergencePolicy
from nfgen.training.stream import BatchStream, StreamFactory
from nfgen.training.writes import SideWrites


@dataclass(frozen=True)
class TrainerParts:
    """Each part, or None / its default for the one the config makes. A ``Budget`` holds one
    job's measurements: pass a new one per job."""

    stream: StreamFactory = BatchStream  # called with (train set, model, config, rank, device)
    budget: Budget | None = None  # train.max_time's stop rule; None: the config's, on ``clock``
    divergence: DivergencePolicy | None = None  # None: train.on_divergence
    clock: Callable[[], float] = time.monotonic  # seconds, for the default budget (the console reads the budget's)
    # Checkpoints, grids and TensorBoard events but the final last.pt: warn and go on (shared with
    # the logger); None: warn on stderr.
    writes: SideWrites | None = None

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
    """``stream``: builds the batch stream from (train set, model, config, rank, device).
    ``budget``: ``train.max_time``'s stop rule (None: from the config, on ``clock``); it holds
    one job's measurements, so pass a new one per job. ``divergence``: ``train.on_divergence``
    (None: from the config). ``clock``: seconds, for the default budget and the console's pace.
    ``writes``: the policy for checkpoints, grids and TensorBoard events besides the final
    ``last.pt`` (None: warn on stderr and go on), shared by the trainer and its logger."""

    stream: StreamFactory = BatchStream
    budget: Budget | None = None
    divergence: DivergencePolicy | None = None
    clock: Callable[[], float] = time.monotonic
    writes: SideWrites | None = None

"""DataLoader workers and stop signals: only the main process handles SIGINT / SIGTERM."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.utils.data import DataLoader, Dataset

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def stop_signals_to(handler: Callable[[int, object], None]) -> Iterator[None]:
    """SIGINT and SIGTERM go to ``handler`` (which notes the stop for the loop to act on at a
    safe point) while the block runs; the previous handlers come back after it."""
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def worker_ignores_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT / SIGTERM to the main process. Slurm's scancel, timeout
    and Ctrl-C signal the whole process group; a worker killed by it makes torch raise "DataLoader
    worker exited unexpectedly" in the main process before it can save. Ignoring the signals
    here replaces the handler torch installs (which re-raises them); the main process then stops
    its workers through the loader's own shutdown. The signals arrive blocked (``iterate``), so
    one sent while the worker started is discarded here, not fatal."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def iterate(loader: DataLoader) -> Iterator:
    """Iterate ``loader``, starting its workers with SIGINT / SIGTERM blocked so that no worker
    can die of a stop signal between its birth and ``worker_ignores_stop_signals``; a signal to
    the main process in that moment stays pending and is handled right after. Closing the
    generator drops the iterator, which shuts the workers down."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        it = iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    yield from it


def data_loader(dataset: Dataset, batch_size: int, num_workers: int, device: torch.device,
                sampler: list[int] | None = None, generator: torch.Generator | None = None) -> DataLoader:
    """Training's and evaluation's loader: with a ``sampler`` (training's indices) incomplete
    batches are dropped; workers leave stop signals to the main process."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=sampler is not None,
                      num_workers=num_workers, pin_memory=device.type == "cuda", generator=generator,
                      worker_init_fn=worker_ignores_stop_signals)

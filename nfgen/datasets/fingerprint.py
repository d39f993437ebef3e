"""Content fingerprints: the one way nfgen keys anything it keeps between runs.

A value kept on disk (a cache) is keyed by the content that produced it, never by a name or a
path: the same name can hold other bytes later (a ``last.pt`` that training replaces, a folder
whose images were edited or deleted). Two kinds of content:

- a file's bytes, hashed while they are read, so the hash is of the bytes that were used
  (``read_hashed``), not of whatever the name holds when the result is saved;
- data as the model sees it: the decoded uint8 images (and labels) in order, with their shapes
  and types (``Fingerprint``), so the same pictures in other files or another container give
  the same key, and any changed pixel, label, order or count another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import torch

from nfgen.datasets.labels import split_batch


def read_hashed(path: str | Path) -> tuple[bytes, str]:
    """``path``'s bytes and their sha256 (hex), from one read."""
    data = Path(path).read_bytes()
    return data, hashlib.sha256(data).hexdigest()


class Fingerprint:
    """A running sha256 over tensors (their dtype, shape and bytes, in order)."""

    def __init__(self) -> None:
        self._images, self._labels = hashlib.sha256(), hashlib.sha256()
        self.count = 0  # items (images) seen
        self.labelled = False

    def batch(self, batch: torch.Tensor | list[torch.Tensor]) -> None:
        """A loader's batch (images, or ``[images, labels]``), item by item: the same items give
        the same fingerprint whatever the batch size."""
        images, labels = split_batch(batch)
        images = images.detach().to("cpu").contiguous()
        for image in images:
            self._images.update(f"{image.dtype}{tuple(image.shape)};".encode())
            self._images.update(image.numpy().tobytes())
        if labels is not None:
            self.labelled = True
            self._labels.update(labels.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
        self.count += len(images)

    def hexdigest(self) -> str:
        labels = f"+labels:{self._labels.hexdigest()}" if self.labelled else ""
        return f"{self.count} images:{self._images.hexdigest()}{labels}"


def of_batches(batches: Iterable) -> str:
    """The fingerprint of every batch of a loader, in order."""
    f = Fingerprint()
    for b in batches:
        f.batch(b)
    return f.hexdigest()

"""Reference statistics cached on disk, keyed by the reference images' content and the features'
weights: a second evaluation against the same reference pays only for the samples, and a changed
image (same file name, new pixels) or a retrained feature network misses the cache."""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nfgen.datasets.fingerprint import Fingerprint
from nfgen.tasks.fidelity.metrics import Stats

FORMAT = 1  # bump when what an entry holds changes


@dataclass
class Reference:
    """A reference set's features (float64 ``[N, F]``), their FID statistics, class logits when
    the features have them, and the keys it was computed under."""

    features: Tensor
    stats: Stats
    logits: Tensor | None
    content_sha256: str
    features_sha256: str

    @property
    def n(self) -> int:
        return len(self.features)


def content_sha256(batches: Iterable[Tensor]) -> tuple[str, int]:
    """A key over the images (uint8 ``[B, C, H, W]`` batches, in order: ``nfgen.datasets.fingerprint``'s,
    the same whatever the batch size) and how many there were."""
    f = Fingerprint()
    for x in batches:
        if x.dtype != torch.uint8:
            raise TypeError(f"reference images must be uint8, got {x.dtype}")
        f.batch(x)
    return hashlib.sha256(f.hexdigest().encode()).hexdigest(), f.count


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "nfgen" / "fid"


def entry_path(cache_dir: Path, content: str, features: str) -> Path:
    return Path(cache_dir) / f"ref-{features[:16]}-{content[:16]}.pt"


def load(cache_dir: Path, content: str, features: str) -> Reference | None:
    """The cached reference for these keys, or None (absent, unreadable, or another key: a
    16-hex-digit prefix collision is checked against the full hashes stored inside)."""
    path = entry_path(cache_dir, content, features)
    if not path.is_file():
        return None
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError):
        return None
    if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("content_sha256") != content \
            or d.get("features_sha256") != features:
        return None
    stats = Stats(d["mu"].numpy(), d["sigma"].numpy())
    return Reference(d["features"].double(), stats, d.get("logits"), content, features)


def save(cache_dir: Path, ref: Reference) -> Path:
    """Write atomically (a temporary file renamed over the entry): a reader never sees half a file."""
    path = entry_path(cache_dir, ref.content_sha256, ref.features_sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save({"format": FORMAT, "content_sha256": ref.content_sha256, "features_sha256": ref.features_sha256,
                "mu": torch.from_numpy(np.ascontiguousarray(ref.stats.mu)),
                "sigma": torch.from_numpy(np.ascontiguousarray(ref.stats.sigma)),
                "features": ref.features.float(), "logits": ref.logits}, tmp)
    os.replace(tmp, path)
    return path

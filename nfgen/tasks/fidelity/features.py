"""Feature extractors for sample-quality metrics: the FID Inception network (torch-fidelity's
port of the TensorFlow graph, with the ``pt_inception-2015-12-05`` weights every paper's FID is
computed with) or a user's TorchScript module. Each is named by a hash of its weights, so cached
reference statistics are only reused with the very same features.

Why torch-fidelity rather than torchmetrics: torchmetrics' FID wraps this same extractor
(``NoTrainInceptionV3`` subclasses torch-fidelity's), so the numbers are the same, and
torch-fidelity also ships KID and the k-NN precision/recall, which nfgen then does not write again.
"""

from __future__ import annotations

import io
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import torch
from torch import Tensor

from nfgen.datasets.fingerprint import read_hashed
from nfgen.errors import FeaturesError, MissingExtraError

INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[1]



def need_torch_fidelity() -> None:
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise MissingExtraError("eval-fid needs torch-fidelity: pip install 'nfgen[fid]'") from None


@dataclass
class Features:
    """Images (uint8 ``[B, C, H, W]``) to feature vectors ``[B, F]``; ``logits`` (optional) to
    class logits ``[B, K]``. ``sha256`` names the weights (the cache key's half)."""

    kind: str  # "inception" or "torchscript"
    path: str
    sha256: str
    extract: Callable[[Tensor], Tensor]
    logits: Callable[[Tensor], Tensor] | None = None

    def record(self) -> dict:
        what = ("Inception-v3 pool3 (2048), pt_inception-2015-12-05 weights (torch-fidelity), grey images "
                "replicated to 3 channels, resized to 299 as TensorFlow 1 does" if self.kind == "inception"
                else "TorchScript module on float images in [0, 1] at the data's size and channels")
        return {"kind": self.kind, "path": self.path, "sha256": self.sha256, "what": what,
                "has_logits": self.logits is not None}


def inception_cache_path() -> Path:
    """Where torch-fidelity (through ``torch.hub``) keeps the weights: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def inception_weights(path: Path | None = None,
                      fetch: Callable[[str, str], None] = torch.hub.download_url_to_file) -> Path:
    """The Inception weights file: ``path`` if given, else torch.hub's cache, downloaded there
    when missing (``fetch``). Offline, a one-line ``FeaturesError`` says where to put the file."""
    if path is not None:
        if not Path(path).is_file():
            raise FeaturesError(f"--inception-weights {path}: no such file; download {INCEPTION_URL} "
                                "(the pt_inception-2015-12-05 weights FID is defined with) to it")
        return Path(path)
    cached = inception_cache_path()
    if cached.is_file():
        return cached
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        fetch(INCEPTION_URL, str(cached))
    except (URLError, OSError, RuntimeError) as e:
        raise FeaturesError(f"the FID Inception weights are not in {cached} and could not be downloaded "
                            f"({type(e).__name__}); download {INCEPTION_URL} to {cached}, or pass "
                            "--inception-weights PATH") from None
    return cached


def inception_features(weights: Path, device: torch.device) -> Features:
    """torch-fidelity's FID Inception (pool3, 2048 features) from a weights file."""
    need_torch_fidelity()
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                          feature_extractor_weights_path=str(weights)).to(device)
    except (RuntimeError, KeyError, OSError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise FeaturesError(f"{weights} is not the FID Inception weights file ({type(e).__name__}); download "
                            f"{INCEPTION_URL}") from None

    def extract(images: Tensor) -> Tensor:
        if images.shape[1] == 1:  # grey: the standard way, the same value in R, G and B
            images = images.expand(-1, 3, -1, -1)
        return net(images.to(device))[0]

    return Features("inception", str(weights), read_hashed(weights)[1], extract)


def torchscript_features(path: Path, device: torch.device) -> Features:
    """A TorchScript module mapping float images in [0, 1] ``[B, C, H, W]`` to ``[B, F]``; its
    exported ``logits`` method, if any, gives class logits (the classifier-read share)."""
    if not Path(path).is_file():
        raise FeaturesError(f"--features {path}: no such file; give a TorchScript module (torch.jit.save)")
    data, sha256 = read_hashed(path)  # the key is of the bytes loaded, not of what the name holds later
    try:
        with warnings.catch_warnings():  # torch >= 2.10 calls TorchScript deprecated; it still loads
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(io.BytesIO(data), map_location=device).eval()
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FeaturesError(f"--features {path} is not a TorchScript module ({first}); save one with "
                            "torch.jit.save(torch.jit.script(net), PATH)") from None

    def run(fn: Callable[[Tensor], Tensor], what: str) -> Callable[[Tensor], Tensor]:
        def call(images: Tensor) -> Tensor:
            x = images.to(device=device, dtype=torch.float32) / 255.0
            try:
                out = fn(x)
            except (RuntimeError, ValueError) as e:
                first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                raise FeaturesError(f"--features {path}: its {what} failed on images of shape {list(x.shape)} "
                                    f"({first}); it must take the data's own channels and size") from None
            if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
                got = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise FeaturesError(f"--features {path}: its {what} must return [B, F] for B images, got {got} "
                                    f"for {x.shape[0]}")
            return out.float()

        return call

    logits = run(module.logits, "logits method") if hasattr(module, "logits") else None
    return Features("torchscript", str(path), sha256, run(module, "forward"), logits)

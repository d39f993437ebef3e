"""Data sets as uint8 image tensors ``[C, H, W]`` (values 0..255, no labels), and their loaders.

Wraps ``torchvision.datasets.MNIST`` and ``CIFAR10`` (their own on-disk formats and downloads)
and a folder of the user's images (any of ``torchvision.datasets.folder.IMG_EXTENSIONS``),
with torchvision transforms doing the pixel work. Every user-facing problem is a
``DataError`` with a one-line message that says what to do.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from urllib.error import URLError

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from nfgen.config import Config, check_data_matches_model

SPLITS = ("train", "test")


class DataError(Exception):
    """A data set that cannot be loaded, with a one-line message saying what to do."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker's error reaches the main process as DataError("Caught DataError in
        # DataLoader worker ...\nOriginal Traceback ...\nnfgen.data.DataError: <message>"): keep
        # only the message, so the user sees one line and no traceback.
        if "Original Traceback" in message:
            message = message.strip().splitlines()[-1].removeprefix(f"{__name__}.DataError: ")
        super().__init__(message)


class ImagesOnly(Dataset[torch.Tensor]):
    """A torchvision data set's ``(image, label)`` items with the label dropped."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.base[index][0]


class ImageFiles(Dataset[torch.Tensor]):
    """Image files read with PIL, converted to ``mode`` ("L" or "RGB"), scaled so the shorter side
    covers ``size`` (H, W), center-cropped to it (``transforms.Resize`` + ``CenterCrop``)."""

    def __init__(self, files: list[Path], mode: str, size: tuple[int, int]) -> None:
        self.files = files
        self.mode = mode
        # Resize(int) sets the shorter side; max(H, W) makes both sides cover a non-square crop.
        self.transform = transforms.Compose(
            [transforms.Resize(max(size)), transforms.CenterCrop(size), transforms.PILToTensor()]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.files[index]
        try:
            with Image.open(path) as img:
                img = img.convert(self.mode)  # decodes the whole file: corrupt data fails here
        # PIL reports bad files as OSError (UnidentifiedImageError, truncated), SyntaxError
        # (broken PNG chunks) or ValueError; DecompressionBombError for absurd sizes.
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot read image {path} ({e}): fix or delete the file") from None
        return self.transform(img)


def load_split(cfg: Config, split: str) -> Dataset[torch.Tensor]:
    """The "train" or "test" split of ``cfg.data``, each item a uint8 tensor of shape
    ``cfg.model.image_shape``. Raises ``DataError`` (or ``ConfigError`` if the data set cannot
    produce that shape)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    check_data_matches_model(cfg)
    if cfg.data.dataset == "folder":
        return _folder_split(cfg, split)
    return _torchvision_split(cfg, split == "train")


def _torchvision_split(cfg: Config, train: bool) -> Dataset[torch.Tensor]:
    d = cfg.data
    root = Path(d.root)
    if d.dataset == "mnist":
        cls, name, where = datasets.MNIST, "MNIST", root / "MNIST" / "raw"
        # MNIST is 28x28; at 32x32 it is zero-padded 2 pixels a side (as openai/glow does), so
        # that squeezing can halve it more times.
        pad = (cfg.model.image_shape[1] - 28) // 2
    else:
        cls, name, where, pad = datasets.CIFAR10, "CIFAR-10", root / "cifar-10-batches-py", 0
    steps: list[torch.nn.Module] = [transforms.Pad(pad, fill=0)] if pad else []
    transform = transforms.Compose([*steps, transforms.PILToTensor()])
    try:
        base = cls(root=str(root), train=train, download=d.download, transform=transform)
    except (RuntimeError, URLError, OSError) as e:
        # torchvision says "Dataset not found ..." (RuntimeError) when files are missing (or, for
        # CIFAR-10, fail their md5 check); a failed download is a RuntimeError listing each mirror
        # (MNIST) or a bare URLError (CIFAR-10). Its last line is the cause.
        if not d.download:
            raise DataError(
                f"{name} not found (or corrupt) under {root}/ and data.download is false: set "
                f"data.download: true (or --set data.download=true), or put the files in {where}"
            ) from None
        cause = str(getattr(e, "reason", e)).strip().splitlines()[-1:] or [type(e).__name__]
        raise DataError(
            f"could not download {name} into {where} ({cause[0]}): check the internet connection, "
            f"or download it on another machine and copy the files into {where}"
        ) from None
    except (AssertionError, TypeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as e:
        # torchvision's readers assert on (or cannot unpickle) files in the wrong format.
        raise DataError(
            f"{name} files under {where} are unreadable ({type(e).__name__}: {e}): delete them and "
            f"download again (data.download: true)"
        ) from None
    return ImagesOnly(base)


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted; hidden files and folders (e.g. macOS
    ``._name.png`` resource forks, which are not images) are skipped."""
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMG_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )


def _hash_key(path: Path, root: Path) -> bytes:
    # A hash of the relative path, unlike Python's per-process randomised hash(), ranks files the
    # same way on every run and machine, and does not follow file names (0001.png, 0002.png, ...).
    return hashlib.sha256(path.relative_to(root).as_posix().encode()).digest()


def _folder_split(cfg: Config, split: str) -> Dataset[torch.Tensor]:
    root = Path(cfg.data.root)
    if not root.is_dir():
        raise DataError(f"image folder {root} not found: create it, or point data.root at your images")
    c, h, w = cfg.model.image_shape
    has = {s: (root / s).is_dir() for s in SPLITS}
    if all(has.values()):
        files = _image_files(root / split)
        if not files:
            raise DataError(f"no images in {root / split}: add images ({', '.join(IMG_EXTENSIONS)})")
    elif any(has.values()):
        there, missing = ("train", "test") if has["train"] else ("test", "train")
        raise DataError(
            f"{root} has {there}/ but no {missing}/: add {root / missing} with images, or remove "
            f"{there}/ to hold out data.test_fraction of all images"
        )
    else:
        files = _image_files(root)
        if len(files) < 2:
            raise DataError(
                f"{len(files)} images in {root} (searched recursively for {', '.join(IMG_EXTENSIONS)}): "
                f"a train and a test split need at least 2"
            )
        # round(n * fraction) files, at least 1 and leaving at least 1, lowest hashes held out.
        n_test = min(max(round(len(files) * cfg.data.test_fraction), 1), len(files) - 1)
        held_out = set(sorted(files, key=lambda p: _hash_key(p, root))[:n_test])
        files = [p for p in files if (p in held_out) == (split == "test")]
    _check_headers(files)
    return ImageFiles(files, "L" if c == 1 else "RGB", (h, w))


def _check_headers(files: list[Path]) -> None:
    """Open every file's header before training starts (cheap: no pixels are decoded), so a
    non-image or a broken file is reported now rather than hours into a run."""
    for path in files:
        try:
            with Image.open(path) as img:
                img.size  # noqa: B018 - parsing the header is the check
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot read image {path} ({e}): fix or delete the file") from None


def make_loader(dataset: Dataset[torch.Tensor], batch_size: int, shuffle: bool, num_workers: int,
                pin_memory: bool, generator: torch.Generator | None = None,
                drop_last: bool = False) -> DataLoader[torch.Tensor]:
    """A ``torch.utils.data.DataLoader`` of uint8 batches ``[B, C, H, W]``. A seeded ``generator``
    fixes the shuffle order (and the workers' seeds); workers persist between epochs."""
    n = len(dataset)  # type: ignore[arg-type]
    if drop_last and n < batch_size:
        raise DataError(f"{n} images is fewer than one batch of {batch_size}: lower train.batch_size")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      pin_memory=pin_memory, generator=generator, drop_last=drop_last,
                      persistent_workers=num_workers > 0)

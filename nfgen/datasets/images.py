"""Images read from files: a folder of the user's images (any format Pillow reads, by extension:
``IMAGE_EXTENSIONS``), listed recursively through symbolic links (each real file once), split into
train and test by ``train/`` and ``test/`` subfolders or by a hash of each path, with classes from
class subfolders (``data.labels``); every header opened before training starts. ``ImageFiles``
decodes, converts (``image_modes.to_mode``) and resizes them; CelebA and van den Oord's
downsampled ImageNet read their images through it too.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision import transforms

from nfgen.core.costs import check_image
from nfgen.datasets.image_modes import SUPPORTED, ModeError, to_mode
from nfgen.datasets.registry import SPLITS
from nfgen.errors import DataError

if TYPE_CHECKING:
    from nfgen.config.schema import Config

# Every format Pillow can read (GIF, ICO, TGA, ... besides torchvision's list): an image in a
# folder is read, or refused loudly if it cannot be decoded, never skipped for its format.
# Pillow's stubs for scientific data, video and vector formats (they need other software to
# decode) are not images to it: such files are skipped, and reported, like any other non-image.
_NOT_RASTER = {"BUFR", "GRIB", "HDF5", "FITS", "MPEG", "WMF", "EPS"}
IMAGE_EXTENSIONS = tuple(sorted(e for e, f in Image.registered_extensions().items()
                                if f in Image.OPEN and f not in _NOT_RASTER))
FORMATS_HINT = "any format Pillow reads: .png, .jpg, .gif, .webp, .bmp, .tif, ..."
NULL_CLASS = "null"  # --label null: the null class; no class folder may take its name


class ImageFiles(Dataset[torch.Tensor]):
    """Image files read with PIL, turned upright by their EXIF orientation, converted to ``mode``
    ("L" or "RGB") by ``to_mode``'s rules, optionally center-cropped to a ``crop`` square, then
    scaled so the shorter side covers ``size`` (H, W), center-cropped to it (``transforms.Resize``,
    bilinear with antialiasing, + ``CenterCrop``)."""

    def __init__(self, files: list[Path], mode: str, size: tuple[int, int], crop: int | None = None) -> None:
        self.files = files
        self.skipped: list[Path] = []  # load_folder's: files under the folder that are not images
        self.mode = mode
        self.size = size
        # crop: a center square cut first (CelebA's 148x148), before the resize.
        first = [transforms.CenterCrop(crop)] if crop else []
        # Resize(int) sets the shorter side; max(H, W) makes both sides cover a non-square crop.
        self.transform = transforms.Compose(
            [*first, transforms.Resize(max(size)), transforms.CenterCrop(size), transforms.PILToTensor()]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.files[index]
        try:
            with Image.open(path) as img:
                source = img.mode
                # The header is read, no pixel yet: refuse a size whose decoding or resizing
                # would not fit (the file may have changed since the folder was listed).
                check_image(path, img.width, img.height, self.size, DataError)
                # A camera stores a photo as its sensor read it, with an EXIF tag saying how to
                # turn it upright; viewers obey the tag, so the upright image is the one the user
                # sees and chose. to_mode decodes the whole file: corrupt data fails here.
                img = to_mode(ImageOps.exif_transpose(img), self.mode)
        except ModeError as e:
            raise DataError(f"image {path} (mode {source}): {e}") from None
        # PIL reports bad files as OSError (UnidentifiedImageError, truncated), SyntaxError
        # (broken PNG chunks) or ValueError; DecompressionBombError for absurd sizes.
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot read image {path} ({e}): fix or delete the file") from None
        return self.transform(img)


def listed(names: list[str], most: int = 5) -> str:
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "") if names else "none"


def image_files(folder: Path, skipped: list[Path] | None = None) -> list[Path]:
    """Image files under ``folder`` (recursively, through symbolic links to folders and files),
    sorted; hidden files and folders (e.g. macOS ``._name.png`` resource forks, which are not
    images) are skipped.

    A folder or file reached twice (two links to one folder, or a link to a folder's own
    ancestor, which would loop forever) is listed once, under the first path met walking
    top-down in sorted order: the same image twice could land in both the train and the test
    split."""

    def unreadable(e: OSError) -> None:
        # os.walk skips a folder it cannot list unless told otherwise: that is lost data.
        raise DataError(f"cannot list folder {e.filename} ({e.strerror}): fix its permissions")

    seen_dirs: set[str] = set()
    seen_files: set[str] = set()
    files = []
    for top, dirs, names in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(top)
        if real in seen_dirs:
            dirs.clear()
            continue
        seen_dirs.add(real)
        # Sorted in place: os.walk descends in this order, so the path kept is the same every run.
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(top) / name
            if name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
                if skipped is not None and not name.startswith("."):
                    skipped.append(path)  # reported by the caller: nothing dropped silently
                continue
            if not path.exists():
                raise DataError(f"{path} is a broken symbolic link (to {os.readlink(path)}): fix or delete it")
            if path.is_file() and os.path.realpath(path) not in seen_files:
                seen_files.add(os.path.realpath(path))
                files.append(path)
    return sorted(files)


def _hash_key(path: Path, root: Path) -> bytes:
    # A hash of the relative path, unlike Python's per-process randomised hash(), ranks files the
    # same way on every run and machine, and does not follow file names (0001.png, 0002.png, ...).
    return hashlib.sha256(path.relative_to(root).as_posix().encode()).digest()


def class_folders(folder: Path) -> list[str]:
    """``folder``'s classes as torchvision's ``ImageFolder`` reads them: its immediate subfolders
    (through symbolic links; hidden ones skipped, as ``image_files`` skips them), sorted."""
    try:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())
    except OSError as e:
        raise DataError(f"cannot list folder {folder} ({e.strerror}): fix its permissions") from None
    if not names:
        raise DataError(f"{folder} has no class subfolders, but data.labels is true: put each class's images "
                        f"in its own subfolder ({folder}/<class>/...), or set data.labels: false")
    if NULL_CLASS in names:
        raise DataError(f"{folder / NULL_CLASS} is a class folder named {NULL_CLASS!r}, the name of the null class "
                        "(the unconditional model of label dropout, --label null): rename the folder")
    return names


def split_classes(root: Path) -> list[str]:
    """The classes of a folder with train/ and test/: both must have the same class folders,
    else a label would mean one class in training and another in evaluation."""
    train, test = (class_folders(root / s) for s in SPLITS)
    if train != test:
        only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
        parts = [f"only in {s}/: {listed(v)}" for s, v in (("train", only_train), ("test", only_test)) if v]
        raise DataError(f"{root}/train and {root}/test have different class folders ({'; '.join(parts)}): "
                        "give both the same class subfolders")
    return train


def _labels_of(files: list[Path], folder: Path, names: list[str]) -> torch.Tensor:
    """Each file's class: the index of the class folder of ``folder`` it lies under. Every class
    must hold an image, and no image may lie directly in ``folder``."""
    index = {n: i for i, n in enumerate(names)}
    labels = []
    for path in files:
        parts = path.relative_to(folder).parts
        if len(parts) == 1:
            raise DataError(f"{path} lies directly in {folder}, but data.labels: true reads each image's class "
                            f"from its subfolder: move the images into class subfolders ({folder}/<class>/), "
                            f"or set data.labels: false")
        labels.append(index[parts[0]])
    labels_t = torch.tensor(labels, dtype=torch.long)
    empty = [n for i, n in enumerate(names) if not bool((labels_t == i).any())]
    if empty:
        raise DataError(f"class folder {folder / empty[0]} holds no images ({len(empty)} class folder(s) are "
                        f"empty): add images ({FORMATS_HINT}) or remove the folder")
    return labels_t


def folder_split(cfg: Config, split: str) -> tuple[ImageFiles, torch.Tensor | None, list[str]]:
    """The split's files, and with ``data.labels`` their classes and the class names."""
    root = Path(cfg.data.root)
    if not root.is_dir():
        raise DataError(f"image folder {root} not found: create it, or point data.root at your images")
    has = {s: (root / s).is_dir() for s in SPLITS}
    labels, names = None, []
    if all(has.values()):
        files = image_files(root / split)
        if not files:
            raise DataError(f"no images in {root / split}: add images ({FORMATS_HINT})")
        if cfg.data.labels:
            names = split_classes(root)
            labels = _labels_of(files, root / split, names)
    elif any(has.values()):
        there, missing = ("train", "test") if has["train"] else ("test", "train")
        raise DataError(
            f"{root} has {there}/ but no {missing}/: add {root / missing} with images, or remove "
            f"{there}/ to hold out data.test_fraction of all images"
        )
    else:
        files = image_files(root)
        if len(files) < 2:
            raise DataError(
                f"{len(files)} images in {root} (searched recursively for {FORMATS_HINT}): "
                f"a train and a test split need at least 2"
            )
        if cfg.data.labels:  # of every file, before the split: a class may be absent from the test split
            names = class_folders(root)
            labels = _labels_of(files, root, names)
        # round(n * fraction) files, at least 1 and leaving at least 1, lowest hashes held out.
        n_test = min(max(round(len(files) * cfg.data.test_fraction), 1), len(files) - 1)
        held_out = set(sorted(files, key=lambda p: _hash_key(p, root))[:n_test])
        keep = [(p in held_out) == (split == "test") for p in files]
        files = [p for p, k in zip(files, keep) if k]
        labels = labels[torch.tensor(keep)] if labels is not None else None
        absent = [n for i, n in enumerate(names) if split == "train" and not bool((labels == i).any())]
        if absent:  # the model would have a class it never saw an image of
            raise DataError(f"class folder {root / absent[0]} has no image in the training split (all held out for "
                            f"the test split; {len(absent)} class(es) so): add images, or use {root}/train and "
                            f"{root}/test folders")
    return checked_images(files, cfg.model.image_shape), labels, names


def load_folder(root: str | Path, shape: tuple[int, int, int]) -> ImageFiles:
    """Every image under ``root`` (recursively, as ``image_files`` lists them), converted and
    resized to ``shape`` exactly as a folder split of that shape is: images of another mode or
    size become the model's. For scoring images that are not a split of the model's data."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} not found: give a folder of images")
    skipped: list[Path] = []
    files = image_files(root, skipped)
    if not files:
        raise DataError(f"no images in {root} (searched recursively for {FORMATS_HINT}): "
                        f"give a folder of images")
    images = checked_images(files, shape)
    images.skipped = sorted(skipped)  # files that are not images, for the caller to report
    return images


def checked_images(files: list[Path], shape: tuple[int, int, int], crop: int | None = None) -> ImageFiles:
    c, h, w = shape
    _check_headers(files, (h, w))
    return ImageFiles(files, "L" if c == 1 else "RGB", (h, w), crop)


def _check_headers(files: list[Path], size: tuple[int, int]) -> None:
    """Open every file's header before training starts (cheap: no pixels are decoded), so a
    non-image, a broken file or one too large to decode and resize to ``size`` is reported now
    rather than hours into a run."""
    for path in files:
        try:
            with Image.open(path) as img:
                mode, width, height = img.mode, img.width, img.height  # parsing the header is the check
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot read image {path} ({e}): fix or delete the file") from None
        check_image(path, width, height, size, DataError)
        if mode not in SUPPORTED:
            raise DataError(f"image {path} has mode {mode}, which nfgen cannot convert to grey or RGB "
                            f"without guessing: save it as 8-bit grey or RGB (e.g. PNG)")

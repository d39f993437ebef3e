"""Data sets as uint8 image tensors ``[C, H, W]`` (values 0..255), with their class labels for a
class-conditional model, and their loaders.

Wraps ``torchvision.datasets.MNIST`` and ``CIFAR10`` (their own on-disk formats and downloads)
and a folder of the user's images (any format Pillow reads, by extension: ``IMAGE_EXTENSIONS``),
with torchvision transforms doing the pixel work. Every user-facing problem is a
``DataError`` with a one-line message that says what to do.

Labels: an unconditional model (``model.num_classes`` 0) gets images only; a conditional one
gets ``Labelled`` items ``(image, label)``. MNIST's classes are its digits, CIFAR-10's its ten
names, a folder's (``data.labels: true``) its class subfolders, sorted, as torchvision's
``ImageFolder`` reads them (``nfgen.labels``: ``Labelled`` and its batches).

Data that would load but be wrong is refused, not trained on: MNIST files whose headers do not
match their sizes, or whose splits are swapped or copies; CIFAR-10 files failing their md5;
images whose mode has no stated conversion (``image_modes.to_mode``). Folders are followed
through symbolic links, each real file once.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from urllib.error import URLError

import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms

from nfgen.config import Config, check_data_matches_model
from nfgen.costs import check_image
from nfgen.errors import DataError
from nfgen.image_modes import SUPPORTED, ModeError, to_mode
from nfgen.labels import CIFAR10_CLASSES, MNIST_CLASSES, Labelled
from nfgen.torchvision_files import check_cifar10, check_mnist, cifar10_missing, mnist_missing

SPLITS = ("train", "test")
# Every format Pillow can read (GIF, ICO, TGA, ... besides torchvision's list): an image in a
# folder is read, or refused loudly if it cannot be decoded, never skipped for its format.
# Pillow's stubs for scientific data, video and vector formats (they need other software to
# decode) are not images to it: such files are skipped, and reported, like any other non-image.
_NOT_RASTER = {"BUFR", "GRIB", "HDF5", "FITS", "MPEG", "WMF", "EPS"}
IMAGE_EXTENSIONS = tuple(sorted(e for e, f in Image.registered_extensions().items()
                                if f in Image.OPEN and f not in _NOT_RASTER))
FORMATS_HINT = "any format Pillow reads: .png, .jpg, .gif, .webp, .bmp, .tif, ..."
NULL_CLASS = "null"  # --label null: the null class; no class folder may take its name


class ImagesOnly(Dataset[torch.Tensor]):
    """A torchvision data set's ``(image, label)`` items with the label dropped."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.base[index][0]


class ImageFiles(Dataset[torch.Tensor]):
    """Image files read with PIL, turned upright by their EXIF orientation, converted to ``mode``
    ("L" or "RGB") by ``to_mode``'s rules, scaled so the shorter side
    covers ``size`` (H, W), center-cropped to it (``transforms.Resize`` + ``CenterCrop``)."""

    def __init__(self, files: list[Path], mode: str, size: tuple[int, int]) -> None:
        self.files = files
        self.skipped: list[Path] = []  # load_folder's: files under the folder that are not images
        self.mode = mode
        self.size = size
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


def load_split(cfg: Config, split: str) -> Dataset:
    """The "train" or "test" split of ``cfg.data``: for an unconditional model each item a uint8
    tensor of shape ``cfg.model.image_shape``; for a class-conditional one (``model.num_classes``
    > 0) a ``Labelled`` data set of ``(image, label)`` items with its ``class_names``, as many as
    the model has classes. Raises ``DataError`` (or ``ConfigError`` if the data set cannot
    produce that shape or those classes)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    check_data_matches_model(cfg)
    if cfg.data.dataset == "folder":
        images, labels, names = _folder_split(cfg, split)
    else:
        images, labels, names = _torchvision_split(cfg, split == "train")
    k = cfg.model.num_classes
    if k == 0:
        return images
    assert labels is not None  # check_data_matches_model: a conditional model's folder has data.labels
    if len(names) != k:
        raise DataError(f"model.num_classes is {k} but the image folder {cfg.data.root} has {len(names)} class "
                        f"folders ({_listed(names)}): set model.num_classes: {len(names)}")
    return Labelled(images, labels, names)


def class_names(cfg: Config) -> list[str]:
    """The names of ``cfg.data``'s classes, label ``k`` named ``[k]``: MNIST's digits, CIFAR-10's
    names, an image folder's class subfolders (``data.labels: true``; else a ``DataError``),
    without reading any image."""
    if cfg.data.dataset == "mnist":
        return list(MNIST_CLASSES)
    if cfg.data.dataset == "cifar10":
        return list(CIFAR10_CLASSES)
    if not cfg.data.labels:
        raise DataError(f"the image folder {cfg.data.root} has no labels (data.labels is false): set "
                        "data.labels: true, with one subfolder of images per class")
    root = Path(cfg.data.root)
    if not root.is_dir():
        raise DataError(f"image folder {root} not found: create it, or point data.root at your images")
    return _split_classes(root) if all((root / s).is_dir() for s in SPLITS) else _class_folders(root)


def _listed(names: list[str], most: int = 5) -> str:
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "") if names else "none"


def _torchvision_split(cfg: Config, train: bool) -> tuple[Dataset[torch.Tensor], torch.Tensor, list[str]]:
    d = cfg.data
    root = Path(d.root)
    if d.dataset == "mnist":
        cls, name, where = datasets.MNIST, "MNIST", root / "MNIST" / "raw"
        # MNIST is 28x28; at 32x32 it is zero-padded 2 pixels a side (as openai/glow does), so
        # that squeezing can halve it more times.
        pad = (cfg.model.image_shape[1] - 28) // 2
        missing, check = mnist_missing(where), check_mnist
    else:
        cls, name, where, pad = datasets.CIFAR10, "CIFAR-10", root / "cifar-10-batches-py", 0
        missing, check = cifar10_missing(where), check_cifar10
    if missing and not d.download:
        names = ", ".join(p.name for p in missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise DataError(
            f"{name} not found: {where} lacks {names}, and data.download is false: set "
            f"data.download: true (or --set data.download=true), or put the files in {where}"
        )
    if not missing:
        # Checked before torchvision sees the files: it would report a truncated MNIST file as
        # missing, and with download: true try to fetch CIFAR-10 again over a damaged one.
        check(where)
    steps: list[torch.nn.Module] = [transforms.Pad(pad, fill=0)] if pad else []
    transform = transforms.Compose([*steps, transforms.PILToTensor()])
    try:
        base = cls(root=str(root), train=train, download=bool(missing), transform=transform)
    except (RuntimeError, URLError, OSError) as e:
        # A failed download is a RuntimeError listing each mirror (MNIST) or a bare URLError
        # (CIFAR-10). Its last line is the cause.
        cause = str(getattr(e, "reason", e)).strip().splitlines()[-1:] or [type(e).__name__]
        if not missing:
            raise DataError(f"{name} files under {where} are unreadable ({cause[0]}): delete them and "
                            f"download again (data.download: true)") from None
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
    if missing:
        check(where)  # what was just downloaded
    names = MNIST_CLASSES if d.dataset == "mnist" else CIFAR10_CLASSES
    labels = torch.as_tensor(base.targets, dtype=torch.long)
    bad = labels[(labels < 0) | (labels >= len(names))]
    if len(bad):
        # A damaged labels file (MNIST's IDX has no checksum) would train a conditional model on
        # wrong classes, or fail deep inside its class embedding.
        raise DataError(f"{name} files under {where} hold label {int(bad[0])}, but {name}'s classes are "
                        f"0..{len(names) - 1}: delete them and download again (data.download: true)")
    return ImagesOnly(base), labels, names


def _image_files(folder: Path, skipped: list[Path] | None = None) -> list[Path]:
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


def _class_folders(folder: Path) -> list[str]:
    """``folder``'s classes as torchvision's ``ImageFolder`` reads them: its immediate subfolders
    (through symbolic links; hidden ones skipped, as ``_image_files`` skips them), sorted."""
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


def _split_classes(root: Path) -> list[str]:
    """The classes of a folder with train/ and test/: both must have the same class folders,
    else a label would mean one class in training and another in evaluation."""
    train, test = (_class_folders(root / s) for s in SPLITS)
    if train != test:
        only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
        parts = [f"only in {s}/: {_listed(v)}" for s, v in (("train", only_train), ("test", only_test)) if v]
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


def _folder_split(cfg: Config, split: str) -> tuple[ImageFiles, torch.Tensor | None, list[str]]:
    """The split's files, and with ``data.labels`` their classes and the class names."""
    root = Path(cfg.data.root)
    if not root.is_dir():
        raise DataError(f"image folder {root} not found: create it, or point data.root at your images")
    has = {s: (root / s).is_dir() for s in SPLITS}
    labels, names = None, []
    if all(has.values()):
        files = _image_files(root / split)
        if not files:
            raise DataError(f"no images in {root / split}: add images ({FORMATS_HINT})")
        if cfg.data.labels:
            names = _split_classes(root)
            labels = _labels_of(files, root / split, names)
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
                f"{len(files)} images in {root} (searched recursively for {FORMATS_HINT}): "
                f"a train and a test split need at least 2"
            )
        if cfg.data.labels:  # of every file, before the split: a class may be absent from the test split
            names = _class_folders(root)
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
    return _checked_images(files, cfg.model.image_shape), labels, names


def load_folder(root: str | Path, shape: tuple[int, int, int]) -> ImageFiles:
    """Every image under ``root`` (recursively, as ``_image_files`` lists them), converted and
    resized to ``shape`` exactly as a folder split of that shape is: images of another mode or
    size become the model's. For scoring images that are not a split of the model's data."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} not found: give a folder of images")
    skipped: list[Path] = []
    files = _image_files(root, skipped)
    if not files:
        raise DataError(f"no images in {root} (searched recursively for {FORMATS_HINT}): "
                        f"give a folder of images")
    images = _checked_images(files, shape)
    images.skipped = sorted(skipped)  # files that are not images, for the caller to report
    return images


def _checked_images(files: list[Path], shape: tuple[int, int, int]) -> ImageFiles:
    c, h, w = shape
    _check_headers(files, (h, w))
    return ImageFiles(files, "L" if c == 1 else "RGB", (h, w))


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


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int,
                pin_memory: bool, generator: torch.Generator | None = None,
                drop_last: bool = False) -> DataLoader:
    """A ``torch.utils.data.DataLoader`` of uint8 batches ``[B, C, H, W]`` (of a ``Labelled``
    data set: ``[images, labels]``, see ``split_batch``). A seeded ``generator``
    fixes the shuffle order (and the workers' seeds); workers persist between epochs."""
    n = len(dataset)  # type: ignore[arg-type]
    if drop_last and n < batch_size:
        raise DataError(f"{n} images is fewer than one batch of {batch_size}: lower train.batch_size")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      pin_memory=pin_memory, generator=generator, drop_last=drop_last,
                      persistent_workers=num_workers > 0)

"""Downsampled ImageNet at 32x32 and 64x64, the flow papers' benchmarks, in two published forms:

- Chrabaszcz et al. (2017, "A Downsampled Variant of ImageNet"; image-net.org's "Downsampled
  ImageNet" downloads, patrykchrabaszcz/Imagenet32_Scripts): ``<root>/Imagenet{S}_train_npz/
  train_data_batch_{1..10}.npz`` and ``<root>/Imagenet{S}_val_npz/val_data.npz``, each with ``data``
  (uint8 ``[N, 3*S*S]``, a row the red plane, then green, then blue, each row-major), ``labels``
  (1..1000) and ``mean``. 1,281,167 train and 50,000 validation (here: test) images in 1,000
  classes, read whole into memory (64x64: 15.7 GB for train).
- van den Oord et al. (2016, the Glow / Flow++ / TarFlow likelihood benchmark): the PNGs of
  ``train_{S}x{S}.tar`` and ``valid_{S}x{S}.tar`` extracted to ``<root>/train_{S}x{S}/`` and
  ``<root>/valid_{S}x{S}/`` (here: test), no labels (unconditional models only).

Neither can be downloaded without an image-net.org account, so a missing set is one line saying
where to get it and where to put it. Every file is checked (keys, dtype, row size, labels, one
label per image); no md5s are published for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nfgen.datasets.registry import DataSet, Split, register_dataset
from nfgen.errors import DataError

if TYPE_CHECKING:
    import numpy as np

    from nfgen.config.schema import Config

N_TRAIN_BATCHES = 10
WHERE = "https://image-net.org/download-images.php (Downsampled ImageNet, after registering)"


class DownsampledImagenet(DataSet):
    """ImageNet at ``size`` x ``size``: Chrabaszcz et al.'s npz batches (labelled) where they are
    under the root, else van den Oord et al.'s PNG folders (unlabelled)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.title = f"ImageNet {size}x{size}"
        self.shapes = ((3, size, size),)
        self.classes = tuple(str(k) for k in range(1, 1001))  # the files' own label numbers
        self.help = (f"downsampled ImageNet {size}x{size}: Chrabaszcz et al.'s npz batches (1,000 classes) or "
                     f"van den Oord et al.'s PNGs (unlabelled); 1,281,167 / 50,000")

    def npz_folders(self, root: Path) -> tuple[Path, Path]:
        return root / f"Imagenet{self.size}_train_npz", root / f"Imagenet{self.size}_val_npz"

    def png_folders(self, root: Path) -> tuple[Path, Path]:
        s = self.size
        return root / f"train_{s}x{s}", root / f"valid_{s}x{s}"

    def _layout(self, root: Path) -> str:
        if any(p.is_dir() for p in self.npz_folders(root)):
            return "npz"
        if any(p.is_dir() for p in self.png_folders(root)):
            return "png"
        train, val = self.npz_folders(root)
        ptrain, pval = self.png_folders(root)
        raise DataError(f"{self.title} not found under {root}: download it from {WHERE} and unzip it into {train}/ "
                        f"and {val}/ (or van den Oord et al.'s into {ptrain}/ and {pval}/); it cannot be downloaded "
                        "automatically")

    def class_names(self, cfg: Config) -> list[str]:
        if self._layout(Path(cfg.data.root)) == "png":
            raise DataError(f"{self.title} in van den Oord et al.'s PNG form ({cfg.data.root}) has no labels: train "
                            "an unconditional model (model.num_classes: 0), or use Chrabaszcz et al.'s npz batches")
        return list(self.classes)

    def load(self, cfg: Config, split: str) -> Split:
        root = Path(cfg.data.root)
        if self._layout(root) == "png":
            return self._pngs(cfg, root, split)
        import torch

        from nfgen.datasets.tensors import ArrayImages

        train, val = self.npz_folders(root)
        if split == "train":
            files = [train / f"train_data_batch_{i}.npz" for i in range(1, N_TRAIN_BATCHES + 1)]
        else:
            files = [val / "val_data.npz"]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{self.title}: {missing[0]} is missing ({len(missing)} of the {split} split's "
                            f"{len(files)} files): download it from {WHERE} and unzip it into {missing[0].parent}/")
        # Filled in place, batch by batch: concatenating the batches would hold the split twice
        # (31 GB at its peak for 64x64's train).
        counts = [self._rows(f) for f in files]
        s = self.size
        images = torch.empty(sum(counts), 3 * s * s, dtype=torch.uint8)
        labels = torch.empty(sum(counts), dtype=torch.long)
        at = 0
        for path, n in zip(files, counts):
            data, y = self._read(path)
            images[at:at + n], labels[at:at + n] = torch.from_numpy(data), torch.from_numpy(y) - 1
            at += n
        return Split(ArrayImages(images.view(-1, 3, s, s)), labels, list(self.classes))

    def _rows(self, path: Path) -> int:
        """How many images a batch holds, from its ``data`` array's header (nothing decompressed)."""
        import zipfile

        import numpy as np

        try:
            with zipfile.ZipFile(path) as z, z.open("data.npy") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape = read(f)[0]
        except KeyError:
            raise DataError(f"{path} is not a {self.title} batch (it has no data array): download it again and "
                            "unzip it in place") from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"{path} ({self.title}) is unreadable ({type(e).__name__}: {e}): download it again and "
                            "unzip it in place") from None
        return int(shape[0]) if shape else 0

    def _read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """One npz batch's ``data`` and ``labels``, checked."""
        import zipfile

        import numpy as np

        fix = "download it again and unzip it in place"
        try:
            with np.load(path, allow_pickle=False) as f:
                keys = set(f.files)
                if not {"data", "labels"} <= keys:
                    raise DataError(f"{path} is not a {self.title} batch (it has {', '.join(sorted(keys)) or 'no'} "
                                    f"arrays, not data and labels): {fix}")
                data, labels = f["data"], f["labels"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"{path} ({self.title}) is unreadable ({type(e).__name__}: {e}): {fix}") from None
        row = 3 * self.size * self.size
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row:
            other = "ImageNet 32x32's" if data.ndim == 2 and data.shape[1] == 3 * 32 * 32 else "another"
            raise DataError(f"{path} holds {data.dtype} rows of {data.shape[1:] or 'no'} values, but {self.title} rows "
                            f"are {row} uint8 values (3x{self.size}x{self.size}); it looks like {other} set: {fix}")
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(data):
            raise DataError(f"{path} holds {len(data):,} images but {len(labels):,} labels: {fix}")
        if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 1 or labels.max() > 1000):
            raise DataError(f"{path} holds labels outside {self.title}'s 1..1000 (found {labels.min()}..{labels.max()}): "
                            f"{fix}")
        return data, labels.astype(np.int64)

    def _pngs(self, cfg: Config, root: Path, split: str) -> Split:
        from nfgen.datasets.images import checked_images, image_files

        if cfg.model.num_classes:
            self.class_names(cfg)  # refuses: these have no labels
        folder = self.png_folders(root)[0 if split == "train" else 1]
        files = image_files(folder) if folder.is_dir() else []
        if not files:
            raise DataError(f"{self.title}: no images in {folder}: extract van den Oord et al.'s "
                            f"{folder.name}.tar there (from {WHERE})")
        return Split(checked_images(files, cfg.model.image_shape), None, [])


register_dataset("imagenet32", DownsampledImagenet(32))
register_dataset("imagenet64", DownsampledImagenet(64))

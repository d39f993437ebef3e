"""CelebA (Liu et al., 2015), aligned and cropped faces, in torchvision's on-disk layout:
``<root>/celeba/img_align_celeba/000001.jpg`` ... (178x218 JPEGs) and
``<root>/celeba/list_eval_partition.txt`` (one ``<file> <0|1|2>`` line per image: train,
validation, test). Train is partition 0 (162,770 images), test partition 2 (19,962); the 19,867
validation images (1) are not read. Each image is center-cropped to 148x148 and resized to
``model.image_shape`` (3xSxS, S <= 148), as RealNVP (Dinh et al., 2017) prepares its 64x64 CelebA.
Unconditional: its 40 binary attributes are not exclusive classes.

Checked: the partition file against its published md5 and line by line, every listed image of the
split present, every image's header readable. Google Drive's quotas make torchvision's download
unreliable, so a missing set is one line saying where to get it and where to put it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nfgen.datasets.registry import DataSet, Split, register_dataset
from nfgen.errors import ConfigError, DataError

if TYPE_CHECKING:
    from nfgen.config.schema import Config

CROP = 148  # RealNVP's central crop of the 178x218 aligned faces
PARTITIONS = {"train": "0", "test": "2"}
PARTITION_FILE = "list_eval_partition.txt"
WHERE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Align&Cropped Images: img_align_celeba.zip)"


class CelebaSet(DataSet):
    title = "CelebA"
    help = f"CelebA aligned faces (Liu et al., 2015), center-cropped to {CROP}x{CROP} and resized to 3xSxS; unlabelled"

    def folder(self, root: Path) -> Path:
        return root / "celeba"

    def check_config(self, cfg: Config) -> None:
        c, h, w = cfg.model.image_shape
        if c != 3 or h != w or h > CROP:
            raise ConfigError(f"CelebA images are cropped to {CROP}x{CROP} and resized to 3xSxS with S <= {CROP} "
                              f"(64 as in RealNVP); model.image_shape is {[c, h, w]}")
        super().check_config(cfg)  # no classes

    def load(self, cfg: Config, split: str) -> Split:
        from nfgen.datasets.images import checked_images

        folder = self.folder(Path(cfg.data.root))
        images, partition = folder / "img_align_celeba", folder / PARTITION_FILE
        if not images.is_dir() or not partition.is_file():
            raise DataError(f"CelebA not found: {folder} needs img_align_celeba/ and {PARTITION_FILE}: download them "
                            f"from {WHERE} and unzip into {folder}/ (it cannot be downloaded automatically)")
        names = self._partition(partition)[split]
        files = [images / n for n in names]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise DataError(f"CelebA: {missing[0]} is missing ({len(missing):,} of the {split} split's {len(files):,} "
                            f"images listed in {partition}): unzip img_align_celeba.zip into {folder}/ again")
        return Split(checked_images(files, tuple(cfg.model.image_shape), crop=CROP), None, [])

    def _partition(self, path: Path) -> dict[str, list[str]]:
        """Each split's image names from the partition file, after checking its md5 and its lines."""
        from torchvision.datasets import CelebA, utils

        md5 = next(m for _, m, f in CelebA.file_list if f == PARTITION_FILE)  # looked up now: tests set theirs
        if not utils.check_integrity(str(path), md5):
            raise DataError(f"{path} is truncated or corrupt (its md5 is not the official CelebA file's): download "
                            f"it again from {WHERE}")
        split_of = {v: k for k, v in PARTITIONS.items()}
        out: dict[str, list[str]] = {s: [] for s in PARTITIONS}
        for i, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DataError(f"{path} line {i} is {line[:60]!r}, not '<image> <0|1|2>': download it again from {WHERE}")
            if parts[1] in split_of:
                out[split_of[parts[1]]].append(parts[0])
        return out


register_dataset("celeba", CelebaSet())

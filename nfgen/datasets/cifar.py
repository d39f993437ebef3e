"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) in their Python versions, as torchvision extracts them:
``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
``<root>/cifar-100-python/{train, test, meta}``: pickled batches whose ``data`` rows hold a 32x32
image's red plane, then green, then blue. 50,000 train and 10,000 test 3x32x32 images each.

Checked before torchvision reads them: every file against its published md5 (torchvision's own
check, which otherwise says only "not found or corrupted", for all files at once), naming the file.
CIFAR-100's labels are its 100 fine classes (its 20 coarse superclasses are not used).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nfgen.datasets.registry import register_dataset
from nfgen.datasets.torchvision_sets import TorchvisionSet
from nfgen.errors import DataError


class CifarSet(TorchvisionSet):
    """``torchvision.datasets.CIFAR10`` or ``CIFAR100`` (by name), read from its folder under the root."""

    shapes = ((3, 32, 32),)

    def __init__(self, torchvision_name: str, title: str, base_folder: str, classes: list[str], help: str) -> None:
        self.torchvision_name, self.title, self.base_folder = torchvision_name, title, base_folder
        self.classes, self.help = tuple(classes), help

    def _cls(self) -> Any:
        from torchvision import datasets

        return getattr(datasets, self.torchvision_name)

    def _files(self) -> list[tuple[str, str]]:
        # Looked up at call time, so that tests on tiny files can set the tiny files' md5s.
        c = self._cls()
        return [*((f, m) for f, m in c.train_list + c.test_list), (c.meta["filename"], c.meta["md5"])]

    def folder(self, root: Path) -> Path:
        return root / self.base_folder

    def missing(self, folder: Path) -> list[Path]:
        return [folder / f for f, _ in self._files() if not (folder / f).is_file()]

    def check(self, folder: Path) -> None:
        from torchvision.datasets import cifar

        for name, md5 in self._files():
            if not cifar.check_integrity(str(folder / name), md5):
                raise DataError(f"{folder / name} is truncated or corrupt (its md5 is not the official {self.title} "
                                f"file's): {self.redownload_file}")

    def make(self, root: Path, split: str, download: bool, transform: Any) -> Any:
        return self._cls()(root=str(root), train=split == "train", download=download, transform=transform)


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# CIFAR-100's fine label names in label order, as its meta file lists them.
CIFAR100_CLASSES = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man
maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain
plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake
spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip
turtle wardrobe whale willow_tree wolf woman worm""".split()

register_dataset("cifar10", CifarSet(
    "CIFAR10", "CIFAR-10", "cifar-10-batches-py", CIFAR10_CLASSES,
    "CIFAR-10 (Krizhevsky, 2009): 3x32x32 photographs, 10 classes, 50,000 / 10,000"))
register_dataset("cifar100", CifarSet(
    "CIFAR100", "CIFAR-100", "cifar-100-python", CIFAR100_CLASSES,
    "CIFAR-100 (Krizhevsky, 2009): 3x32x32 photographs, 100 fine classes, 50,000 / 10,000"))

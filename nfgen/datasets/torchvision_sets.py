"""What every data set torchvision reads and downloads shares: files missing with downloads off
(one line saying where they go), the files checked before torchvision sees them (it would report
a truncated file as missing, or download again over a damaged one), a failed download or an
unreadable file as one line naming the data set, labels checked against its classes."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nfgen.datasets.registry import DataSet, Split
from nfgen.errors import DataError

if TYPE_CHECKING:
    import torch

    from nfgen.config.schema import Config


def listed(paths: Sequence[Path], most: int = 3) -> str:
    return ", ".join(p.name for p in paths[:most]) + (", ..." if len(paths) > most else "")


def check_labels(labels: torch.Tensor, n_classes: int, title: str, where: Path, fix: str) -> None:
    """Every label in 0..n_classes-1: a damaged labels file would train a conditional model on wrong
    classes, or fail deep inside its class embedding."""
    bad = labels[(labels < 0) | (labels >= n_classes)]
    if len(bad):
        raise DataError(f"{title} files under {where} hold label {int(bad[0])}, but {title}'s classes are "
                        f"0..{n_classes - 1}: {fix}")


class TorchvisionSet(DataSet):
    """A data set read by a ``torchvision.datasets`` class from its own files under ``data.root``,
    downloaded by it when ``data.download`` is true. A subclass says where the files lie, which
    are missing, how to check them, and how to make the torchvision data set."""

    redownload = "delete them and download again (data.download: true)"
    redownload_file = "delete it and download again (data.download: true)"

    def folder(self, root: Path) -> Path:
        raise NotImplementedError

    def missing(self, folder: Path) -> list[Path]:
        raise NotImplementedError

    def check(self, folder: Path) -> None:
        """Refuse (``DataError`` naming the file and the data set) files that would read wrong."""

    def make(self, root: Path, split: str, download: bool, transform: Any) -> Any:
        raise NotImplementedError

    def steps(self, cfg: Config) -> list:
        """torchvision transforms before ``PILToTensor`` (e.g. MNIST's padding to 32x32)."""
        return []

    def load(self, cfg: Config, split: str) -> Split:
        from urllib.error import URLError

        import torch
        from torchvision import transforms

        from nfgen.datasets.tensors import ImagesOnly

        d = cfg.data
        root = Path(d.root)
        where = self.folder(root)
        missing = self.missing(where)
        if missing and not d.download:
            raise DataError(
                f"{self.title} not found: {where} lacks {listed(missing)}, and data.download is false: set "
                f"data.download: true (or --set data.download=true), or put the files in {where}"
            )
        if not missing:
            self.check(where)
        transform = transforms.Compose([*self.steps(cfg), transforms.PILToTensor()])
        try:
            base = self.make(root, split, bool(missing), transform)
        except (RuntimeError, URLError, OSError) as e:
            # A failed download is a RuntimeError listing each mirror (MNIST) or a bare URLError
            # (CIFAR-10). Its last line is the cause.
            cause = str(getattr(e, "reason", e)).strip().splitlines()[-1:] or [type(e).__name__]
            if not missing:
                raise DataError(f"{self.title} files under {where} are unreadable ({cause[0]}): "
                                f"{self.redownload}") from None
            raise DataError(
                f"could not download {self.title} into {where} ({cause[0]}): check the internet connection, "
                f"or download it on another machine and copy the files into {where}"
            ) from None
        except (AssertionError, TypeError, ValueError, KeyError, IndexError, EOFError, pickle.UnpicklingError) as e:
            # torchvision's readers assert on (or cannot unpickle) files in the wrong format.
            raise DataError(f"{self.title} files under {where} are unreadable ({type(e).__name__}: {e}): "
                            f"{self.redownload}") from None
        if missing:
            self.check(where)  # what was just downloaded
        names = self.class_names(cfg)
        labels = torch.as_tensor(self.targets(base), dtype=torch.long)
        check_labels(labels, len(names), self.title, where, self.redownload)
        return Split(ImagesOnly(base), labels, names)

    def targets(self, base: Any) -> Sequence[int]:
        return base.targets


"""The data sets nfgen reads: a registry (``register_dataset``, ``DataSet``) and one module per
on-disk format, each registering its data sets. Importing this package registers the built-in
ones; it imports no torch (a split's loading does: ``nfgen.datasets.splits``)."""

from __future__ import annotations

from nfgen.datasets import celeba, cifar, folder, idx, imagenet, svhn  # noqa: F401  (each registers its data sets)
from nfgen.datasets.registry import DATASETS, SPLITS, DataSet, Split, dataset_named, register_dataset

__all__ = ["DATASETS", "SPLITS", "DataSet", "Split", "dataset_named", "register_dataset"]

"""The data sets nfgen reads: a registry (``register_dataset``, ``DataSet``; ``registry.py``) and
one module per on-disk format, each registering its data sets (the built-ins are listed in
``builtins.py``, read when the registry first is). Nothing here imports torch until a split is
read (``nfgen.datasets.splits``)."""

from __future__ import annotations

from nfgen.datasets.registry import DATASETS, SPLITS, DataSet, Split, dataset_named, register_dataset

__all__ = ["DATASETS", "SPLITS", "DataSet", "Split", "dataset_named", "register_dataset"]

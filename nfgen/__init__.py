"""nfgen: normalizing-flow image generators (Glow, RealNVP, Flow++, TarFlow).

The public names are imported on first use (PEP 562), so ``import nfgen`` and the command line's
``--help`` and ``--version`` do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one version source: pyproject.toml reads it (tool.setuptools.dynamic)

# public name -> the module that defines it
_LAZY = {"Config": "nfgen.config.schema", "load_config": "nfgen.config.schema", "ImageFlow": "nfgen.model.image_flow",
         "build_model": "nfgen.model.image_flow",
         # What a plugin module (docs/plugins.md) registers with, and the base class of a transform.
         "register_transform": "nfgen.flows.transforms", "ElementwiseTransform": "nfgen.flows.transforms",
         "register_conditioner": "nfgen.flows.nets", "register_architecture": "nfgen.flows.architectures",
         # an architecture's config section: its base, the multi-scale and the coupling parts
         "ArchSection": "nfgen.flows.section", "MultiScaleSection": "nfgen.flows.section",
         "CouplingSpec": "nfgen.flows.section",
         # a data set: its registration and what it describes (docs/data.md)
         "register_dataset": "nfgen.datasets.registry", "DataSet": "nfgen.datasets.registry"}
__all__ = ["ArchSection", "Config", "CouplingSpec", "DataSet", "ElementwiseTransform", "ImageFlow",
           "MultiScaleSection", "__version__", "build_model", "load", "load_config", "register_architecture",
           "register_conditioner", "register_dataset", "register_transform"]

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from nfgen.config.schema import Config, load_config
    from nfgen.datasets.registry import DataSet, register_dataset
    from nfgen.flows.architectures import register_architecture
    from nfgen.flows.nets import register_conditioner
    from nfgen.flows.section import ArchSection, CouplingSpec, MultiScaleSection
    from nfgen.flows.transforms import ElementwiseTransform, register_transform
    from nfgen.model.image_flow import ImageFlow, build_model


def load(path: str | Path, device: str | torch.device = "cpu", ema: bool = True) -> ImageFlow:
    """A trained model from a checkpoint file or an ``nfgen export`` folder, in evaluation mode,
    with ``model.config`` and ``model.class_names`` attached (see ``nfgen.api.load``)."""
    from nfgen.api import load as load_model  # imported on use: ``import nfgen`` stays light

    return load_model(path, device, ema)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'nfgen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""Every registered architecture, as the tests see it: the names come from the registry the CLI
reads (``nfgen.flows.architectures``), so a new architecture (in the package or a plugin) gets
every architecture-parametrized test (the flow harness, the exact-probability test, the
hostile-value fuzz, conditional checks, resume, every CLI verb) with no test edit."""

from __future__ import annotations

from typing import Any

from nfgen.config.parse import _build
from nfgen.flows.architectures import architecture, architecture_names


def arch_names() -> list[str]:
    """The registered architectures now (a test may register one), in registration order."""
    return architecture_names()


ARCHS = arch_names()  # what pytest parametrizes over, read at collection


def plugins(arch: str) -> list[str]:
    """The ``plugins:`` a config of ``arch`` needs: the module that registered it, when it is a
    plugin outside nfgen (a subprocess, like a user's shell, imports it from the config)."""
    module = architecture(arch).section.__module__
    return [] if module.split(".")[0] == "nfgen" else [module]


def tiny_section(arch: str, image_shape: tuple[int, int, int] | list[int], depth: int = 2,
                 width: int = 8) -> dict[str, Any]:
    """The keys of ``model.<arch>`` for a tiny model of images of ``image_shape``, ``depth``
    steps/couplings/blocks deep, its nets ``width`` wide (the architecture's registered ``tiny``)."""
    return architecture(arch).tiny(tuple(image_shape), depth, width)


def tiny_model(arch: str, image_shape: tuple[int, int, int] | list[int], depth: int = 2, width: int = 8,
               **section: Any) -> dict:
    """The ``model`` section of a tiny ``arch`` model (``section`` overrides its keys), with the
    preprocessing the architecture registered."""
    options = tiny_section(arch, image_shape, depth, width)
    return {"arch": arch, "image_shape": list(image_shape), "preprocess": architecture(arch).preprocess,
            arch: {**options, **section}}


def tiny_body(arch: str, image_shape: tuple[int, int, int], depth: int = 2, width: int = 8, context_dim: int = 0,
              **section: Any):
    """A tiny ``arch`` body built by its registered builder from its section."""
    a = architecture(arch)
    options = _build(a.section, {**tiny_section(arch, image_shape, depth, width), **section}, f"model.{arch}")
    return a.builder()(tuple(image_shape), options, context_dim=context_dim)


def dequantizer(arch: str, **options: Any) -> dict[str, Any]:
    """A tiny variational dequantizer of the architecture's own kind (Flow++: its couplings)."""
    return {"kind": "variational", "steps": 2, "hidden": 8, **architecture(arch).dequantizer, **options}

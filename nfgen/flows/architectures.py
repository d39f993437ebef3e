"""The architectures (``model.arch``): each names itself once, on its config section, with
``register_architecture``; the config's ``arch`` choices, its ``model.<arch>`` sections,
``nfgen.model.image_flow.ARCHITECTURES`` and every architecture-parametrized test read this registry.

Torch-free, like the sections it holds, so listing config keys (``nfgen config --keys``) and
parsing a config import no torch; a builder named as ``"module:function"`` is imported when a
model is built."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

Shape = tuple[int, int, int]
# A builder: ``build(shape, section, context_dim=0) -> MultiScaleFlow``.
Builder = Callable[..., Any]
# What the tests build: the section keys of a tiny model for an image ``shape``, ``depth``
# steps/couplings/blocks deep and ``width`` wide (its nets' width).
Tiny = Callable[[Shape, int, int], dict[str, Any]]

# The package's own architectures register as any plugin does: by importing their section
# modules, here when the registry is first read (so no module imports them at its bottom).
BUILTIN_MODULES = ("nfgen.flows.glow_section", "nfgen.flows.realnvp_section", "nfgen.flows.flowpp_section",
                   "nfgen.flows.tarflow_section")


@dataclass(frozen=True)
class Architecture:
    """One registered architecture: its name (``model.arch``), config section class
    (``model.<name>``), builder, one-line help, and what the tests need for a tiny one."""

    name: str
    section: type
    build: Builder | str
    help: str
    tiny: Tiny
    # The preprocessing of its tiny models and exact-probability test (RealNVP and Flow++: logit).
    preprocess: str = "shift"
    # Options of a variational dequantizer of its own kind in the tests (Flow++: its couplings).
    dequantizer: Mapping[str, Any] = field(default_factory=dict)

    def builder(self) -> Builder:
        """The builder, imported now if it was registered by its ``"module:function"`` name."""
        if callable(self.build):
            return self.build
        module, _, name = self.build.partition(":")
        return getattr(importlib.import_module(module), name)


_REGISTRY: dict[str, Architecture] = {}
_loaded = False
S = TypeVar("S", bound=type)


def register_architecture(name: str, *, build: Builder | str, help: str, tiny: Tiny, preprocess: str = "shift",
                          dequantizer: Mapping[str, Any] | None = None) -> Callable[[S], S]:
    """Class decorator on an architecture's config section (a frozen dataclass of ``opt``
    fields, subclassing ``nfgen.flows.section.ArchSection``): registers ``name`` with its
    builder (a callable, or ``"module:function"`` imported when a model is built), the
    section's one-line ``help`` and ``tiny``, the keys of a tiny model for the tests."""
    if not name.isidentifier() or name.startswith("_"):
        raise ValueError(f"an architecture's name is its config section's key: a Python name, got {name!r}")
    if preprocess not in ("shift", "logit"):
        raise ValueError(f"preprocess must be shift or logit, got {preprocess!r}")

    def register(section: S) -> S:
        if name in _REGISTRY and _REGISTRY[name].section.__qualname__ != section.__qualname__:
            raise ValueError(f"architecture {name!r} is already registered (by {_REGISTRY[name].section.__module__})")
        _REGISTRY[name] = Architecture(name, section, build, help, tiny, preprocess, dict(dequantizer or {}))
        return section

    return register


def architectures() -> Mapping[str, Architecture]:
    """Every registered architecture: the built-in ones in ``BUILTIN_MODULES``' order, then the
    others in registration order (whichever module was imported first)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
    order = {module: i for i, module in enumerate(BUILTIN_MODULES)}
    builtin = sorted((a for a in _REGISTRY.values() if a.section.__module__ in order),
                     key=lambda a: order[a.section.__module__])
    return {**{a.name: a for a in builtin}, **_REGISTRY}


def architecture(name: str) -> Architecture:
    """The architecture ``name``; a ``ValueError`` names the registered ones."""
    table = architectures()
    if name not in table:
        raise ValueError(f"unknown architecture {name!r}; expected one of {', '.join(table)}")
    return table[name]


def architecture_names() -> list[str]:
    return list(architectures())


def architecture_sections() -> dict[str, tuple[type, str]]:
    """``{name: (section class, help)}``: the ``model.<name>`` sections a config may hold."""
    return {a.name: (a.section, a.help) for a in architectures().values()}


class Builders(Mapping[str, Builder]):
    """``{name: builder}`` over the registry, as it is when read (``nfgen.model.image_flow.ARCHITECTURES``)."""

    def __getitem__(self, name: str) -> Builder:
        if name not in architectures():
            raise KeyError(name)
        return architectures()[name].builder()

    def __iter__(self) -> Iterator[str]:
        return iter(list(architectures()))

    def __len__(self) -> int:
        return len(architectures())

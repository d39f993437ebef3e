"""Named choices (``coupling: affine``, ``conditioner: glow``): a registry maps a name to a
constructor, and a wrong name or option fails with one line naming the valid ones.

A registry knows where its built-in entries are registered (``builtins``, a module that imports
each built-in module) and imports it the first time the registry is read or written. So the
built-in modules import the registry, never the reverse (no import cycles), every reader sees
the same names (the command line, the tests, a plugin), and a plugin registering a name that a
built-in already holds is refused instead of being silently replaced, whichever is imported first.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import TypeVar

T = TypeVar("T")


class Registry(MutableMapping[str, T]):
    """Name -> constructor of one kind of choice (``what``: "coupling transform", ...), whose
    built-in entries are registered by importing the module ``builtins``."""

    def __init__(self, what: str, builtins: str) -> None:
        self.what, self.builtins = what, builtins
        self._items: dict[str, T] = {}
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # first: the built-in modules register into this registry while they load
        try:
            importlib.import_module(self.builtins)
        except BaseException:
            self._loaded = False  # a broken built-in is a bug: the next read raises it again
            raise

    def register(self, name: str, item: T) -> T:
        """Add ``item`` as ``name``; a name that another object already holds is a ``ValueError``
        (the same object re-registered, e.g. its module reloaded, replaces it)."""
        self._load()
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.what} is registered under a non-empty name, got {name!r}")
        held = self._items.get(name)
        if held is not None and _qualname(held) != _qualname(item):
            raise ValueError(f"{self.what} {name!r} is already registered by {_qualname(held)}; "
                             f"register {_qualname(item)} under another name")
        self._items[name] = item
        return item

    def __getitem__(self, name: str) -> T:
        self._load()
        return self._items[name]

    def __setitem__(self, name: str, item: T) -> None:
        self.register(name, item)

    def __delitem__(self, name: str) -> None:
        self._load()
        del self._items[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._items))

    def __len__(self) -> int:
        self._load()
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(sorted(self))})"


def _qualname(item: object) -> str:
    return f"{getattr(item, '__module__', '?')}.{getattr(item, '__qualname__', type(item).__qualname__)}"


def build_named(what: str, table: Mapping[str, Callable[..., T]], name: str, options: Mapping[str, object]) -> T:
    """``table[name](**options)``; a ``ValueError`` names the valid names or options of ``what``."""
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; expected one of {', '.join(sorted(table))}")
    make = table[name]
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    valid = [n for n, p in inspect.signature(make).parameters.items() if p.kind in named]
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ValueError(f"{what} {name!r} has no option {unknown[0]!r}; its options: {', '.join(valid) or 'none'}")
    return make(**options)

"""Named choices (``coupling: affine``, ``conditioner: glow``): a name maps to a constructor,
and a wrong name or option fails with one line naming the valid ones."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TypeVar

T = TypeVar("T")


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

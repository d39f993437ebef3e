"""The one-line error boundary over every parse of user input.

Every function that turns what a user typed or wrote (an option, an override, a config file, a
formula, a file of points) into a value is registered here with ``@parser("what")``, in its own
file. Inside it, an error of Python's own (``int("³")``'s ``ValueError``, ``float(10**400)``'s
``OverflowError``, a ``RecursionError``, a ``UnicodeError``) is a ``ConfigError`` naming
``what``, one line: a parser that missed a hostile value still gives the user a message and
never a traceback. nfgen's own errors (``ConfigError``, ``DataError``, ``TargetError``, ...)
pass through unchanged, as their messages already say what to do.

``tests/test_hostile_values.py`` feeds every registered parser the hostile values (and fails
for a parser it has no case for), so a new parser is fuzzed by registering it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

PARSERS: dict[str, Callable[..., Any]] = {}
# What Python's parsing of a hostile value raises (TypeError: a YAML list where a string goes).
PYTHON_ERRORS = (ValueError, ArithmeticError, TypeError, RecursionError, UnicodeError, IndexError, KeyError)


def one_line(text: str, most: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= most else line[: most - 3] + "..."


def parser(what: str) -> Callable[[F], F]:
    """Register ``fn`` as the parser of ``what`` (e.g. ``"--label"``) and put the boundary
    around it."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def parse(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except PYTHON_ERRORS as e:
                if not type(e).__module__.startswith("builtins"):
                    raise  # nfgen's own errors (and yaml's, torch's) say what they mean
                from nfgen.errors import ConfigError

                raise ConfigError(f"{what}: cannot read this value ({type(e).__name__}: {one_line(e)}); "
                                  "check it") from None

        if what in PARSERS:
            raise ValueError(f"a parser of {what} is registered twice")
        PARSERS[what] = parse
        return parse  # type: ignore[return-value]

    return wrap

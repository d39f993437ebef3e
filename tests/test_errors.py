"""Errors by meaning (nfgen/errors.py): every error a user can cause is a ``UserError`` defined in
that one module, carries its exit code, and the command line turns it into one line and that code.
Any other exception class in the package is internal: the package catches it by name and raises
a user error with the context (which image, which config key)."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import signal
from pathlib import Path

import pytest
import typer

import nfgen
from nfgen import errors
from nfgen.cli.support import user_errors

PACKAGE = Path(nfgen.__file__).parent
DOCS = Path(__file__).resolve().parents[1] / "docs"
# Not an error at all: a clean stop by SIGINT/SIGTERM after last.pt is written; ``user_errors``
# prints it as it is and exits 128 + the signal's number (checked below).
STOPS = {"TrainingInterrupted"}


def user_error_classes() -> list[type[errors.UserError]]:
    return [c for c in vars(errors).values() if inspect.isclass(c) and c.__module__ == errors.__name__]


def package_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined in a module of nfgen, ``module.Class`` -> class."""
    found = {}
    for info in pkgutil.walk_packages([str(PACKAGE)], "nfgen."):
        if info.name.endswith("__main__"):
            continue  # running it is the command line
        module = importlib.import_module(info.name)
        for name, c in vars(module).items():
            if inspect.isclass(c) and issubclass(c, BaseException) and c.__module__ == info.name:
                found[f"{info.name}.{name}"] = c
    return found


def caught_names() -> dict[str, set[str]]:
    """The class names each module of nfgen names in an ``except`` clause."""
    caught: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        names = caught.setdefault(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts), set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                for n in ast.walk(node.type):
                    names |= {n.id} if isinstance(n, ast.Name) else {n.attr} if isinstance(n, ast.Attribute) else set()
    return caught


def test_every_user_error_is_a_user_error_with_an_exit_code():
    classes = user_error_classes()
    assert errors.UserError in classes and len(classes) >= 6
    for c in classes:
        assert issubclass(c, errors.UserError), c
        assert isinstance(c.exit_code, int) and 1 <= c.exit_code <= 125, c  # 126+ are the shell's and signals'
        assert c.__doc__ and c.__doc__.strip(), f"{c.__name__} needs a docstring saying what it means"


def test_each_meaning_has_its_class():
    for name in ("ConfigError", "DataError", "CheckpointError", "DeviceError", "OutputError"):
        assert issubclass(getattr(errors, name), errors.UserError)
    assert errors.ConfigError.exit_code == 2 and errors.UserError.exit_code == 1


def test_the_documented_exit_codes_are_the_classes():
    """docs/reliability.md's table of exit codes names every user error class with its code."""
    text = (DOCS / "reliability.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| (\d+) \|", text, re.M))
    assert rows, "docs/reliability.md has no table of `Class` | code rows"
    assert {c.__name__: str(c.exit_code) for c in user_error_classes()} == rows


@pytest.mark.parametrize("cls", user_error_classes(), ids=lambda c: c.__name__)
def test_user_errors_turns_each_into_one_line_and_its_exit_code(cls, capsys):
    with pytest.raises(typer.Exit) as e, user_errors():
        raise cls(f"the {cls.__name__} said what to do")
    assert e.value.exit_code == cls.exit_code
    assert capsys.readouterr().err == f"error: the {cls.__name__} said what to do\n"


@pytest.mark.parametrize("cls", user_error_classes(), ids=lambda c: c.__name__)
def test_a_loader_workers_traceback_is_cut_to_the_message(cls):
    # How torch re-raises a DataLoader worker's exception in the main process: the same class,
    # the worker's traceback as its message.
    wrapped = (f"Caught {cls.__name__} in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               f'  File "x.py", line 1, in f\n    raise {cls.__name__}(...)\n{cls.__module__}.{cls.__name__}: the message\n')
    assert str(cls(wrapped)) == "the message"


def test_a_stop_by_signal_exits_128_plus_the_signal(tmp_path, capsys):
    from nfgen.training.trainer import TrainingInterrupted

    with pytest.raises(typer.Exit) as e, user_errors():
        raise TrainingInterrupted(signal.SIGTERM, tmp_path / "run" / "checkpoints" / "last.pt")
    assert e.value.exit_code == 128 + signal.SIGTERM
    assert capsys.readouterr().err.startswith("stopped by SIGTERM; saved")


def test_other_exceptions_are_not_swallowed():
    with pytest.raises(KeyError), user_errors():
        raise KeyError("a bug is a traceback, not a one-line error")


def test_no_other_exception_class_in_the_package_is_a_user_error():
    """An exception class outside nfgen/errors.py must be internal: another module of nfgen
    catches it by name (and raises a user error naming what the user gave), or it is a stop."""
    caught = caught_names()
    outside = {k: c for k, c in package_exceptions().items() if c.__module__ != errors.__name__}
    assert STOPS <= {c.__name__ for c in outside.values()}, "a stop named in STOPS no longer exists: update STOPS"
    for where, c in outside.items():
        assert not issubclass(c, errors.UserError), f"{where}: a user error belongs in nfgen/errors.py"
        if c.__name__ in STOPS:
            continue
        catchers = [m for m, names in caught.items() if c.__name__ in names and m != c.__module__]
        assert catchers, (f"{where} is raised to the user as a traceback: no other module of nfgen catches it. "
                          "Define it in nfgen/errors.py as a UserError subclass, or catch it where the "
                          "context is known and raise one")

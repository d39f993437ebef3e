"""Plugins: a user's own modules, named in a config (``plugins: [my_flows]``), imported before
the rest of the config is read, so the names they register (``register_transform``,
``register_conditioner``, ...) are valid choices of that config.

A plugin is found like any module: on the Python path (``PYTHONPATH``, installed packages, the
current folder under ``python -m nfgen``), then in the config file's folder, then in the current
folder (the ``nfgen`` console script does not put it on the path). A folder where a plugin was
found stays at the end of ``sys.path``, so the plugin's own later imports and spawned data
workers find it too. The config, plugins included, is stored whole in every checkpoint and
export: every verb on one imports them first. A module that cannot be found, or that fails
while importing, is a one-line ``PluginError`` (a ``ConfigError``) that says which and what to do.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nfgen.config.parse import _coerce
from nfgen.errors import ConfigError, PluginError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def plugin_names(data: Any) -> tuple[str, ...]:
    """The module names of a config's ``plugins`` key (plain data, before the config is built),
    each checked to be a module name; a wrong one is a ``ConfigError``."""
    value = data.get("plugins") if isinstance(data, dict) else None
    names = _coerce("plugins", [] if value is None else value, tuple[str, ...])
    for name in names:
        if not _NAME.fullmatch(name) or name.endswith(".py"):  # my_flows.py: the file, surely not a module "py"
            stem = Path(name).stem if name.endswith(".py") else ""
            hint = f" (name the module, not its file: {stem!r})" if _NAME.fullmatch(stem) else ""
            raise ConfigError(f"plugins: {name!r} is not a module name{hint}; give importable names such as my_flows "
                              "or my_package.flows")
    return names


def load_plugins(names: Sequence[str], folders: Iterable[str | Path] = (), source: str = "plugins") -> None:
    """Import each module of ``names`` (already imported ones are not re-run), looking in
    ``folders`` and the current folder when the Python path does not have it. ``source`` starts
    each error message: what asked for the plugin (a config's key, a checkpoint)."""
    for name in names:
        if name in sys.modules:
            continue
        searched = [str(Path(f).resolve()) for f in (*folders, os.getcwd())]
        if _import(name, source):
            continue
        for folder in dict.fromkeys(searched):  # in order, each once
            if folder in (str(Path(p or ".").resolve()) for p in sys.path):
                continue
            sys.path.append(folder)
            importlib.invalidate_caches()
            if _import(name, source):
                break
            sys.path.remove(folder)
        else:
            where = " and ".join(dict.fromkeys(searched))
            raise PluginError(f"{source}: no module {name!r} on the Python path or in {where}: put the folder "
                              f"holding {name.replace('.', '/')}.py on PYTHONPATH (or run nfgen there), or pip "
                              "install the package that provides it")


def _import(name: str, source: str) -> bool:
    """Import ``name``: True if done, False if no such module is found; an error raised inside
    the module is a ``PluginError`` naming the module, the error and where it was raised."""
    try:
        importlib.import_module(name)
        return True
    except ModuleNotFoundError as e:
        if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
            return False  # the plugin itself (or its package) is not there, not something it imports
        raise PluginError(f"{source}: plugin module {name!r} failed while importing: {_describe(e)}; "
                          "install what it imports, or fix the module") from None
    except Exception as e:  # noqa: BLE001  (any error of a user's module becomes one line)
        raise PluginError(f"{source}: plugin module {name!r} failed while importing: {_describe(e)}; "
                          "fix the module") from None


def _describe(e: BaseException) -> str:
    """``Type: first line of the message (at file:line)``, at the innermost frame outside nfgen
    and the import machinery: the plugin's own line that led to the error."""
    message = (str(e).strip().splitlines() or [""])[0]
    if isinstance(e, SyntaxError) and e.filename:
        return f"{type(e).__name__}: {e.msg} (at {e.filename}:{e.lineno})"
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not f.filename.startswith(("<frozen", _PACKAGE_DIR))]
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}: {message}{where}"

"""Plain data (YAML, ``--set`` overrides) into frozen dataclasses, type-checked field by field:
the machinery under ``nfgen.config.schema``, which knows nothing of any particular section.

Every error is a ``ConfigError`` with a one-line message that names the offending key."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from nfgen.core.user_input import parser
from nfgen.errors import ConfigError

# Integers beyond int64 overflow in torch; a config is sections of plain keys, a few levels deep,
# in a file of a few hundred bytes.
MAX_INT = 2**62
MAX_DEPTH = 8
MAX_CONFIG_BYTES = 1 << 20


def _suggest(key: str, valid: list[str], nested: dict[str, str] | None = None) -> str:
    """A hint naming the closest valid key, or the closest key of a subsection (``nested`` maps
    such a key to its dotted place, e.g. ``steps -> glow.steps``)."""
    nested = nested or {}
    close = difflib.get_close_matches(key, valid + list(nested), n=1)
    hint = f" (did you mean '{nested.get(close[0], close[0])}'?)" if close else ""
    return f"{hint}; valid keys: {', '.join(valid)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _coerce(path: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):  # e.g. float | str | None: the first type that takes it
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(path, value, arg)
            except ConfigError:
                continue
        names = " or ".join(_TYPE_NAMES.get(a, "null" if a is type(None) else str(a)) for a in args)
        raise ConfigError(f"{path}: expected {names}, got {_short(value)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if not isinstance(value, (str, int, bool)) or value not in choices:
            raise ConfigError(f"{path}: {_short(value)} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if args[-1] is Ellipsis and not isinstance(value, (list, tuple, dict)):
            value = [value]  # a list of any length: one value is a list of one
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {_short(value)}")
        if args[-1] is Ellipsis:
            return tuple(_coerce(f"{path}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}: {_short(value)}")
        return tuple(_coerce(f"{path}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of options, got {_short(value)}")
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or isinstance(v, (dict, list, tuple)) or v is None:
                raise ConfigError(f"{path}: options are name: value pairs of plain values, got {k!r}: {_short(v)}")
            out[k] = _coerce(f"{path}.{k}", v, type(v)) if isinstance(v, float) else v
        return out
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {_short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {_short(value)}")
        if abs(value) > MAX_INT:
            raise ConfigError(f"{path}: {value} is too large (limit {MAX_INT:.1e})")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {_short(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {_short(value)}")
        if "\x00" in value:
            raise ConfigError(f"{path}: a string with a NUL byte is not allowed")
        return value
    raise TypeError(f"unsupported config type {tp}")  # a bug in this module, not user input


def _section_type(tp: Any) -> type | None:
    """The dataclass of a section field (``X`` or ``X | None``), or None for a plain value."""
    if dataclasses.is_dataclass(tp):
        return tp
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


# Field metadata read at parse time (set through ``nfgen.config.keys.opt``), so a registry filled
# after import (a plugin's architecture) is what a config is checked against:
# ``choices``: a function giving a ``str`` field's valid values;
# ``sections`` with ``chosen_by``: the field holds one of several sections, ``{key: (class,
# help)}``, whose key in the data is the value of the field ``chosen_by`` (``model.glow`` for
# ``model.arch: glow``); the sections of the other choices are errors.
CHOICES, SECTIONS, CHOSEN_BY = "choices", "sections", "chosen_by"


def section_choices(f: dataclasses.Field) -> dict[str, tuple[type, str]]:
    """``{key: (section class, help)}`` of a field holding one of several sections, or {}."""
    return f.metadata[SECTIONS]() if SECTIONS in f.metadata else {}


def _nested_keys(cls: type, data: dict[str, Any]) -> dict[str, str]:
    """Keys of ``cls``'s subsections, the chosen section's first (for ``_suggest``)."""
    hints = typing.get_type_hints(cls)
    sections = [(f.name, _section_type(hints[f.name])) for f in dataclasses.fields(cls) if _section_type(hints[f.name])]
    for f in dataclasses.fields(cls):
        if SECTIONS in f.metadata:
            chosen = data.get(f.metadata[CHOSEN_BY])
            sections += sorted(((k, c) for k, (c, _) in section_choices(f).items()), key=lambda kc: kc[0] != chosen)
    nested: dict[str, str] = {}
    for name, section in sections:
        for f in dataclasses.fields(section):
            nested.setdefault(f.name, f"{name}.{f.name}")
    return nested


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping of keys, got {_short(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    chosen_fields = {name: section_choices(f) for name, f in fields.items() if SECTIONS in f.metadata}
    names = [name for name in fields if name not in chosen_fields]
    prefix = f"{path}." if path else ""
    kwargs: dict[str, Any] = {}
    given: dict[str, list[tuple[str, Any]]] = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        owner = next((name for name, table in chosen_fields.items() if key in table), None)
        if owner is not None:  # null: that section's defaults, or nothing if it is not the chosen one
            section = None if value is None else _build(chosen_fields[owner][key][0], value, where)
            given.setdefault(owner, []).append((key, section))
            continue
        if key not in names:
            valid = names + [k for table in chosen_fields.values() for k in table]
            nested = {k: f"{prefix}{v}" for k, v in _nested_keys(cls, data).items()}
            raise ConfigError(f"unknown key '{where}'{_suggest(str(key), valid, nested)}")
        section = _section_type(hints[key])
        if section is not None:
            kwargs[key] = _build(section, value if value is not None else {}, where)
            continue
        kwargs[key] = _coerce(where, value, hints[key])
        if CHOICES in fields[key].metadata and kwargs[key] not in (choices := fields[key].metadata[CHOICES]()):
            raise ConfigError(f"{where}: {_short(kwargs[key])} is not one of {', '.join(map(repr, choices))}")
    for name in chosen_fields:
        by = fields[name].metadata[CHOSEN_BY]
        chosen = kwargs.get(by, _default(fields[by]))
        for key, section in given.get(name, []):
            if key != chosen and section is None:
                continue
            if key != chosen:
                raise ConfigError(f"{prefix}{key} is the section of {by} {key}, but {prefix}{by} is {chosen}: "
                                  f"remove it, or set {prefix}{by}: {key}")
            kwargs[name] = section  # None: filled in with the section's defaults by the class
    return cls(**kwargs)


def field_key(value: Any, f: dataclasses.Field) -> str:
    """The key of field ``f`` of config section ``value`` in YAML: its name, or for a chosen
    section the choice's (``glow`` for ``ModelConfig.options`` under ``arch: glow``)."""
    return getattr(value, f.metadata[CHOSEN_BY]) if SECTIONS in f.metadata else f.name


def plain_data(value: Any) -> Any:
    """A config tree as plain data for YAML and checkpoints, as ``_build`` reads it back: a
    chosen section under its key (``model.glow``), unset (None) values left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if v is not None:
                out[field_key(value, f)] = plain_data(v)
        return out
    if isinstance(value, dict):
        return {k: plain_data(x) for k, x in value.items() if x is not None}
    if isinstance(value, (list, tuple)):
        return [plain_data(x) for x in value]
    return value


def _depth(value: Any, limit: int = MAX_DEPTH) -> int:
    if limit < 0:
        return 0
    if isinstance(value, dict):
        return 1 + max((_depth(v, limit - 1) for v in value.values()), default=0)
    if isinstance(value, (list, tuple)):
        return 1 + max((_depth(v, limit - 1) for v in value), default=0)
    return 0


@parser("--set")
def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> ``(["train", "lr"], 0.0003)``; values parse as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.lr=3e-4)")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {text!r}: the key must look like section.key (e.g. train.lr)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    except RecursionError:
        raise ConfigError(f"override {key}: the value is nested too deeply") from None
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            child = node.get(k)
            node[k] = child = dict(child) if isinstance(child, dict) else ({} if child is None else child)
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{k}' is not a section")
            node = child
        node[keys[-1]] = value
    return data


@parser("config file")
def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a YAML config file; every way the file can be wrong is a ``ConfigError``."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path} is {path.stat().st_size} bytes, not a config (a YAML file of a few "
                              "hundred bytes); give the config file")
        data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file (not UTF-8); give a YAML config") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}; fix the file") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config; fix the file") from None
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def shipped_folder(*parts: str) -> Path:
    """The folder of configs shipped inside the package (``nfgen/configs``, or a subfolder), found
    through ``importlib.resources``: beside the code in a checkout or an editable install, in
    site-packages from a wheel. A wheel installs unzipped, so the folder is a real directory."""
    return Path(str(resources.files("nfgen").joinpath("configs", *parts)))


def shipped_names(folder: Path) -> list[str]:
    """The YAML configs shipped in ``folder``."""
    return sorted(p.name for p in folder.glob("*.yaml"))


def resolve_path(path: str | Path, folder: Path) -> Path:
    """A path, or the bare name of a config shipped in ``folder`` (``name`` or ``name.yaml``)."""
    p = Path(path)
    if p.exists():
        return p
    for name in (p.name, f"{p.name}.yaml"):
        if p.parent == Path(".") and (folder / name).exists():
            return folder / name
    raise ConfigError(f"config {str(path)!r} not found; give a path or one of: {', '.join(shipped_names(folder))}")


MAX_TIME_LIMIT = 366 * 24 * 3600  # a year: larger is a typo (a number of milliseconds?)
_DURATION = re.compile(r"(?:(?P<d>\d+(?:\.\d*)?)d)?(?:(?P<h>\d+(?:\.\d*)?)h)?"
                       r"(?:(?P<m>\d+(?:\.\d*)?)m(?:in)?)?(?:(?P<s>\d+(?:\.\d*)?)s)?")
_CLOCK = re.compile(r"(?P<h>\d+):(?P<m>[0-5]\d):(?P<s>[0-5]\d)")  # Slurm's --time H:MM:SS
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


@parser("duration")
def parse_duration(value: float | str | None, what: str = "train.max_time") -> float | None:
    """Seconds from a number of seconds or a duration such as ``90s``, ``10m``, ``2h``, ``1h30m``,
    ``1.5h``, ``1d`` or ``4:00:00`` (H:MM:SS); None stays None. A ``ConfigError`` otherwise."""
    if value is None:
        return None
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d*)?\s*", value):
        value = float(value)  # "600" (a command-line argument): seconds
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        m = _CLOCK.fullmatch(text) or _DURATION.fullmatch(text)
        if not text or m is None or not any(m.groupdict().values()):
            raise ConfigError(f"{what}: {value!r} is not a duration; give seconds (600) or e.g. 90s, 10m, "
                              "2h, 1h30m, 4:00:00")
        seconds = sum(float(v) * _UNITS[k] for k, v in m.groupdict().items() if v)
    else:
        seconds = float(value)
    if not 0 < seconds <= MAX_TIME_LIMIT:
        raise ConfigError(f"{what} must be above 0 and at most {MAX_TIME_LIMIT // 86400} days, got {value!r}")
    return seconds

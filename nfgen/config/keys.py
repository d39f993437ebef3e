"""Every config key's type, default and one-line help, from one source: the ``help`` in each
dataclass field's metadata (``opt``). ``nfgen config --keys`` lists them, and the same listing,
as Markdown, is the key reference in docs/configs.md (a test fails when it is stale)."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Union

from nfgen.config.parse import CHOICES, CHOSEN_BY, SECTIONS, _default, _section_type, section_choices

_NO_DEFAULT: Any = dataclasses.MISSING


def opt(default: Any = _NO_DEFAULT, help: str = "", *, factory: Callable[[], Any] | None = None,
        choices: Callable[[], list[str]] | None = None,
        sections: Callable[[], dict[str, tuple[type, str]]] | None = None, chosen_by: str = "") -> Any:
    """A config field with its one-line ``help`` (``factory`` for a mutable default).

    ``choices``: a function giving a string field's valid values; ``sections`` with
    ``chosen_by``: the field holds the section ``sections()[value of chosen_by]`` (``model.glow``
    for ``model.arch: glow``). Both are read when a config is parsed or listed, not at import, so
    what registers later (a plugin's architecture) counts."""
    if not help:
        raise TypeError("every config field needs its one-line help")  # caught by the tests, at import
    if (sections is None) != (not chosen_by):
        raise TypeError("sections and chosen_by go together")
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata[CHOICES] = choices
    if sections is not None:
        metadata.update({SECTIONS: sections, CHOSEN_BY: chosen_by})
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Key:
    """One key (``section`` False) or section (``section`` True) of a config tree."""

    path: str  # dotted, e.g. train.lr or model.glow
    type: str
    default: str
    help: str
    section: bool = False


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is tuple:
        if args and args[-1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return f"[{', '.join(_type_name(a) for a in args)}]"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _yaml(value: Any) -> str:
    """A default as it is written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return f"[{', '.join(_yaml(v) for v in value)}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return value if value else '""'
    return repr(value)


def keys(cls: type, prefix: str = "") -> Iterator[Key]:
    """Every key of the config dataclass ``cls``, depth first; a section (a field holding a config
    dataclass, set or not) comes before its keys, which are listed with the section's defaults."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        section = _section_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        if SECTIONS in f.metadata:  # one of several sections: every one a config may hold
            for name, (choice, about) in section_choices(f).items():
                yield Key(f"{prefix}{name}", "section", "", about, section=True)
                yield from keys(choice, f"{prefix}{name}.")
        elif section is not None:
            yield Key(path, "section", "", help_text, section=True)
            yield from keys(section, f"{path}.")
        else:
            kind = " | ".join(f.metadata[CHOICES]()) if CHOICES in f.metadata else _type_name(hints[f.name])
            yield Key(path, kind, _yaml(_default(f)), help_text)


def text_listing(cls: type) -> str:
    """The keys as aligned plain text: key, type, default, help."""
    rows = list(keys(cls))
    width = max(len(k.path) for k in rows)
    tw = max(len(k.type) for k in rows if not k.section)
    dw = max(len(k.default) for k in rows if not k.section)
    lines = [f"{'key':<{width}}  {'type':<{tw}}  {'default':<{dw}}  meaning"]
    for k in rows:
        if k.section:
            lines.append(f"{k.path + ':':<{width}}  {k.help}")
        else:
            lines.append(f"{k.path:<{width}}  {k.type:<{tw}}  {k.default:<{dw}}  {k.help}")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text safe in a Markdown table (``runs/<name>`` is no HTML tag)."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    """Text safe in a code span of a Markdown table (the only character to escape is ``|``)."""
    return text.replace("|", "\\|")


def markdown_table(cls: type, title: str, intro: str) -> str:
    """One Markdown section: a table for each config section (a section's own keys, its
    subsections after it), in the order of the dataclasses."""
    groups: dict[str, list[Key]] = {}
    about: dict[str, str] = {}
    for k in keys(cls):
        if k.section:
            groups.setdefault(k.path, [])
            about[k.path] = k.help
        else:
            groups.setdefault(k.path.rpartition(".")[0], []).append(k)
    out = [f"## {title}", "", intro, ""]
    for parent, rows in groups.items():
        if parent:
            out += [f"### `{parent}`", "", _cell(about[parent]), ""]
        if rows:
            out += ["| key | type | default | meaning |", "|---|---|---|---|"]
            out += [f"| `{k.path}` | {_cell(k.type)} | `{_code(k.default)}` | {_cell(k.help)} |" for k in rows]
            out.append("")
    return "\n".join(out)

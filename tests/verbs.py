"""The verbs, as the app registers them: the tests that list verbs read them here, never a
hand-kept list, so a new verb is seen (and must be placed) by those tests."""

from __future__ import annotations

import inspect

import typer.main

from nfgen.cli.app import app


def verbs() -> list[str]:
    """Every top-level verb and command group of ``nfgen`` (``train``, ..., ``data``)."""
    return list(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def checkpoint_verbs() -> set[str]:
    """The verbs that take ``--ckpt``."""
    return {c.name or c.callback.__name__ for c in app.registered_commands
            if "ckpt" in inspect.signature(c.callback).parameters}

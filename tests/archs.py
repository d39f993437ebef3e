"""A tiny model of every architecture: a new architecture is one line in ``TINY``, and the
tests that iterate over it (memory saving, autocast, the CLI verbs, data parallelism) cover it."""

from __future__ import annotations

from typing import Any

TINY: dict[str, dict[str, Any]] = {  # for 8x8 images; ``depth`` steps/couplings/blocks, ``width`` of its nets
    "glow": {"levels": 2, "steps": "depth", "hidden": "width"},
    "realnvp": {"levels": 2, "steps": "depth", "hidden": "width", "blocks": 1},
    "flowpp": {"levels": 2, "channel": [0, 1], "checkerboard": ["depth", 1], "hidden": "width", "blocks": 1,
               "coupling_options": {"components": 2}},
    "tarflow": {"patch": 2, "blocks": "depth", "layers": [1], "width": "width", "heads": 2},
}
PREPROCESS = {"glow": "shift", "realnvp": "logit", "flowpp": "logit", "tarflow": "shift"}


def tiny_model(arch: str, image_shape: tuple[int, int, int] | list[int], depth: int = 2, width: int = 8,
               **section: Any) -> dict:
    """The ``model`` section of a tiny ``arch`` model (``section`` overrides its keys)."""
    sizes = {"depth": depth, "width": width}

    def fill(value: Any) -> Any:
        if isinstance(value, list):
            return [fill(v) for v in value]
        return sizes[value] if isinstance(value, str) and value in sizes else value

    options = {k: fill(v) for k, v in TINY[arch].items()}
    return {"arch": arch, "image_shape": list(image_shape), "preprocess": PREPROCESS[arch],
            arch: {**options, **section}}

"""A tiny model of every architecture: a new architecture is one line in ``TINY``, and the
tests that iterate over it (memory saving, autocast, the CLI verbs, data parallelism) cover it."""

from __future__ import annotations

from typing import Any

TINY: dict[str, dict[str, Any]] = {  # for 8x8 images; ``depth`` steps/couplings per level
    "glow": {"levels": 2, "steps": "depth", "hidden": 8},
    "realnvp": {"levels": 2, "steps": "depth", "hidden": 8, "blocks": 1},
    "flowpp": {"levels": 2, "channel": [0, 1], "checkerboard": ["depth", 1], "hidden": 8, "blocks": 1,
               "coupling_options": {"components": 2}},
}
PREPROCESS = {"glow": "shift", "realnvp": "logit", "flowpp": "logit"}


def tiny_model(arch: str, image_shape: tuple[int, int, int] | list[int], depth: int = 2, **section: Any) -> dict:
    """The ``model`` section of a tiny ``arch`` model (``section`` overrides its keys)."""

    def fill(value: Any) -> Any:
        return depth if value == "depth" else [fill(v) for v in value] if isinstance(value, list) else value

    options = {k: fill(v) for k, v in TINY[arch].items()}
    return {"arch": arch, "image_shape": list(image_shape), "preprocess": PREPROCESS[arch],
            arch: {**options, **section}}

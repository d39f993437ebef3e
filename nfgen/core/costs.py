"""What an input will cost, estimated before anything is allocated, and the one refusal when it is
too much: a line with the figure, the limit and what to lower.

Three kinds of input size memory: an image file (decoded, then resized to the model's shape),
a model (its parameters, and in training its optimizer state and a batch's activations) and a
picture nfgen draws (a sample grid, the confusion matrix, a histogram). Each kind has one
estimator here, called where every code path of that kind passes:

- images: ``image_cost`` from a file's header, checked when a folder is listed and again when
  the pixels are read (``nfgen.datasets.images``);
- models: ``model_cost`` builds the model on a fake device (no memory; every architecture, the
  exact parameter count and, by a forward on fake tensors, the exact bytes autograd keeps),
  checked by ``build_model`` against the machine's memory and by training against the device's;
- pictures: ``picture_fits`` / ``check_grid``, one bound on the pixels of every picture.

One bound serves images and pictures: Pillow's own ``Image.MAX_IMAGE_PIXELS`` (89 million
pixels), the size past which Pillow itself warns that an image may be a decompression bomb. A
picture nfgen writes stays under it (so any viewer opens it), and a resized image may not exceed
it either: a 1 x 40,000,000 PNG passes Pillow's check, but resizing its short side to 64 pixels
would ask for 64 x 2,560,000,000.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from nfgen.errors import ConfigError


def max_pixels() -> int:
    """The one bound on an image's or a picture's pixels (Pillow's, read when used: a user who
    raises Pillow's limit raises nfgen's with it)."""
    return int(Image.MAX_IMAGE_PIXELS or 89_478_485)


def format_bytes(n: float) -> str:
    """``51.5e9`` -> ``"51.5 GB"`` (decimal units, as free memory is reported)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def format_count(n: float) -> str:
    return f"{n:,.0f}"


# ----------------------------------------------------------------- images
def resized_size(width: int, height: int, target: tuple[int, int]) -> tuple[int, int]:
    """(width, height) after ``transforms.Resize(max(target))``: the shorter side becomes
    ``max(target)``, the longer one keeps the aspect ratio (torchvision's rounding)."""
    side = max(target)
    if width <= height:
        return side, int(side * height / max(width, 1))
    return int(side * width / max(height, 1)), side


def image_cost(width: int, height: int, target: tuple[int, int]) -> int:
    """Pixels the reading of one image holds at once: the decoded image or its resized copy,
    whichever is larger."""
    w, h = resized_size(width, height, target)
    return max(width * height, w * h)


def check_image(path: Path | str, width: int, height: int, target: tuple[int, int],
                error: type[Exception] = ValueError) -> None:
    """Refuse an image whose decoding or resizing to ``target`` (H, W) would exceed the bound."""
    cost = image_cost(width, height, target)
    if cost > max_pixels():
        w, h = resized_size(width, height, target)
        raise error(f"image {path} is {width} x {height} pixels; resizing it to the model's {target[0]} x "
                    f"{target[1]} takes {w} x {h} = {format_count(cost)} pixels, over the limit of "
                    f"{format_count(max_pixels())}: crop it to a less extreme shape or delete it")


# ----------------------------------------------------------------- pictures
def picture_fits(width: float, height: float) -> bool:
    return width * height <= max_pixels()


def figure_side(wanted: float, extra_width: float, dpi: float) -> float:
    """A figure's height in inches, its width that plus ``extra_width`` (a colour bar): ``wanted``,
    or the largest whose picture stays under the bound at ``dpi``."""
    # (side + extra) * side * dpi**2 <= max_pixels, solved for side
    most = (math.sqrt(extra_width ** 2 + 4 * max_pixels() / dpi ** 2) - extra_width) / 2
    return min(wanted, most)


def check_figure(width_in: float, height_in: float, dpi: float, what: str, lower: str) -> None:
    """Refuse (``ConfigError``) a matplotlib figure whose picture would exceed the bound, before
    it is drawn."""
    width, height = round(width_in * dpi), round(height_in * dpi)
    if not picture_fits(width, height):
        raise ConfigError(f"{what} would be {width} x {height} = {format_count(width * height)} pixels, over "
                          f"the limit of {format_count(max_pixels())} for a picture: lower {lower}")


def grid_pixels(n: int, nrow: int, shape: tuple[int, int, int], padding: int = 2) -> tuple[int, int]:
    """(width, height) of ``torchvision.utils.make_grid``'s grid of ``n`` images of ``shape``."""
    _, h, w = shape
    if n == 1:
        return w, h  # make_grid returns a single image as it is
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    return cols * (w + padding) + padding, rows * (h + padding) + padding


def check_grid(n: int, nrow: int, shape: tuple[int, int, int], lower: str) -> None:
    """Refuse a sample grid over the bound, before anything is sampled; ``lower`` names what to
    lower (``--n``, ``train.sample_count``)."""
    width, height = grid_pixels(n, nrow, shape)
    if not picture_fits(width, height):
        raise ConfigError(f"a grid of {n} images of {shape[1]} x {shape[2]} is {width} x {height} = "
                          f"{format_count(width * height)} pixels, over the limit of "
                          f"{format_count(max_pixels())} for a picture: lower {lower}")


# ----------------------------------------------------------------- memory
def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes free on ``device`` now: a GPU's free memory, or the machine's available memory
    (``MemAvailable``); None where it cannot be told (then nothing is refused)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


Memory = Callable[[torch.device], "int | None"]  # injectable: tests pass a fixed amount


@dataclass(frozen=True)
class ModelCost:
    """Bytes of a model's parameters and, for a batch of ``batch`` images in training, of the
    activations autograd keeps for the backward pass (0 when not measured)."""

    parameters: int
    activations: int = 0
    batch: int = 0


def model_cost(build: Callable[[], torch.nn.Module], batch: int = 0,
               shape: tuple[int, int, int] | None = None, device: torch.device | str = "cpu",
               autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> ModelCost:
    """Build the model with ``build`` where it takes no memory and count its parameter bytes: on
    the meta device (shapes only, the cheapest). With ``batch`` and ``shape``, build it on fake
    tensors instead (``torch._subclasses.FakeTensorMode``: shapes, dtypes and devices, no memory,
    but ops run) and also count the bytes autograd saves for the backward pass of a training
    forward of that many uint8 images (with labels, for a class-conditional model): the count
    ``training.memory.saved_activation_bytes`` makes on real tensors, equal to it. The forward
    runs as training's does: on (fake) tensors of ``device``, whose kernels decide what is saved
    (CPU attention keeps its attention matrices, a GPU's fused attention does not), and under
    ``autocast`` (bf16 keeps half). Every architecture, no formula per architecture. The global
    RNG is left as it was."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with torch.random.fork_rng(devices=[]):
        if not batch or shape is None:
            with torch.device("meta"):
                model = build()
            return ModelCost(_parameter_bytes(model))
        with FakeTensorMode(allow_non_fake_inputs=True), torch.device(device):
            model = build()
            own = {id(t) for t in (*model.parameters(), *model.buffers())}
            kept: dict[int, torch.Tensor] = {}  # keeps each counted tensor alive, so ids stay unique

            def pack(t: torch.Tensor) -> torch.Tensor:
                base = t._base if t._base is not None else t
                if id(t) not in own and id(base) not in own:
                    kept[id(base)] = base
                return t

            x = torch.zeros(batch, *shape, dtype=torch.uint8)
            # a class-conditional model's forward takes a label per image
            labels = torch.zeros(batch, dtype=torch.long) if getattr(model, "num_classes", 0) else None
            model.train()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast():
                loss = model(x, labels=labels).mean()  # type: ignore[operator]
            del loss
            saved = sum(t.untyped_storage().nbytes() for t in kept.values())
            return ModelCost(_parameter_bytes(model), saved, batch)


def _parameter_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def check_memory(need: int, device: torch.device | str, what: str, lower: str,
                 memory: Memory = available_memory) -> None:
    """Refuse (``ConfigError``) when ``need`` bytes exceed what ``memory(device)`` says is free."""
    free = memory(torch.device(device))
    if free is not None and need > free:
        raise ConfigError(f"{what} needs {format_bytes(need)}, more than the {format_bytes(free)} free on "
                          f"{device}: lower {lower}")

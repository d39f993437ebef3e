"""Which torch device a ``--device`` / ``train.device`` name means on this machine.

``auto`` takes the fastest accelerator present: CUDA, then Apple silicon's GPU (MPS), then the
CPU. The choice is a pure function of the name and of what the machine has (``choose_device``),
so tests give it any machine; ``resolve_device`` asks torch what this one has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nfgen.errors import DeviceError

if TYPE_CHECKING:
    import torch



def choose_device(name: str, cuda: bool, mps: bool) -> str:
    """The device for ``name`` (``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, its form
    already checked by ``nfgen.config.schema.check_device_name``), given whether CUDA and MPS are
    available; a ``DeviceError`` for an accelerator the machine lacks."""
    if name == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if name.startswith("cuda") and not cuda:
        raise DeviceError(f"train.device is {name!r} but CUDA is not available; use auto or cpu")
    if name == "mps" and not mps:
        raise DeviceError("train.device is 'mps' but MPS (Apple silicon's GPU, macOS 12.3+) is not available "
                          "in this torch; use auto or cpu")
    return name


def mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` means here (see ``choose_device``)."""
    import torch

    return torch.device(choose_device(name, torch.cuda.is_available(), mps_available()))

"""Data-parallel training through torch.distributed, launched by ``torchrun``.

torchrun tells each process its place through the environment (RANK, WORLD_SIZE, LOCAL_RANK);
this is the one place nfgen reads it. Without torchrun everything here is a no-op.
"""

from __future__ import annotations

import gc
import inspect
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from nfgen.errors import ConfigError


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def rank_from_env() -> Rank:
    """This process's place from torchrun's variables, checked: a stray ``WORLD_SIZE`` (set
    without torchrun) would otherwise hang or fail deep inside ``init_process_group``."""
    env = os.environ

    def number(name: str, default: str) -> int:
        text = env.get(name, default).strip()
        if re.fullmatch(r"[0-9]{1,9}", text) is None:  # ASCII: "³".isdigit() is true, int("³") fails
            raise ConfigError(f"environment variable {name}={env.get(name)!r} is not a non-negative integer; "
                              "unset it, or launch with torchrun")
        return int(text)

    world = number("WORLD_SIZE", "1")
    if world <= 1:
        return Rank()
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(v)]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} is set but {', '.join(missing)} not: launch data-parallel "
                          "training with torchrun (see docs/training.md), or unset WORLD_SIZE")
    r = Rank(number("RANK", "0"), world, number("LOCAL_RANK", "0"))
    if r.rank >= world:
        raise ConfigError(f"RANK={r.rank} is not below WORLD_SIZE={world}; launch with torchrun")
    return r


def setup(device: torch.device) -> Rank:
    """Join the process group torchrun prepared (NCCL on CUDA, gloo on CPU)."""
    r = rank_from_env()
    if not r.distributed:
        return r
    if device.type == "cuda" and r.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK={r.local_rank} but this machine has {torch.cuda.device_count()} GPUs; "
                          "lower torchrun's --nproc-per-node")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return r


def local_device(device: torch.device, r: Rank) -> torch.device:
    if device.type == "cuda" and r.distributed:
        torch.cuda.set_device(r.local_rank)
        return torch.device("cuda", r.local_rank)
    return device


def mean_over_ranks(value: float, r: Rank, device: torch.device) -> float:
    if not r.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / r.world_size


def any_rank(flag: bool, r: Rank, device: torch.device) -> bool:
    """True on every rank when it is true on one (so all ranks stop at the same step)."""
    if not r.distributed:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t)
    return bool(t.item())


def gather(values: torch.Tensor, r: Rank) -> torch.Tensor:
    """All ranks' 1-D tensors, concatenated in rank order (on every rank)."""
    if not r.distributed:
        return values
    parts: list = [None] * r.world_size
    dist.all_gather_object(parts, values.cpu())
    return torch.cat(parts)


def barrier(r: Rank) -> None:
    if r.distributed:
        dist.barrier()


def cleanup(r: Rank) -> None:
    if r.distributed and dist.is_initialized():
        # Free the DDP wrapper and its reducer (garbage in reference cycles by now) while the group
        # they hold is alive: left to interpreter shutdown, a rank aborted now and then at exit
        # ("terminate called without an active exception") after finishing its work.
        gc.collect()
        dist.destroy_process_group()


def no_buffer_sync() -> dict[str, bool]:
    """DDP's option to skip broadcasting buffers every forward (they are fixed after actnorm's
    init and equal on all ranks); renamed in newer torch, so ask for whichever exists."""
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def is_main_process() -> bool:
    return rank_from_env().is_main

"""Who am I among the ranks, whatever launched us (Ray Train, torchrun, or nothing)."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class RankContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    launcher: str  # "ray", "torchrun" or "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _local_rank() -> int:
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    try:
        import ray.train

        return ray.train.get_context().get_local_rank()
    except Exception:  # not under Ray Train
        return 0


def init_distributed(use_gpu: bool, timeout_s: int = 1800) -> RankContext:
    """Join (or create) the default process group and pick this rank's device.

    Ray Train's TorchTrainer has already created the group; torchrun leaves the rendezvous
    in the environment; a plain ``python`` run gets a one-rank gloo group so the same
    collective calls work everywhere. ``timeout_s``: how long a collective may wait (Ray Train
    sets it from ``TorchConfig``).
    """
    backend = "nccl" if use_gpu and torch.cuda.is_available() else "gloo"
    if dist.is_initialized():
        launcher = "ray"
    elif "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        launcher = "torchrun"
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        launcher = "single"
    local_rank = _local_rank()
    # DeepSpeed (zero.Init) and others read these; plain `python` runs have none of them.
    os.environ.setdefault("LOCAL_RANK", str(local_rank))
    os.environ.setdefault("RANK", str(dist.get_rank()))
    os.environ.setdefault("WORLD_SIZE", str(dist.get_world_size()))
    if use_gpu and torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return RankContext(dist.get_rank(), dist.get_world_size(), local_rank, device, launcher)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over ranks in one collective (fp64 so counts stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank; ``[value]`` alone."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()

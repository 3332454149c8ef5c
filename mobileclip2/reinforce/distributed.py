"""The few collectives a reinforce run needs, and its process group under torchrun.

Ranks exchange only small Python objects (the plan, the summaries), so a gloo group serves CPU and
GPU runs alike; embeddings never travel between ranks. Without torch.distributed (one process) every
function here is the identity.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import Any

__all__ = ["gather", "init_process_group", "on_rank0", "world"]


def init_process_group(timeout_hours: float) -> bool:
    """Under torchrun (WORLD_SIZE > 1) start the gloo group; -> whether this call started one."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or dist.is_initialized():
        return False
    dist.init_process_group("gloo", timeout=datetime.timedelta(hours=timeout_hours))
    return True


def world() -> tuple[int, int]:
    """(rank, world size) of this process (0, 1 without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def on_rank0(function: Callable[[], Any]) -> Any:
    """Run ``function`` on rank 0 and hand its result (or its error) to every rank."""
    rank, size = world()
    if size == 1:
        return function()
    import torch.distributed as dist

    payload: list[Any] = [None]
    if rank == 0:
        try:
            payload = [("ok", function())]
        except Exception as error:  # noqa: BLE001 - re-raised on every rank below
            payload = [("error", error)]
    dist.broadcast_object_list(payload, src=0)
    kind, value = payload[0]
    if kind == "error":
        raise value
    return value


def gather(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    rank, size = world()
    if size == 1:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * size
    dist.all_gather_object(values, value)
    return values

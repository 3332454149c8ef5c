"""The few collectives a reinforce run needs, and its process group under torchrun.

Ranks exchange only small Python objects (the plan, the summaries), so a gloo group serves CPU and
GPU runs alike; embeddings never travel between ranks. Without torch.distributed (one process) every
function here is the identity.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import MobileCLIP2Error, RankDisagreementError

__all__ = ["gather", "init_process_group", "on_rank0", "require_agreement", "world"]


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
    failure = None
    if rank == 0:
        try:
            payload = [("ok", function())]
        except Exception as error:  # noqa: BLE001 - re-raised on every rank below
            failure = error
            payload = [("error", _portable(error))]
    dist.broadcast_object_list(payload, src=0)
    kind, value = payload[0]
    if kind == "error":
        raise failure if failure is not None else value
    return value


def _portable(error: Exception) -> Exception:
    """``error`` when it survives pickling (errors with their own constructor arguments may not),
    else a MobileCLIP2Error with its message, so the other ranks fail with the same words."""
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - any failure to travel means: send the words instead
        return MobileCLIP2Error(f"{type(error).__name__}: {error}")
    return error


def gather(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    rank, size = world()
    if size == 1:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * size
    dist.all_gather_object(values, value)
    return values


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def disagreements(arguments: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each option in which a rank's ``arguments`` differ from rank 0's, as 'rank R was given ...'."""
    first = arguments[0]
    lines = []
    for rank, theirs in enumerate(arguments[1:], start=1):
        for key in sorted(set(first) | set(theirs)):
            if theirs.get(key) != first.get(key):
                given, expected = _shown(theirs.get(key)), _shown(first.get(key))
                lines.append(f"rank {rank} was given {key}={given}, rank 0 {key}={expected}")
    return lines


def require_agreement(arguments: Mapping[str, Any]) -> None:
    """Every rank must have been given the same ``arguments``; else every rank raises
    RankDisagreementError naming the options. Why: each rank would otherwise write its shards with
    its own options, seed, teachers or output and the manifest would describe none of them."""
    lines = disagreements(gather(dict(arguments)))  # the same list on every rank: all fail or none
    if lines:
        shown = "; ".join(lines[:8]) + (f"; and {len(lines) - 8} more" if len(lines) > 8 else "")
        raise RankDisagreementError(
            f"the ranks of this run were given different arguments: {shown}. Start every rank with the "
            "same command line (flags, inputs, --output); nothing was written"
        )

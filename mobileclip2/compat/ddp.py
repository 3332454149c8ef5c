"""torch's DistributedDataParallel for CPU-only runs (gloo), as open_clip_train builds it.

Versions handled: torch (checked 2.14) raises for ``DistributedDataParallel(module, device_ids=[cpu
device])``; open_clip_train 3.3.0's ``main()`` passes ``device_ids=[device]`` for every device, and so does
open_clip_train main (4.2.0.dev0), through ``task.prepare_distributed(device_ids=[device])``. Both forms
below drop ``device_ids`` that name only CPU devices -- a call that would otherwise raise, so no working
call changes: a DDP subclass for 3.x (whose ``main()`` calls the class directly) and a task whose
``prepare_distributed`` does it for open_clip_train >= 4.
"""

from __future__ import annotations

from typing import Any

from ._common import Internal

INTERNALS = (
    Internal(
        "torch.nn.parallel.DistributedDataParallel",
        "replaced class (while mobileclip2.train runs)",
        "training on CPU with DDP (open_clip_train 3.x)",
        "open_clip_train 3.3.0 (main: a task method instead)",
        "open_clip_train 3.x builds DDP(model, device_ids=[device]) itself; torch refuses CPU device ids",
    ),
    Internal(
        "open_clip.task.TrainingTask.prepare_distributed",
        "replaced method (per task)",
        "training on CPU with DDP (open_clip_train >= 4)",
        "main (4.x) only",
        "called with device_ids=[device]; torch refuses CPU device ids",
    ),
)


def without_cpu_device_ids(device_ids: Any) -> Any:
    """``device_ids``, or None when they name only CPU devices (torch rejects those for DDP)."""
    import torch

    if device_ids and all(
        isinstance(d, (str, torch.device)) and torch.device(d).type == "cpu" for d in device_ids
    ):
        return None
    return device_ids


def cpu_safe_ddp_class(ddp_class: type) -> type:
    """A subclass of ``ddp_class`` that accepts CPU ``device_ids`` (by building without them)."""

    class CpuSafeDistributedDataParallel(ddp_class):
        """DDP that ignores ``device_ids`` naming only CPU devices (torch raises for them)."""

        def __init__(self, module, device_ids=None, *args, **kwargs):
            super().__init__(module, without_cpu_device_ids(device_ids), *args, **kwargs)

    return CpuSafeDistributedDataParallel


def cpu_safe_task(task: Any) -> Any:
    """``task`` (an open_clip >= 4 TrainingTask) whose ``prepare_distributed`` accepts CPU device ids."""
    original = task.prepare_distributed

    def prepare_distributed(device_ids=None, **ddp_kwargs):
        return original(device_ids=without_cpu_device_ids(device_ids), **ddp_kwargs)

    task.prepare_distributed = prepare_distributed
    return task

"""torch's DistributedDataParallel for CPU-only runs (gloo), as open_clip_train builds it.

Versions handled: torch (checked 2.14) raises for
``DistributedDataParallel(module, device_ids=[cpu device])``; open_clip_train 3.3.0's ``main()``
passes ``device_ids=[device]`` for every device. The subclass drops ``device_ids`` that name only
CPU devices -- a call that would otherwise raise, so no working call changes.
"""

from __future__ import annotations


def cpu_safe_ddp_class(ddp_class: type) -> type:
    """A subclass of ``ddp_class`` that accepts CPU ``device_ids`` (by building without them)."""
    import torch

    class CpuSafeDistributedDataParallel(ddp_class):
        """DDP that ignores ``device_ids`` naming only CPU devices (torch raises for them)."""

        def __init__(self, module, device_ids=None, *args, **kwargs):
            if device_ids and all(
                isinstance(d, (str, torch.device)) and torch.device(d).type == "cpu" for d in device_ids
            ):
                device_ids = None
            super().__init__(module, device_ids, *args, **kwargs)

    return CpuSafeDistributedDataParallel

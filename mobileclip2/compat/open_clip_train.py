"""open_clip_train: the hooks ``python -m mobileclip2.train`` uses and the data pieces it reuses.

Versions handled: open_clip_train 3.3.0 (it ships inside the open_clip_torch wheel; older releases
call it ``training`` and are not supported). ``open_clip_train.main.main()`` calls three module-level
names it imported at load time -- ``parse_args``, ``get_data``, ``create_loss`` -- so replacing those
attributes of ``open_clip_train.main`` for the duration of one ``main()`` call swaps exactly those steps
and leaves the loop, logging, resuming and checkpointing untouched. The originals are put back on exit,
errors included. ``get_data`` is called as ``get_data(args, preprocess_fns, epoch=, tokenizer=)``
(checked by ``get_data_signature_ok``). Feature detection: the three names and ``main`` must exist and
be callable, else a clear error names what is missing.

``main()`` also wraps the model as ``DistributedDataParallel(model, device_ids=[device])``, which torch
rejects for CPU devices; while the hooks are active, DDP is the CPU-safe class of ``compat.ddp``.

``--resume`` is read by ``main()`` through its module-level ``pt_load`` (open_clip_train 3.3.0:
``file_utils.pt_load``, ``torch.load`` without ``weights_only``, which unpickles code under
torch < 2.6). While the hooks are active that name is :func:`weights_only_pt_load`; a version
without ``pt_load`` is left as it is.

The DR loader (``mobileclip2.train.data``) is shaped like ``open_clip_train.data.get_wds_dataset`` and
reuses its pieces, which are module names there rather than documented API: ``DATA_NAMES`` below,
imported from this module (``from mobileclip2.compat.open_clip_train import DataInfo``) so that a
missing one is a clear error naming the version checked.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

from ._common import open_clip_version
from .ddp import cpu_safe_ddp_class

# open_clip_train.data names the DR loader reuses (checked on open_clip_train 3.3.0).
DATA_NAMES = (
    "DataInfo",
    "ResampledShards2",
    "SharedEpoch",
    "detshuffle2",
    "expand_urls",
    "get_dataset_size",
    "log_and_continue",
)


def __getattr__(name: str):
    """Resolve ``DATA_NAMES`` from ``open_clip_train.data`` on first use (it imports webdataset)."""
    if name not in DATA_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from open_clip_train import data
    except ImportError as error:
        raise ImportError(
            "mobileclip2.train's DR loader reuses open_clip_train.data (checked with open_clip_torch 3.3.0); "
            f"`import open_clip_train.data` failed: {error}. Install the train extra: "
            "pip install 'mobileclip2[train]'"
        ) from error
    if not hasattr(data, name):
        raise ImportError(
            f"open_clip_train.data has no {name!r}; mobileclip2.train was written against open_clip_train "
            f"3.3.0, installed open_clip is {open_clip_version()}"
        )
    return getattr(data, name)


def get_data_signature_ok(get_data: Callable) -> bool:
    """Whether ``get_data`` accepts ``(args, preprocess_fns, epoch=..., tokenizer=...)`` as 3.3.0's does."""
    try:
        inspect.signature(get_data).bind(None, None, epoch=0, tokenizer=None)
    except TypeError:
        return False
    return True


OPEN_CLIP_TRAIN_HOOKS = ("parse_args", "get_data", "create_loss")


def open_clip_train_main_module():
    """open_clip_train.main, checked for the names mobileclip2.train hooks."""
    try:
        from open_clip_train import main as train_main
    except ImportError as error:
        raise ImportError(
            "mobileclip2.train runs open_clip_train's loop, which ships with open_clip_torch "
            "(checked with 3.3.0); "
            f"`import open_clip_train` failed: {error}"
        ) from error
    missing = [
        name for name in (*OPEN_CLIP_TRAIN_HOOKS, "main") if not callable(getattr(train_main, name, None))
    ]
    if not missing and not get_data_signature_ok(train_main.get_data):
        missing.append("get_data(args, preprocess_fns, epoch=, tokenizer=)")
    if missing:
        raise RuntimeError(
            f"open_clip_train.main lacks {missing}; mobileclip2.train was written against "
            f"open_clip_train 3.3.0, installed open_clip is {open_clip_version()}"
        )
    return train_main


RESUME_LOADER = "pt_load"


def weights_only_pt_load(file_path, map_location=None):
    """open_clip_train's ``pt_load`` (a path or fsspec URL, ``map_location``) reading with
    ``weights_only=True``: a training checkpoint holds tensors, numbers and strings, nothing that
    needs code to run, so a file that does is refused as corrupt instead of being executed."""
    import fsspec
    import torch

    from ..errors import CorruptCheckpointError

    with fsspec.open(file_path, "rb") as stream:
        try:
            return torch.load(stream, map_location=map_location, weights_only=True)
        except Exception as error:  # noqa: BLE001 - refused pickles and damaged files alike: re-raised
            raise CorruptCheckpointError(str(file_path), error) from error


class open_clip_train_hooks:  # noqa: N801 - used like a function: `with open_clip_train_hooks(...) as m:`
    """Context manager: ``{name: make_wrapper(original) -> replacement}`` for OPEN_CLIP_TRAIN_HOOKS."""

    def __init__(self, wrappers: Mapping[str, Callable[[Callable], Callable]]):
        unknown = sorted(set(wrappers) - set(OPEN_CLIP_TRAIN_HOOKS))
        if unknown:
            raise ValueError(f"cannot hook {unknown}; hookable: {OPEN_CLIP_TRAIN_HOOKS}")
        self.wrappers = dict(wrappers)
        self.originals: dict[str, Callable] = {}
        self.ddp_original = None
        self.resume_loader = None

    def __enter__(self):
        import torch

        train_main = open_clip_train_main_module()
        self.module = train_main
        self.originals = {name: getattr(train_main, name) for name in self.wrappers}
        for name, make in self.wrappers.items():
            setattr(train_main, name, make(self.originals[name]))
        self.ddp_original = torch.nn.parallel.DistributedDataParallel
        torch.nn.parallel.DistributedDataParallel = cpu_safe_ddp_class(self.ddp_original)
        self.resume_loader = getattr(train_main, RESUME_LOADER, None)
        if callable(self.resume_loader):
            setattr(train_main, RESUME_LOADER, weights_only_pt_load)
        return train_main

    def __exit__(self, *exc_info):
        import torch

        for name, original in self.originals.items():
            setattr(self.module, name, original)
        if self.ddp_original is not None:
            torch.nn.parallel.DistributedDataParallel = self.ddp_original
        if callable(self.resume_loader):
            setattr(self.module, RESUME_LOADER, self.resume_loader)
        return False

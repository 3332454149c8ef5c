"""open_clip_train: the hooks ``python -m mobileclip2.train`` uses and the data pieces it reuses.

Versions handled: open_clip_train 3.3.0 and main (4.2.0.dev0); it ships inside the open_clip_torch wheel
(older releases call it ``training`` and are not supported). ``open_clip_train.main.main()`` calls
module-level names it imported at load time, so replacing those attributes of ``open_clip_train.main`` for
the duration of one ``main()`` call swaps exactly those steps and leaves the loop, logging, resuming and
checkpointing untouched. The originals are put back on exit, errors included. Which names, by feature
detection (``training_loop``):

* ``"loss"`` (3.3.0, and main's ``legacy_main``): ``parse_args``, ``get_data``, ``create_loss``. The
  loop unpacks ``images, texts = batch``; the DR loader pushes the teacher side into a StepChannel. It also
  builds ``DistributedDataParallel(model, device_ids=[device])`` itself, so while the hooks are active DDP
  is the CPU-safe class of ``compat.ddp``.
* ``"task"`` (main): ``parse_args``, ``get_data``, ``create_task``. ``main()`` builds a training task
  (``open_clip.task``) before ``get_data`` and runs every step through it: ``task.prepare_batch(batch)`` on
  each dict batch in loop order, then ``task(batch)`` or, with ``--accum-freq``, ``task.trainable_module(
  **batch)`` and ``task.compute_accum_loss``. DR runs as :func:`dr_task_class`, a ``CLIPTask`` whose
  ``prepare_batch`` takes the teacher side out of the batch (under ``PAYLOAD_KEY``) and pushes it; its loss
  is attached once ``get_data`` knows the data. No torch class is replaced: ``compat.ddp.cpu_safe_task``.

``get_data`` is called as ``get_data(args, preprocess_fns, epoch=, tokenizer=)`` (main adds
``naflex_data_config=``, passed through). The DR loader (``mobileclip2.train.data``) is shaped like
``open_clip_train.data.get_wds_dataset`` and reuses its pieces, which are module names there rather than
documented API: ``DATA_NAMES`` below, imported from this module (``from mobileclip2.compat.open_clip_train
import DataInfo``) so that a missing one is a clear error naming the version checked.

``--resume`` is read by ``main()`` through its module-level ``pt_load`` (open_clip_train 3.3.0:
``file_utils.pt_load``, ``torch.load`` without ``weights_only``, which unpickles code under
torch < 2.6). While the hooks are active that name is :func:`weights_only_pt_load`; a version
without ``pt_load`` is left as it is.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import ModuleType

from ._common import Internal, open_clip_version
from .ddp import cpu_safe_ddp_class

TRAINING = "training hooks (python -m mobileclip2.train)"
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

INTERNALS = (
    Internal(
        "open_clip_train.main.parse_args",
        "replaced module global",
        TRAINING,
        "3.3.0 - main",
        "our flags first, the rest by open_clip_train's parser",
    ),
    Internal(
        "open_clip_train.main.get_data",
        "replaced module global",
        TRAINING,
        "3.3.0 - main; naflex_data_config= from 4.x",
        "the DR train loader; called as get_data(args, preprocess_fns, epoch=, tokenizer=)",
    ),
    Internal(
        "open_clip_train.main.create_loss",
        "replaced module global",
        TRAINING,
        "3.3.0; on main only in legacy_main",
        "DRClipLoss in the 3.x loop",
    ),
    Internal(
        "open_clip_train.main.create_task",
        "replaced module global",
        TRAINING,
        "main (4.x) only",
        "DRCLIPTask in the 4.x task loop",
    ),
    Internal(
        "open_clip_train.main.pt_load",
        "replaced module global",
        TRAINING,
        "3.3.0; not a module global on main",
        "--resume reads checkpoints with weights_only=True (no pickled code under torch < 2.6)",
    ),
    Internal(
        "open_clip.task.CLIPTask",
        "subclassed class",
        TRAINING,
        "main (4.x) only",
        "DRCLIPTask overrides prepare_batch (documented for subclasses) and sets loss after construction",
    ),
    *(
        Internal(
            f"open_clip_train.data.{name}",
            "module name",
            TRAINING,
            "3.3.0 - main",
            "webdataset plumbing the DR loader shares with open_clip_train's get_wds_dataset",
            "train.data",
        )
        for name in DATA_NAMES
    ),
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


# The names main() is run with replaced, by loop kind (see the module docstring).
LOOP_HOOKS = {
    "task": ("parse_args", "get_data", "create_task"),
    "loss": ("parse_args", "get_data", "create_loss"),
}
OPEN_CLIP_TRAIN_HOOKS = ("parse_args", "get_data", "create_loss", "create_task")
# Batch-dict key of the teacher side of a step in the task loop; prepare_batch removes it.
PAYLOAD_KEY = "mobileclip2"


def training_loop(train_main: ModuleType) -> str:
    """'task' or 'loss': which hook set ``train_main`` (open_clip_train.main) offers; raises if neither."""
    for kind, names in LOOP_HOOKS.items():
        if all(callable(getattr(train_main, name, None)) for name in (*names, "main")):
            return kind
    wanted = " or ".join(str(names) for names in LOOP_HOOKS.values())
    raise RuntimeError(
        f"open_clip_train.main offers neither hook set {wanted} (+ main); mobileclip2.train was written "
        f"against open_clip_train 3.3.0 and main (4.2.0.dev0), installed open_clip is {open_clip_version()}"
    )


def open_clip_train_main_module() -> ModuleType:
    """open_clip_train.main, checked for the names mobileclip2.train hooks."""
    try:
        from open_clip_train import main as train_main
    except ImportError as error:
        raise ImportError(
            "mobileclip2.train runs open_clip_train's loop, which ships with open_clip_torch "
            "(checked with 3.3.0 and main); "
            f"`import open_clip_train` failed: {error}"
        ) from error
    training_loop(train_main)
    if not get_data_signature_ok(train_main.get_data):
        raise RuntimeError(
            f"open_clip_train.main.get_data{inspect.signature(train_main.get_data)} does not take "
            "(args, preprocess_fns, epoch=, tokenizer=); mobileclip2.train was written against "
            f"open_clip_train 3.3.0 and main (4.2.0.dev0), installed open_clip is {open_clip_version()}"
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


def dr_task_class() -> type:
    """``DRCLIPTask``: open_clip's ``CLIPTask`` whose loss also reads the teacher side of each step."""
    from open_clip.task import CLIPTask

    class DRCLIPTask(CLIPTask):
        """CLIPTask for DR / online distillation (open_clip_train >= 4, see the module docstring).

        Built before the data exists; ``attach_loss`` sets the loss once ``get_data`` knows the shards and
        the student's preprocessing. Only ``trainable_module`` is wrapped by DDP and saved: the teachers
        live in the loss.
        """

        def __init__(self, model, *, channel, rank: int = 0, world_size: int = 1):
            super().__init__(model, default_loss=False, rank=rank, world_size=world_size)
            self.channel = channel

        def attach_loss(self, loss) -> None:
            self.loss = loss

        def prepare_batch(self, batch, device, input_dtype=None):
            if isinstance(batch, dict) and PAYLOAD_KEY in batch:
                batch = dict(batch)
                self.channel.push(batch.pop(PAYLOAD_KEY))  # loop order: the order the loss reads
            return super().prepare_batch(batch, device, input_dtype)

        def training_forward(self, batch):
            if not hasattr(self, "loss"):
                raise RuntimeError("DRCLIPTask has no loss: get_data (mobileclip2.train) attaches it")
            return super().training_forward(batch)

    return DRCLIPTask


class open_clip_train_hooks:  # noqa: N801 - used like a function: `with open_clip_train_hooks(...) as m:`
    """Context manager: ``{name: make_wrapper(original) -> replacement}`` for the loop's hook names.

    Wrappers for names the installed loop does not call (``create_loss`` on the task loop, ``create_task``
    on the loss loop) are left out; the ``loop`` attribute says which loop runs.
    """

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
        self.loop = training_loop(train_main)
        hooked = {name: make for name, make in self.wrappers.items() if name in LOOP_HOOKS[self.loop]}
        self.originals = {name: getattr(train_main, name) for name in hooked}
        for name, make in hooked.items():
            setattr(train_main, name, make(self.originals[name]))
        if self.loop == "loss":
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

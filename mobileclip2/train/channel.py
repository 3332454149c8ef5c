"""The per-step side channel from the data loader to the loss.

open_clip_train's loop unpacks every batch as ``images, texts = batch`` and calls
``loss(**model_out)`` with student features only; it has no place for teacher embeddings. Instead
of forking the loop, our loader yields exactly ``(images, texts)`` and, in the same breath, pushes
the rest of the batch (stored teacher embeddings, caption layout, or the raw batch for live
teachers) into a ``StepChannel``; the loss reads it when the loop calls it. Both run in the main
process, in loop order, so the payload the loss reads belongs to the batch the loop just used.
With ``--accum-freq k`` the loop first collects ``k`` batches and then calls the loss on all of
them, so the channel keeps the last ``k`` payloads.

open_clip_train >= 4 runs every step through a training task and may read its loader ahead of the step;
there the loader leaves the payload in the batch dict (under ``payload_key``) and the task's
``prepare_batch``, which the loop calls for each batch in order, pushes it (mobileclip2.compat.
open_clip_train.dr_task_class).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["ChannelLoader", "StepChannel"]


class StepChannel:
    """A bounded queue of per-batch payloads: the loader pushes, the loss reads the latest ``n``."""

    def __init__(self, keep: int = 1):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self._payloads: deque[dict] = deque(maxlen=keep)

    def push(self, payload: dict) -> None:
        self._payloads.append(payload)

    def latest(self, count: int) -> list[dict]:
        """The last ``count`` payloads, oldest first."""
        if count > len(self._payloads):
            raise RuntimeError(
                f"the loss needs the payloads of the last {count} batches "
                f"but only {len(self._payloads)} arrived; "
                "was the training data built by mobileclip2.train (python -m mobileclip2.train)?"
            )
        return list(self._payloads)[-count:]


class ChannelLoader:
    """Wraps a loader that yields ``(images, texts, payload)`` (or ``(images, texts)`` / ``{"image", "text"}``
    with ``raw_batch=True``) and hands each batch's payload on.

    Without ``payload_key`` (open_clip_train 3.x) it yields ``(images, texts)`` and pushes the payload
    into ``channel``; with it (open_clip_train >= 4) it yields ``{"image", "text", payload_key: payload}``
    and the task pushes. ``raw_batch=True`` (online distillation) adds the batch tensors themselves to
    the payload so that live teachers embed exactly what the student sees. ``num_batches`` /
    ``num_samples`` are passed through because the loop reads them from the loader.
    """

    def __init__(
        self,
        loader: Iterable,
        channel: StepChannel | None,
        *,
        raw_batch: bool = False,
        payload_key: str | None = None,
    ):
        if channel is None and payload_key is None:
            raise ValueError("a ChannelLoader needs a channel to push to, or a payload_key to yield under")
        self.loader = loader
        self.channel = channel
        self.raw_batch = raw_batch
        self.payload_key = payload_key
        self.num_batches = getattr(loader, "num_batches", None)
        self.num_samples = getattr(loader, "num_samples", None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            if isinstance(batch, dict):  # open_clip_train >= 4's own loaders
                images, texts, rest = batch["image"], batch["text"], []
            else:
                images, texts, *rest = batch
            payload = dict(rest[0]) if rest else {"batch_size": len(images), "has_syn": False}
            if self.raw_batch:
                payload["images"], payload["texts"] = images, texts
            if self.payload_key is not None:
                yield {"image": images, "text": texts, self.payload_key: payload}
            else:
                self.channel.push(payload)
                yield images, texts

"""The per-step side channel from the data loader to the loss.

open_clip_train's loop unpacks every batch as ``images, texts = batch`` and calls
``loss(**model_out)`` with student features only; it has no place for teacher embeddings. Instead
of forking the loop, our loader yields exactly ``(images, texts)`` and, in the same breath, pushes
the rest of the batch (stored teacher embeddings, caption layout, or the raw batch for live
teachers) into a ``StepChannel``; the loss reads it when the loop calls it. Both run in the main
process, in loop order, so the payload the loss reads belongs to the batch the loop just used.
With ``--accum-freq k`` the loop first collects ``k`` batches and then calls the loss on all of
them, so the channel keeps the last ``k`` payloads.
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
    """Wraps a loader that yields ``(images, texts, payload)`` (or ``(images, texts)`` with
    ``raw_batch=True``); yields ``(images, texts)`` and pushes the payload.

    ``raw_batch=True`` (online distillation) adds the batch tensors themselves to the payload so
    that live teachers embed exactly what the student sees. ``num_batches`` / ``num_samples``
    are passed through because the loop reads them from the loader.
    """

    def __init__(self, loader: Iterable, channel: StepChannel, *, raw_batch: bool = False):
        self.loader = loader
        self.channel = channel
        self.raw_batch = raw_batch
        self.num_batches = getattr(loader, "num_batches", None)
        self.num_samples = getattr(loader, "num_samples", None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for batch in self.loader:
            images, texts, *rest = batch
            payload = dict(rest[0]) if rest else {"batch_size": len(images), "has_syn": False}
            if self.raw_batch:
                payload["images"], payload["texts"] = images, texts
            self.channel.push(payload)
            yield images, texts

"""Token-sampling helpers for open_clip's ``CoCa.generate`` that need no ``transformers`` package.

open_clip 2.24-3.3 import its sampling helpers (top-p/top-k warpers, min-length and repetition
logits processors, a max-length stopping criterion) from transformers, in the same try-block as
``BeamSearchScorer``, which transformers 5 removed. With transformers 5 - or without transformers,
a multi-second import for every ``import open_clip`` - CoCa cannot caption at all, although sampling
(what Apple's captioner README uses) needs only a few tensor operations. These classes implement
the same call protocol, ``processor(input_ids, scores) -> scores``, with the standard definitions;
:func:`mobileclip2.compat.coca.enable_coca_sampling` hands them to open_clip when its own import
failed. (They live in compat because they stand in for a library open_clip imports, transformers.)

Versions handled: open_clip_torch 2.24.0 - 3.3.0 (``coca_model.CoCa.generate`` calls processors as
``processor(input_ids, scores)`` and stopping criteria as ``criteria(input_ids, scores)``).
"""

from __future__ import annotations

import torch

__all__ = [
    "LogitsProcessorList",
    "MinLengthLogitsProcessor",
    "RepetitionPenaltyLogitsProcessor",
    "TopKLogitsWarper",
    "TopPLogitsWarper",
    "MaxLengthCriteria",
    "StoppingCriteriaList",
]


class Verdicts(tuple):
    """Per-row stopping verdicts usable both as ``all(v)`` (open_clip >= 2.29) and ``if v:`` (older)."""

    def __bool__(self) -> bool:
        return all(self)


class LogitsProcessorList(list):
    """Apply each processor in order."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for processor in self:
            scores = processor(input_ids, scores)
        return scores


class MinLengthLogitsProcessor:
    """Forbid end-of-text until the sequence has `min_length` tokens."""

    def __init__(self, min_length: int, eos_token_id: int | torch.Tensor):
        self.min_length = min_length
        self.eos_token_id = torch.as_tensor(eos_token_id).reshape(-1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] >= self.min_length:
            return scores
        scores = scores.clone()
        scores[:, self.eos_token_id.to(scores.device)] = -float("inf")
        return scores


class RepetitionPenaltyLogitsProcessor:
    """Make already generated tokens less likely: positive logits / penalty, negative ones * penalty."""

    def __init__(self, penalty: float):
        if not penalty > 0:
            raise ValueError(f"repetition penalty must be > 0, got {penalty}")
        self.penalty = float(penalty)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        seen = torch.gather(scores, 1, input_ids)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return scores.scatter(1, input_ids, seen)


class TopKLogitsWarper:
    """Keep the `top_k` largest logits of each row, set the rest to `filter_value`."""

    def __init__(self, top_k: int, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1):
        if not (isinstance(top_k, int) and top_k > 0):
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        self.top_k = max(top_k, min_tokens_to_keep)
        self.filter_value = filter_value

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        top_k = min(self.top_k, scores.shape[-1])
        threshold = torch.topk(scores, top_k).values[..., -1, None]
        return scores.masked_fill(scores < threshold, self.filter_value)


class TopPLogitsWarper:
    """Nucleus filtering: keep the most likely tokens whose probabilities sum to at least `top_p`."""

    def __init__(self, top_p: float, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1):
        if not 0.0 <= float(top_p) <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {top_p!r}")
        self.top_p = float(top_p)
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Ascending order: drop the low tail whose total mass stays within 1 - top_p.
        remove_sorted = cumulative <= (1 - self.top_p)
        remove_sorted[..., -self.min_tokens_to_keep :] = False
        remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
        return scores.masked_fill(remove, self.filter_value)


class MaxLengthCriteria:
    """Done once sequences reach `max_length` tokens (one verdict per row)."""

    def __init__(self, max_length: int):
        self.max_length = max_length

    def __call__(self, input_ids: torch.Tensor, scores=None) -> torch.Tensor:
        done = input_ids.shape[-1] >= self.max_length
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class StoppingCriteriaList(list):
    """A row is done when any criterion says so."""

    @property
    def max_length(self) -> int | None:
        lengths = [c.max_length for c in self if isinstance(c, MaxLengthCriteria)]
        return lengths[0] if lengths else None

    def __call__(self, input_ids: torch.Tensor, scores=None) -> Verdicts:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for criterion in self:
            done = done | torch.as_tensor(criterion(input_ids, scores), device=input_ids.device)
        return Verdicts(bool(flag) for flag in done)

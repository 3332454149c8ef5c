"""CoCa top-p / top-k sampling that needs no ``transformers`` package: the loop and its helpers.

open_clip 2.24-3.3 import their sampling helpers (top-p/top-k warpers, min-length and repetition
logits processors, a max-length stopping criterion) from transformers, in the same try-block as
``BeamSearchScorer``, which transformers 5 removed; open_clip main (4.x) hands every generation type to
transformers' GenerationMixin. So without transformers - a multi-second import - CoCa cannot caption at
all, although sampling (what Apple's captioner README uses) needs only a few tensor operations.
:func:`sample_coca` is the sampling loop of open_clip 2.24-3.3's ``CoCa.generate``, the helper classes
below implement transformers' call protocol (``processor(input_ids, scores) -> scores``) with the
standard definitions; :func:`mobileclip2.compat.coca.enable_coca_sampling` routes ``generate`` to it.
(They live in compat because they stand in for upstream code.)

Versions handled: open_clip_torch 2.24.0 - 3.3.0 and main (4.2.0.dev0): ``CoCa.forward(image, text,
image_latent=, image_embs=)`` returns ``{"image_features", "image_embs"}`` without text and the logits
with it; up to 3.3.0 it also takes ``output_labels`` (True shifts the text by one, so it is passed as
False, as 3.3.0's own loop does).
"""

from __future__ import annotations

import inspect

import torch

__all__ = [
    "sample_coca",
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


def _forward_options(model: torch.nn.Module) -> dict:
    """Keyword arguments that make ``model(image, text, ...)`` return unshifted logits (see module doc)."""
    if "output_labels" in inspect.signature(type(model).forward).parameters:
        return {"output_labels": False}
    return {}


@torch.no_grad()
def sample_coca(
    model: torch.nn.Module,
    image: torch.Tensor,
    text: torch.Tensor | None = None,
    seq_len: int = 30,
    max_seq_len: int = 77,
    temperature: float = 1.0,
    generation_type: str = "top_p",
    top_p: float = 0.1,
    top_k: int = 1,
    pad_token_id: int | None = None,
    eos_token_id: int | None = None,
    sot_token_id: int | None = None,
    min_seq_len: int = 5,
    stopping_criteria: list | None = None,
    repetition_penalty: float = 1.0,
    fixed_output_length: bool = False,
) -> torch.Tensor:
    """Token ids sampled from an open_clip CoCa, as open_clip 2.24-3.3's ``CoCa.generate`` samples them.

    Same steps and the same random draws in the same order, so a seed gives 3.3.0's tokens. Like
    upstream, the image is encoded in the model's current mode before the loop switches it to eval.
    """
    if generation_type not in ("top_p", "top_k"):
        raise ValueError(f"sample_coca samples (top_p / top_k), got generation_type={generation_type!r}")
    if not seq_len > min_seq_len:
        raise ValueError("seq_len must be larger than min_seq_len")
    device = image.device
    sot = torch.as_tensor(49406 if sot_token_id is None else sot_token_id, device=device)
    eos = torch.as_tensor(49407 if eos_token_id is None else eos_token_id, device=device)
    pad = model.pad_id if pad_token_id is None else pad_token_id
    processors = LogitsProcessorList(
        [MinLengthLogitsProcessor(min_seq_len, eos), RepetitionPenaltyLogitsProcessor(repetition_penalty)]
    )
    warper = TopPLogitsWarper(top_p) if generation_type == "top_p" else TopKLogitsWarper(top_k)
    stopping = StoppingCriteriaList(stopping_criteria or [MaxLengthCriteria(seq_len)])
    encoded = model(image)
    image_latent, image_embs = encoded["image_features"], encoded["image_embs"]
    if text is None:
        text = torch.ones((image.shape[0], 1), device=device, dtype=torch.long) * sot
    squeeze = text.dim() == 1
    out = text[None, :] if squeeze else text
    options = _forward_options(model)
    was_training = model.training
    model.eval()
    try:
        while True:
            x = out[:, -max_seq_len:]
            logits = model(image, x, image_latent=image_latent, image_embs=image_embs, **options)["logits"]
            logits = logits[:, -1]
            done = (out[:, -1] == eos) | (out[:, -1] == pad)
            sample = torch.ones((out.shape[0], 1), device=device, dtype=torch.long) * pad
            if done.all():
                if not fixed_output_length:
                    break
            else:
                scores = warper(x[~done, :], processors(x[~done, :], logits[~done, :]))
                probs = torch.softmax(scores / temperature, dim=-1)
                if x.shape[1] + 1 == seq_len:
                    sample[~done, :] = (
                        torch.ones((int((~done).sum()), 1), device=device, dtype=torch.long) * eos
                    )
                else:
                    sample[~done, :] = torch.multinomial(probs, 1)
            out = torch.cat((out, sample), dim=-1)
            if all(stopping(out, None)):
                break
    finally:
        model.train(was_training)
    return out.squeeze(0) if squeeze else out

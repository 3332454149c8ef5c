"""mobileclip2.compat.sampling: the sampling helpers CoCa.generate uses, checked on hand-made logits."""

from __future__ import annotations

import math

import pytest
import torch

from mobileclip2.compat.sampling import (
    LogitsProcessorList,
    MaxLengthCriteria,
    MinLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteriaList,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

NEG_INF = -math.inf


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = TopPLogitsWarper(0.8)(None, probs.log())
    # 0.5 + 0.3 = 0.8 reaches p: the 0.15 and 0.05 tokens go.
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    out = TopPLogitsWarper(0.81)(None, probs.log())
    assert torch.isfinite(out).tolist() == [[True, True, True, False]]
    # Always keeps at least one token, even for p = 0.
    assert torch.isfinite(TopPLogitsWarper(0.0)(None, probs.log())).sum() == 1


def test_top_p_works_per_row_and_on_unsorted_logits():
    scores = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])
    out = TopPLogitsWarper(0.7)(None, scores)
    assert torch.isfinite(out).tolist() == [[False, True, False], [True, False, False]]
    assert torch.equal(out[torch.isfinite(out)], torch.tensor([3.0, 2.0]))


def test_top_k_keeps_k_largest():
    scores = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    assert TopKLogitsWarper(2)(None, scores).tolist() == [[NEG_INF, 4.0, 3.0, NEG_INF]]
    assert TopKLogitsWarper(10)(None, scores).tolist() == scores.tolist()  # k larger than vocab
    with pytest.raises(ValueError):
        TopKLogitsWarper(0)


def test_min_length_forbids_eos_until_reached():
    scores = torch.zeros(2, 5)
    early = MinLengthLogitsProcessor(3, eos_token_id=4)(torch.zeros(2, 2, dtype=torch.long), scores)
    assert early[:, 4].tolist() == [NEG_INF, NEG_INF] and early[:, :4].eq(0).all()
    assert scores.eq(0).all()  # input untouched
    late = MinLengthLogitsProcessor(3, eos_token_id=torch.tensor(4))(
        torch.zeros(2, 3, dtype=torch.long), scores
    )
    assert late.eq(0).all()


def test_repetition_penalty_pushes_seen_tokens_down():
    scores = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[0, 1]])
    assert RepetitionPenaltyLogitsProcessor(2.0)(seen, scores).tolist() == [[1.0, -4.0, 1.0]]
    assert RepetitionPenaltyLogitsProcessor(1.0)(seen, scores).tolist() == scores.tolist()


def test_processor_list_applies_in_order():
    processors = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(2.0), TopKLogitsWarper(1)])
    assert processors(torch.tensor([[0]]), torch.tensor([[3.0, 2.0]])).tolist() == [[NEG_INF, 2.0]]


def test_stopping_verdicts_work_with_all_and_with_if():
    criteria = StoppingCriteriaList([MaxLengthCriteria(max_length=3)])
    assert criteria.max_length == 3
    short, full = torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)
    assert not all(criteria(short)) and not criteria(short)  # open_clip >= 2.29 / older style
    assert all(criteria(full)) and criteria(full)

"""DR / distillation loss == a direct reference computation (plain Python floats) to 1e-6.

The reference is written from Apple's description (training/open_clip_v2.patch: DistillClipLoss,
DRClipLoss, get_logits_ensemble) with explicit loops, independent of the vectorized code.
"""

from __future__ import annotations

import math

import pytest
import torch
from train_support import make_batch

from mobileclip2.train.channel import StepChannel
from mobileclip2.train.losses import DistillConfig, DRClipLoss, Features, dr_clip_loss, split_student_text


# ------------------------------------------------------------------ reference (loops over floats)
def _log_softmax(row):
    top = max(row)
    lse = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - lse for v in row]


def _softmax(row):
    return [math.exp(v) for v in _log_softmax(row)]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _logits(rows, cols, scale):
    return [[scale * _dot(r, c) for c in cols] for r in rows]


def _targets(rows, cols, dims, scales, after_softmax):
    bounds = [sum(dims[:k]) for k in range(len(dims) + 1)]
    member_logits = [
        _logits(
            [r[bounds[k] : bounds[k + 1]] for r in rows],
            [c[bounds[k] : bounds[k + 1]] for c in cols],
            scales[k],
        )
        for k in range(len(dims))
    ]
    out = []
    for i in range(len(rows)):
        if after_softmax:
            probs = [_softmax(member[i]) for member in member_logits]
            out.append([sum(p[j] for p in probs) / len(probs) for j in range(len(cols))])
        else:
            out.append(_softmax([sum(member[i][j] for member in member_logits) for j in range(len(cols))]))
    return out


def _soft_ce(targets, logits):
    return -sum(sum(p * lp for p, lp in zip(t, _log_softmax(row))) for t, row in zip(targets, logits)) / len(
        logits
    )


def _hard_ce(logits):
    return -sum(_log_softmax(row)[i] for i, row in enumerate(logits)) / len(logits)


def reference_pair(s_img, s_txt, t_img, t_txt, scale, dims, scales, after, weights):
    per_image, per_text = _logits(s_img, s_txt, scale), _logits(s_txt, s_img, scale)
    contrastive = (_hard_ce(per_image) + _hard_ce(per_text)) / 2 * weights[0]
    distill = (
        (
            _soft_ce(_targets(t_img, t_txt, dims, scales, after), per_image)
            + _soft_ce(_targets(t_txt, t_img, dims, scales, after), per_text)
        )
        / 2
        * weights[1]
    )
    return contrastive, distill


def reference_dr(student, teacher, scale, dims, scales, after, weights):
    as_lists = [None if t is None else t.tolist() for t in (*student, *teacher)]
    s_img, s_txt, s_syn, t_img, t_txt, t_syn = as_lists
    contrastive, distill = reference_pair(s_img, s_txt, t_img, t_txt, scale, dims, scales, after, weights)
    if s_syn is not None:
        c2, d2 = reference_pair(s_img, s_syn, t_img, t_syn, scale, dims, scales, after, weights)
        contrastive, distill = contrastive + c2, distill + d2
    return contrastive, distill


CASES = [
    # dims, scales, after_softmax, weights, syn
    ((7,), (50.0,), False, (1.0, 1.0), False),
    ((7,), (50.0,), True, (1.0, 1.0), True),
    ((3, 4), (70.0, 60.0), False, (0.25, 0.75), True),
    ((3, 4), (70.0, 60.0), True, (0.0, 1.0), True),
    ((2, 2, 3), (10.0, 20.0, 30.0), True, (1.0, 0.5), False),
    ((2, 2, 3), (100.0, 100.0, 100.0), False, (1.0, 1.0), True),
]


@pytest.mark.parametrize("dims,scales,after,weights,syn", CASES)
def test_dr_loss_equals_reference(dims, scales, after, weights, syn):
    student, teacher = make_batch(dims=dims, syn=syn)
    cfg = DistillConfig(
        teacher_dims=dims, teacher_scales=scales, loss_weights=weights, average_after_softmax=after
    )
    scale = torch.tensor(12.5, dtype=torch.float64)
    got = dr_clip_loss(student, teacher, scale, cfg)
    contrastive, distill = reference_dr(student, teacher, 12.5, dims, scales, after, weights)
    assert abs(got["contrastive_loss"].item() - contrastive) < 1e-6
    assert abs(got["distill_loss"].item() - distill) < 1e-6
    assert set(got) == {"contrastive_loss", "distill_loss"}


def test_hand_made_two_by_two():
    """Orthonormal pairs, scale 1: logits = identity; teacher == student so distill = entropy of
    softmax(I)."""
    eye = torch.eye(2, dtype=torch.float64)
    cfg = DistillConfig(teacher_dims=(2,), teacher_scales=(1.0,))
    got = dr_clip_loss(Features(eye, eye), Features(eye, eye), torch.tensor(1.0, dtype=torch.float64), cfg)
    p = math.e / (math.e + 1)
    ce = -math.log(p)  # each row: logits [1, 0], target = the diagonal
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert abs(got["contrastive_loss"].item() - ce) < 1e-12
    assert abs(got["distill_loss"].item() - entropy) < 1e-12


def test_before_softmax_with_one_scale_is_apples_concatenated_dot_product():
    """Apple's default path: softmax(s * concat(a) @ concat(b).T)."""
    student, teacher = make_batch(dims=(3, 4), syn=False)
    cfg = DistillConfig(teacher_dims=(3, 4), teacher_scales=(100.0, 100.0))
    from mobileclip2.train.losses import soft_cross_entropy, teacher_targets

    targets = teacher_targets(teacher.image, teacher.text, cfg)
    apple = torch.softmax(100.0 * teacher.image @ teacher.text.T, dim=1)
    assert torch.allclose(targets, apple, atol=1e-12)
    logits = 12.0 * student.image @ student.text.T
    assert soft_cross_entropy(targets, logits).item() == pytest.approx(
        -(apple * logits.log_softmax(1)).sum(1).mean().item(), abs=1e-12
    )


def test_distill_gradient_vanishes_when_student_matches_teacher():
    """H(P, softmax(L)) is minimal at L = teacher logits: a sanity check of sign and direction."""
    _, teacher = make_batch(dims=(6,), syn=False)
    image = teacher.image.clone().requires_grad_(True)
    text = teacher.text.clone().requires_grad_(True)
    cfg = DistillConfig(teacher_dims=(6,), teacher_scales=(20.0,), loss_weights=(0.0, 1.0))
    loss = dr_clip_loss(Features(image, text), teacher, torch.tensor(20.0, dtype=torch.float64), cfg)
    loss["distill_loss"].backward()
    assert image.grad.abs().max() < 1e-10 and text.grad.abs().max() < 1e-10


def test_bad_widths_say_what_to_set():
    student, teacher = make_batch(dims=(3, 4), syn=False)
    cfg = DistillConfig(teacher_dims=(3, 5), teacher_scales=(1.0, 1.0))
    with pytest.raises(ValueError, match="--distill-teacher-dimension"):
        dr_clip_loss(student, teacher, torch.tensor(1.0), cfg)
    with pytest.raises(ValueError, match="logit scales"):
        DistillConfig(teacher_dims=(3, 4), teacher_scales=(1.0,))


def test_split_student_text_undoes_the_accumulated_layout():
    rows = torch.arange(12.0).view(12, 1)  # batch A: 2 real + 2 syn, batch B: 4 real + 4 syn
    text, syn = split_student_text(rows, [(2, True), (4, True)])
    assert text.flatten().tolist() == [0, 1, 4, 5, 6, 7]
    assert syn.flatten().tolist() == [2, 3, 8, 9, 10, 11]
    with pytest.raises(RuntimeError, match="out of step"):
        split_student_text(rows, [(2, True)])


def test_module_with_accumulated_payloads_equals_the_function():
    """The loop's accum-freq call: features of 2 micro-batches concatenated, payloads from the channel."""
    dims = (3, 4)
    a_student, a_teacher = make_batch(batch=3, dims=dims, seed=1)
    b_student, b_teacher = make_batch(batch=2, dims=dims, seed=2)
    channel = StepChannel(keep=2)
    for teacher in (a_teacher, b_teacher):
        channel.push({"batch_size": teacher.image.shape[0], "has_syn": True, "teacher": tuple(teacher)})
    cfg = DistillConfig(teacher_dims=dims, teacher_scales=(30.0, 40.0), average_after_softmax=True)
    loss = DRClipLoss(cfg, channel, accum_freq=2)
    image = torch.cat([a_student.image, b_student.image]).float()
    text = torch.cat([a_student.text, a_student.syn_text, b_student.text, b_student.syn_text]).float()
    got = loss(image_features=image, text_features=text, logit_scale=torch.tensor(10.0), output_dict=True)
    expected = dr_clip_loss(
        Features(
            image,
            torch.cat([a_student.text, b_student.text]).float(),
            torch.cat([a_student.syn_text, b_student.syn_text]).float(),
        ),
        Features(*(torch.cat([x, y]).float() for x, y in zip(a_teacher, b_teacher))),
        torch.tensor(10.0),
        cfg,
    )
    for key in expected:
        assert torch.allclose(got[key], expected[key], atol=1e-6)


def test_module_runs_live_teachers_once_per_batch():
    dims = (3, 4)
    student, teacher = make_batch(batch=4, dims=dims, syn=True)
    calls = []

    class FakeTeachers:
        def embed_batch(self, images, texts, has_syn):
            calls.append((images.shape[0], texts.shape[0], has_syn))
            return tuple(teacher)

    channel = StepChannel()
    channel.push(
        {"batch_size": 4, "has_syn": True, "images": torch.zeros(4, 3, 8, 8), "texts": torch.zeros(8, 77)}
    )
    cfg = DistillConfig(teacher_dims=dims, teacher_scales=(5.0, 5.0))
    loss = DRClipLoss(cfg, channel, teachers=FakeTeachers())
    text = torch.cat([student.text, student.syn_text])
    first = loss(student.image, text, torch.tensor(3.0, dtype=torch.float64), output_dict=True)
    second = loss(student.image, text, torch.tensor(3.0, dtype=torch.float64), output_dict=True)
    assert calls == [(4, 8, True)]  # cached in the payload for the accum-freq re-calls
    expected = dr_clip_loss(
        student, Features(*(t.float() for t in teacher)), torch.tensor(3.0, dtype=torch.float64), cfg
    )
    for key in expected:
        assert torch.allclose(first[key], expected[key], atol=1e-6) and torch.equal(first[key], second[key])


def test_module_rejects_siglip_outputs_and_missing_payloads():
    cfg = DistillConfig(teacher_dims=(2,), teacher_scales=(1.0,))
    loss = DRClipLoss(cfg, StepChannel())
    with pytest.raises(RuntimeError, match="CLIP models only"):
        loss(torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor(1.0), logit_bias=torch.tensor(0.0))
    with pytest.raises(RuntimeError, match="mobileclip2.train"):
        loss(torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor(1.0))

"""CLIP + distillation losses for dataset-reinforced and online-distilled training.

The math is Apple's ``DistillClipLoss`` / ``DRClipLoss`` (ml-mobileclip ``training/open_clip_v2.patch``):

* student logits ``L = s * f_img @ f_txt.T`` (``s`` = the student's logit scale);
* contrastive term ``w0 * (CE(L, y) + CE(L.T-direction, y)) / 2`` with ``y`` the matching pairs;
* teacher targets: the teacher features are the ensemble members' L2-normalized embeddings
  concatenated along dim 1 (widths ``--distill-teacher-dimension``), member ``t`` gives logits
  ``s_t * a_t @ b_t.T`` (``s_t`` = ``--distill-logit-scale``), and

  - average *after* softmax (``--distill-average-after-softmax``): ``P = mean_t softmax(s_t a_t b_t.T)``;
  - otherwise (Apple's default): ``P = softmax(sum_t s_t a_t b_t.T)``. With one scale for all
    members this equals Apple's ``s * concat(a) @ concat(b).T``; note it *sums* member logits, so
    for ``T`` members the effective temperature is ``T`` times that of one member;

* distillation term ``w1 * (H(P_img, L) + H(P_txt, L_txt)) / 2`` with
  ``H(P, L) = -mean_rows sum_cols P * log_softmax(L)``, the cross-entropy Apple uses (the KL
  divergence to the teacher plus the teacher's entropy, which has no gradient);
* with synthetic captions (DR without ``--dataset-reinforcement-mix-synthetic``) both terms are
  computed for the real and for the synthetic captions against the same images and summed.

Distributed (DDP): student and teacher features are gathered from all ranks in rank order; with
``--local-loss`` each rank scores its own rows against all columns (labels offset by rank),
otherwise every rank scores the full global matrix. Image->text and text->image targets are
always computed from their own rows, so unlike Apple's patch (which transposes softmaxed
per-image targets when gathering without --local-loss) the result equals the single-process loss.
Horovod is not supported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DistillConfig",
    "DRClipLoss",
    "Features",
    "dr_clip_loss",
    "soft_cross_entropy",
    "teacher_targets",
]


@dataclass(frozen=True)
class DistillConfig:
    """Everything that defines the distillation loss besides the features."""

    teacher_dims: tuple[int, ...]
    teacher_scales: tuple[float, ...]
    loss_weights: tuple[float, float] = (1.0, 1.0)
    average_after_softmax: bool = False

    def __post_init__(self):
        if len(self.teacher_dims) != len(self.teacher_scales):
            raise ValueError(
                f"{len(self.teacher_dims)} teacher widths {list(self.teacher_dims)} but "
                f"{len(self.teacher_scales)} logit scales {list(self.teacher_scales)}"
            )
        if any(dim <= 0 for dim in self.teacher_dims):
            raise ValueError(f"teacher widths must be positive, got {list(self.teacher_dims)}")
        if len(self.loss_weights) != 2:
            raise ValueError(
                f"--distill-loss-weights takes [contrastive, distill], got {list(self.loss_weights)}"
            )


class Features(NamedTuple):
    """Image, caption and (optional) synthetic-caption embeddings of one batch, rows aligned."""

    image: torch.Tensor
    text: torch.Tensor
    syn_text: torch.Tensor | None = None


@dataclass(frozen=True)
class DistInfo:
    """How the batch is spread over processes (torch.distributed must be initialized if world_size > 1)."""

    rank: int = 0
    world_size: int = 1
    local_loss: bool = False
    gather_with_grad: bool = False


def teacher_targets(rows: torch.Tensor, cols: torch.Tensor, cfg: DistillConfig) -> torch.Tensor:
    """Teacher-ensemble target distribution over ``cols`` for every row (rows sum to 1)."""
    width = sum(cfg.teacher_dims)
    if rows.shape[-1] != width or cols.shape[-1] != width:
        raise ValueError(
            f"teacher embeddings are {rows.shape[-1]}-wide but the teacher widths {list(cfg.teacher_dims)} "
            f"sum to {width}; set --distill-teacher-dimension to the widths of the teachers that made them"
        )
    dtype = torch.promote_types(rows.dtype, torch.float32)  # at least fp32 (bf16-stored embeddings)
    row_parts = rows.to(dtype).split(list(cfg.teacher_dims), dim=1)
    col_parts = cols.to(dtype).split(list(cfg.teacher_dims), dim=1)
    logits = [scale * a @ b.T for scale, a, b in zip(cfg.teacher_scales, row_parts, col_parts)]
    if cfg.average_after_softmax:
        return sum(F.softmax(member, dim=1) for member in logits) / len(logits)
    return F.softmax(sum(logits), dim=1)


def soft_cross_entropy(targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``-mean_rows sum_cols targets * log_softmax(logits)`` (Apple's ``dist_loss``)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _gather(tensor: torch.Tensor, dist: DistInfo, with_grad: bool, keep_local: bool) -> torch.Tensor:
    """All ranks' rows in rank order, as open_clip's ``gather_features`` does.

    ``with_grad``: gradients flow back to every rank (all_gather with autograd). Otherwise the
    gathered copies are constants, and ``keep_local`` puts the live local tensor back into its
    slot so the local rows still receive gradients (open_clip does this unless --local-loss).
    """
    if dist.world_size == 1:
        return tensor
    import torch.distributed as torch_dist

    if with_grad:
        from torch.distributed import nn as distributed_nn

        return torch.cat(distributed_nn.all_gather(tensor.contiguous()), dim=0)
    parts = [torch.empty_like(tensor) for _ in range(dist.world_size)]
    torch_dist.all_gather(parts, tensor.detach().contiguous())
    if keep_local:
        parts[dist.rank] = tensor
    return torch.cat(parts, dim=0)


def _gather_images(
    student_image: torch.Tensor, teacher_image: torch.Tensor, dist: DistInfo
) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' (student, teacher) image features: gathered once per step, shared by the real-
    and synthetic-caption terms."""
    all_image = _gather(student_image, dist, dist.gather_with_grad, keep_local=not dist.local_loss)
    with torch.no_grad():
        all_teacher_image = _gather(teacher_image, dist, with_grad=False, keep_local=False)
    return all_image, all_teacher_image


def _pair_terms(
    student_image: torch.Tensor,
    student_text: torch.Tensor,
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    gathered_images: tuple[torch.Tensor, torch.Tensor],
    logit_scale: torch.Tensor,
    cfg: DistillConfig,
    dist: DistInfo,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(contrastive, distill) terms for one image/caption pairing, weighted."""
    all_image, all_teacher_image = gathered_images
    all_text = _gather(student_text, dist, dist.gather_with_grad, keep_local=not dist.local_loss)
    with torch.no_grad():
        all_teacher_text = _gather(teacher_text, dist, with_grad=False, keep_local=False)
    if dist.world_size > 1 and dist.local_loss:
        rows_image, rows_text = student_image, student_text
        rows_teacher_image, rows_teacher_text = teacher_image, teacher_text
        offset = student_image.shape[0] * dist.rank
    else:
        rows_image, rows_text = all_image, all_text
        rows_teacher_image, rows_teacher_text = all_teacher_image, all_teacher_text
        offset = 0
    logits_per_image = logit_scale * rows_image @ all_text.T
    logits_per_text = logit_scale * rows_text @ all_image.T
    labels = torch.arange(rows_image.shape[0], device=rows_image.device) + offset
    contrastive = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    # Targets in fp32 even under --precision amp: they are constants, and small.
    with torch.no_grad(), torch.autocast(device_type=rows_image.device.type, enabled=False):
        targets_per_image = teacher_targets(rows_teacher_image, all_teacher_text, cfg)
        targets_per_text = teacher_targets(rows_teacher_text, all_teacher_image, cfg)
    distill = (
        soft_cross_entropy(targets_per_image, logits_per_image)
        + soft_cross_entropy(targets_per_text, logits_per_text)
    ) / 2
    return contrastive * cfg.loss_weights[0], distill * cfg.loss_weights[1]


def dr_clip_loss(
    student: Features,
    teacher: Features,
    logit_scale: torch.Tensor,
    cfg: DistillConfig,
    dist: DistInfo | None = None,
) -> dict[str, torch.Tensor]:
    """Apple's DRClipLoss: {"contrastive_loss", "distill_loss"}, summed over real and synthetic captions."""
    dist = dist or DistInfo()
    if (student.syn_text is None) != (teacher.syn_text is None):
        raise ValueError(
            "synthetic-caption embeddings must be given for both student and teacher, or neither"
        )
    gathered = _gather_images(student.image, teacher.image, dist)
    contrastive, distill = _pair_terms(
        student.image, student.text, teacher.image, teacher.text, gathered, logit_scale, cfg, dist
    )
    if student.syn_text is not None:
        syn_contrastive, syn_distill = _pair_terms(
            student.image, student.syn_text, teacher.image, teacher.syn_text, gathered, logit_scale, cfg, dist
        )
        contrastive, distill = contrastive + syn_contrastive, distill + syn_distill
    return {"contrastive_loss": contrastive, "distill_loss": distill}


def split_student_text(
    text_features: torch.Tensor, layouts: Sequence[tuple[int, bool]]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Undo the caption layout of (possibly accumulated) micro-batches.

    Each micro-batch of ``n`` images contributes ``n`` caption rows, followed by ``n`` synthetic
    caption rows when it carries them (``layouts`` = [(n, has_syn), ...] in loop order); returns
    (captions, synthetic captions or None).
    """
    expected = sum(n * (2 if has_syn else 1) for n, has_syn in layouts)
    if text_features.shape[0] != expected:
        raise RuntimeError(
            f"the loss got {text_features.shape[0]} caption embeddings but the last {len(layouts)} batches "
            f"carry {expected}; the training loop and the DR data loader are out of step"
        )
    if not any(has_syn for _, has_syn in layouts):
        return text_features, None
    if not all(has_syn for _, has_syn in layouts):
        raise RuntimeError("some batches carry synthetic captions and some do not")
    text, syn, start = [], [], 0
    for n, _ in layouts:
        text.append(text_features[start : start + n])
        syn.append(text_features[start + n : start + 2 * n])
        start += 2 * n
    return torch.cat(text), torch.cat(syn)


class DRClipLoss(nn.Module):
    """The loss open_clip_train's loop calls:
    ``loss(image_features=..., text_features=..., logit_scale=...)``.

    The loop hands over only student features; the teacher side of each step comes from
    ``channel`` (see mobileclip2.train.channel), which the DR data loader fills per batch with
    stored teacher embeddings, or with the raw batch for ``teachers`` to embed (online
    distillation). With ``--accum-freq k`` the loop calls the loss with the features of the last
    ``k`` micro-batches concatenated, so the last ``k`` payloads are used, in order.
    """

    def __init__(
        self, cfg: DistillConfig, channel, *, teachers=None, accum_freq: int = 1, dist: DistInfo | None = None
    ):
        super().__init__()
        self.cfg = cfg
        self.channel = channel
        self.teachers = teachers
        self.accum_freq = accum_freq
        self.dist = dist or DistInfo()

    def teacher_features(self, payloads: Sequence[dict], device: torch.device) -> Features:
        """Concatenate (computing, for online distillation) the teacher embeddings of the payloads."""
        parts = [self._payload_features(payload, device) for payload in payloads]
        syn = [part.syn_text for part in parts]
        return Features(
            torch.cat([part.image for part in parts]),
            torch.cat([part.text for part in parts]),
            None if syn[0] is None else torch.cat(syn),
        )

    def _payload_features(self, payload: dict, device: torch.device) -> Features:
        if "teacher" not in payload:
            if self.teachers is None:
                raise RuntimeError(
                    "this batch carries no teacher embeddings and no teacher models were loaded"
                )
            payload["teacher"] = self.teachers.embed_batch(
                payload["images"], payload["texts"], payload["has_syn"]
            )
        teacher = payload["teacher"]
        return Features(
            *(
                None if t is None else t.to(device=device, dtype=torch.float32, non_blocking=True)
                for t in teacher
            )
        )

    def forward(
        self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False, **unexpected
    ):
        if logit_bias is not None or unexpected:
            extra = sorted(unexpected) + (["logit_bias"] if logit_bias is not None else [])
            raise RuntimeError(
                f"DR/distillation loss supports CLIP models only; the model also returned {extra}"
            )
        payloads = self.channel.latest(self.accum_freq)
        if sum(payload["batch_size"] for payload in payloads) != image_features.shape[0]:
            raise RuntimeError(
                f"the loss got {image_features.shape[0]} image embeddings "
                f"but the last {len(payloads)} batches "
                f"hold {[payload['batch_size'] for payload in payloads]} images"
            )
        text, syn_text = split_student_text(
            text_features, [(p["batch_size"], p["has_syn"]) for p in payloads]
        )
        teacher = self.teacher_features(payloads, image_features.device)
        losses = dr_clip_loss(
            Features(image_features, text, syn_text), teacher, logit_scale, self.cfg, self.dist
        )
        return losses if output_dict else (losses["contrastive_loss"], losses["distill_loss"])

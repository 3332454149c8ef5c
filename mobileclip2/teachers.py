"""An ensemble of frozen open_clip CLIP teachers, for online distillation and `mobileclip2 reinforce`.

Teachers are ordinary open_clip models (any name, ``hf-hub:`` or ``local-dir:`` spec). Their
embeddings are L2-normalized per member and concatenated along dim 1, the layout DR shards store
and ``--distill-teacher-dimension`` describes.

What a teacher sees. Each member gets images at its own input size, normalized with its own
mean/std, from a float image in [0, 1]:

* ``mobileclip2 reinforce`` augments at the DR config's size (default: the largest teacher's),
  and each member resizes that tensor to its size (bicubic, antialiased) when it differs;
* online distillation has only the student's batch, already normalized with the *student's*
  mean/std (MobileCLIP V1 students use mean 0 / std 1, MobileCLIP2 and most teachers the OpenAI
  values): the batch is first mapped back to [0, 1] with the student's mean/std, then treated
  as above. Teachers therefore see the student's crop at the student's resolution, resized; a
  teacher with a larger input size sees an upsampled image, which is the price of sharing one
  augmentation online (DR shards avoid it by augmenting at the teachers' size).

Captions: reinforce tokenizes text with each member's own tokenizer. Online distillation only has
the student's tokens, so every member must tokenize exactly like the student (checked at load,
with a clear error otherwise).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import TeacherError
from .shapes import image_height_width

__all__ = ["TeacherEnsemble", "TeacherError", "check_model_specs", "parse_teacher_specs"]


_NO_PRETRAINED = {"", "n/a", "none", "null"}
_TOKENIZER_PROBE = ["a photo of a cat sitting on a red chair", "two dogs, one ball; 3 kids & 1 kite!"]


def parse_teacher_specs(
    models: str | Sequence[str], pretrained: str | Sequence[str] | None
) -> list[tuple[str, str | None]]:
    """``"A,B"`` + ``"tagA,tagB"`` -> [(A, tagA), (B, tagB)]; ``N/A``/``none`` means no pretrained tag
    (Apple's convention for ``hf-hub:`` / ``local-dir:`` names, whose weights come with the name)."""
    names = [m.strip() for m in (models.split(",") if isinstance(models, str) else models) if m.strip()]
    if pretrained is None:
        tags = [None] * len(names)
    else:
        tags = [t.strip() for t in (pretrained.split(",") if isinstance(pretrained, str) else pretrained)]
    if not names:
        raise TeacherError("no teacher model given")
    if len(tags) != len(names):
        raise TeacherError(
            f"{len(names)} teacher models {names} but {len(tags)} pretrained entries {tags}; give one per "
            "model (N/A for hf-hub:/local-dir: names)"
        )
    return [
        (name, None if tag is None or tag.lower() in _NO_PRETRAINED else tag)
        for name, tag in zip(names, tags)
    ]


def check_model_specs(specs: Sequence[tuple[str, str | None]], role: str = "teacher") -> None:
    """Refuse model names, pretrained tags and files that cannot load, without loading anything.

    Why: `mobileclip2 reinforce` checks every argument before it writes into the output folder, so
    a typo fails with nothing written and the corrected rerun starts clean. ``hf-hub:`` names are
    checked when they are downloaded."""
    from .compat.factory import check_model_and_tag

    for name, pretrained in specs:
        if name.startswith("local-dir:"):
            folder = os.path.expanduser(name[len("local-dir:") :])
            if not os.path.isfile(os.path.join(folder, "open_clip_config.json")):
                raise TeacherError(
                    f"{role} {name!r}: {folder} holds no open_clip_config.json; "
                    "local-dir: must name an open_clip model folder"
                )
        elif not name.startswith("hf-hub:"):
            check_model_and_tag(name, pretrained)


@dataclass
class Member:
    name: str
    pretrained: str | None
    model: nn.Module
    tokenizer: object
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dim: int
    logit_scale: float


def require_finite_weights(model: nn.Module, role: str, pretrained: str | None) -> None:
    """Refuse a model with NaN/inf weights before it writes a single embedding or caption.

    Why: a corrupt checkpoint, or a parameter that upstream never initializes (open_clip 2.24 - 3.3
    leave CoCa's ``text_decoder.text_projection`` as ``torch.empty`` when no weights are loaded:
    open_clip PR 551 / issue 554), would otherwise be reinforced into every shard, or surface much
    later as a sampling error with no hint of the cause."""
    bad = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not torch.isfinite(tensor).all()
    ]
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise TeacherError(
            f"{role} has non-finite (NaN/inf) weights in {shown} (weights: {pretrained or 'none loaded'}); "
            "check that the checkpoint is complete and belongs to this model, or pass pretrained weights"
        )


def load_member(
    name: str, pretrained: str | None, device: str | torch.device = "cpu", cache_dir: str | None = None
) -> Member:
    import open_clip

    model = open_clip.create_model(name, pretrained=pretrained, device=device, cache_dir=cache_dir)
    if not hasattr(model, "encode_image") or not hasattr(model, "encode_text"):
        raise TeacherError(f"teacher {name!r} is not a CLIP model (no encode_image/encode_text)")
    require_finite_weights(model, f"teacher {name!r}", pretrained)
    model.eval().requires_grad_(False)
    cfg = model.visual.preprocess_cfg
    tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    with torch.no_grad():
        dim = int(model.encode_text(tokenizer(["x"]).to(device)).shape[-1])
    return Member(
        name=name,
        pretrained=pretrained,
        model=model,
        tokenizer=tokenizer,
        size=image_height_width(model),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        dim=dim,
        logit_scale=float(model.logit_scale.exp().item()),
    )


def to_unit_range(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo ``Normalize(mean, std)``: student-normalized batch -> images in [0, 1]."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return images.float() * std_t + mean_t


def member_input(images01: torch.Tensor, member: Member) -> torch.Tensor:
    """[0, 1] images -> the member's size and normalization."""
    if tuple(images01.shape[-2:]) != member.size:
        images01 = F.interpolate(
            images01, size=member.size, mode="bicubic", align_corners=False, antialias=True
        )
    mean = torch.tensor(member.mean, dtype=images01.dtype, device=images01.device).view(1, -1, 1, 1)
    std = torch.tensor(member.std, dtype=images01.dtype, device=images01.device).view(1, -1, 1, 1)
    return (images01 - mean) / std


class TeacherEnsemble(nn.Module):
    """Frozen CLIP teachers whose normalized embeddings are concatenated member by member."""

    def __init__(self, members: Sequence[Member], student_mean=None, student_std=None):
        super().__init__()
        self.members = list(members)
        self._models = nn.ModuleList(member.model for member in self.members)  # .to()/.eval() reach them
        self.student_mean = student_mean
        self.student_std = student_std

    @classmethod
    def load(
        cls, specs: Sequence[tuple[str, str | None]], device="cpu", cache_dir: str | None = None
    ) -> TeacherEnsemble:
        return cls([load_member(name, tag, device, cache_dir) for name, tag in specs])

    @property
    def dims(self) -> list[int]:
        return [member.dim for member in self.members]

    @property
    def logit_scales(self) -> list[float]:
        return [member.logit_scale for member in self.members]

    @property
    def max_size(self) -> tuple[int, int]:
        return max((member.size for member in self.members), key=lambda s: s[0] * s[1])

    def describe(self) -> str:
        return ", ".join(
            f"{m.name}{'' if m.pretrained is None else ':' + m.pretrained} "
            f"({m.dim}-d, {m.size[0]}x{m.size[1]}, logit scale {m.logit_scale:.2f})"
            for m in self.members
        )

    def train(self, mode: bool = True):
        return super().train(False)  # always frozen, eval-mode batchnorm/dropout

    @torch.no_grad()
    def encode_unit_images(self, images01: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] images in [0, 1] -> [B, sum(dims)] concatenated normalized embeddings."""
        parts = []
        for member in self.members:
            # Resize/normalize in float32 (as training's replay), then the teacher's own dtype (bf16 on GPU).
            dtype = next(member.model.parameters()).dtype
            features = member.model.encode_image(member_input(images01.float(), member).to(dtype))
            parts.append(F.normalize(features.float(), dim=-1))
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def encode_strings(self, texts: Sequence[str], device) -> torch.Tensor:
        """Captions -> [N, sum(dims)], each member with its own tokenizer."""
        parts = []
        for member in self.members:
            tokens = member.tokenizer(list(texts)).to(device)
            parts.append(F.normalize(member.model.encode_text(tokens).float(), dim=-1))
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Student tokens -> [N, sum(dims)] (online; requires check_tokenizer to have passed)."""
        return torch.cat(
            [F.normalize(m.model.encode_text(tokens).float(), dim=-1) for m in self.members], dim=1
        )

    def check_tokenizer(self, student_tokenizer) -> None:
        """Online teachers read the student's tokens: make sure they mean the same to every member."""
        expected = student_tokenizer(_TOKENIZER_PROBE)
        for member in self.members:
            got = member.tokenizer(_TOKENIZER_PROBE)
            if got.shape != expected.shape or not torch.equal(got, expected):
                raise TeacherError(
                    f"teacher {member.name!r} tokenizes differently from the student "
                    f"(token shape {tuple(got.shape)} vs {tuple(expected.shape)}); "
                    "online distillation feeds the student's tokens to every teacher. "
                    "Use teachers with the student's tokenizer and context length, "
                    "or precompute teacher embeddings with `mobileclip2 reinforce`"
                )

    def set_student_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.student_mean, self.student_std = tuple(mean), tuple(std)

    @torch.no_grad()
    def embed_batch(self, images: torch.Tensor, texts: torch.Tensor, has_syn: bool):
        """Online distillation: the student's batch -> (image, caption, synthetic caption) teacher embeddings.

        ``texts`` holds ``n`` caption rows, then ``n`` synthetic-caption rows when ``has_syn``.
        """
        if self.student_mean is None:
            raise RuntimeError("set_student_normalization() must be called before embedding student batches")
        device = next(self._models.parameters()).device
        images01 = to_unit_range(images.to(device), self.student_mean, self.student_std)
        image_emb = self.encode_unit_images(images01)
        text_emb = self.encode_tokens(texts.to(device))
        count = images.shape[0]
        if has_syn:
            return image_emb, text_emb[:count], text_emb[count:]
        return image_emb, text_emb, None

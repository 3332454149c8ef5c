"""The dataset-reinforcement (DR) shard format: sample keys, and how each member is encoded and decoded.

This is the one description of the format: ``mobileclip2 reinforce`` writes it
(:mod:`mobileclip2.reinforce.generate`), DR training reads it (:mod:`mobileclip2.train.data`), and
docs/training.md links here. It is Apple's DataCompDR / DFNDR layout: a webdataset tar shard in
which the members of sample ``KEY`` are adjacent files

* ``KEY.jpg`` (or ``png`` / ``jpeg`` / ``webp``): the image, bytes as in the input shard;
* ``KEY.txt``: the caption (UTF-8);
* ``KEY.paug.json``: ``{"param_aug": [params of augmentation 0, ...]}`` -- the parameters of each
  stored augmentation (layout in :mod:`mobileclip2.augment`); the Hugging Face copies store the
  same list JSON-encoded as a string, which is accepted too;
* ``KEY.syn.json``: synthetic captions, ``{"syn_text": [caption, ...], "syn_text_<tag>": [...]}``;
* ``KEY.npz`` (float32, preferred when both exist) or ``KEY.pth.gz`` (gzip'd ``torch.save``, usually
  bfloat16): the teacher ensemble's L2-normalized, concatenated embeddings -- ``image_emb``
  [augmentations, D], ``text_emb`` [captions, D] and, for every ``syn.json`` key ``K`` that was
  embedded, ``K_emb`` [captions of K, D]. DataCompDR-12M instead appends the synthetic-caption rows
  to ``text_emb`` after the real captions; both layouts load.

A sample's key is the member path up to the first dot of its file name (webdataset's rule).
Encoding is deterministic: equal content gives equal bytes, whenever and wherever it is written.
"""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import DRDataError

__all__ = [
    "EMBEDDING_KEYS",
    "IMAGE_KEYS",
    "augmentation_params",
    "decode_embeddings",
    "encode_augmentation_params",
    "encode_embeddings",
    "encode_synthetic_captions",
    "image_key",
    "synthetic_captions",
]

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
EMBEDDING_KEYS = ("npz", "pth.gz")  # npz first: Apple prefers the fp32 copy when both exist
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def image_key(sample: Mapping[str, Any]) -> str | None:
    """The sample's image member (its extension), or None when it has none."""
    return next((key for key in IMAGE_KEYS if key in sample), None)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (bytes, bytearray, str)) else value


def synthetic_captions(sample: Mapping[str, Any]) -> dict[str, list[str]]:
    """``syn.json`` -> key -> captions (a single caption becomes a list); {} when there is none."""
    if "syn.json" not in sample:
        return {}
    stored = _json(sample["syn.json"])
    if not isinstance(stored, dict):
        raise ValueError("syn.json is not a JSON object")
    return {
        key: [value] if isinstance(value, str) else [str(v) for v in value] for key, value in stored.items()
    }


def encode_synthetic_captions(captions: Mapping[str, Sequence[str]]) -> bytes:
    return json.dumps({key: list(value) for key, value in captions.items()}).encode("utf-8")


def augmentation_params(sample: Mapping[str, Any]) -> list:
    """``paug.json`` -> the list of stored parameter lists (accepts the JSON-string variant)."""
    params = _json(_json(sample["paug.json"])["param_aug"])
    if not isinstance(params, list) or not params:
        raise DRDataError(f"paug.json 'param_aug' must be a non-empty list, got {type(params).__name__}")
    return params


def encode_augmentation_params(params: Sequence[Any]) -> bytes:
    return json.dumps({"param_aug": list(params)}).encode("utf-8")


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """What ``numpy.savez_compressed`` writes (a zip of ``.npy`` files, ``np.load`` reads it), but with
    fixed member timestamps, so equal arrays give equal bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def encode_embeddings(embeddings: Mapping[str, torch.Tensor], bfloat16: bool) -> tuple[str, bytes]:
    """-> ("npz", float32 npz bytes) or ("pth.gz", gzip'd torch.save of bfloat16 tensors)."""
    if bfloat16:
        buffer = io.BytesIO()
        torch.save({key: value.to(torch.bfloat16).contiguous() for key, value in embeddings.items()}, buffer)
        return "pth.gz", gzip.compress(buffer.getvalue(), mtime=0)
    return "npz", _npz_bytes({key: value.float().numpy() for key, value in embeddings.items()})


def decode_embeddings(sample: Mapping[str, Any]) -> dict[str, np.ndarray | torch.Tensor]:
    """The stored teacher embeddings of a sample as a dict of arrays (npz preferred)."""
    if "npz" in sample:
        with np.load(io.BytesIO(sample["npz"]), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    if "pth.gz" in sample:
        stored = torch.load(
            io.BytesIO(gzip.decompress(sample["pth.gz"])), map_location="cpu", weights_only=True
        )
        if not isinstance(stored, Mapping):
            raise DRDataError(
                f"pth.gz of sample {sample.get('__key__')!r} holds {type(stored).__name__}, not a dict"
            )
        return dict(stored)
    raise DRDataError(f"sample {sample.get('__key__')!r} has no stored embeddings (npz or pth.gz)")

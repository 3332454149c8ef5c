"""Check one backfilled MCi backbone under another timm against references made with timm 1.0.31.

Run by ``tests/test_backbones.py`` in a subprocess whose path puts an old timm (e.g. 0.9.16) first:

    python tests/scripts/backbone_parity_old_timm.py WORKDIR

WORKDIR holds ``request.json`` (name, reference pretrained cfgs), ``weights.safetensors`` (the reference
model's state_dict) and ``io.safetensors`` (input, logits, features). Registers our variant function only
if the installed timm lacks the name, builds it through ``timm.create_model``, loads the weights strictly
and writes the measured differences to ``WORKDIR/result.json`` for the parent test to assert on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from timm.models import get_pretrained_cfg, register_model
from timm.utils import reparameterize_model

from mobileclip2.models import mci, vit_mci

CFG_FIELDS = (
    "mean",
    "std",
    "interpolation",
    "crop_pct",
    "num_classes",
    "hf_hub_id",
    "input_size",
    "first_conv",
)


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) if a.shape == b.shape else float("inf")


def main(workdir: Path) -> dict:
    request = json.loads((workdir / "request.json").read_text())
    name = request["name"]
    variant_fn = {fn.__name__: fn for fn in (*mci.BACKBONES, *vit_mci.BACKBONES)}[name]
    backfilled = not timm.is_model(name)
    if backfilled:
        register_model(variant_fn)

    torch.manual_seed(0)
    model = timm.create_model(name).eval()  # real init: timm 0.9's ViT cannot be built on 'meta'
    weights = load_file(str(workdir / "weights.safetensors"))
    ours_shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    ref_shapes = {k: list(v.shape) for k, v in weights.items()}
    result = {
        "timm_version": timm.__version__,
        "backfilled": backfilled,
        "entrypoint_module": timm.models.model_entrypoint(name).__module__,
        "default_tag": get_pretrained_cfg(name).tag,
        "pretrained_cfg_mismatches": _cfg_mismatches(name, request["pretrained_cfgs"]),
        "missing_keys": sorted(ref_shapes.keys() - ours_shapes.keys()),
        "unexpected_keys": sorted(ours_shapes.keys() - ref_shapes.keys()),
        "shape_mismatches": sorted(
            k for k in ref_shapes.keys() & ours_shapes.keys() if ref_shapes[k] != ours_shapes[k]
        ),
    }
    if result["missing_keys"] or result["unexpected_keys"] or result["shape_mismatches"]:
        return result  # nothing to compare numerically

    model.load_state_dict(weights, strict=True)
    del weights
    io = load_file(str(workdir / "io.safetensors"))
    with torch.no_grad():
        features = model.forward_features(io["x"])
        logits = model.forward_head(features)
        fused = reparameterize_model(model, inplace=True)  # the unfused model is not needed any more
        fused_logits = fused(io["x"])
        # Ours must survive a second fuse; upstream's RepMixer does not (timm <= 1.0.31), so only ours.
        refused_logits = reparameterize_model(fused, inplace=True)(io["x"]) if backfilled else fused_logits
    result.update(
        max_abs_logits=_max_abs(logits, io["logits"]),
        max_abs_features=_max_abs(features, io["features"]),
        max_abs_fused_vs_ref=_max_abs(fused_logits, io["logits"]),
        fused_twice_equal=bool(torch.equal(refused_logits, fused_logits)),
    )
    return result


def _cfg_mismatches(name: str, reference: dict[str, dict]) -> list[str]:
    """Pretrained cfg fields, per tag, that differ from the reference made with timm 1.0.31."""
    mismatches = []
    for tag, ref_cfg in reference.items():
        try:
            cfg = get_pretrained_cfg(f"{name}.{tag}").to_dict()
        except RuntimeError:  # e.g. timm 1.0.19 defines fastvit_mci0 but not its MobileCLIP2 tag
            mismatches.append(f"{tag}: not a pretrained tag of {name} in this timm")
            continue
        for field in CFG_FIELDS:
            if _jsonable(cfg.get(field)) != ref_cfg.get(field):
                mismatches.append(f"{tag}.{field}: {cfg.get(field)!r} != {ref_cfg.get(field)!r}")
    return mismatches


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    (out_dir / "result.json").write_text(json.dumps(main(out_dir), indent=1))

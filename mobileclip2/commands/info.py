"""`mobileclip2 info NAME`: towers, parameter counts, preprocessing, tags and Hub files."""

from __future__ import annotations

import argparse

HELP = "Show one model: parameters per tower, image size, preprocessing, tags, Hub files."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="open_clip model name, e.g. MobileCLIP2-S0")
    parser.add_argument(
        "--no-params", action="store_true", help="skip building the model to count parameters"
    )


def tower_parameter_counts(model) -> dict[str, int]:
    """Parameters of the image tower, the text tower, and the rest (logit scale/bias)."""
    image = sum(p.numel() for p in model.visual.parameters())
    total = sum(p.numel() for p in model.parameters())
    if hasattr(model, "text"):
        text = sum(p.numel() for p in model.text.parameters())
    else:  # open_clip CLIP keeps text modules at the top level
        text = total - image - sum(p.numel() for n, p in model.named_parameters() if n.startswith("logit_"))
    return {"image": image, "text": text, "other": total - image - text}


def run(args: argparse.Namespace) -> int:
    from mobileclip2.catalog import hub_files, model_info, pretrained_cfgs

    info = model_info(args.name)
    print(f"{info.name}  ({info.source})")
    print(
        f"  image tower : timm {info.image_backbone} "
        f"({'native' if info.backbone_native else 'backfilled'}), {info.image_size}px"
    )
    print(f"  text tower  : {info.text_tower}")
    print(f"  embed dim   : {info.embed_dim}")
    if not args.no_params:
        import open_clip

        from mobileclip2.compat.factory import random_init_notice_silenced

        with random_init_notice_silenced():
            model = open_clip.create_model(info.name)
        counts = tower_parameter_counts(model)
        print(
            f"  parameters  : {counts['image'] / 1e6:.1f}M image + {counts['text'] / 1e6:.1f}M text, as "
            "trained (reparameterizing for inference fuses the image tower's branches: README's and "
            "Apple's tables count the fused tower, docs/models.md has both)"
        )
    cfgs = pretrained_cfgs(info.name)
    files = hub_files(info.name)
    if not cfgs:
        print("  pretrained  : none (pass a local checkpoint file as `pretrained`)")
    for tag, cfg in cfgs.items():
        print(f"  tag {tag!r}:")
        print(f"    hub file      : {files.get(tag, cfg.get('url') or '-')}")
        print(f"    mean / std    : {tuple(cfg.get('mean', ()))} / {tuple(cfg.get('std', ()))}")
        print(f"    interpolation : {cfg.get('interpolation')}, resize mode: {cfg.get('resize_mode')}")
    return 0

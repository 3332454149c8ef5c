"""Load a model through all_clip's public loader and report its embeddings next to model.eval()'s.

Usage: all_clip_worker.py CLIP_MODEL OUT_DIR, e.g. ``open_clip:MobileCLIP2-S0/dfndr2b``. Run by
tests/test_all_clip.py in a fresh interpreter with HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointing
at a generated cache, with the all_clip under test (patched or not) first on PYTHONPATH.

Writes OUT_DIR/result.json (which all_clip was imported, training flags, buffers that differ from
the checkpoint) and OUT_DIR/embeddings.pt:
- ``all_clip``: what all_clip's model gives for a batch of two different images, right after
  ``load_clip`` (what clip-retrieval stores);
- ``all_clip_after_eval``: the same model after the caller's own ``.eval()``;
- ``reference``: ``open_clip.create_model_and_transforms(...)`` of the same tag, then ``.eval()``;
- ``*_text``: the same for two captions.
"""

import json
import sys
from pathlib import Path


def images():
    """Two different small images (seeded noise): BatchNorm in training mode mixes them."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(2)]


def main() -> int:
    clip_model, out_dir = sys.argv[1], Path(sys.argv[2])
    import all_clip
    import torch
    from all_clip import load_clip

    # all_clip's public loader, as clip-retrieval calls it (warmup included).
    model, preprocess, tokenizer = load_clip(clip_model=clip_model, use_jit=False, device="cpu")
    batch = torch.stack([preprocess(image) for image in images()])
    tokens = tokenizer(["a photo of a cat", "a diagram"])
    training = sorted({type(m).__name__ for m in model.modules() if m.training})
    with torch.no_grad():
        got, got_text = model.encode_image(batch), model.encode_text(tokens)
        model.eval()  # what a client could add after load_clip
        got_after_eval = model.encode_image(batch)

    import open_clip

    name, _, tag = clip_model.split(":", 1)[1].partition("/")
    reference = open_clip.create_model_and_transforms(name, pretrained=tag)[0].eval()
    with torch.no_grad():
        want, want_text = reference.encode_image(batch), reference.encode_text(tokens)

    expected = reference.state_dict()
    changed = [k for k, v in model.inner_model.state_dict().items() if not torch.equal(v, expected[k])]
    torch.save(
        {
            "all_clip": got,
            "all_clip_after_eval": got_after_eval,
            "reference": want,
            "all_clip_text": got_text,
            "reference_text": want_text,
        },
        out_dir / "embeddings.pt",
    )
    result = {
        "all_clip_file": all_clip.__file__,
        "open_clip_version": open_clip.__version__,
        "training_module_types": training,
        "changed_state_keys": changed,
    }
    (out_dir / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

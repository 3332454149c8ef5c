"""Load `name` with `pretrained` (a tag or a path) in a fresh interpreter and report what arrived.

Usage: load_tag_worker.py NAME PRETRAINED OUT_DIR. Writes OUT_DIR/result.json with either the
error (type, message) or the model's preprocess cfg, and OUT_DIR/state.pt with the loaded
state_dict, so the parent test can compare every tensor exactly. Run by tests/test_hub_loading.py
with HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointing at a generated cache.
"""

import json
import sys
from pathlib import Path


def main() -> int:
    name, pretrained, out_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    import open_clip  # the autoload hook registers the MobileCLIP names on this import
    import torch

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
    except Exception as exc:  # noqa: BLE001 - the parent asserts on the error
        result = {
            "error_type": type(exc).__name__,
            "error": str(exc),
            "is_runtime_error": isinstance(exc, RuntimeError),
        }
    else:
        torch.save(model.state_dict(), out_dir / "state.pt")
        cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in model.visual.preprocess_cfg.items()}
        result = {"preprocess_cfg": cfg, "transform": repr(preprocess)}
    (out_dir / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""open_clip's name registries: model configs and pretrained tags.

Versions handled: open_clip_torch 2.24.0 - 3.3.0 and main (4.2.0.dev0). Configs are added with the
public ``open_clip.add_model_config(path)``, one file per name open_clip lacks: it rescans every config
file on each call (a few ms) and lets a later file override a native name, which is why only missing
names are passed to it. Pretrained tags live in ``pretrained._PRETRAINED`` (name -> tag -> cfg dict);
no release has a public setter, so that dict is the one private table we write. An open_clip carrying
our upstream patch (patches/0001) has public ``register_model_config`` / ``register_pretrained_cfg``;
they are used when present. The weight file names open_clip looks for inside an ``org/repo/`` Hub entry are
``HF_WEIGHTS_NAME`` / ``HF_SAFE_WEIGHTS_NAME``: in ``open_clip.constants`` on 3.3.0, in
``open_clip.push_to_hf_hub`` on 2.24.0 (found by feature detection). Config defaults (the width,
vocabulary, context length or image size a config leaves out) are the fields of open_clip's
``model.CLIPTextCfg`` / ``CLIPVisionCfg`` dataclasses, read from them rather than restated.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ._common import Internal

CONFIGS = "model configs"
TAGS = "pretrained tags"
INTERNALS = (
    Internal(
        "open_clip.pretrained._PRETRAINED",
        "private attribute",
        TAGS,
        "2.24.0 - main",
        "tags for weights open_clip lacks are inserted (no public setter; patches/0001 adds one)",
        hook=True,
    ),
    *(
        Internal(
            f"open_clip.constants.{name}",
            "module constant",
            "Hub file names (mobileclip2 info, loading errors, the equivalence tools)",
            "3.3.0 - main (open_clip.push_to_hf_hub on 2.24.0)",
            "the file names open_clip reads from an 'org/repo/' Hub entry",
            "catalog, loading, compat.factory",
        )
        for name in ("HF_WEIGHTS_NAME", "HF_SAFE_WEIGHTS_NAME")
    ),
)


def hub_weight_file_names() -> tuple[str, str]:
    """(pickle name, safetensors name) open_clip reads from an ``org/repo/`` Hub entry."""
    import importlib

    from open_clip import constants

    if hasattr(constants, "HF_WEIGHTS_NAME"):
        return constants.HF_WEIGHTS_NAME, constants.HF_SAFE_WEIGHTS_NAME
    # open_clip < 2.26 keeps them in the module push_to_hf_hub, which ``from open_clip import
    # push_to_hf_hub`` would not give: open_clip/__init__ binds that name to the function.
    module = importlib.import_module("open_clip.push_to_hf_hub")
    return module.HF_WEIGHTS_NAME, module.HF_SAFE_WEIGHTS_NAME


def hub_location(cfg: Mapping[str, Any]) -> tuple[str, str]:
    """(repo_id, filename) a pretrained cfg downloads: 'org/repo/file', or open_clip's default weight
    file name for the 'org/repo/' form."""
    repo_id, _, filename = cfg["hf_hub"].rstrip().rpartition("/")
    if not filename:
        repo_id, filename = cfg["hf_hub"].rstrip("/"), hub_weight_file_names()[0]
    return repo_id, filename


def text_cfg_default(key: str) -> Any:
    """open_clip's default for a ``text_cfg`` key its config leaves out (``CLIPTextCfg``'s field)."""
    from open_clip.model import CLIPTextCfg

    return getattr(CLIPTextCfg(), key)


def vision_cfg_default(key: str) -> Any:
    """open_clip's default for a ``vision_cfg`` key its config leaves out (``CLIPVisionCfg``'s field)."""
    from open_clip.model import CLIPVisionCfg

    return getattr(CLIPVisionCfg(), key)


def add_model_config_files(files: Iterable[Path], replace: bool = False) -> list[str]:
    """Register each JSON config whose name open_clip does not know yet; returns names added.

    ``replace=True`` overrides native names too; it exists for equivalence tests and debugging
    (``register(force_backfill=True)``), never for normal use. An open_clip carrying our upstream
    patch (patches/0001) has a public ``register_model_config``; it is used when present.
    """
    import open_clip
    from open_clip import factory

    public = getattr(factory, "register_model_config", None)
    known = set(factory.list_models())
    added = []
    for path in files:
        path = Path(path)
        if path.stem in known and not replace:
            continue
        if public is not None:
            public(path.stem, json.loads(path.read_text(encoding="utf-8")), overwrite=replace)
        else:
            open_clip.add_model_config(path)
        added.append(path.stem)
    return added


def add_pretrained_cfgs(
    table: Mapping[str, Mapping[str, Mapping[str, Any]]], replace: bool = False
) -> list[tuple[str, str]]:
    """Add (model, tag) entries open_clip lacks; native entries are kept unless ``replace``.

    Uses the public ``register_pretrained_cfg`` of a patched open_clip (patches/0001) when present.
    """
    from open_clip import pretrained

    public = getattr(pretrained, "register_pretrained_cfg", None)
    added = []
    for model_name, tags in table.items():
        for tag, cfg in tags.items():
            if pretrained.is_pretrained_cfg(model_name, tag) and not replace:
                continue
            if public is not None:
                public(model_name, tag, dict(cfg), overwrite=replace)
            else:
                pretrained._PRETRAINED.setdefault(model_name, {})[tag] = dict(cfg)
            added.append((model_name, tag))
    return added

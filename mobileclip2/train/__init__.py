"""Dataset-reinforcement (DR) training and distillation on an unmodified open_clip_train.

``python -m mobileclip2.train`` = open_clip_train's main loop with Apple's DR flags added
(mobileclip2.train.main explains how, without forking the loop). Modules, one concern each:

* ``args``      - the extra flags (Apple's names and defaults) and their validation;
* ``augment``   - reproducible augmentations: sample parameters, apply, store, replay;
* ``data``      - reinforced webdataset shards -> batches + stored teacher embeddings;
* ``channel``   - hands each batch's teacher half from the loader to the loss;
* ``losses``    - CLIP + ensemble distillation loss (Apple's DRClipLoss), DDP-correct;
* ``teachers``  - frozen open_clip teacher ensembles (online distillation, reinforce);
* ``reinforce`` - writes DR shards from plain image/caption shards (`mobileclip2 reinforce`).

See docs/training.md for the shard format and recipes. Nothing here is imported by the plugin.

This module itself only holds :func:`check_webdataset`, which ``python -m mobileclip2.train``
runs before anything else: it must stay import-free (no torch, no webdataset).
"""

from __future__ import annotations

from collections.abc import Callable

# open_clip_train <= this release reads samples with webdataset 0.2.x's keys; webdataset >= 1.0
# changed them and the run dies inside open_clip_train's loader with "KeyError: 'fname'".
OPEN_CLIP_TRAIN_WDS_0_2_UNTIL = (3, 3, 0)


def webdataset_requirement() -> str | None:
    """The ``train`` extra's webdataset requirement, as installed (setup.cfg is its one source)."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        found = requires("mobileclip2") or []
    except PackageNotFoundError:  # a checkout on PYTHONPATH: no metadata to read
        return None
    for requirement in found:
        spec, _, marker = requirement.partition(";")
        if spec.strip().startswith("webdataset") and "train" in marker:
            return spec.strip()
    return None


def _release(version: str) -> tuple[int, ...]:
    """'1.0.2' -> (1, 0, 2); '0.2.86.post1' -> (0, 2, 86); '1.0rc1' -> (1, 0): the release numbers."""
    import re

    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def _installed_version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def check_webdataset(version_of: Callable[[str], str | None] = _installed_version) -> None:
    """Raise DependencyVersionError, saying what to install, when the installed webdataset cannot
    feed open_clip_train's loader (missing, or >= 1.0 with open_clip_train <= 3.3.0)."""
    from ..errors import DependencyVersionError

    pinned = webdataset_requirement()
    install = (f"pip install '{pinned}' (or: " if pinned else "(") + "pip install 'mobileclip2[train]')"
    webdataset = version_of("webdataset")
    if webdataset is None:
        raise DependencyVersionError(
            f"training reads webdataset shards, but webdataset is not installed: {install}"
        )
    open_clip = version_of("open_clip_torch") or "0"
    if _release(webdataset) >= (1,) and _release(open_clip) <= OPEN_CLIP_TRAIN_WDS_0_2_UNTIL:
        raise DependencyVersionError(
            f"webdataset {webdataset} is installed, but open_clip_train {open_clip} was written for "
            "webdataset 0.2.x: with webdataset >= 1.0 its loader fails with KeyError: 'fname'. "
            "Install a version it "
            f"works with: {install}"
        )

"""Our backfilled models == upstream's, on the same random weights, through the public factory.

Reference: open_clip 3.3.0 + timm 1.0.31 (installed in this interpreter) build each name with
random weights; for names upstream lacks (MobileCLIP-S3/S4/L-14, MobileCLIP-S0), the reference
is our config built through open_clip's own factory with upstream's timm backbones (the configs
themselves are checked against Apple's in test_registration / test_convert). The weights go into
an offline Hugging Face cache under each tag's real repo id and file name.

Candidates, each in a subprocess running tests/scripts/equivalence_worker.py:
  * newest pair, ``register(force_backfill=True)``: our configs/tags/backbones replace upstream's;
  * oldest pair (open_clip 2.24.0 + timm 0.9.16): ours are the only definitions there.
Both load the weights via ``create_model_and_transforms(name, pretrained=tag)`` and must match
the reference features, logits, tokens and preprocessing.
"""

from __future__ import annotations

import pytest
from compat_env import NEWEST_PAIR, OLDEST_PAIR
from equivalence_support import BIG, build_reference_bundle, default_cases, problems, run_worker

# MobileCLIP-S0 included: on the oldest pair its MCt text tower goes through the compat hook into
# open_clip 2.24.0's text-tower builder, and its tag's V1-format check passes OpenCLIP weights through.
CASES = default_cases()


@pytest.fixture(scope="module")
def reference_bundle(tmp_path_factory):
    return build_reference_bundle(tmp_path_factory.mktemp("equivalence"), CASES)


@pytest.fixture(scope="module")
def newest_forced(reference_bundle):
    return run_worker(reference_bundle, NEWEST_PAIR, force_backfill=True)


@pytest.fixture(scope="module")
def oldest(reference_bundle):
    return run_worker(reference_bundle, OLDEST_PAIR, force_backfill=False)


def _marks(name):
    return [pytest.mark.big] if name in BIG else []


@pytest.mark.compat
@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n, _ in CASES])
def test_forced_backfill_matches_upstream_newest_pair(newest_forced, reference_bundle, name):
    result = newest_forced["models"][name]
    assert (newest_forced["open_clip"], newest_forced["timm"]) == NEWEST_PAIR
    assert result.get("config_backfilled"), "the worker must build from our config, not upstream's"
    if result["backbone"] != "vit_large_patch14_clip_224":  # a plain timm ViT, never ours
        assert result["backbone_backfilled"]
    assert problems(result, reference_bundle["entries"][name]) == []


@pytest.mark.compat
@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n, _ in CASES])
def test_backfill_on_oldest_pair_matches_upstream(oldest, reference_bundle, name):
    result = oldest["models"][name]
    assert (oldest["open_clip"], oldest["timm"]) == OLDEST_PAIR
    # open_clip 2.24.0 has no MobileCLIP names and timm 0.9.16 no MCi backbones: all ours.
    assert result.get("config_backfilled") and result.get("tag_backfilled")
    if result["backbone"] != "vit_large_patch14_clip_224":
        assert result["backbone_backfilled"]
    assert problems(result, reference_bundle["entries"][name]) == []

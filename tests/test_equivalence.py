"""Our backfilled models == upstream's, on the same random weights, through the public factory.

Reference: open_clip 3.3.0 + timm 1.0.31 (installed in this interpreter) build each name with
random weights; for names upstream lacks (MobileCLIP-S3/S4/L-14, MobileCLIP-S0), the reference
is our config built through open_clip's own factory with upstream's timm backbones (the configs
themselves are checked against Apple's in test_registration / test_convert). The weights go into
an offline Hugging Face cache under each tag's real repo id and file name, one config group at a
time (tools/equivalence_support.run_equivalence), so at most one model's weights are on disk.

Candidates, each a persistent subprocess running tests/scripts/equivalence_worker.py, both at once:
  * newest pair, ``register(force_backfill=True)``: our configs/tags/backbones replace upstream's;
  * oldest pair (open_clip 2.24.0 + timm 0.9.16): ours are the only definitions there.
Both load the weights via ``create_model_and_transforms(name, pretrained=tag)`` and must match
the reference features, logits, tokens and preprocessing.
"""

from __future__ import annotations

import pytest
from compat_env import NEWEST_PAIR, OLDEST_PAIR
from equivalence_support import BIG, Candidate, Worker, default_cases, problems, run_equivalence

pytestmark = pytest.mark.slow  # every name at full size, and the oldest supported open_clip/timm pair

# MobileCLIP-S0 included: on the oldest pair its MCt text tower goes through the compat hook into
# open_clip 2.24.0's text-tower builder, and its tag's V1-format check passes OpenCLIP weights through.
CASES = default_cases()


NEWEST_FORCED = Candidate(NEWEST_PAIR, force_backfill=True)
OLDEST = Candidate(OLDEST_PAIR)


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory):
    return run_equivalence(tmp_path_factory.mktemp("equivalence"), CASES, [NEWEST_FORCED, OLDEST])


@pytest.fixture(scope="module")
def entries(equivalence):
    return equivalence.entries


@pytest.fixture(scope="module")
def newest_forced(equivalence):
    return equivalence.result(NEWEST_FORCED)


@pytest.fixture(scope="module")
def oldest(equivalence):
    return equivalence.result(OLDEST)


def _marks(name):
    return [pytest.mark.slow] if name in BIG else []


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n, _ in CASES])
def test_forced_backfill_matches_upstream_newest_pair(newest_forced, entries, name):
    result = newest_forced["models"][name]
    assert (newest_forced["open_clip"], newest_forced["timm"]) == NEWEST_PAIR
    assert result.get("config_backfilled"), "the worker must build from our config, not upstream's"
    if result["backbone"] != "vit_large_patch14_clip_224":  # a plain timm ViT, never ours
        assert result["backbone_backfilled"]
    assert problems(result, entries[name]) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n, _ in CASES])
def test_backfill_on_oldest_pair_matches_upstream(oldest, entries, name):
    result = oldest["models"][name]
    assert (oldest["open_clip"], oldest["timm"]) == OLDEST_PAIR
    # open_clip 2.24.0 has no MobileCLIP names and timm 0.9.16 no MCi backbones: all ours.
    assert result.get("config_backfilled") and result.get("tag_backfilled")
    if result["backbone"] != "vit_large_patch14_clip_224":
        assert result["backbone_backfilled"]
    assert problems(result, entries[name]) == []


def test_a_dead_or_silent_worker_is_a_clear_error_not_a_hang(tmp_path):
    """The driver never waits forever: a worker that dies raises with its stderr tail, one that does
    not answer in time is killed and raises."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    dies, silent = (Worker(Candidate(NEWEST_PAIR), tmp_path / d, tmp_path / "hub", 1) for d in ("a", "b"))
    try:
        dies.wait_ready(timeout=600)
        dies.process.stdin.write("not a request\n")
        dies.process.stdin.flush()
        with pytest.raises(RuntimeError, match=r"(?s)exited before its 'done' answer.*JSONDecodeError"):
            dies.receive(tmp_path / "a" / "never.json", timeout=600)
        silent.wait_ready(timeout=600)
        with pytest.raises(RuntimeError, match="gave no 'done' answer within 1 s and was killed"):
            silent.receive(tmp_path / "b" / "never.json", timeout=1)
        assert silent.process.returncode is not None
    finally:
        dies.kill()
        silent.kill()

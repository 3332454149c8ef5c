"""The upstream internals we touch: one table in code (compat modules' INTERNALS), the same table in
docs/compatibility.md, and registration that survives losing any one of them.

For each internal a registration hook needs, a fresh interpreter takes it away (deleted, or changed
where deleting it would break open_clip's own code: see ``SIMULATIONS``), then registers and runs
``mobileclip2 check MobileCLIP2-S0``: exactly one RuntimeWarning names the feature, the feature table
shows it skipped, and the rest is registered and working.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from compat_env import REPO_ROOT, env_for

from mobileclip2 import plugin
from mobileclip2.compat import surface

DOC = REPO_ROOT / "docs" / "compatibility.md"
START, END = "<!-- internals:start -->", "<!-- internals:end -->"
HOOKED = [item for item in surface.internals() if item.hook]

# How a hooked internal is taken away when deleting it would break open_clip itself (its own code
# looks these module globals up at call time): a change its own call sites still accept.
SIMULATIONS = {
    "open_clip.pretrained._PRETRAINED": "freeze",  # read-only table: open_clip reads it, we cannot add
    "open_clip.model._build_text_tower": "rename_parameter",  # called positionally by open_clip
}

SCRIPT = r"""
import importlib, inspect, json, sys, types, warnings

target, how = sys.argv[1], sys.argv[2]
import open_clip  # autoload is off: nothing of ours is installed yet

parts = target.split(".")
for cut in range(len(parts) - 1, 0, -1):
    try:
        owner = importlib.import_module(".".join(parts[:cut]))
        break
    except ImportError:
        continue
for name in parts[cut:-1]:
    owner = getattr(owner, name)
attr = parts[-1]
original = getattr(owner, attr)
if how == "delete":
    delattr(owner, attr)
elif how == "freeze":
    setattr(owner, attr, types.MappingProxyType(dict(original)))
elif how == "rename_parameter":
    def changed(embed_dim, cfg, quick_gelu=False, cast_dtype=None):
        return original(embed_dim, cfg, quick_gelu, cast_dtype)
    setattr(owner, attr, changed)

from mobileclip2 import cli, plugin

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    state = plugin.register()
ours = [str(w.message) for w in caught if w.category is RuntimeWarning and "mobileclip2" in str(w.message)]
status = cli.main(["check", "MobileCLIP2-S0"])
result = {"warnings": ours, "features": state.features, "done": state.done, "check": status}
print("RESULT " + json.dumps(result))
"""


def _doc_table() -> str:
    text = DOC.read_text(encoding="utf-8")
    assert START in text and END in text, f"{DOC} lacks the {START} ... {END} section"
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def test_the_doc_table_is_the_code_table():
    assert _doc_table() == surface.render_markdown(), (
        "docs/compatibility.md's internals table is stale: regenerate it with "
        "`python -m mobileclip2.compat.surface` and paste it between the markers"
    )


def test_every_internal_is_described_and_counted_once():
    items = surface.internals()
    targets = [item.target for item in items]
    assert len(set(targets)) == len(targets), "an internal is declared twice"
    for item in items:
        assert item.kind and item.feature and item.versions and item.why, item
    assert set(surface.ADDED) <= set(targets)
    assert not {item.target for item in surface.RETIRED} & set(targets), (
        "a retired internal is still declared"
    )
    before, now = surface.counts()
    assert now == len(items) and before == now - len(surface.ADDED) + len(surface.RETIRED)


def resolve(target: str):
    """The object a dotted target names: its longest importable module prefix, then attributes."""
    import importlib

    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            found = getattr(found, name)
        return found
    raise ImportError(target)


def test_each_hook_names_a_registration_feature_and_exists_here():
    features = {feature.name for feature in plugin.FEATURES}
    assert HOOKED
    for item in HOOKED:
        assert item.feature in features, item
        resolve(item.target)  # present on the installed versions: the removal test below is not vacuous


def _run_without(target: str, how: str) -> tuple[dict, str]:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, target, how],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(REPO_ROOT),
        env=env_for(None, MOBILECLIP2_AUTOLOAD="0", OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :]), proc.stdout


def _tier(index: int) -> list:
    """The first internal in the default tier, the rest in the slow one (each is a fresh process)."""
    return [] if index == 0 else [pytest.mark.slow]


@pytest.mark.parametrize(
    "item",
    [pytest.param(item, id=item.target, marks=_tier(index)) for index, item in enumerate(HOOKED)],
)
def test_losing_a_hooked_internal_skips_only_its_feature(item):
    result, out = _run_without(item.target, SIMULATIONS.get(item.target, "delete"))
    assert result["done"] and result["check"] == 0, out
    skipped = plugin.Registration(features=result["features"]).skipped
    assert set(skipped) == {item.feature}, result["features"]
    assert len(result["warnings"]) == 1, result["warnings"]
    warning = result["warnings"][0]
    assert repr(item.feature) in warning and "open_clip" in warning and "timm" in warning
    lost = next(feature.lost for feature in plugin.FEATURES if feature.name == item.feature)
    assert lost in warning  # what will not work
    assert "MobileCLIP2-S0" in out and "1 passed, 0 failed; 1 feature skipped" in out
    assert any(line.startswith(item.feature) and "skipped:" in line for line in out.splitlines()), out


def test_matrix_runs_rewrite_only_their_own_section():
    """tools/matrix.py: a run of source checkouts replaces the main-branch section, a full run keeps it,
    and both rewrite the internals table from the code."""
    import matrix

    doc = "# Compatibility matrix\n\nrows\n"
    once = matrix.with_section(doc, "main", "row A")
    assert matrix.section(once, "main") == "row A" and once.startswith(doc.rstrip("\n"))
    assert matrix.HEADINGS["main"] in once
    twice = matrix.with_section(once, "main", "row B")
    assert matrix.section(twice, "main") == "row B" and twice.count(matrix.HEADINGS["main"]) == 1
    assert matrix.section(DOC.read_text(encoding="utf-8"), "internals") + "\n" == surface.render_markdown()

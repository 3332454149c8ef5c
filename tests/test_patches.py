"""patches/ apply to the real open_clip_torch 3.3.0 source and make our runtime hooks unnecessary.

The sdist from PyPI is unpacked into a temp dir, each patch is checked with `git apply --check`
and applied, upstream's own new tests run on the patched tree, and our plugin is then exercised
against that tree with our autoload hook *disabled*: the names must still appear, because the
patched open_clip discovers the entry point itself (and our compat layer uses its public
registration functions instead of private dicts and wrappers).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import pytest
from compat_env import CACHE_ROOT, REPO_ROOT, run_python

pytestmark = pytest.mark.slow  # downloads the upstream sdists and runs their tests

PATCHES = sorted((REPO_ROOT / "patches").glob("*.patch"))
OPEN_CLIP_VERSION = "3.3.0"


@pytest.fixture(scope="module")
def sdist() -> object:
    target = CACHE_ROOT.parent / "sdist"
    found = list(target.glob(f"open_clip_torch-{OPEN_CLIP_VERSION}.tar.gz"))
    if not found:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--dest",
                str(target),
                f"open_clip_torch=={OPEN_CLIP_VERSION}",
            ],
            check=True,
        )
        found = list(target.glob(f"open_clip_torch-{OPEN_CLIP_VERSION}.tar.gz"))
    return found[0]


@pytest.fixture(scope="module")
def patched_tree(sdist, tmp_path_factory):
    root = tmp_path_factory.mktemp("open_clip_src")
    with tarfile.open(sdist) as archive:
        archive.extractall(root, filter="data")
    tree = root / f"open_clip_torch-{OPEN_CLIP_VERSION}"
    for patch in PATCHES:
        check = subprocess.run(
            ["git", "apply", "--check", str(patch)], cwd=tree, capture_output=True, text=True
        )
        assert check.returncode == 0, f"{patch.name} does not apply: {check.stderr}"
        subprocess.run(["git", "apply", str(patch)], cwd=tree, check=True)
    return tree


def test_patches_exist_and_are_upstream_shaped():
    assert [p.name[:4] for p in PATCHES] == ["0001", "0002"]
    for patch in PATCHES:
        text = patch.read_text()
        assert text.startswith("From ") and "Subject: [PATCH" in text  # git format-patch, with a message
        assert "tests/test_" in text  # every patch carries its own upstream test


def test_upstream_tests_pass_on_patched_tree(patched_tree):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_plugins.py",
            "tests/test_text_tower_registry.py",
        ],
        cwd=patched_tree,
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(patched_tree, MOBILECLIP2_AUTOLOAD="0"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "6 passed" in proc.stdout


def _env(tree, **extra):
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = f"{tree / 'src'}:{REPO_ROOT}"
    env.update(extra)
    return env


PROBE = """
import json, sys
import open_clip, open_clip.model
from mobileclip2 import _autoload

names = open_clip.list_models()
print(json.dumps({
    "patched": hasattr(open_clip, "load_plugins"),
    "s3": "MobileCLIP-S3" in names,
    "tags": open_clip.list_pretrained_tags_by_model("MobileCLIP-S3"),
    "hook_ran_group": "open_clip.plugins" in _autoload._groups_run,
    "text_tower_wrapped": hasattr(open_clip.model._build_text_tower, "__mobileclip2_wrapper__"),
    "public_text_towers": sorted(getattr(open_clip.model, "_TEXT_TOWER_BUILDERS", {})),
}))
"""


@pytest.mark.parametrize("autoload", ["0", "1"])
def test_patched_open_clip_discovers_our_plugin_itself(patched_tree, autoload):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(patched_tree.parent),
        env=_env(patched_tree, MOBILECLIP2_AUTOLOAD=autoload),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {
        "patched": True,
        "s3": True,
        "tags": ["datacompdr"],
        "hook_ran_group": False,  # our hook steps aside when open_clip discovers plugins itself
        "text_tower_wrapped": False,  # the public registry replaces our wrapper
        "public_text_towers": ["mobileclip_mct"],
    }


def test_our_registration_tests_pass_against_patched_tree(patched_tree):
    # Our own registration suite, with the patched open_clip first on the path and the hook disabled.
    proc = run_python(
        patched_tree / "src",
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "tests/test_registration.py"],
        MOBILECLIP2_AUTOLOAD="0",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout

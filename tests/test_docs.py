"""Every shell command and Python snippet in README.md and docs/*.md runs as written.

Each fenced ``bash`` or ``python`` block is run, in order, in a fresh process inside one workspace per
document (so a snippet can use what an earlier one wrote), with the real ``mobileclip2`` command and
an offline Hugging Face cache holding generated weights for the tags the document names. A comment
right before a block can say more about it:

* ``<!-- doctest: skip REASON -->``: not runnable here (a GPU, macOS, the network); counted, with the
  reason, in the test's report;
* ``<!-- doctest: slow -->``: runs only in the slow tier;
* ``<!-- doctest: hub MODEL/TAG ... -->``: the tags the block loads (their cache entries are made);
* ``<!-- doctest: continue -->``: a Python block that continues the previous one (same namespace).

A doc edit that breaks a snippet fails here; so does a runnable-looking block without a directive
that cannot run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUNNABLE = {"bash", "sh", "python"}
TIMEOUT_S = 900


@dataclass
class Block:
    document: str
    line: int
    language: str
    code: str
    skip: str | None = None
    slow: bool = False
    hub: list[str] = field(default_factory=list)
    continues: bool = False

    @property
    def where(self) -> str:
        return f"{self.document}:{self.line}"


_FENCE = re.compile(r"^```(\w*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*doctest:\s*(.*?)\s*-->\s*$")


def parse_directive(text: str, block: Block) -> None:
    """``a; b; skip REASON``: parts separated by semicolons; ``skip`` takes the rest as its reason."""
    parts = text.split(";")
    while parts:
        part = parts.pop(0).strip()
        word, _, rest = part.partition(" ")
        if not word:
            continue
        if word == "skip":
            block.skip = ";".join([rest, *parts]).strip() or "no reason given"
            return
        elif word == "slow":
            block.slow = True
        elif word == "hub":
            block.hub += rest.split()
        elif word == "continue":
            block.continues = True
        else:
            raise ValueError(f"{block.where}: unknown doctest directive {word!r}")


def blocks_of(path: Path) -> list[Block]:
    """The runnable fenced blocks of a Markdown file, with the directive right before each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, index = [], 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        language, start = match.group(1), index
        end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
        if language in RUNNABLE:
            block = Block(path.name, start + 1, language, "\n".join(lines[start + 1 : end]) + "\n")
            previous = start - 1
            while previous >= 0 and not lines[previous].strip():
                previous -= 1
            directive = _DIRECTIVE.match(lines[previous]) if previous >= 0 else None
            if directive:
                parse_directive(directive.group(1), block)
            found.append(block)
        index = end + 1
    return found


def _workspace_inputs(root: Path, text: str) -> None:
    """The files the documents' examples name: photos, caption files, and where the document uses
    them, plain shards and a local checkpoint."""
    import numpy as np
    from PIL import Image

    import mobileclip2
    from mobileclip2.export.calibration import builtin_calibration_captions

    rng = np.random.default_rng(0)
    shutil.copy(mobileclip2.EXAMPLE_IMAGE, root / "photo.jpg")
    (root / "photos").mkdir()
    for label, colour in (("house", (90, 140, 60)), ("sky", (60, 110, 220))):
        (root / "my_photos" / label).mkdir(parents=True)
        for i in range(4):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (96, 128, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "my_photos" / label / f"{i}.jpg")
            Image.fromarray(pixels).save(root / "photos" / f"{label}{i}.jpg")
    # a user's queries: short ones and, as deployment.md asks of int8 calibration, some as long as the context
    captions = "a house on a hill\na blue sky\na photo of a dog\na city at night\n" + "\n".join(
        builtin_calibration_captions()
    )
    (root / "my_captions.txt").write_text(captions, encoding="utf-8")
    (root / "my_queries.txt").write_text(captions, encoding="utf-8")
    if "data/{00000..00001}.tar" in text:
        from train_support import make_plain_shards

        make_plain_shards(root / "data", num_shards=2, per_shard=12)
    if "mobileclip_s0.pt" in text:  # a local checkpoint file (OpenCLIP layout; Apple's V1 loads too)
        import open_clip
        import torch

        torch.manual_seed(0)
        torch.save(open_clip.create_model("MobileCLIP-S0").state_dict(), root / "mobileclip_s0.pt")


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """An offline Hub cache, filled on demand with generated weights for (model, tag)."""
    cache = tmp_path_factory.mktemp("hub") / "cache"
    cache.mkdir()
    made: set[str] = set()

    def ensure(spec: str) -> None:
        if spec in made:
            return
        import open_clip
        import torch
        from hub_cache import write_state_dict

        from mobileclip2.compat.factory import hub_files_of_tag

        name, tag = spec.split("/")
        repo_id, names = hub_files_of_tag(name, tag)
        torch.manual_seed(0)
        write_state_dict(cache, repo_id, names[0], open_clip.create_model(name).state_dict())
        made.add(spec)

    return cache, ensure


def _environment(cache: Path) -> dict[str, str]:
    from hub_cache import offline_env

    env = {**os.environ, **offline_env(cache), "PYTHONUNBUFFERED": "1"}
    env["MOBILECLIP2_CACHE"] = str(cache.parent / "graphs")  # optimize(backend=...)'s graphs: not in ~
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(block: Block, code: str, cwd: Path, env: dict[str, str]) -> None:
    if block.language == "python":
        command = [sys.executable, "-c", code]
    else:
        command = ["bash", "-euo", "pipefail", "-c", code]
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, (
        f"{block.where} ({block.language}) failed with exit {proc.returncode}:\n{code}\n"
        f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )


def _doc_params():
    params = []
    for path in DOCUMENTS:
        blocks = blocks_of(path)
        if not blocks:
            continue
        for slow in (False, True):
            chosen = [b for b in blocks if b.slow == slow]
            if chosen:
                marks = [pytest.mark.slow] if slow else []
                params.append(
                    pytest.param(path, slow, id=f"{path.name}{'-slow' if slow else ''}", marks=marks)
                )
    return params


@pytest.mark.parametrize("path, slow", _doc_params())
def test_document_snippets_run_as_written(path, slow, hub_cache, tmp_path, record_property):
    """Runs the document's blocks of this tier in order; the slow tier reruns the default blocks
    before its own, so that a slow block can use what a fast one wrote."""
    cache, ensure = hub_cache
    workspace = tmp_path / "work"
    workspace.mkdir()
    _workspace_inputs(workspace, path.read_text(encoding="utf-8"))
    env = _environment(cache)
    skipped, ran, python_so_far = [], 0, ""
    for block in blocks_of(path):
        if block.slow and not slow:
            continue
        if block.skip:
            skipped.append(f"{block.where}: {block.skip}")
            continue
        for spec in block.hub:
            ensure(spec)
        code = block.code
        if block.language == "python":
            code = (python_so_far + code) if block.continues else code
            python_so_far = code
        _run(block, code, workspace, env)
        ran += 1
    record_property("doc_blocks_skipped", skipped)
    print(f"{path.name}: {ran} blocks ran, {len(skipped)} skipped" + "".join(f"\n  {s}" for s in skipped))


def test_every_directive_is_known_and_every_skip_has_a_reason():
    for path in DOCUMENTS:
        for block in blocks_of(path):  # parse errors raise here
            assert block.skip is None or block.skip != "no reason given", block.where


def test_the_parser_finds_blocks_and_directives(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n<!-- doctest: skip needs a GPU -->\n```python\nimport torch\n```\n\n"
        "```json\n{}\n```\n<!-- doctest: slow; hub MobileCLIP2-S0/dfndr2b -->\n\n```bash\necho hi\n```\n",
        encoding="utf-8",
    )
    blocks = blocks_of(page)
    assert [(b.language, b.skip, b.slow, b.hub) for b in blocks] == [
        ("python", "needs a GPU", False, []),
        ("bash", None, True, ["MobileCLIP2-S0/dfndr2b"]),
    ]
    with pytest.raises(ValueError, match="unknown doctest directive 'skipp'"):
        parse_directive("skipp x", blocks[0])


def test_ci_runs_exactly_readmes_install_and_test_commands():
    """.ci/run is README's install line and its two test commands, in that order (and no other pytest)."""
    readme = {b.code.strip() for b in blocks_of(REPO / "README.md") if b.skip and ".ci/run" in b.skip}
    commands = [line for block in readme for line in block.splitlines()]
    assert any(c.startswith("pip install") for c in commands) and sum("pytest" in c for c in commands) == 2
    script = [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    ordered = [line for line in script if line in commands]
    install = next(c for c in commands if c.startswith("pip install"))
    tests = [c for c in commands if "pytest" in c]
    assert ordered == [install, *tests], ordered
    assert [line for line in script if "pytest" in line and not line.startswith("#")] == tests

"""Compatibility matrix: every model name under every supported open_clip x timm pair.

    python tools/matrix.py                 # full matrix -> docs/compatibility.md
    python tools/matrix.py --pairs 2.24.0:0.9.16 3.3.0:1.0.31 --models MobileCLIP2-S0
    python tools/matrix.py --open-clip-src ~/open_clip/src --timm-src ~/pytorch-image-models \
        --models MobileCLIP2-S0 MobileCLIP-S0   # main branches: their own section of the doc

Each pair is installed once with `pip install --no-deps --target .cache/compat/...` beside the
one shared torch (tools/compat_env.py). References come from this interpreter's open_clip/timm
(the newest pair); each pair then builds every name through its own factory, loading the
reference weights through the name's pretrained tag from an offline Hub cache, and is compared
with the reference (tools/equivalence_support.py). Pairs run two at a time (two worker processes,
one model's weights on disk), which bounds memory and disk. Pairs whose open_clip declares a timm
requirement the timm version violates are the pairs pip itself refuses; they are listed, not run.

With --open-clip-src / --timm-src the candidate is the source checkouts (open_clip's `src/`, timm's
repository root) put first on PYTHONPATH instead of an installed pair; the result replaces only the
"source checkouts" section of the document (commit and date from git, or --open-clip-commit /
--timm-commit when the directory is not a git checkout). A full run keeps that section, and every run
rewrites the table of upstream internals from the code (mobileclip2.compat.surface).
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Siblings in tools/ (the script's own directory is first on sys.path when run as a file).
from compat_env import checkout_revision, ensure_pair  # noqa: E402
from equivalence_support import Candidate, default_cases, problems, run_equivalence  # noqa: E402

OPEN_CLIP_VERSIONS = ["2.24.0", "2.26.1", "2.29.0", "2.32.0", "3.0.0", "3.1.0", "3.2.0", "3.3.0"]
TIMM_VERSIONS = ["0.9.16", "1.0.9", "1.0.19", "1.0.31"]
PAIRS_AT_ONCE = 2  # concurrent workers: each holds one model (up to ~2 GB for L-14 / S4) in memory


def timm_requirement(open_clip_version: str, timm_version: str) -> str:
    """The timm specifier the open_clip release declares (read from its installed METADATA)."""
    target = ensure_pair(open_clip_version, timm_version)
    metadata = next(target.glob("open_clip_torch-*.dist-info")) / "METADATA"
    for line in metadata.read_text().splitlines():
        if line.startswith("Requires-Dist: timm") and "extra ==" not in line:
            return line.split(":", 1)[1].strip()[len("timm") :].strip()
    return ""


def pip_refuses(open_clip_version: str, timm_version: str) -> str | None:
    """Reason pip's resolver would reject the pair, or None when it accepts it."""
    from packaging.specifiers import SpecifierSet

    spec = timm_requirement(open_clip_version, timm_version)
    if spec and timm_version not in SpecifierSet(spec):
        return f"open_clip_torch {open_clip_version} requires timm{spec}"
    return None


def cell(result: dict, entry: dict) -> tuple[str, str]:
    """(short grid code, failure detail or '') for one model under one pair."""
    found = problems(result, entry)
    if found:
        return "FAIL", "; ".join(found)[:300]
    code = {
        (False, False): "native",
        (True, True): "backfilled",
        (True, False): "config",
        (False, True): "backbone",
    }
    return code[(bool(result["config_backfilled"]), bool(result["backbone_backfilled"]))], ""


LEGEND = (
    "Cells: `native` = open_clip's config and timm's backbone were used; `backfilled` = ours for both; "
    "`config` = our config on timm's backbone; `backbone` = open_clip's config on our backbone; "
    "`FAIL` = see the failures list. Every non-FAIL cell matched the reference."
)


SECTION = "<!-- {name}:{edge} -->"


def section(text: str, name: str) -> str | None:
    """The body between a section's markers in `text`, or None when it has none."""
    start, end = SECTION.format(name=name, edge="start"), SECTION.format(name=name, edge="end")
    if start not in text or end not in text:
        return None
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")


HEADINGS = {
    "main": "## open_clip and timm main (source checkouts)",
    "internals": "## Upstream internals we touch",
}


def with_section(text: str, name: str, body: str) -> str:
    """`text` with the section's body replaced (or the section, under its heading, appended)."""
    start, end = SECTION.format(name=name, edge="start"), SECTION.format(name=name, edge="end")
    block = f"{start}\n{body.strip(chr(10))}\n{end}"
    if section(text, name) is None:
        return text.rstrip("\n") + "\n\n" + HEADINGS[name] + "\n\n" + block + "\n"
    head, rest = text.split(start, 1)
    return head + block + rest.split(end, 1)[1]


def internals_section() -> str:
    from mobileclip2.compat.surface import render_markdown

    return render_markdown()


def grid(results: dict, models: list[str], label=lambda pair: pair) -> tuple[list[str], list[str]]:
    """(table lines, failure lines) for `results` {pair: {model: (code, detail)}}."""
    lines = [
        "| open_clip | timm | " + " | ".join(models) + " |",
        "|---|---|" + "---|" * len(models),
    ]
    failures = []
    for pair, per_model in results.items():
        oc, tm = label(pair)
        lines.append(f"| {oc} | {tm} | " + " | ".join(per_model[name][0] for name in models) + " |")
        failures.extend(
            f"- {oc} + {tm}, {name}: {per_model[name][1]}" for name in models if per_model[name][1]
        )
    return lines, failures


def render(results: dict, refused: dict, models: list[str], seconds: float, command: str, kept: str) -> str:
    import open_clip.version
    import timm
    import torch

    lines = [
        "# Compatibility matrix",
        "",
        "Generated by `tools/matrix.py`; do not edit by hand. Each cell: the model, built by name "
        "through that",
        "pair's own `open_clip.create_model_and_transforms(name, pretrained=tag)` "
        "(weights from an offline Hub",
        "cache), matches the reference built by open_clip "
        f"{open_clip.version.__version__} + timm {timm.__version__} on the same random weights "
        "(features atol 1e-5,",
        "identical tokens and preprocessing).",
        "",
        f"- command: `{command}`",
        f"- machine: {platform.machine()}, {platform.system()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, torch {torch.__version__}",
        f"- wall time: {seconds / 60:.1f} min for {len(results)} pairs x {len(models)} models",
        "",
        LEGEND,
        "",
    ]
    table, failures = grid(results, models)
    lines += [*table, ""]
    if failures:
        lines += ["## Failures", "", *failures, ""]
    if refused:
        lines += ["## Pairs pip refuses (not run)", ""]
        lines.extend(f"- open_clip_torch {a} + timm {b}: {reason}" for (a, b), reason in refused.items())
        lines.append("")
    text = "\n".join(lines)
    if kept:
        text = with_section(text, "main", kept)
    text = text.rstrip("\n") + "\n\n" + (Path(__file__).parent / "compatibility_notes.md").read_text()
    return with_section(text, "internals", internals_section())


def render_sources(
    results: dict, versions: dict, revisions: dict, models: list[str], seconds: float, command: str
) -> str:
    """The "source checkouts" section: one row per run of --open-clip-src / --timm-src."""
    import open_clip.version
    import timm
    import torch

    def label(pair):
        return tuple(
            f"{versions.get(package, '?')} (main {revisions[package]})"
            if package in revisions
            else "installed"
            for package in ("open_clip", "timm")
        )

    table, failures = grid(results, models, label)
    lines = [
        "The same comparison with open_clip / timm imported from source checkouts of their main branches "
        f"(reference: open_clip {open_clip.version.__version__} + timm {timm.__version__}). Only the names "
        "below were run.",
        "",
        f"- command: `{command}`",
        f"- machine: {platform.machine()}, {platform.system()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, torch {torch.__version__}; wall time {seconds / 60:.1f} min",
        "",
        *table,
    ]
    if failures:
        lines += ["", "Failures:", "", *failures]
    return "\n".join(lines)


def run_sources(args, cases: list[tuple[str, str]], models: list[str], command: str) -> int:
    """The matrix row of source checkouts; rewrites only that section (and the internals table)."""
    sources, revisions = [], {}
    for package, path, given in (
        ("open_clip", args.open_clip_src, args.open_clip_commit),
        ("timm", args.timm_src, args.timm_commit),
    ):
        if path:
            path = Path(path).expanduser().resolve()
            if not (path / package / "__init__.py").is_file():
                raise SystemExit(
                    f"{path} holds no {package}/__init__.py: pass the directory to import it from"
                )
            sources.append(str(path))
            revisions[package] = given or checkout_revision(path) or "unknown commit"
    candidate = Candidate(("main", "main"), sources=tuple(sources))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mobileclip2-matrix-") as tmp:
        run = run_equivalence(Path(tmp), cases, [candidate])
    try:
        result = run.result(candidate)
        versions = {"open_clip": result["open_clip"], "timm": result["timm"]}
        results = {candidate.pair: {name: cell(result["models"][name], run.entries[name]) for name in models}}
    except Exception as exc:  # noqa: BLE001 - a broken checkout is a table row, not a crash
        versions = {}
        results = {candidate.pair: {name: ("FAIL", str(exc)[:300]) for name in models}}
    for name in models:
        print(f"   {name:<26} {' '.join(results[candidate.pair][name]).strip()}", flush=True)
    body = render_sources(results, versions, revisions, models, time.perf_counter() - started, command)
    out = Path(args.out)
    text = out.read_text() if out.exists() else ""
    out.write_text(with_section(with_section(text, "main", body), "internals", internals_section()))
    failed = sum(code == "FAIL" for code, _ in results[candidate.pair].values())
    print(f"{len(models) - failed} passed, {failed} failed")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", nargs="*", help="OPEN_CLIP:TIMM pairs (default: the full declared matrix)")
    parser.add_argument("--models", nargs="*", help="model names (default: every name in the tag table)")
    parser.add_argument("--out", default=str(REPO_ROOT / "docs" / "compatibility.md"))
    parser.add_argument(
        "--open-clip-src", metavar="DIR", help="open_clip source checkout's import root (src/)"
    )
    parser.add_argument(
        "--timm-src", metavar="DIR", help="timm source checkout's import root (the repository)"
    )
    parser.add_argument("--open-clip-commit", help="commit and date to record when DIR is not a git checkout")
    parser.add_argument("--timm-commit", help="commit and date to record when DIR is not a git checkout")
    args = parser.parse_args(argv)

    cases = [case for case in default_cases() if not args.models or case[0] in args.models]
    models = [name for name, _ in cases]
    command = shlex.join(["python", "tools/matrix.py", *sys.argv[1:]])
    if args.open_clip_src or args.timm_src:
        return run_sources(args, cases, models, command)
    pairs = (
        [tuple(p.split(":")) for p in args.pairs]
        if args.pairs
        else list(itertools.product(OPEN_CLIP_VERSIONS, TIMM_VERSIONS))
    )
    started = time.perf_counter()
    refused = {pair: reason for pair in pairs if (reason := pip_refuses(*pair))}
    results = {}
    runnable = [pair for pair in pairs if pair not in refused]
    for start in range(0, len(runnable), PAIRS_AT_ONCE):
        batch = runnable[start : start + PAIRS_AT_ONCE]
        print("== " + ", ".join(f"open_clip {oc} + timm {tm}" for oc, tm in batch), flush=True)
        with tempfile.TemporaryDirectory(prefix="mobileclip2-matrix-") as tmp:
            run = run_equivalence(Path(tmp), cases, [Candidate(pair) for pair in batch])
        for pair in batch:
            try:
                per_model = run.result(Candidate(pair))["models"]
                results[pair] = {name: cell(per_model[name], run.entries[name]) for name in models}
            except Exception as exc:  # noqa: BLE001 - a broken pair is a table row, not a crash
                results[pair] = {name: ("FAIL", str(exc)[:300]) for name in models}
            print(f"-- open_clip {pair[0]} + timm {pair[1]}", flush=True)
            for name in models:
                print(f"   {name:<26} {' '.join(results[pair][name]).strip()}", flush=True)
    seconds = time.perf_counter() - started
    out = Path(args.out)
    kept = section(out.read_text(), "main") if out.exists() else None
    out.write_text(render(results, refused, models, seconds, command, kept or ""))
    failed = sum(code == "FAIL" for per_model in results.values() for code, _ in per_model.values())
    print(
        f"{sum(len(v) for v in results.values()) - failed} passed, {failed} failed; "
        f"{len(refused)} pairs refused by pip"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""What the startup hook (mobileclip2-autoload.pth -> mobileclip2._autoload) costs every interpreter.

The hook runs in every Python process of an environment that has this package installed, so it
must stay nearly free and never import torch. This measures, per fresh interpreter
(``python -X importtime -c pass``, run ``--runs`` times, each process alone):

* the hook's own cumulative import time (the ``mobileclip2*`` lines of ``-X importtime``);
* the interpreter's whole start (the ``site`` line, which includes the hook);
* their ratio per run, reported as the median of the per-run ratios;

and checks itself: every run must show the hook and no torch/numpy/open_clip/timm import.

    python benchmarks/startup.py                 # print the numbers
    python benchmarks/startup.py --runs 50 --write   # and record them in docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
BEGIN, END = "<!-- startup:begin -->", "<!-- startup:end -->"
HEAVY = ("torch", "numpy", "open_clip", "timm")


def one_start(python: str) -> tuple[int, int]:
    """(hook cumulative µs, site cumulative µs) of one fresh interpreter; raises if the hook is
    missing or something heavy was imported."""
    proc = subprocess.run(
        [python, "-X", "importtime", "-c", "pass"], capture_output=True, text=True, cwd="/", check=True
    )
    rows = []
    for line in proc.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if match:
            rows.append((int(match.group(2)), match.group(4)))
    names = {name for _, name in rows}
    heavy = sorted(name for name in names if name.split(".")[0] in HEAVY)
    if heavy:
        raise SystemExit(f"the startup hook imported {heavy}: it must stay import-free")
    ours = [us for us, name in rows if name.startswith("mobileclip2")]
    site = [us for us, name in rows if name == "site"]
    if not ours or not site:
        raise SystemExit("the startup hook did not run: is mobileclip2 installed (pip install -e .)?")
    return max(ours), max(site)


def render(hook: list[int], site: list[int], command: str) -> str:
    ratios = [h / s for h, s in zip(hook, site)]
    return "\n".join(
        [
            BEGIN,
            "### Interpreter start: the autoload hook",
            "",
            f"`{command}` on {platform.platform()} ({platform.processor() or platform.machine()}), "
            f"Python {platform.python_version()}, {datetime.date.today().isoformat()}, "
            f"{len(hook)} fresh interpreters.",
            "",
            "| hook (median) | whole `site` start (median) | hook / start (median of per-run ratios) |",
            "|---|---|---|",
            f"| {statistics.median(hook) / 1000:.2f} ms | {statistics.median(site) / 1000:.2f} ms "
            f"| {statistics.median(ratios):.1%} |",
            END,
        ]
    )


def write(section: str) -> None:
    text = DOC.read_text() if DOC.exists() else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    DOC.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--write", action="store_true", help=f"record the result in {DOC.name}")
    args = parser.parse_args(argv)
    hook, site = zip(*(one_start(args.python) for _ in range(args.runs)))
    command = "python benchmarks/startup.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    section = render(list(hook), list(site), command.strip())
    print(section)
    if args.write:
        write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())

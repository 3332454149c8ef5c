"""Other open_clip/timm versions for tests, installed beside the one shared torch.

`pip install --no-deps --target DIR open_clip_torch==X timm==Y` gives a directory that, put first
on PYTHONPATH, shadows the site-packages copies while reusing torch, torchvision and every
other dependency. Directories are cached under `.cache/compat/` in the repository so that
repeated runs (and the matrix tool) install each pair once.

Unreleased upstreams come the same way without installing: a source checkout's import directory
(open_clip's `src/`, timm's repository root) put first on PYTHONPATH. `MOBILECLIP2_OPEN_CLIP_SRC` /
`MOBILECLIP2_TIMM_SRC` name them for the tests marked `upstream_main` (`source_paths`).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]  # tools/ -> repository root
CACHE_ROOT = Path(os.environ.get("MOBILECLIP2_COMPAT_CACHE", REPO_ROOT / ".cache" / "compat"))


def _pins_from_setup_cfg(option: str, operator: str) -> tuple[str, str]:
    """(open_clip_torch, timm) versions pinned with ``operator`` in setup.cfg's ``option`` (one source)."""
    import configparser
    import re

    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "setup.cfg", encoding="utf-8")
    section, _, key = option.rpartition(".")
    text = parser.get(section, key)
    found = {}
    for package in ("open_clip_torch", "timm"):
        match = re.search(rf"^\s*{package}\s*{re.escape(operator)}\s*([\w.]+)", text, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"setup.cfg [{section}] {key} has no '{package}{operator}...' line")
        found[package] = match.group(1)
    return found["open_clip_torch"], found["timm"]


# The oldest supported pair is install_requires' lower bounds; the reference pair is the test extra's pins.
OLDEST_PAIR = _pins_from_setup_cfg("options.install_requires", ">=")
NEWEST_PAIR = _pins_from_setup_cfg("options.extras_require.test", "==")


def ensure_target(name: str, requirements: list[str]) -> Path:
    """`pip install --no-deps --target CACHE_ROOT/name *requirements` once (file-locked for parallel
    callers)."""
    target = CACHE_ROOT / name
    marker = target / ".installed"
    if marker.exists():
        return target
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            command = [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--target",
                str(target),
            ]
            subprocess.run([*command, *requirements], check=True)
            marker.write_text(json.dumps(requirements))
    return target


def ensure_pair(open_clip_version: str, timm_version: str) -> Path:
    """An open_clip/timm pair beside the shared torch, installed once."""
    return ensure_target(
        f"open_clip-{open_clip_version}_timm-{timm_version}",
        [f"open_clip_torch=={open_clip_version}", f"timm=={timm_version}"],
    )


SOURCE_ENV = {"open_clip": "MOBILECLIP2_OPEN_CLIP_SRC", "timm": "MOBILECLIP2_TIMM_SRC"}


def source_paths() -> dict[str, Path]:
    """{"open_clip": dir, "timm": dir} for the source checkouts the environment names (either may be
    absent); each dir is what goes on PYTHONPATH (the directory holding the package)."""
    found = {}
    for package, variable in SOURCE_ENV.items():
        value = os.environ.get(variable)
        if value:
            path = Path(value).expanduser().resolve()
            if not (path / package / "__init__.py").is_file():
                raise RuntimeError(
                    f"{variable}={value} holds no {package}/__init__.py (point it at the import root)"
                )
            found[package] = path
    return found


def checkout_revision(path: Path) -> str:
    """'<short commit>, <commit date>' of the git checkout holding `path`, or '' when it is not one."""
    proc = subprocess.run(
        ["git", "-C", str(path), "log", "-1", "--format=%h, %cd", "--date=short"],
        capture_output=True,
        text=True,
    )
    return proc.stdout.strip() if proc.returncode == 0 else ""


def env_for(target: Path | list[Path] | None, **extra: str) -> dict[str, str]:
    """Environment for a subprocess that sees `target` (one directory or several, in order) before
    site-packages."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT)]
    if target is not None:
        targets = target if isinstance(target, list) else [target]
        paths[:0] = [str(path) for path in targets]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def run_python(target: Path | list[Path] | None, args: list[str], timeout: float = 900, **extra_env: str):
    """Run `python args...` with the pair at `target` first on the path; returns CompletedProcess."""
    return subprocess.run(
        [sys.executable, *args],
        env=env_for(target, **extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(REPO_ROOT),
    )

"""Startup hook: run plugin entry points right after ``open_clip`` (or ``timm``) is first imported.

open_clip has no plugin discovery of its own, so installing this distribution also installs
``mobileclip2-autoload.pth``, whose single line imports this module at interpreter start.
That must stay nearly free (budget: < 5 ms, no torch), so this module only places a finder
at the front of ``sys.meta_path``. The finder does nothing until ``open_clip`` or ``timm`` is
imported; then, once that module has finished executing, it loads and calls every entry point
of the matching group (``open_clip.plugins`` / ``timm.plugins``) exactly once.

Rules it keeps: ``MOBILECLIP2_AUTOLOAD=0`` turns it off; a failing plugin warns once with its
cause and never breaks the import; if open_clip already discovers plugins itself (an upstream
release with ``open_clip.load_plugins``, see ``patches/``), the hook steps aside.
"""

import os
import sys

ENV_SWITCH = "MOBILECLIP2_AUTOLOAD"
# First import of the key module runs the entry points of the value group.
WATCHED_MODULES = {"open_clip": "open_clip.plugins", "timm": "timm.plugins"}
# Marks our finder on sys.meta_path across reloads of this module (a reload makes a new class, so
# isinstance cannot recognise the finder an earlier copy installed).
FINDER_MARK = "__mobileclip2_post_import_finder__"

_groups_run: set = globals().get("_groups_run", set())  # kept across importlib.reload


def autoload_enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def _unique_entry_points(group: str) -> list:
    """Entry points of `group`, once each even if a distribution is visible twice on sys.path."""
    from importlib.metadata import entry_points

    seen = set()
    unique = []
    for entry_point in entry_points(group=group):
        key = (entry_point.name, entry_point.value)
        if key not in seen:
            seen.add(key)
            unique.append(entry_point)
    return unique


def run_entry_points(group: str) -> list:
    """Load and call every entry point of `group`, once per process; returns the names that ran.

    A plugin that raises is reported with a single RuntimeWarning naming it and its cause, and
    the remaining plugins still run: one broken plugin must not break ``import open_clip``.
    """
    if group in _groups_run:
        return []
    _groups_run.add(group)
    ran = []
    for entry_point in _unique_entry_points(group):
        try:
            entry_point.load()()
        except Exception as exc:  # noqa: BLE001 - isolation is the point
            import warnings

            warnings.warn(
                f"{group} plugin {entry_point.name!r} ({entry_point.value}) failed and was skipped: "
                f"{type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            ran.append(entry_point.name)
    return ran


class _RunGroupAfterExec:
    """Loader proxy: executes the real loader, then runs the watched module's plugin group."""

    def __init__(self, loader, group: str):
        self._loader = loader
        self._group = group

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        # Put the real loader back first so inspect/importlib.resources see the usual object.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        from .compat.plugins import upstream_discovers_plugins

        if not upstream_discovers_plugins(module):
            run_entry_points(self._group)

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


def _is_our_finder(finder) -> bool:
    return getattr(finder, FINDER_MARK, False)


class PostImportFinder:
    """Meta-path finder that only wraps the loader of the watched top-level modules."""

    def find_spec(self, fullname, path=None, target=None):
        group = WATCHED_MODULES.get(fullname)
        if group is None or group in _groups_run:
            return None
        spec = self._real_spec(fullname, path, target)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RunGroupAfterExec(spec.loader, group)
        return spec

    def _real_spec(self, fullname, path, target):
        for finder in sys.meta_path:
            if _is_our_finder(finder) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None


setattr(PostImportFinder, FINDER_MARK, True)


def arm() -> bool:
    """Install the finder once; returns True if it is (now) installed.

    Idempotent across ``importlib.reload`` of this module too: a finder an earlier copy installed is
    replaced by this copy's, so exactly one is ever on ``sys.meta_path``.
    """
    if not autoload_enabled():
        return False
    current = [finder for finder in sys.meta_path if _is_our_finder(finder)]
    if len(current) == 1 and type(current[0]) is PostImportFinder:
        return True
    sys.meta_path[:] = [finder for finder in sys.meta_path if not _is_our_finder(finder)]
    sys.meta_path.insert(0, PostImportFinder())
    return True


arm()

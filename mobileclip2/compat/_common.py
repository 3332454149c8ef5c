"""Shared helpers of the compat modules: installed versions, our wrappers' marks, the internals record.

Versions handled: open_clip_torch 2.24.0 - 3.3.0 and main (4.2.0.dev0): ``open_clip.__version__`` exists
only from 2.25 on, ``open_clip.version.__version__`` on all of them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

_WRAPPED_MARK = "__mobileclip2_wrapper__"


@dataclass(frozen=True)
class Internal:
    """One upstream name (or calling convention) we rely on that upstream does not document as API.

    Each compat module lists the ones it touches in ``INTERNALS``; ``compat.surface`` gathers them into
    the table of docs/compatibility.md, and tests/test_surface.py removes each one in turn to prove that
    only its ``feature`` is lost. ``target`` is a dotted path whose leading part is an importable module.
    """

    target: str
    kind: str  # "private attribute", "module global", "replaced function", "signature", ...
    feature: str  # what stops working without it: a feature of mobileclip2.plugin.FEATURES, or a command
    versions: str  # where it is known to exist in this form
    why: str
    used_by: str = ""  # our module(s) outside compat that rely on it, when not the declaring module
    # True when register() installs a hook on it: removing it must skip exactly ``feature``, with one
    # warning, and leave registration and `mobileclip2 check` working (tests/test_surface.py).
    hook: bool = False


INTERNALS = (
    Internal(
        "open_clip.version.__version__",
        "module attribute",
        "version reports (warnings, mobileclip2 check)",
        "2.24.0 - main (open_clip.__version__ only from 2.25)",
        "the imported open_clip's version, also for a source checkout on PYTHONPATH",
    ),
)


def open_clip_version() -> str:
    """Imported open_clip's version (``open_clip.__version__`` only exists from 2.25 on)."""
    from open_clip.version import __version__

    return __version__


def timm_version() -> str:
    import timm

    return timm.__version__


def upstream_versions() -> str:
    """'open_clip X, timm Y' of the imported packages (a source checkout's, not the installed wheel's)."""
    found = []
    for name, read in (("open_clip", open_clip_version), ("timm", timm_version)):
        try:
            found.append(f"{name} {read()}")
        except ImportError:
            found.append(f"{name} not importable")
    return ", ".join(found)


def already_wrapped(fn: Callable) -> bool:
    """Whether ``fn`` is one of our wrappers (so installing a hook twice changes nothing)."""
    return getattr(fn, _WRAPPED_MARK, False)


def mark_wrapper(wrapper: Callable, wrapped: Callable) -> Callable:
    """Give ``wrapper`` the name, docs and ``__wrapped__`` of ``wrapped`` and our mark."""
    functools.update_wrapper(wrapper, wrapped)
    setattr(wrapper, _WRAPPED_MARK, True)
    return wrapper

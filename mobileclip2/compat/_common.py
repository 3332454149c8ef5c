"""Shared helpers of the compat modules: installed versions and the marks our wrappers carry.

Versions handled: open_clip_torch 2.24.0 - 3.3.0 (``open_clip.__version__`` exists only from 2.25 on,
``open_clip.version.__version__`` on all of them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

_WRAPPED_MARK = "__mobileclip2_wrapper__"


def open_clip_version() -> str:
    """Installed open_clip version; `open_clip.__version__` only exists from 2.25 on."""
    from open_clip.version import __version__

    return __version__


def already_wrapped(fn: Callable) -> bool:
    """Whether ``fn`` is one of our wrappers (so installing a hook twice changes nothing)."""
    return getattr(fn, _WRAPPED_MARK, False)


def mark_wrapper(wrapper: Callable, wrapped: Callable) -> Callable:
    """Give ``wrapper`` the name, docs and ``__wrapped__`` of ``wrapped`` and our mark."""
    functools.update_wrapper(wrapper, wrapped)
    setattr(wrapper, _WRAPPED_MARK, True)
    return wrapper

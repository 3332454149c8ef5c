"""Whether a Hugging Face Hub file can be had now: from the local cache, or from a Hub that answers.

With no network, huggingface_hub retries for about a minute (and logs every retry) before a
download fails. Pretrained tags are checked here first: a file in the local cache is fine; a file
that is not, with ``HF_HUB_OFFLINE`` set or no TCP connection to the Hub endpoint within a few
seconds, is reported at once. A reachable Hub changes nothing: the download then runs as usual.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Sequence
from urllib.parse import urlparse

__all__ = ["cached_file", "hub_endpoint", "hub_offline", "hub_reachable", "unavailable_reason"]

DEFAULT_TIMEOUT = 3.0


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set the way huggingface_hub reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether a TCP connection to the Hub endpoint (HF_ENDPOINT) opens within ``timeout`` seconds.

    Name resolution has no timeout of its own, so the attempt runs in a daemon thread that is
    abandoned after ``timeout`` seconds.
    """
    parsed = urlparse(hub_endpoint())
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    outcome: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=attempt, name="mobileclip2-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(outcome and outcome[0])


def cached_file(repo_id: str, filenames: Sequence[str], cache_dir: str | None = None) -> str | None:
    """The local path of the first of ``filenames`` in the Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    cache_dir = cache_dir or os.environ.get("HF_HUB_CACHE")
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        if isinstance(found, str):
            return found
    return None


def unavailable_reason(
    repo_id: str, filenames: Sequence[str], cache_dir: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> str | None:
    """Why none of ``filenames`` of ``repo_id`` can be had now, or None when one can (cached, or the
    Hub answers)."""
    if cached_file(repo_id, filenames, cache_dir) is not None:
        return None
    if hub_offline():
        return "not in the local cache, and HF_HUB_OFFLINE is set"
    if not hub_reachable(timeout):
        return f"not in the local cache, and {hub_endpoint()} could not be reached within {timeout:g} s"
    return None

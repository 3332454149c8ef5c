"""Load a model for inference the way the CLI commands (classify, export, bench) need it.

Two things open_clip's factory does not do for us:

* **Fail fast when weights cannot be fetched.** With no network, huggingface_hub retries for about
  a minute before open_clip's download fails. :func:`ensure_weights_available` checks the local
  Hugging Face cache first and otherwise probes the Hub endpoint with a short TCP connect, so an
  unreachable Hub becomes mobileclip2.errors.WeightsUnavailableError within seconds.

Local checkpoint files get the model's own preprocessing from the factory itself (compat's
create_model hook); :func:`preprocess_source` only says where the preprocessing came from, for
export sidecars and messages.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

__all__ = [
    "LoadedModel",
    "check_device",
    "ensure_weights_available",
    "hub_endpoint",
    "hub_reachable",
    "load_for_inference",
    "preprocess_source",
]


def _is_local_file(pretrained: str | None) -> bool:
    return bool(pretrained) and os.path.isfile(os.path.expanduser(pretrained))


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face endpoint (HF_ENDPOINT) opens within ``timeout`` s.

    Name resolution has no timeout of its own, so the attempt runs in a daemon thread and is
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


def ensure_weights_available(model_name: str, pretrained: str | None, timeout: float = 3.0) -> None:
    """Raise WeightsUnavailableError quickly when ``pretrained`` names Hub weights that cannot be had.

    Nothing to check for no weights, a local file, or a tag that is not on the Hub (open_clip then
    reports it). Otherwise: cached -> fine; not cached and offline (HF_HUB_OFFLINE) or the Hub not
    reachable within ``timeout`` seconds -> the same error open_clip's download path raises, without
    huggingface_hub's retries. Unknown names and tags raise the core's UnknownModelError /
    UnknownPretrainedTagError.
    """
    if not pretrained or _is_local_file(pretrained):
        return
    import open_clip

    from .compat.factory import check_model_and_tag
    from .compat.registry import hub_location, hub_weight_file_names
    from .errors import WeightsUnavailableError
    from .pretrained import hub_offline

    check_model_and_tag(model_name, pretrained)
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg or not cfg.get("hf_hub"):
        return
    repo_id, filename = hub_location(cfg)
    candidates = [filename]
    if cfg["hf_hub"].endswith("/"):  # open_clip tries the safetensors file of 'org/repo/' entries first
        candidates.insert(0, hub_weight_file_names()[1])
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return
    cache_dir = os.environ.get("HF_HUB_CACHE")
    for name in candidates:
        if isinstance(try_to_load_from_cache(repo_id, name, cache_dir=cache_dir), str):
            return
    offline = hub_offline()
    if offline or not hub_reachable(timeout):
        cause = ConnectionError(
            "not in the local cache, and HF_HUB_OFFLINE is set"
            if offline
            else f"not in the local cache, and no connection to {hub_endpoint()} within {timeout:g} s"
        )
        raise WeightsUnavailableError(f"hf://{repo_id}/{filename}", cause, offline=offline)


def preprocess_source(model_name: str, pretrained: str | None) -> str:
    """Where a model's preprocessing comes from when loaded with ``pretrained`` (for humans)."""
    from .pretrained import preprocess_defaults

    if pretrained and not _is_local_file(pretrained):
        return f"pretrained tag {pretrained!r}"
    if pretrained and model_name in preprocess_defaults():
        return f"the preprocessing of {model_name}'s pretrained tags (local checkpoint file)"
    return "open_clip defaults" + (" (no weights loaded)" if not pretrained else "")


@dataclass
class LoadedModel:
    """A model in eval mode with its transform, tokenizer and the preprocessing it expects."""

    name: str
    pretrained: str | None
    model: Any
    preprocess: Any
    tokenizer: Any
    preprocess_cfg: dict[str, Any] = field(default_factory=dict)
    preprocess_source: str = ""


def check_device(device: str) -> str:
    """Refuse a device this machine cannot run on, before any model is built.

    torch accepts 'cuda:3' on a machine with one GPU until the first tensor moves; the error it
    then raises says nothing about the flag that caused it.
    """
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"{device!r} is not a device name ({error}); use 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: no CUDA GPU is available here; use 'cpu'")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(
                f"device {device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
            )
    if parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r}: Apple MPS is not available here; use 'cpu'")
    return device


def load_for_inference(
    model_name: str, pretrained: str | None, timeout: float = 3.0, device: str = "cpu"
) -> LoadedModel:
    """open_clip.create_model_and_transforms(..., pretrained) after the fast checks above, in eval
    mode on ``device`` (checked first, see check_device)."""
    import open_clip

    check_device(device)
    ensure_weights_available(model_name, pretrained, timeout=timeout)
    if pretrained and _is_local_file(pretrained):
        pretrained = os.path.expanduser(pretrained)
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=pretrained, device=device
    )
    model.eval()
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    return LoadedModel(
        name=model_name,
        pretrained=pretrained,
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(model_name),
        preprocess_cfg=cfg,
        preprocess_source=preprocess_source(model_name, pretrained),
    )

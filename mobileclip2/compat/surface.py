"""Every upstream internal mobileclip2 touches, gathered from the compat modules: one table, one source.

Versions handled: whatever each compat module's ``INTERNALS`` says (open_clip_torch 2.24.0 - 3.3.0 and
main, timm 0.9.16 - 1.0.31 and main, torch 2.1 - 2.14). Importing this module imports no upstream code.

An internal is a name or calling convention of open_clip / timm / torch / executorch that upstream does not
document as API, or a public function we replace at runtime: each one is a place where a new release can
break us. docs/compatibility.md holds :func:`render_markdown`'s table (tests/test_surface.py checks that
they are equal), and the removal test deletes each one in turn.

``RETIRED`` lists the touches the previous code had and this one avoids (with how), and ``ADDED`` the
targets that support for open_clip main brought in, so the count before and after is computed, not kept.
"""

from __future__ import annotations

import importlib

from ._common import Internal

# The compat modules that declare INTERNALS, in table order.
DECLARING_MODULES = (
    "registry",
    "text_tower",
    "factory",
    "coca",
    "open_clip_train",
    "ddp",
    "torch_ops",
    "block_types",
    "timm_layers",
    "export",
    "_common",
)

RETIRED = (
    Internal(
        "open_clip.factory._MODEL_CONFIGS",
        "private attribute",
        "model configs",
        "2.24.0 - main",
        "configs are added with the public open_clip.add_model_config(path)",
    ),
    Internal(
        "open_clip.factory._MODEL_CONFIG_PATHS",
        "private attribute",
        "model configs",
        "2.24.0 - main",
        "the public add_model_config appends to it itself",
    ),
    Internal(
        "open_clip.factory._natural_key",
        "private function",
        "model configs",
        "2.24.0 - main",
        "the public add_model_config keeps the registry sorted itself",
    ),
    Internal(
        "open_clip.factory.__file__",
        "package layout",
        "model configs",
        "2.24.0 - main",
        "open_clip's own model_configs/ directory is read by the tests only",
    ),
    Internal(
        "open_clip.coca_model._has_transformers",
        "private attribute",
        "CoCa sampling",
        "2.24.0 - 3.3.0; absent on main",
        "top_p / top_k run our loop on CoCa's public forward on every version",
    ),
    Internal(
        "open_clip.coca_model.GENERATION_TYPES",
        "module global",
        "CoCa sampling",
        "2.24.0 - 3.3.0; absent on main",
        "no longer filled in: our loop picks the warper itself",
    ),
    *(
        Internal(
            f"open_clip.coca_model.{name}",
            "module global",
            "CoCa sampling",
            "2.24.0 - 3.3.0; absent on main",
            "no longer written into open_clip's module: our loop uses compat.sampling directly",
        )
        for name in (
            "LogitsProcessorList",
            "MinLengthLogitsProcessor",
            "RepetitionPenaltyLogitsProcessor",
            "TopKLogitsWarper",
            "TopPLogitsWarper",
            "MaxLengthCriteria",
            "StoppingCriteriaList",
        )
    ),
)

# Targets this round added (absent from the code before it): support for open_clip main, and safe
# resuming (open_clip_train's pt_load).
ADDED = (
    "open_clip_train.main.pt_load",
    "open_clip.coca_model.CoCa.forward",
    "open_clip.coca_model.CoCa.pad_id",
    "open_clip.generation",
    "open_clip_train.main.create_task",
    "open_clip.task.CLIPTask",
    "open_clip.task.TrainingTask.prepare_distributed",
    "open_clip.transformer.Attention",
    "torch.distributed._composable.checkpoint",
)


def internals() -> tuple[Internal, ...]:
    """Every internal the compat modules declare, in table order (no upstream module is imported)."""
    found: list[Internal] = []
    for name in DECLARING_MODULES:
        found.extend(importlib.import_module(f"{__package__}.{name}").INTERNALS)
    return tuple(found)


def counts() -> tuple[int, int]:
    """(touches before this round's changes, touches now)."""
    now = len(internals())
    return now - len(ADDED) + len(RETIRED), now


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown() -> str:
    """The table of docs/compatibility.md (section "Upstream internals we touch")."""
    before, now = counts()
    lines = [
        f"{now} upstream internals (before this round: {before}; "
        f"{len(RETIRED)} retired, {len(ADDED)} added). Generated from the compat modules' `INTERNALS` "
        "(`python -m mobileclip2.compat.surface`); tests/test_surface.py checks this table and removes "
        "each internal a registration hook needs.",
        "",
        "| internal | kind | what stops working without it | known on | why | used by |",
        "|---|---|---|---|---|---|",
    ]
    for item in internals():
        used_by = item.used_by or "compat"
        lines.append(
            f"| `{item.target}` | {item.kind} | {_cell(item.feature)} | {_cell(item.versions)} | "
            f"{_cell(item.why)} | {used_by} |"
        )
    lines += ["", "Retired (no longer touched):", ""]
    lines += [f"- `{item.target}`: {item.why}" for item in RETIRED]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")

"""What a reinforce run has finished, and whether an output folder may be (re)used -- decided
before any teacher is loaded.

Layout of an output folder:

* ``config.json``: the DR config training reads (Apple's keys) plus ``request``, every argument
  that changes the bytes written. It is written (atomically) before any teacher loads and again,
  complete, once they have; a rerun whose ``request`` differs is refused.
* ``SHARD.tar``: the reinforced shards, committed whole (see storage.py).
* ``manifest/SHARD.tar.json``: one record per *finished* shard (input, samples, skipped keys with
  reasons, size, sha256, timings), written right after its shard is committed. A shard without a
  record, or whose file no longer matches its recorded size, is redone by a rerun.
* ``manifest.json``: every record plus the run summary, written by rank 0 at the end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ReinforceOutputError
from .storage import Output, shard_name

__all__ = ["Plan", "plan_run", "record_name"]

CONFIG = "config.json"
MANIFEST = "manifest.json"
RECORDS = "manifest"


def record_name(shard: str) -> str:
    return f"{RECORDS}/{shard}.json"


@dataclass
class Plan:
    """Inputs with their output names; which are finished already and which must be (re)done."""

    sources: list[str]
    names: list[str]
    finished: dict[str, dict] = field(default_factory=dict)  # name -> manifest record

    @property
    def pending(self) -> list[tuple[str, str]]:
        return [(src, name) for src, name in zip(self.sources, self.names) if name not in self.finished]

    def share(self, rank: int, world_size: int) -> list[tuple[str, str]]:
        """Rank ``rank``'s pending shards: every ``world_size``-th, so ranks get equal counts."""
        return self.pending[rank::world_size]


def output_names(sources: Sequence[str]) -> list[str]:
    """Output names, refusing two inputs that would write the same output shard."""
    seen: dict[str, str] = {}
    for source in sources:
        name = shard_name(source)
        if name in seen:
            raise ReinforceOutputError(
                f"inputs {seen[name]!r} and {source!r} would both be written as {name!r} in the output; "
                "each output shard keeps its input's file name, so reinforce inputs with equal names into "
                "different --output folders (or rename them)"
            )
        if name in {CONFIG, MANIFEST} or not name.endswith(".tar"):
            raise ReinforceOutputError(f"input {source!r} must be a .tar shard (output name {name!r})")
        seen[name] = source
    return list(seen)


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in keys if old.get(key) != new.get(key)]


def plan_run(sources: Sequence[str], output: Output, request: Mapping[str, Any], overwrite: bool) -> Plan:
    """Check the output folder against this run and list what is left to do; writes nothing.

    * same ``request`` in config.json: finished shards (record present, file of the recorded size,
      made from the same input) are skipped, the rest redone;
    * no config.json: every output shard must be absent;
    * ``overwrite``: everything is redone, whatever is there.
    """
    sources = list(sources)
    if not sources:
        raise ReinforceOutputError("no input shards given")
    names = output_names(sources)
    plan = Plan(sources, names)
    for source, name in zip(sources, names):
        if output.local and _same_file(source, output.path(name)):
            raise ReinforceOutputError(
                f"output shard {output.display(name)} would overwrite its input {source}"
            )
    if overwrite:
        return plan
    existing = output.read_json(CONFIG)
    if existing is None:
        present = [name for name in names if output.exists(name)]
        if present:
            raise ReinforceOutputError(
                f"{len(present)} output shards already exist in {output.url} without a reinforce config.json "
                f"(e.g. {present[0]!r}); they were not made by `mobileclip2 reinforce`, "
                "so nothing can be resumed. "
                "Choose another --output or pass --overwrite to replace them"
            )
        return plan
    old_request = existing.get("request") if isinstance(existing, dict) else None
    if old_request != dict(request):
        changes = (
            _differences(old_request or {}, request) if isinstance(old_request, dict) else ["(no request)"]
        )
        raise ReinforceOutputError(
            f"{output.display(CONFIG)} was written by a reinforce run with different arguments ("
            + "; ".join(changes[:6])
            + "). Rerun with the same arguments to resume, choose another --output, or pass --overwrite to "
            "redo every shard"
        )
    for source, name in zip(sources, names):
        record = output.read_json(record_name(name))
        if record is None:
            continue
        if record.get("input") != source:
            raise ReinforceOutputError(
                f"output shard {name!r} was made from {record.get('input')!r}, "
                f"this run reads it from {source!r}; "
                "use the same inputs to resume, or --overwrite"
            )
        if output.size(name) == record.get("bytes"):
            plan.finished[name] = record
    return plan


def _same_file(source: str, target: str) -> bool:
    import os

    if source.startswith("file://"):
        source = source[len("file://") :]
    if "://" in source or source.startswith("pipe:"):
        return False
    return os.path.abspath(source) == os.path.abspath(target)

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

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ReinforceOutputError
from .storage import Output, find_alias, shard_name

__all__ = ["Plan", "is_reinforce_config", "plan_run", "record_name", "request_digest"]

CONFIG = "config.json"
MANIFEST = "manifest.json"
RECORDS = "manifest"


def record_name(shard: str) -> str:
    return f"{RECORDS}/{shard}.json"


def request_digest(request: Mapping[str, Any]) -> str:
    """sha256 of the request: every shard record carries it, so a record left by a run with other
    arguments (an --overwrite of fewer inputs keeps the rest) is never taken for finished."""
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode("utf-8")).hexdigest()


def is_reinforce_config(config: Any) -> bool:
    """Whether a config.json was written by `mobileclip2 reinforce` (it has our request and signature)."""
    return (
        isinstance(config, dict)
        and isinstance(config.get("request"), dict)
        and str(config.get("created_by", "")).startswith("mobileclip2 ")
        and str(config.get("created_by", "")).endswith(" reinforce")
    )


def finished(record: Any, digest: str) -> bool:
    """Whether a shard record says the shard was made, by a run with the request of ``digest``
    (records written before the digest existed are trusted: their config.json matched)."""
    return (
        isinstance(record, dict)
        and record.get("status", "finished") == "finished"
        and record.get("request_sha256", digest) == digest
    )


@dataclass
class Plan:
    """Inputs with their output names; which are finished already and which must be (re)done."""

    sources: list[str]
    names: list[str]
    finished: dict[str, dict] = field(default_factory=dict)  # name -> manifest record
    replace_config: bool = False  # config.json is of a run with other arguments that wrote no shard

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


def _written_files(names: Sequence[str]) -> list[str]:
    return [*names, CONFIG, MANIFEST, *(record_name(name) for name in names)]


def plan_run(sources: Sequence[str], output: Output, request: Mapping[str, Any], overwrite: bool) -> Plan:
    """Check the output folder against this run and list what is left to do; writes nothing.

    * no input may be a file this run writes (real paths, URLs, ``pipe:`` commands);
    * a config.json not written by reinforce is refused, ``overwrite`` or not;
    * same ``request`` in config.json: finished shards (record of this request, file of the recorded
      size, made from the same input) are skipped, the rest redone;
    * another ``request``: refused, unless that run wrote no shard (its config.json is replaced);
    * no config.json: every output shard must be absent;
    * ``overwrite``: everything is redone.
    """
    sources = list(sources)
    if not sources:
        raise ReinforceOutputError("no input shards given")
    names = output_names(sources)
    plan = Plan(sources, names)
    alias = find_alias(sources, output, _written_files(names))
    if alias is not None:
        source, why = alias
        raise ReinforceOutputError(
            f"input {source} could be overwritten by this run's output in {output.url} ({why}); "
            "choose an --output folder that holds no input and is not the input folder under another name"
        )
    existing = output.read_json(CONFIG)
    if existing is not None and not is_reinforce_config(existing):
        raise ReinforceOutputError(
            f"{output.display(CONFIG)} was not written by `mobileclip2 reinforce` (it has no request "
            "or created_by of ours): the folder holds something else, which --overwrite must not "
            "delete. Choose another --output"
        )
    if overwrite:
        return plan
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
    if existing["request"] != dict(request):
        if _nothing_written(output, names):
            plan.replace_config = True
            return plan
        changes = _differences(existing["request"], request)
        raise ReinforceOutputError(
            f"{output.display(CONFIG)} was written by a reinforce run with different arguments ("
            + "; ".join(changes[:6])
            + "). Rerun with the same arguments to resume, choose another --output, or pass --overwrite to "
            "redo every shard"
        )
    digest = request_digest(request)
    for source, name in zip(sources, names):
        record = output.read_json(record_name(name))
        if not finished(record, digest):
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


def _nothing_written(output: Output, names: Sequence[str]) -> bool:
    """Whether the run that wrote config.json wrote no shard and no record (so its config may go)."""
    records = [entry for entry in output.listdir(RECORDS) if entry.endswith(".json")]
    return not records and not any(output.exists(name) for name in names)

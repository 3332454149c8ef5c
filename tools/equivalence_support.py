"""Equivalence runs shared by tests/test_equivalence.py and tools/matrix.py.

References: for each distinct model config, random weights built by the reference open_clip/timm
in this interpreter, reference outputs on fixed inputs, each tag's reference preprocessing of a
probe image, and an offline Hugging Face cache that serves those weights under each tag's real
repo id and file name. Candidates: persistent workers (tests/scripts/equivalence_worker.py), one
per open_clip/timm pair, that build every name through that pair's own factory and report how far
it is from the reference.

Why one config group at a time: full-size fp32 weights of every config together are ~6.4 GB, so
the driver writes one group's weights, lets every worker (running concurrently) load and compare
that group's names, and deletes the weights before the next group: at most one config's weights
are ever on disk.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from compat_env import NEWEST_PAIR, REPO_ROOT, ensure_pair, env_for
from hub_cache import offline_env, place_file, remove_file

from mobileclip2.compat.registry import hub_location
from mobileclip2.pretrained import pretrained_table

ATOL = 1e-5
CAPTIONS = ["a photo of a cat", "a diagram of a mobile network", "", "x"]
BIG = {
    "MobileCLIP-S3",
    "MobileCLIP-S4",
    "MobileCLIP-L-14",
    "MobileCLIP2-S3",
    "MobileCLIP2-S4",
    "MobileCLIP2-L-14",
}
WORKER_SCRIPT = REPO_ROOT / "tests" / "scripts" / "equivalence_worker.py"
STDERR_TAIL = 4000


@functools.cache
def _worker_module():
    """The worker script as a module (its transform description and feature normalization are the
    reference's too); loaded by path so that tools/matrix.py needs no tests/ on sys.path."""
    spec = importlib.util.spec_from_file_location("equivalence_worker", WORKER_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Candidate(NamedTuple):
    """An open_clip/timm pair to compare with the reference, optionally with forced backfill.

    ``sources`` (directories put first on PYTHONPATH, e.g. source checkouts of open_clip's and timm's
    main branches) replace the pip-installed pair; ``pair`` is then only a label.
    """

    pair: tuple[str, str]
    force_backfill: bool = False
    sources: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return "-".join(self.pair) + ("-forced" if self.force_backfill else "")

    def target(self) -> Path | list[Path] | None:
        """What goes first on the worker's PYTHONPATH (None: this interpreter's own pair)."""
        if self.sources:
            return [Path(path) for path in self.sources]
        return None if self.pair == NEWEST_PAIR else ensure_pair(*self.pair)


def default_cases() -> list[tuple[str, str]]:
    """(model name, first tag) for every name in the tag table."""
    return [(name, next(iter(tags))) for name, tags in pretrained_table().items()]


def config_groups(cases: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """`cases` grouped by identical model config (e.g. MobileCLIP-S4 / MobileCLIP2-S4), in first-seen order:
    each group shares one weights file and one set of reference outputs."""
    import open_clip

    groups: dict[str, list[tuple[str, str]]] = {}
    for name, tag in cases:
        groups.setdefault(json.dumps(open_clip.get_model_config(name), sort_keys=True), []).append(
            (name, tag)
        )
    return list(groups.values())


def write_probe(root: Path) -> Path:
    """A fixed random RGB image whose preprocessing every candidate must reproduce."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    probe = (torch.rand(240, 320, 3, generator=generator) * 255).to(torch.uint8).numpy()
    path = root / "probe.png"
    Image.fromarray(probe).save(path)
    return path


@dataclass
class ReferenceGroup:
    """One config group's files on disk: entries for the workers and what to delete afterwards."""

    entries: list[dict]
    weights: Path
    cache: Path
    hub_files: list[tuple[str, str]] = field(default_factory=list)
    references: list[Path] = field(default_factory=list)

    def remove(self) -> None:
        """Delete the weights, their cache entries and the per-name reference files."""
        for repo_id, filename in self.hub_files:
            remove_file(self.cache, repo_id, filename)
        self.weights.unlink(missing_ok=True)
        for path in self.references:
            path.unlink(missing_ok=True)


def build_reference_group(
    root: Path, cache: Path, index: int, group: list[tuple[str, str]], probe_path: Path
) -> ReferenceGroup:
    """Seeded random weights for the group's config (seed = `index`), reference outputs, each tag's
    reference preprocessing, and the weights placed in the Hub cache under every name's tag."""
    import open_clip
    from PIL import Image

    worker = _worker_module()
    first = group[0][0]
    torch.manual_seed(index)
    generator = torch.Generator().manual_seed(index)
    model = open_clip.create_model(first).eval()
    size = model.visual.image_size
    images = torch.rand(2, 3, *size, generator=generator)
    tokens = open_clip.get_tokenizer(first)(CAPTIONS)
    with torch.no_grad():
        image_features = model.encode_image(images)
        text_features = model.encode_text(tokens)
        logits = (
            model.logit_scale.exp() * worker.normalized(image_features) @ worker.normalized(text_features).T
        )
    outputs = dict(
        images=images,
        tokens=tokens,
        image_features=image_features,
        text_features=text_features,
        logits=logits,
        state_keys=sorted(model.state_dict()),
    )
    weights = root / f"weights_{index}.pt"
    partial = weights.with_suffix(".partial")
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, partial)
    os.replace(partial, weights)
    del model
    backbone = open_clip.get_model_config(first)["vision_cfg"]["timm_model_name"]
    reference_group = ReferenceGroup(entries=[], weights=weights, cache=cache)
    probe = Image.open(probe_path).convert("RGB")
    try:  # a failure part way leaves nothing of the group behind
        for name, tag in group:
            cfg = open_clip.get_pretrained_cfg(name, tag)
            transform = open_clip.image_transform(
                size,
                is_train=False,
                mean=cfg["mean"],
                std=cfg["std"],
                resize_mode=cfg["resize_mode"],
                interpolation=cfg["interpolation"],
            )
            reference_path = root / f"{name}.ref.pt"
            reference_group.references.append(reference_path)
            torch.save(dict(outputs, pixels=transform(probe)), reference_path)
            location = hub_location(cfg)
            reference_group.hub_files.append(location)
            place_file(cache, *location, weights)
            reference_group.entries.append(
                dict(
                    name=name,
                    tag=tag,
                    reference=str(reference_path),
                    captions=CAPTIONS,
                    probe_image=str(probe_path),
                    backbone=backbone,
                    transform=worker.describe_transform(transform),
                )
            )
    except BaseException:
        reference_group.remove()
        raise
    return reference_group


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-STDERR_TAIL:]
    except OSError:
        return "(no stderr file)"


class Worker:
    """One persistent equivalence worker process for one candidate (see the worker's protocol)."""

    def __init__(self, candidate: Candidate, root: Path, cache: Path, threads: int):
        target = candidate.target()
        self.candidate = candidate
        self.root = root
        self.stderr_path = root / f"worker_{candidate.label}.stderr"
        args = [sys.executable, str(WORKER_SCRIPT), "--threads", str(threads)]
        if candidate.force_backfill:
            args.append("--force-backfill")
        # stderr goes to a file: a pipe nobody reads would fill up and block the worker.
        with open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                cwd=str(REPO_ROOT),
                env=env_for(target, **offline_env(cache), MOBILECLIP2_AUTOLOAD="0"),
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.versions: dict | None = None
        self.requests = 0

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)  # end of stdout: the worker has exited

    def _fail(self, what: str) -> RuntimeError:
        self.kill()
        return RuntimeError(
            f"equivalence worker for open_clip {self.candidate.pair[0]} + timm {self.candidate.pair[1]}"
            f"{' (forced backfill)' if self.candidate.force_backfill else ''} {what} "
            f"(exit code {self.process.returncode}); its stderr ({self.stderr_path}) ends with:\n"
            f"{_tail(self.stderr_path)}"
        )

    def _answer(self, kind: str, timeout: float) -> str:
        """The rest of the next protocol line of `kind` ('ready' or 'done'); raises on death or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise self._fail(f"gave no '{kind}' answer within {timeout:.0f} s and was killed") from None
            if line is None:
                self.process.wait()
                raise self._fail(f"exited before its '{kind}' answer")
            marker, _, rest = line.strip().partition(" ")
            found, _, value = rest.partition(" ")
            if marker == _worker_module().MARKER and found == kind:
                return value

    def wait_ready(self, timeout: float) -> dict:
        self.versions = json.loads(self._answer("ready", timeout))
        return self.versions

    def send(self, entries: list[dict]) -> Path:
        """Ask for `entries` to be compared; returns the file the results will be written to."""
        self.requests += 1
        output = self.root / f"result_{self.candidate.label}_{self.requests}.json"
        request = dict(id=self.requests, entries=entries, output=str(output))
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except OSError:  # BrokenPipeError: it has exited
            self.process.wait()
            raise self._fail("exited before it could take a request") from None
        return output

    def receive(self, output: Path, timeout: float) -> dict:
        """The results of the last request, once the worker says it is done."""
        while int(self._answer("done", timeout)) != self.requests:
            pass
        results = json.loads(output.read_text())
        output.unlink()
        return results

    def close(self, timeout: float = 60) -> None:
        """End of input ends the worker; one that does not exit in time is killed."""
        try:
            self.process.stdin.close()
            self.process.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class EquivalenceRun:
    """Per-name manifest entries, and per candidate its results or the reason its worker failed."""

    entries: dict[str, dict] = field(default_factory=dict)
    results: dict[Candidate, dict] = field(default_factory=dict)
    failures: dict[Candidate, str] = field(default_factory=dict)

    def result(self, candidate: Candidate) -> dict:
        """{"open_clip", "timm", "models": {name: result}}; raises RuntimeError when its worker failed."""
        if candidate in self.failures:
            raise RuntimeError(self.failures[candidate])
        return self.results[candidate]


def run_equivalence(
    root: Path,
    cases: list[tuple[str, str]],
    candidates: list[Candidate],
    timeout: float = 1200,
) -> EquivalenceRun:
    """Compare every case under every candidate, all candidates' workers running at the same time.

    Per config group: build the reference and place its weights, send the group's entries to every
    live worker, wait for all answers, delete the weights. A worker that dies or exceeds `timeout`
    seconds (per start or request) is killed and recorded in `failures`; the others go on.
    """
    root = Path(root)
    cache = root / "hub"
    probe_path = write_probe(root)
    run = EquivalenceRun()
    threads = max(1, (os.cpu_count() or 1) // max(1, len(candidates)))
    workers: list[Worker] = []
    finished = False
    try:
        for candidate in candidates:
            try:
                workers.append(Worker(candidate, root, cache, threads))
            except (OSError, subprocess.CalledProcessError) as exc:  # e.g. the pair does not install
                run.failures[candidate] = f"equivalence worker for {candidate.label} did not start: {exc}"
        live = []
        for worker in workers:
            try:
                worker.wait_ready(timeout)
                live.append(worker)
                run.results[worker.candidate] = dict(worker.versions, models={})
            except RuntimeError as exc:
                run.failures[worker.candidate] = str(exc)
        for index, group in enumerate(config_groups(cases)):
            if not live:
                break
            reference = build_reference_group(root, cache, index, group, probe_path)
            try:
                run.entries.update((entry["name"], entry) for entry in reference.entries)
                sent = []
                for worker in live:
                    try:
                        sent.append((worker, worker.send(reference.entries)))
                    except RuntimeError as exc:
                        run.failures[worker.candidate] = str(exc)
                for worker, output in sent:
                    try:
                        run.results[worker.candidate]["models"].update(worker.receive(output, timeout))
                    except RuntimeError as exc:
                        run.failures[worker.candidate] = str(exc)
                live = [worker for worker in live if worker.candidate not in run.failures]
            finally:
                reference.remove()
        finished = True
    finally:
        for worker in workers:
            if finished:
                worker.close()
            else:  # an error or an interrupt in the driver: nothing is waited for
                worker.kill()
    for candidate in run.failures:
        run.results.pop(candidate, None)
    return run


def problems(result: dict, entry: dict) -> list[str]:
    """Why `result` does not match its reference entry (empty when equivalent)."""
    if "error" in result:
        return [result["error"]]
    found = []
    if not result["tokens_equal"]:
        found.append("tokenizer output differs")
    if not result["state_keys_equal"]:
        found.append("state_dict keys differ")
    for key, limit in (
        ("image_max_abs", ATOL),
        ("text_max_abs", ATOL),
        ("logits_max_abs", ATOL * 100),
        ("pixels_max_abs", 1e-6),
    ):
        if not result[key] <= limit:
            found.append(f"{key}={result[key]:.3g} > {limit:g}")
    if result["transform"] != entry["transform"]:
        found.append(f"preprocessing differs: {result['transform']} vs {entry['transform']}")
    return found

"""Exceptions that say what went wrong and what to do next.

Every class subclasses the exception type open_clip itself raises in the same situation
(mostly ``RuntimeError``), so existing ``except RuntimeError`` code keeps working while the
message gets better.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# Characters people swap when typing model names: letter O / digit 0, letters l, I / digit 1.
_CONFUSABLES = str.maketrans({"o": "0", "l": "1", "i": "1"})


def _skeleton(name: str) -> str:
    return name.lower().translate(_CONFUSABLES)


def close_matches(word: str, candidates: Iterable[str], limit: int = 5) -> list[str]:
    """Candidates that look like `word`, best first, treating O/0 and l/I/1 as near-identical.

    Ranking by the look-alike skeleton first means 'MobileCLIP2-SO' suggests 'MobileCLIP2-S0'
    before 'MobileCLIP2-S4'; plain case-insensitive similarity breaks ties.
    """
    candidates = list(dict.fromkeys(candidates))
    target, lowered = _skeleton(word), word.lower()
    scored = []
    for candidate in candidates:
        looks = difflib.SequenceMatcher(None, target, _skeleton(candidate)).ratio()
        spelled = difflib.SequenceMatcher(None, lowered, candidate.lower()).ratio()
        if max(looks, spelled) >= 0.6:
            scored.append((looks, spelled, candidate))
    scored.sort(key=lambda item: (-item[0], -item[1]))
    return [candidate for _, _, candidate in scored[:limit]]


class MobileCLIP2Error(Exception):
    """Base class of every error this package raises on purpose.

    ``cli_text``, where set, is the same message in the command line's words (``--pretrained PATH``
    instead of ``pretrained='/path/to/file'``); the ``mobileclip2`` command prints :meth:`for_cli`.
    """

    cli_text: str | None = None

    def for_cli(self) -> str:
        return self.cli_text or str(self)


class UsageError(MobileCLIP2Error, ValueError):
    """A call that lacks something it needs; ``cli_text`` says it in the command line's words."""

    def __init__(self, message: str, cli_text: str | None = None):
        super().__init__(message)
        self.cli_text = cli_text


class UnknownModelError(MobileCLIP2Error, RuntimeError):
    def __init__(self, name: str, known: Iterable[str], hint: str = ""):
        self.name = name
        self.suggestions = close_matches(name, known)
        hint = f" {hint}" if hint else ""
        if self.suggestions:
            hint += f" Did you mean: {', '.join(self.suggestions)}?"
        super().__init__(
            f"Unknown model name {name!r}.{hint} "
            "`open_clip.list_models()` lists every name; `mobileclip2 list` lists the MobileCLIP ones."
        )


class UnknownPretrainedTagError(MobileCLIP2Error, RuntimeError):
    def __init__(self, model_name: str, tag: str, valid_tags: Iterable[str]):
        self.model_name = model_name
        self.tag = tag
        self.valid_tags = sorted(valid_tags)
        valid = ", ".join(repr(t) for t in self.valid_tags) or "none"
        head = (
            f"{tag!r} is neither a pretrained tag of {model_name!r} nor an existing file. "
            f"Valid tags for {model_name!r}: {valid}."
        )
        own = (
            "To load your own weights, pass the path of a local checkpoint file "
            "(.pt, .pth, .bin or .safetensors)"
        )
        super().__init__(f"{head} {own} as `pretrained`.")
        self.cli_text = f"{head} {own} as --pretrained."


def _download_hint(source: str) -> str:
    if not source.startswith("hf://"):
        return f" ({source})"
    repo_file = source[len("hf://") :]
    repo, _, filename = repo_file.rpartition("/")
    return f" (`hf download {repo} {filename}`)"


class WeightsUnavailableError(MobileCLIP2Error, RuntimeError):
    """Pretrained weights that can be had neither from the local cache nor from their source."""

    def __init__(self, source: str, reason: str):
        self.source = source
        head = (
            f"Could not fetch pretrained weights {source!r}: {reason}. "
            f"Download it on a connected machine{_download_hint(source)}, then pass its path as"
        )
        tail = "or point HF_HUB_CACHE at a copy of a Hugging Face cache that holds it."
        super().__init__(f"{head} `pretrained='/path/to/file'`, {tail}")
        self.cli_text = f"{head} --pretrained /path/to/file, {tail}"


class CorruptCheckpointError(MobileCLIP2Error, RuntimeError):
    def __init__(self, path: str, cause: BaseException):
        self.path = path
        super().__init__(
            f"{path!r} could not be read as a model checkpoint ({type(cause).__name__}: {cause}). "
            "It may be truncated (an interrupted download) or not a PyTorch/safetensors file: "
            "download it again or check the path."
        )


class CheckpointMismatchError(MobileCLIP2Error, RuntimeError):
    """The checkpoint's tensors do not fit the model that was built."""

    def __init__(self, summary: str):
        super().__init__(summary)


class GenerationUnavailableError(MobileCLIP2Error, RuntimeError):
    """A text-generation mode the installed libraries cannot provide (e.g. CoCa beam search)."""


# Training (mobileclip2.train): flags, DR shards, teachers.


class TrainArgsError(MobileCLIP2Error, ValueError):
    """A flag combination mobileclip2.train cannot run; the message says why and what to use."""


class DRDataError(MobileCLIP2Error, ValueError):
    """The shards cannot feed the requested training mode; the message says what is missing."""


class CropMismatchError(DRDataError):
    """A stored crop box does not fit the decoded image: the image changed after reinforcement."""


class TeacherError(MobileCLIP2Error, ValueError):
    """Teachers that cannot be used as asked; the message says why."""


class DependencyVersionError(MobileCLIP2Error, RuntimeError):
    """An installed library version this package knows to fail; the message says what to install."""


class ReinforceOutputError(MobileCLIP2Error, ValueError):
    """`mobileclip2 reinforce` must not write into an output folder as asked (clashing shard names,
    foreign files, a config.json from different arguments); the message says what to do."""


class ShardStorageError(MobileCLIP2Error, OSError):
    """A shard that cannot be read or written (missing input, failing pipe: command, not a tar file)."""


class ShardReadError(ShardStorageError):
    """A shard whose tar stream is truncated or corrupt: it names the shard, the byte offset and how
    many whole samples came before the damage, so a reader can count what it lost."""

    def __init__(self, source: str, problem: str, offset: int | None, samples_read: int):
        self.source, self.problem, self.offset, self.samples_read = source, problem, offset, samples_read
        where = "" if offset is None else f" at byte {offset}"
        super().__init__(
            f"shard {source} is not a readable tar file{where}: {problem} "
            f"(after {samples_read} whole samples); copy or make the shard again, or leave it out"
        )

    def __reduce__(self):  # rebuilt from its fields when it travels between processes
        return type(self), (self.source, self.problem, self.offset, self.samples_read)


class OutputLockedError(MobileCLIP2Error, OSError):
    """Another live process holds the write lock of an output file (two runs writing one output)."""


class RankDisagreementError(MobileCLIP2Error, ValueError):
    """The ranks of one torchrun job were started with different arguments; the message names them."""


class ExportParityError(MobileCLIP2Error, RuntimeError):
    """An exported artifact disagrees with PyTorch beyond the tolerance, or an int8 artifact falls
    below the fidelity threshold; the export is not moved into place."""


class ExporterUnavailableError(MobileCLIP2Error, ImportError):
    """The package that writes or runs a format is not installed (``needed_for`` names what asked for
    it when that is not an export, e.g. ``optimize(backend="openvino")``)."""

    def __init__(
        self,
        format: str,
        package: str,
        extra: str,
        cause: BaseException | None = None,
        *,
        needed_for: str | None = None,
    ):
        self.format = format
        self.package = package
        self.extra = extra
        reason = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        super().__init__(
            f"{needed_for or f'exporting to {format}'} needs {package}, which is not importable{reason}. "
            f"Install it with: pip install 'mobileclip2[{extra}]'"
        )


class BenchmarkWorkerError(MobileCLIP2Error, RuntimeError):
    """A benchmark worker process (one runtime, built and timed in its own process) failed or
    disagreed with upstream's output; the message carries the worker's traceback or the numbers."""

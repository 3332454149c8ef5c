"""Where shards come from and where they go: local paths, brace patterns, ``pipe:`` commands and
fsspec URLs (``s3://``, ``gs://``, ``hf://``, ``file://``, ``memory://``, ...), as webdataset and
open_clip_train users write them.

Writes never leave a partial file under a final name: a shard is written to a temporary file and
committed only when complete -- renamed into place on a local file system
(:func:`mobileclip2.files.atomic_output`), uploaded in one ``put_file`` (an object appears whole or
not at all) elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shlex
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

from ..errors import ShardStorageError
from ..files import atomic_output

__all__ = ["Output", "expand_inputs", "open_input", "read_samples", "read_shard", "shard_name"]

PIPE = "pipe:"


def expand_inputs(patterns: Iterable[str]) -> list[str]:
    """Brace-expand every pattern ('d/{000..009}.tar', also inside URLs and pipe: commands)."""
    import braceexpand

    return [source for pattern in patterns for source in braceexpand.braceexpand(str(pattern))]


def shard_name(source: str) -> str:
    """The output file name of an input: its base name (for ``pipe:`` commands, the last argument's)."""
    if source.startswith(PIPE):
        words = shlex.split(source[len(PIPE) :])
        target = words[-1] if words else ""
    else:
        target = source.split("://", 1)[-1]
    name = target.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    if not name or name in {".", ".."}:
        raise ShardStorageError(
            f"cannot tell a shard file name from input {source!r}; name shards like 'dir/000.tar'"
        )
    return name


@contextlib.contextmanager
def open_input(source: str) -> Iterator[IO[bytes]]:
    """A readable binary stream of one input shard; ``pipe:CMD`` reads CMD's standard output."""
    if source.startswith(PIPE):
        process = subprocess.Popen(source[len(PIPE) :], shell=True, stdout=subprocess.PIPE)
        try:
            yield process.stdout
            process.stdout.read()  # drain, so a command killed by a closed pipe is not an error
        finally:
            process.stdout.close()
            code = process.wait()
        if code != 0:
            raise ShardStorageError(f"input command {source!r} exited with status {code}")
        return
    import fsspec

    try:
        with fsspec.open(source, "rb") as stream:
            yield stream
    except FileNotFoundError as error:
        raise ShardStorageError(f"input shard {source!r} does not exist ({error})") from error


def read_shard(source: str) -> list[dict[str, Any]]:
    """All samples of one input shard (path, URL or ``pipe:``), in order."""
    try:
        with open_input(source) as stream:
            return read_samples(stream)
    except tarfile.TarError as error:
        raise ShardStorageError(
            f"input shard {source} is not a readable tar file ({error}); fix or remove it and rerun "
            "(finished shards are kept)"
        ) from error


def _split_member(name: str) -> tuple[str, str] | None:
    """webdataset's rule: key = path up to the first dot of the file name, extension = the rest."""
    directory, _, filename = name.rpartition("/")
    stem, dot, extension = filename.partition(".")
    if not dot or not stem:
        return None
    return (f"{directory}/{stem}" if directory else stem), extension


def read_samples(stream: IO[bytes]) -> list[dict[str, Any]]:
    """All samples of a tar stream, in order (members of a sample must be adjacent, as in webdataset)."""
    samples: list[dict[str, Any]] = []
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            parts = _split_member(member.name)
            if parts is None:
                continue
            key, extension = parts
            if not samples or samples[-1]["__key__"] != key or extension.lower() in samples[-1]:
                samples.append({"__key__": key})
            samples[-1][extension.lower()] = tar.extractfile(member).read()
    return samples


def write_samples(stream: IO[bytes], samples: Iterable[Mapping[str, Any]]) -> None:
    """Samples (bytes values, ``__key__``) as a tar stream; fixed metadata, so equal samples give
    equal bytes."""
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for extension, value in sample.items():
                if extension.startswith("__"):
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{extension}")
                info.size, info.mode, info.mtime = len(value), 0o644, 0
                tar.addfile(info, io.BytesIO(value))


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Output:
    """An output folder, local or any fsspec URL; every write is committed whole."""

    def __init__(self, url: str | os.PathLike):
        import fsspec.core
        from fsspec.implementations.local import LocalFileSystem

        self.url = str(url)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.root = self.root.rstrip("/") or "/"
        self.local = isinstance(self.fs, LocalFileSystem)
        self.fs.makedirs(self.root, exist_ok=True)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def display(self, name: str) -> str:
        return self.path(name) if self.local else f"{self.url.rstrip('/')}/{name}"

    def exists(self, name: str) -> bool:
        return self.fs.exists(self.path(name))

    def size(self, name: str) -> int | None:
        try:
            return int(self.fs.size(self.path(name)))
        except (FileNotFoundError, OSError):
            return None

    def read_json(self, name: str) -> Any | None:
        if not self.exists(name):
            return None
        with self.fs.open(self.path(name), "rb") as stream:
            text = stream.read().decode("utf-8")
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ShardStorageError(
                f"{self.display(name)} is not valid JSON ({error}); delete it or use --overwrite"
            ) from error

    def listdir(self, folder: str) -> list[str]:
        if not self.exists(folder):
            return []
        return sorted(
            entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(self.path(folder), detail=False)
        )

    def remove(self, name: str) -> None:
        if self.exists(name):
            self.fs.rm(self.path(name), recursive=True)

    def _commit(self, name: str, write) -> tuple[int, str]:
        """Run ``write(stream)`` into a temporary file, then commit it as ``name``; -> (bytes, sha256)."""
        if self.local:
            with atomic_output(self.path(name)) as partial:
                with open(partial, "wb") as stream:
                    write(stream)
                return os.path.getsize(partial), _sha256_file(partial)
        with tempfile.TemporaryDirectory(prefix="mobileclip2-reinforce-") as folder:
            local = os.path.join(folder, name.replace("/", "_"))
            with open(local, "wb") as stream:
                write(stream)
            result = os.path.getsize(local), _sha256_file(local)
            parent = self.path(name).rsplit("/", 1)[0]
            self.fs.makedirs(parent, exist_ok=True)
            self.fs.put_file(local, self.path(name))
            return result

    def write_bytes(self, name: str, data: bytes) -> tuple[int, str]:
        return self._commit(name, lambda stream: stream.write(data))

    def write_json(self, name: str, record: Any) -> None:
        self.write_bytes(name, (json.dumps(record, indent=2) + "\n").encode("utf-8"))

    def write_shard(self, name: str, samples: Iterable[Mapping[str, Any]]) -> tuple[int, str]:
        """Write a tar shard; it appears under ``name`` only once complete. -> (bytes, sha256)."""
        return self._commit(name, lambda stream: write_samples(stream, samples))

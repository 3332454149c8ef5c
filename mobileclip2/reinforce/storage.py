"""Where shards come from and where they go: local paths, brace patterns, ``pipe:`` commands and
fsspec URLs (``s3://``, ``gs://``, ``hf://``, ``file://``, ``memory://``, ...), as webdataset and
open_clip_train users write them.

Writes never leave a partial file under a final name: a shard is written to a temporary file and
committed only when complete -- renamed into place on a local file system
(:func:`mobileclip2.files.atomic_output`), uploaded in one ``put_file`` (an object appears whole or
not at all) elsewhere.

Reads never take a damaged shard for a complete one: :func:`iter_samples` is the one tar reader of
the package (``mobileclip2 reinforce`` and DR training both use it). tarfile's stream mode ends
quietly at a truncated or corrupt header, so a copy cut short would read as a shorter shard; this
reader requires the two end-of-archive blocks and raises ShardReadError naming the shard, the
byte offset and the samples read before it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import shlex
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import IO, Any

from ..errors import ShardReadError, ShardStorageError
from ..files import atomic_output, exclusive_lock

__all__ = [
    "Output",
    "expand_inputs",
    "find_alias",
    "iter_samples",
    "iter_shard",
    "open_input",
    "read_samples",
    "read_shard",
    "shard_name",
    "unsafe_key",
]

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


def iter_shard(source: str) -> Iterator[dict[str, Any]]:
    """The samples of one shard (path, URL or ``pipe:``), in order, as they are read; a damaged
    shard raises ShardReadError after its whole samples were yielded."""
    with open_input(source) as stream:
        yield from iter_samples(stream, source)


def read_shard(source: str) -> list[dict[str, Any]]:
    """All samples of one input shard (path, URL or ``pipe:``), in order."""
    return list(iter_shard(source))


def _split_member(name: str) -> tuple[str, str] | None:
    """webdataset's rule: key = path up to the first dot of the file name, extension = the rest."""
    directory, _, filename = name.rpartition("/")
    stem, dot, extension = filename.partition(".")
    if not dot or not stem:
        return None
    return (f"{directory}/{stem}" if directory else stem), extension


_BLOCK = tarfile.BLOCKSIZE
_ZEROS = bytes(_BLOCK)


class _Damaged(Exception):
    """Where (uncompressed byte offset) and how a tar stream is damaged."""

    def __init__(self, offset: int, problem: str):
        super().__init__(problem)
        self.offset, self.problem = offset, problem


class _StrictTarInfo(tarfile.TarInfo):
    """A header reader that refuses what tarfile's stream mode passes over in silence: a stream that
    ends inside or instead of a header, a header with a bad checksum, a lone end-of-archive block.
    (``TarInfo.fromtarfile`` is tarfile's documented hook for reading one member; past the checks
    its body is tarfile's own, Python 3.10 - 3.13.)"""

    @classmethod
    def fromtarfile(cls, tar):
        offset = tar.fileobj.tell()
        block = tar.fileobj.read(_BLOCK)
        if not block:
            problem = "is empty" if offset == 0 else "ends before the end-of-archive blocks"
            raise _Damaged(offset, f"the stream {problem} (a copy cut short?)")
        if len(block) < _BLOCK:
            raise _Damaged(offset + len(block), "the stream ends inside a tar header (a copy cut short?)")
        if block == _ZEROS:
            second = tar.fileobj.read(_BLOCK)
            if second == _ZEROS:
                raise tarfile.EOFHeaderError("end of archive")  # tarfile ends the member list here
            if second.count(0) == len(second):
                end = offset + _BLOCK + len(second)
                raise _Damaged(end, "the stream ends inside the end-of-archive blocks")
            raise _Damaged(offset, "a lone zero block before more data (a damaged header?)")
        try:
            info = cls.frombuf(block, tar.encoding, tar.errors)
        except tarfile.HeaderError as error:
            raise _Damaged(offset, f"invalid tar header ({error})") from None
        info.offset = offset
        return info._proc_member(tar)


def iter_samples(stream: IO[bytes], source: str = "<stream>") -> Iterator[dict[str, Any]]:
    """The samples of a tar stream, in order, each yielded once complete (members of a sample must be
    adjacent, as in webdataset). A stream that does not end with the end-of-archive blocks, or holds
    a corrupt header, raises ShardReadError naming ``source`` and the byte offset (of the
    uncompressed tar), after the whole samples before the damage were yielded."""
    sample: dict[str, Any] | None = None
    count, tar, member = 0, None, None
    try:
        with tarfile.open(fileobj=stream, mode="r|*", tarinfo=_StrictTarInfo) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parts = _split_member(member.name)
                if parts is None:
                    continue
                key, extension = parts
                extension = extension.lower()
                if sample is None or sample["__key__"] != key or extension in sample:
                    if sample is not None:
                        yield sample
                        count += 1
                    sample = {"__key__": key}
                sample[extension] = tar.extractfile(member).read()
            member = None
        if sample is not None:
            yield sample
    except _Damaged as error:
        raise ShardReadError(source, error.problem, error.offset, count) from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        if isinstance(error, ShardStorageError):
            raise
        offset = tar.fileobj.tell() if tar is not None else None
        inside = f" inside member {member.name!r}" if member is not None else ""
        hint = " (a copy cut short?)" if isinstance(error, (tarfile.TarError, EOFError)) else ""
        raise ShardReadError(source, f"{error}{inside}{hint}", offset, count) from error


def read_samples(stream: IO[bytes], source: str = "<stream>") -> list[dict[str, Any]]:
    """All samples of a tar stream, in order (see :func:`iter_samples`)."""
    return list(iter_samples(stream, source))


def unsafe_key(key: str) -> str | None:
    """Why a sample key must not be written into a tar (a path that climbs out of or starts above the
    folder it is extracted into); None when it is fine."""
    if key.startswith("/"):
        return "absolute key"
    if ".." in key.split("/"):
        return "key with '..'"
    return None


def write_samples(stream: IO[bytes], samples: Iterable[Mapping[str, Any]]) -> None:
    """Samples (bytes values, ``__key__``) as a tar stream; fixed metadata, so equal samples give
    equal bytes. PAX format: a key of any length or script is stored whole (a plain ustar header
    holds 100 + 155 bytes); an unsafe key (:func:`unsafe_key`) is refused."""
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples:
            problem = unsafe_key(sample["__key__"])
            if problem is not None:
                raise ShardStorageError(f"refusing to write sample key {sample['__key__']!r} ({problem})")
            for extension, value in sample.items():
                if extension.startswith("__"):
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{extension}")
                info.size, info.mode, info.mtime = len(value), 0o644, 0
                tar.addfile(info, io.BytesIO(value))


_URL_ALIASES = {"s3a": "s3", "s3n": "s3", "gcs": "gs"}


def _normal_url(url: str) -> str:
    """``proto://path`` with the spellings that name one object made equal (``s3a://`` and ``s3://``,
    doubled or trailing slashes, ``./`` and ``../``, a query)."""
    protocol, _, rest = url.partition("://")
    protocol = _URL_ALIASES.get(protocol.lower(), protocol.lower())
    rest = posixpath.normpath("/" + rest.split("?", 1)[0]).lstrip("/")
    return f"{protocol}://{rest}"


def _local_path(source: str) -> str | None:
    """The real path of a local input (a path or ``file://`` URL); None for other URLs."""
    if source.startswith("file://"):
        source = source[len("file://") :]
    elif "://" in source:
        return None
    return os.path.realpath(os.path.expanduser(source))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def find_alias(sources: Iterable[str], output: Output, written: Collection[str]) -> tuple[str, str] | None:
    """The first input that writing the files ``written`` (names in ``output``) could overwrite, and
    why; None when none can be. Local paths are compared as real paths (symlinks, ``~``, ``..``) and
    as files (hard links); URLs after normalization; a ``pipe:`` command is refused when any of its
    words names a path inside the output folder (what the command reads cannot be known better)."""
    if output.local:
        folder = os.path.realpath(output.root)
        targets = {os.path.realpath(os.path.join(folder, name)): name for name in written}
        files = {_file_id(path): name for path, name in targets.items()}
        files.pop(None, None)
    else:
        folder = _normal_url(output.url)
        targets = {_normal_url(f"{output.url.rstrip('/')}/{name}"): name for name in written}
    for source in sources:
        problem = None
        if source.startswith(PIPE):
            problem = _pipe_alias(source, output.local, folder)
        elif output.local and _local_path(source) is not None:
            path = _local_path(source)
            name = targets.get(path) or files.get(_file_id(path))
            problem = None if name is None else f"it is the output file {name!r}"
        elif not output.local and "://" in source and _normal_url(source) in targets:
            problem = f"it is the output file {targets[_normal_url(source)]!r}"
        if problem is not None:
            return source, problem
    return None


def _pipe_alias(source: str, local: bool, folder: str) -> str | None:
    try:
        words = shlex.split(source[len(PIPE) :])
    except ValueError:
        words = source[len(PIPE) :].split()
    for word in words:
        if local and "://" not in word and ("/" in word or os.path.exists(word)):
            inside = _inside(os.path.realpath(os.path.expanduser(word)), folder)
        else:
            inside = not local and "://" in word and _inside(_normal_url(word), folder)
        if inside:
            return f"its command reads {word!r}, inside the output folder"
    return None


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

    def prepare(self) -> None:
        """Create the folder and prove that it takes a file, before the run writes anything."""
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            if self.local:
                handle, probe = tempfile.mkstemp(dir=self.root, prefix=".mobileclip2-write-check-")
                os.close(handle)
                os.unlink(probe)
            else:
                probe = self.path(f".mobileclip2-write-check-{os.getpid()}")
                self.fs.pipe_file(probe, b"")
                self.fs.rm(probe)
        except Exception as error:  # noqa: BLE001 - fsspec backends raise their own types; re-raised
            raise ShardStorageError(
                f"cannot write into the output folder {self.url} ({type(error).__name__}: {error}); "
                "choose a writable --output (nothing was written)"
            ) from error

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def lock(self, name: str) -> contextlib.AbstractContextManager:
        """The writer's lock of output ``name`` (:func:`mobileclip2.files.exclusive_lock`). Object
        stores have no locks; there two writers of one shard would upload the same bytes."""
        return exclusive_lock(self.path(name)) if self.local else contextlib.nullcontext()

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

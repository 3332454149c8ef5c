"""Files that appear whole or not at all, and temporaries that only their owner's cleaner removes.

Every local writer of the package (converted checkpoints, DR shards and records, export artifacts)
goes through here, so all of them keep the same promises:

* A file appears under its final name only once it is complete: it is written under a unique
  temporary name beside the target (``mkstemp``: two writers of one target never share a file),
  fsynced, renamed with ``os.replace`` and the folder fsynced, so the rename survives a crash too.
* It gets the mode ``open()`` gives a new file under the process umask (``mkstemp`` and some
  writers, safetensors' among them, create 0600 files).
* Temporaries carry their writer in their name (``.NAME.tmp-HOST-PID-RANDOM``). A later writer
  removes one only when it can prove the writer is gone: same host, and no process with that pid.
  A temporary of another host (a shared file system) or of a live process is left alone.
* A writer that computes a file for long (a DR shard) holds its lock (:func:`exclusive_lock`,
  ``.NAME.lock`` beside it) meanwhile, so a second writer of the same file fails at once instead of
  racing the first to the rename.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputLockedError

__all__ = [
    "PAUSE_BEFORE_REPLACE_ENV",
    "atomic_output",
    "default_dir_mode",
    "default_file_mode",
    "exclusive_lock",
    "fsync_dir",
    "process_alive",
    "remove_stale_temporaries",
    "staging_dir",
]

# Test hook for the kill tests: seconds to wait after a temporary file is complete and before it is
# renamed into place (announced on stderr), so a test can kill the writer at that moment.
PAUSE_BEFORE_REPLACE_ENV = "MOBILECLIP2_PAUSE_BEFORE_REPLACE"
_TEMP_MARK = ".tmp-"


def _host() -> str:
    """This machine's name, reduced to characters that are safe in a file name."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _owner() -> str:
    return f"{_host()}-{os.getpid()}"


def process_alive(pid: int) -> bool:
    """Whether a process with ``pid`` runs on this machine (someone else's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_gone(name: str, prefix: str) -> bool:
    """True when ``name`` is a temporary ``prefix``HOST-PID-... of this host whose process is gone."""
    if not name.startswith(prefix):
        return False
    host, _, rest = name[len(prefix) :].rpartition("-")[0].rpartition("-")
    pid = rest
    return host == _host() and pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid))


def _temp_prefix(dst: Path) -> str:
    return f".{dst.name}{_TEMP_MARK}"


def remove_stale_temporaries(dst: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of ``dst`` whose writers are provably gone (see the module docs)."""
    dst = Path(dst)
    prefix = _temp_prefix(dst)
    removed = []
    if not dst.parent.is_dir():
        return removed
    for entry in dst.parent.iterdir():
        if _owner_gone(entry.name, prefix):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def default_file_mode() -> int:
    """0o666 minus the process umask: the mode ``open()`` gives a new file (0644 under umask 022)."""
    return 0o666 & ~_umask()


def default_dir_mode() -> int:
    """0o777 minus the process umask: the mode ``mkdir`` gives a new folder (``mkdtemp`` gives 0700)."""
    return default_file_mode() | (0o111 & ~_umask())


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened, Windows)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _pause_if_asked(partial: Path) -> None:
    pause = float(os.environ.get(PAUSE_BEFORE_REPLACE_ENV) or 0)
    if pause > 0:
        print(f"mobileclip2: complete, not yet renamed: {partial}", file=sys.stderr, flush=True)
        time.sleep(pause)


@contextlib.contextmanager
def atomic_output(dst: str | os.PathLike) -> Iterator[Path]:
    """Yield a new, empty temporary path beside ``dst``; when the block succeeds, it becomes ``dst``.

    A writer that raises, or a process killed at any moment, leaves nothing under ``dst`` (an
    existing ``dst`` stays as it was). Missing parent folders are created.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dst)
    handle, name = tempfile.mkstemp(dir=dst.parent, prefix=f"{_temp_prefix(dst)}{_owner()}-")
    os.close(handle)
    partial = Path(name)
    try:
        yield partial
        os.chmod(partial, default_file_mode())
        with open(partial, "rb") as stream:
            os.fsync(stream.fileno())
        _pause_if_asked(partial)
        os.replace(partial, dst)
        fsync_dir(dst.parent)
    finally:
        partial.unlink(missing_ok=True)


@contextlib.contextmanager
def staging_dir(dst: str | os.PathLike) -> Iterator[Path]:
    """A private folder beside ``dst`` for a writer that prepares several files before moving them
    into place; removed when the block ends, whatever happens (a killed writer's folder is removed
    by the next one, as for :func:`atomic_output`)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dst)
    folder = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f"{_temp_prefix(dst)}{_owner()}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _try_lock(handle: int, path: Path) -> bool:
    """Take the exclusive lock of the open file ``handle`` without waiting; False when another
    process holds it. A file system that cannot lock at all is an error, not "locked"."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(handle, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:  # flock, not lockf: a lock per open file, so a second open in this process is refused too
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK):
            return False
        raise OSError(
            error.errno,
            f"cannot lock {path} ({error.strerror}); the file system offers no locks: "
            "write the output to a local disk or to a shared file system with locking",
        ) from error
    return True


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def exclusive_lock(dst: str | os.PathLike, *, wait: float = 0.0) -> Iterator[Path]:
    """Hold the writer's lock of ``dst`` (the file ``.NAME.lock`` beside it) while the block runs.

    Why: two runs (or a leftover process of an earlier run) writing the same output would both do
    the work and the later rename would silently win; with the lock the second raises
    OutputLockedError at once, naming the holder. The kernel drops the lock when its process dies
    (kill -9 too), so a dead writer's lock file never blocks a rerun; the holder removes the file.

    ``wait``: seconds to wait for the holder to finish before raising (``math.inf``: as long as it
    takes), for writers whose second copy should reuse the first one's output (the graph cache).
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    path = dst.parent / f".{dst.name}.lock"
    deadline = time.monotonic() + wait
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if not _try_lock(handle, path):
            os.close(handle)
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            raise OutputLockedError(
                f"{dst} is being written by another process ({_holder(path)}, lock file {path}): "
                "two runs write into the same output. Wait for the other run to finish (or stop it), "
                "then rerun; finished files are kept"
            )
        try:  # the previous holder may have removed the file between our open and our lock
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(handle), current):
            break
        os.close(handle)
    try:
        os.ftruncate(handle, 0)
        os.write(handle, f"host {_host()} pid {os.getpid()}\n".encode())
        yield path
    finally:
        with contextlib.suppress(OSError):  # Windows cannot remove an open file: the next holder reuses it
            path.unlink()
        os.close(handle)

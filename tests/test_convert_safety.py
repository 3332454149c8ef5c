"""`mobileclip2 convert` never loses or half-writes a file.

One generated MobileCLIP-S0 checkpoint (conftest's s0_checkpoint, OpenCLIP format) is converted
with ``--model MobileCLIP-S0``; the cases cover what must be refused before any work, what the
written file looks like (mode, location), and a writer killed with SIGKILL just before the rename.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

import pytest

from mobileclip2.cli import main
from mobileclip2.files import PAUSE_BEFORE_REPLACE_ENV, atomic_output


def _convert(src, dst, *extra) -> list[str]:
    return ["convert", str(src), str(dst), "--model", "MobileCLIP-S0", *extra]


def test_refuses_existing_output_and_input_as_output_then_overwrites(tmp_path, s0_checkpoint, capsys):
    existing = tmp_path / "existing.safetensors"
    existing.write_bytes(b"precious")
    assert main(_convert(s0_checkpoint, existing)) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "Traceback" not in err
    assert existing.read_bytes() == b"precious"

    assert main(_convert(s0_checkpoint, s0_checkpoint, "--overwrite")) == 1
    err = capsys.readouterr().err
    assert "is the input file" in err and "another output name" in err

    dst = tmp_path / "a" / "b" / "out.safetensors"  # missing parent folders are created
    old_umask = os.umask(0o022)
    try:
        assert main(_convert(s0_checkpoint, dst)) == 0
        assert main(_convert(s0_checkpoint, existing, "--overwrite")) == 0
    finally:
        os.umask(old_umask)
    assert existing.read_bytes() == dst.read_bytes()
    assert stat.S_IMODE(dst.stat().st_mode) == 0o644  # safetensors' own writer leaves 0600
    assert [p.name for p in dst.parent.iterdir()] == ["out.safetensors"]  # no temporary left


def test_failed_writer_leaves_nothing_under_the_final_name(tmp_path):
    dst = tmp_path / "x.bin"
    with pytest.raises(RuntimeError, match="disk full"), atomic_output(dst) as partial:
        partial.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_kill_9_before_rename_leaves_no_output_and_a_rerun_succeeds(tmp_path, s0_checkpoint):
    """SIGKILL while the complete file still has its temporary name: nothing under the final name;
    the rerun removes the dead writer's temporary and writes the output."""
    dst = tmp_path / "out" / "killed.safetensors"
    env = {**os.environ, PAUSE_BEFORE_REPLACE_ENV: "60"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mobileclip2", *_convert(s0_checkpoint, dst)],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines = []
        while not lines or "not yet renamed" not in lines[-1]:  # announced once the file is complete
            lines.append(process.stderr.readline())
            assert lines[-1], "".join(lines)  # EOF: the writer ended without pausing
        line = lines[-1]
        partial = line.rsplit(": ", 1)[1].strip()
        assert os.path.isfile(partial)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not dst.exists()
    assert main(_convert(s0_checkpoint, dst)) == 0
    assert dst.is_file() and not os.path.exists(partial)
    assert [p.name for p in dst.parent.iterdir()] == ["killed.safetensors"]

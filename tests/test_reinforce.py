"""`mobileclip2 reinforce` at scale: ranks, resuming, remote storage, and the checks made before any
teacher loads.

The reference is one process writing 4 small shards (tiny random-weight teachers and CoCa,
2 augmentations, 1 generated caption per image). Everything else must give the very same bytes:
2 gloo ranks under torchrun, a run killed with SIGKILL mid-shard and rerun, and inputs/outputs
through fsspec ``memory://``, ``file://`` and ``pipe:``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from train_support import (
    COCA_CONFIG,
    brace,
    logged_losses,
    make_models,
    make_plain_shards,
    python_env,
    run_module,
    write_model_dir,
)

from mobileclip2.cli import main as cli
from mobileclip2.errors import ReinforceOutputError
from mobileclip2.reinforce.generate import ReinforceOptions, reinforce
from mobileclip2.reinforce.shards import decode_embeddings
from mobileclip2.reinforce.storage import read_shard, shard_name
from mobileclip2.teachers import TeacherEnsemble

NAMES = [f"{index:05d}.tar" for index in range(4)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("reinforce")
    models = make_models(root / "models")
    coca = write_model_dir(root / "coca", COCA_CONFIG, seed=3)
    plain = make_plain_shards(root / "plain", num_shards=4, per_shard=3)
    return {"root": root, "models": models, "coca": coca, "plain": plain}


def _args(ws, inputs: str, output: str, *extra: str) -> list[str]:
    return [
        inputs, "--output", output,
        "--teachers", f"{ws['models']['teacher_a']},{ws['models']['teacher_b']}",
        "--teachers-pretrained", "N/A,N/A",
        "--num-augmentations", "2", "--batch-size", "2", "--seed", "7",
        "--captioner", ws["coca"], "--num-captions", "1", "--caption-key", "syn_text_coca",
        "--no-progress", *extra,
    ]  # fmt: skip


def _shards(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in NAMES}


@pytest.fixture(scope="module")
def reference(ws) -> dict[str, bytes]:
    """One process, in this interpreter."""
    output = ws["root"] / "reference"
    assert cli(["reinforce", *_args(ws, brace(ws["plain"]), str(output))]) == 0
    return _shards(output)


def test_generated_captioner_weights_do_not_depend_on_the_heap(tmp_path, monkeypatch):
    """open_clip leaves CoCa's text_decoder.text_projection as torch.empty (see
    model_support.initialize_what_upstream_leaves_empty): with a heap full of NaN the written weights
    must still be the same finite values, or the reference below depends on what ran before it."""
    import torch

    empty = torch.empty

    def nan_filled(*args, **kwargs):
        tensor = empty(*args, **kwargs)
        return tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor

    clean = write_model_dir(tmp_path / "clean", COCA_CONFIG, seed=3)
    monkeypatch.setattr(torch, "empty", nan_filled)
    dirty = write_model_dir(tmp_path / "dirty", COCA_CONFIG, seed=3)
    monkeypatch.undo()
    weights = [
        torch.load(Path(folder.removeprefix("local-dir:")) / "open_clip_pytorch_model.bin", weights_only=True)
        for folder in (clean, dirty)
    ]
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key


def test_reference_shards_hold_every_payload(ws, reference):
    for name in NAMES:
        samples = read_shard(str(ws["root"] / "reference" / name))
        assert len(samples) == 3
        for sample in samples:
            assert len(json.loads(sample["paug.json"])["param_aug"]) == 2
            assert len(json.loads(sample["syn.json"])["syn_text_coca"]) == 1
            embeddings = decode_embeddings(sample)
            assert embeddings["image_emb"].shape == (2, 80) and "syn_text_coca_emb" in embeddings
    # Different samples, different draws: the per-sample seed depends on the key.
    params = [read_shard(str(ws["root"] / "reference" / name))[0]["paug.json"] for name in NAMES]
    assert len(set(params)) == len(params)


@pytest.mark.slow
def test_two_gloo_ranks_write_the_same_bytes_as_one_process(ws, reference):
    output = ws["root"] / "two_ranks"
    env = {**python_env(), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "mobileclip2.reinforce", *_args(ws, brace(ws["plain"]), str(output))]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ws["root"], timeout=600)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    assert _shards(output) == reference
    manifest = json.loads((output / "manifest.json").read_text())
    assert {record["shard"]: record["rank"] for record in manifest["shards"]} == {
        "00000.tar": 0,
        "00001.tar": 1,
        "00002.tar": 0,
        "00003.tar": 1,
    }
    assert [device["rank"] for device in manifest["last_run"]["devices"]] == [0, 1]
    assert "4 shards: 4 written" in proc.stdout and "rank 1 (cpu): 6 images" in proc.stdout


_DIE_DURING_SECOND_SHARD = """
import os, signal, sys
import mobileclip2.reinforce.storage as storage
original, calls = storage.write_samples, []
def dying(stream, samples):
    calls.append(1)
    if len(calls) == 2:  # the second shard: half-write it, then die as `kill -9` would
        original(stream, list(samples)[:1])
        stream.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return original(stream, samples)
storage.write_samples = dying
from mobileclip2.reinforce.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_output_without_redoing_finished_shards(ws, reference, monkeypatch):
    output = ws["root"] / "killed"
    args = _args(ws, brace(ws["plain"]), str(output))
    proc = subprocess.run(
        [sys.executable, "-c", _DIE_DURING_SECOND_SHARD, *args],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, (proc.stdout[-2000:], proc.stderr[-4000:])
    assert (output / "00000.tar").is_file() and (output / "manifest" / "00000.tar.json").is_file()
    temporaries = list(output.glob(".00001.tar.tmp-*"))  # the killed writer's, named after it
    assert not (output / "00001.tar").exists() and len(temporaries) == 1
    finished = (output / "manifest" / "00000.tar.json").read_text()

    assert cli(["reinforce", *args]) == 0
    assert _shards(output) == reference
    assert (output / "manifest" / "00000.tar.json").read_text() == finished  # not redone
    last_run = json.loads((output / "manifest.json").read_text())["last_run"]
    assert last_run["resumed"] == ["00000.tar"] and sorted(last_run["written"]) == NAMES[1:]
    assert not list(output.glob(".*.tmp-*"))  # the rerun removed the dead writer's temporary

    # --overwrite redoes everything, to the same bytes.
    assert cli(["reinforce", *args, "--overwrite"]) == 0
    assert _shards(output) == reference
    assert sorted(json.loads((output / "manifest.json").read_text())["last_run"]["written"]) == NAMES

    # Nothing left to do: no teacher is loaded.
    def no_loading(*args, **kwargs):
        raise AssertionError("teachers loaded although every shard is finished")

    monkeypatch.setattr(TeacherEnsemble, "load", no_loading)
    assert cli(["reinforce", *args]) == 0
    assert json.loads((output / "manifest.json").read_text())["last_run"]["resumed"] == NAMES


def test_memory_urls_end_to_end(ws, reference):
    import fsspec

    memory = fsspec.filesystem("memory")
    try:
        for path in ws["plain"]:
            memory.pipe(f"/dr-in/{Path(path).name}", Path(path).read_bytes())
        # One DataLoader worker process decodes and augments: the same bytes as in-process.
        args = _args(ws, "memory://dr-in/{00000..00003}.tar", "memory://dr-out", "--workers", "1")
        assert cli(["reinforce", *args]) == 0
        assert {name: memory.cat(f"/dr-out/{name}") for name in NAMES} == reference
        assert json.loads(memory.cat("/dr-out/config.json"))["teacher_dimension"] == [32, 48]
        assert sorted(memory.ls("/dr-out/manifest", detail=False)) == [
            f"/dr-out/manifest/{n}.json" for n in NAMES
        ]
    finally:
        memory.rm("/dr-in", recursive=True)
        memory.rm("/dr-out", recursive=True)


@pytest.mark.slow
def test_pipe_inputs_and_file_url_output_train(ws, reference):
    output = ws["root"] / "file_url"
    pipes = f"pipe:cat {ws['root'] / 'plain'}/{{00000..00003}}.tar"
    assert cli(["reinforce", *_args(ws, pipes, output.as_uri())]) == 0
    assert _shards(output) == reference

    logs = ws["root"] / "logs"
    train = [
        "--model", ws["models"]["student"], "--train-data", str(output / "{00000..00003}.tar"),
        "--train-num-samples", "12", "--batch-size", "4", "--epochs", "1", "--save-frequency", "0",
        "--dataset-type", "webdataset", "--precision", "fp32", "--workers", "0", "--log-every-n-steps", "1",
        "--logs", str(logs), "--name", "from-url", "--dataset-reinforcement",
        "--dataset-reinforcement-config", str(output / "config.json"), "--distill-average-after-softmax",
    ]  # fmt: skip
    proc = run_module("mobileclip2.train", train, cwd=ws["root"])
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    losses = logged_losses((logs / "from-url" / "out.log").read_text(), "Distill_loss")
    assert losses and all(value == value for value in losses)  # finite, not NaN


# -- checks made before any teacher loads -------------------------------------------------------

MISSING_TEACHER = [("local-dir:/nonexistent/teacher", None)]
ONE_VIEW = ReinforceOptions(num_augmentations=1, batch_size=4)


def _tiny(ws) -> list[tuple[str, None]]:
    """One tiny teacher: the checks below need a real run, not the reference's."""
    return [(ws["models"]["teacher_a"], None)]


def _tiny_args(ws) -> list[str]:
    return ["--teachers", ws["models"]["teacher_a"], "--teachers-pretrained", "N/A"] + [
        "--num-augmentations", "1", "--batch-size", "4", "--no-progress",
    ]  # fmt: skip


def test_shard_names_of_urls_and_pipes():
    assert shard_name("pipe:curl -s 'https://host/data/000123.tar?x=1'") == "000123.tar"
    assert shard_name("s3://bucket/dr/00042.tar") == "00042.tar"
    assert shard_name("hf://datasets/org/set/train/0001.tar") == "0001.tar"


def test_inputs_with_one_output_name_are_refused_before_teachers_load(ws, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "000.tar").write_bytes((Path(ws["plain"][0])).read_bytes())
    inputs = [str(tmp_path / "a" / "000.tar"), str(tmp_path / "b" / "000.tar")]
    with pytest.raises(ReinforceOutputError, match=r"both be written as '000.tar'.*different --output"):
        reinforce(inputs, tmp_path / "out", MISSING_TEACHER, ReinforceOptions())
    assert not (tmp_path / "out" / "config.json").exists()


def test_foreign_outputs_are_refused(ws, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "00000.tar").write_bytes(b"not ours")
    with pytest.raises(ReinforceOutputError, match="without a reinforce config.json.*--overwrite"):
        reinforce(ws["plain"][:1], output, MISSING_TEACHER, ReinforceOptions())
    assert (output / "00000.tar").read_bytes() == b"not ours"


def test_a_typo_writes_nothing_and_the_corrected_command_runs(ws, tmp_path, capsys):
    output = tmp_path / "out"
    plain = ws["plain"][0]
    assert cli(["reinforce", plain, "--output", str(output), "--teachers", "RN5O", "--no-progress"]) == 1
    assert "Unknown model name 'RN5O'" in capsys.readouterr().err
    assert not output.exists()  # checked before the folder was even made
    assert cli(["reinforce", plain, "--output", str(output), *_tiny_args(ws)]) == 0
    assert (output / "00000.tar").is_file()


def test_a_run_that_wrote_no_shard_can_be_rerun_with_other_arguments(ws, tmp_path):
    import shutil

    broken = tmp_path / "broken_teacher"  # names a model folder whose weights are damaged: fails to load
    shutil.copytree(ws["models"]["teacher_a"].removeprefix("local-dir:"), broken)
    (broken / "open_clip_pytorch_model.bin").write_bytes(b"damaged")
    output = tmp_path / "out"
    with pytest.raises(Exception) as failed:  # after config.json: the weights are read only when loading
        reinforce(ws["plain"][:1], output, [(f"local-dir:{broken}", None)], ONE_VIEW)
    assert not isinstance(failed.value, ReinforceOutputError)
    assert sorted(p.name for p in output.iterdir()) == ["config.json"]  # nothing half-written

    report = reinforce(ws["plain"][:1], output, _tiny(ws), ONE_VIEW)  # the corrected arguments
    assert report.written == ["00000.tar"]
    assert json.loads((output / "config.json").read_text())["request"]["teachers"] == [
        [ws["models"]["teacher_a"], None]
    ]
    # Once a shard is written, other arguments would mix two runs in one folder: refused.
    with pytest.raises(ReinforceOutputError, match=r"different arguments \(num_augmentations: 1 -> 2\)"):
        reinforce(ws["plain"][:1], output, _tiny(ws), ReinforceOptions(num_augmentations=2, batch_size=4))


def test_undecodable_samples_are_skipped_with_their_keys(ws, tmp_path):
    from train_support import write_shard

    good = read_shard(ws["plain"][0])
    samples = [good[0], {"__key__": "broken", "jpg": b"\xff\xd8 not a jpeg", "txt": b"a cat"}]
    samples.append({"__key__": "uncaptioned", "png": good[1].get("png", good[1].get("jpg"))})
    write_shard(tmp_path / "in" / "00000.tar", samples)
    specs = [(ws["models"]["teacher_a"], None), (ws["models"]["teacher_b"], None)]
    report = reinforce(
        [str(tmp_path / "in" / "00000.tar")], tmp_path / "out", specs, ReinforceOptions(num_augmentations=1)
    )
    assert report.samples == 1 and report.skipped == {"undecodable image": 1, "no caption": 1}
    assert {(skip["key"], skip["reason"]) for skip in report.skipped_keys} == {
        ("broken", "undecodable image"),
        ("uncaptioned", "no caption"),
    }
    record = json.loads((tmp_path / "out" / "manifest" / "00000.tar.json").read_text())
    assert record["samples"] == 1 and {skip["key"] for skip in record["skipped"]} == {"broken", "uncaptioned"}
    with tarfile.open(tmp_path / "out" / "00000.tar") as tar:
        assert {name.split(".")[0] for name in tar.getnames()} == {good[0]["__key__"]}
    assert os.stat(tmp_path / "out" / "00000.tar").st_mode & 0o777 == 0o644


def test_an_unreadable_shard_is_a_clear_error(ws, tmp_path):
    from mobileclip2.errors import ShardStorageError

    broken = tmp_path / "in" / "00000.tar"
    broken.parent.mkdir()
    broken.write_bytes(Path(ws["plain"][0]).read_bytes()[:700])  # cut inside the first member
    with pytest.raises(ShardStorageError, match=r"00000.tar is not a readable tar file at byte 700.*Rerun"):
        reinforce([str(broken)], tmp_path / "out", _tiny(ws), ONE_VIEW)
    assert not (tmp_path / "out" / "00000.tar").exists()


# -- the list: a shard is complete or an error; outputs never alias inputs; ... -----------


def _cut_inside_header(source: str, target: Path, member: int) -> bytes:
    """Copy ``source`` to ``target`` cut 100 bytes into the header of its ``member``-th member (a
    copy that died half way); -> the whole bytes."""
    data = Path(source).read_bytes()
    with tarfile.open(source) as tar:
        offset = tar.getmembers()[member].offset
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data[: offset + 100])
    return data


def _shard_bytes(samples) -> tuple[bytes, list[int]]:
    """A shard written by reinforce's writer, and the offset of each member's header."""
    import io

    from mobileclip2.reinforce.storage import write_samples

    buffer = io.BytesIO()
    write_samples(buffer, samples)
    with tarfile.open(fileobj=io.BytesIO(buffer.getvalue())) as tar:
        return buffer.getvalue(), [member.offset for member in tar.getmembers()]


SAMPLES = [{"__key__": f"{i:03d}", "jpg": bytes([i]) * 700, "txt": b"caption"} for i in range(3)]
DATA, HEADERS = _shard_bytes(SAMPLES)
END = HEADERS[-1] + 1024  # the last member: header + 1 data block; then the end-of-archive blocks


@pytest.mark.parametrize(
    "cut, offset, read, problem",
    [
        (0, 0, 0, "the stream is empty"),
        (HEADERS[2] + 100, HEADERS[2] + 100, 0, "ends inside a tar header"),  # the cut
        (HEADERS[2], HEADERS[2], 0, "ends before the end-of-archive blocks"),
        (HEADERS[2] + 600, HEADERS[2] + 600, 1, "unexpected end of data inside member '001.jpg'"),
        (END, END, 2, "ends before the end-of-archive blocks"),
        (END + 512, END + 512, 2, "ends inside the end-of-archive blocks"),
    ],
)
def test_a_shard_is_complete_or_an_error_with_its_offset(cut, offset, read, problem):
    import io

    from mobileclip2.errors import ShardReadError
    from mobileclip2.reinforce.storage import read_samples

    with pytest.raises(ShardReadError) as damaged:
        read_samples(io.BytesIO(DATA[:cut]), "in/000.tar")
    assert (damaged.value.offset, damaged.value.samples_read) == (offset, read)
    assert problem in str(damaged.value) and f"in/000.tar is not a readable tar file at byte {offset}" in str(
        damaged.value
    )
    assert read_samples(io.BytesIO(DATA[: END + 1024]), "in/000.tar") == SAMPLES  # the blocks: complete


def test_a_corrupt_header_or_a_lone_zero_block_is_an_error():
    import io

    from mobileclip2.errors import ShardReadError
    from mobileclip2.reinforce.storage import read_samples

    flipped = bytearray(DATA)
    flipped[HEADERS[3] + 2] ^= 0x20  # '001.txt' -> '0\x1101.txt': the checksum no longer matches
    with pytest.raises(ShardReadError, match=f"at byte {HEADERS[3]}: invalid tar header .bad checksum"):
        read_samples(io.BytesIO(bytes(flipped)))
    zeroed = bytearray(DATA)
    zeroed[HEADERS[4] : HEADERS[4] + 512] = bytes(512)  # a header wiped: more data follows the zeros
    with pytest.raises(ShardReadError, match=f"at byte {HEADERS[4]}: a lone zero block"):
        read_samples(io.BytesIO(bytes(zeroed)))


def test_a_truncated_input_shard_fails_or_is_recorded_failed_and_never_finished(ws, tmp_path, capsys):
    plain = tmp_path / "in"
    whole = _cut_inside_header(ws["plain"][0], plain / "00000.tar", member=3)  # sample 1's first member
    (plain / "00001.tar").write_bytes(Path(ws["plain"][1]).read_bytes())
    output = tmp_path / "out"
    args = [str(plain / "{00000..00001}.tar"), "--output", str(output), *_tiny_args(ws)]

    assert cli(["reinforce", *args]) == 1  # the default: the run fails, naming the shard and the offset
    error = capsys.readouterr().err
    assert "00000.tar is not a readable tar file at byte" in error and "--on-bad-shard record" in error
    assert not (output / "00000.tar").exists() and not (output / "manifest" / "00000.tar.json").exists()

    assert cli(["reinforce", *args, "--on-bad-shard", "record"]) == 1  # goes on, still exits 1
    out = capsys.readouterr().out
    assert "1 written, 0 already finished, 1 failed" in out and "FAILED 00000.tar (0 samples read)" in out
    record = json.loads((output / "manifest" / "00000.tar.json").read_text())
    assert record["status"] == "failed" and record["samples_read"] == 0 and "at byte" in record["error"]
    manifest = json.loads((output / "manifest.json").read_text())
    assert [r["shard"] for r in manifest["shards"]] == ["00001.tar"]
    assert [r["shard"] for r in manifest["failed"]] == ["00000.tar"] and not (output / "00000.tar").exists()

    (plain / "00000.tar").write_bytes(whole)  # the shard copied again: a rerun makes just that one
    assert cli(["reinforce", *args]) == 0
    last_run = json.loads((output / "manifest.json").read_text())["last_run"]
    assert last_run["written"] == ["00000.tar"] and last_run["resumed"] == ["00001.tar"]
    assert len(read_shard(str(output / "00000.tar"))) == 3


def test_outputs_never_alias_inputs(ws, tmp_path, monkeypatch):
    import fsspec

    plain = tmp_path / "in"
    plain.mkdir()
    original = Path(ws["plain"][0]).read_bytes()
    (plain / "00000.tar").write_bytes(original)
    (tmp_path / "link").symlink_to(plain, target_is_directory=True)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    memory = fsspec.filesystem("memory")
    memory.pipe("/alias/00000.tar", original)
    cases = [
        (str(plain / "00000.tar"), tmp_path / "link", "it is the output file '00000.tar'"),  # symlink
        ("~/in/00000.tar", plain, "it is the output file '00000.tar'"),  # ~
        ("in/../in/00000.tar", tmp_path / "link", "it is the output file"),
        ((plain / "00000.tar").as_uri(), plain, "it is the output file"),  # file:// URL
        ("pipe:cat in/00000.tar", "link", "its command reads 'in/00000.tar', inside the output folder"),
        ("memory://alias//00000.tar", "memory://alias/", "it is the output file '00000.tar'"),
        ("pipe:cat memory://alias/x/00000.tar", "memory://alias", "inside the output folder"),
    ]
    try:
        for source, output, why in cases:
            with pytest.raises(ReinforceOutputError, match="could be overwritten") as refused:
                reinforce([source], output, MISSING_TEACHER, ReinforceOptions(overwrite=True))
            assert why in str(refused.value) and "choose an --output folder" in str(refused.value), source
    finally:
        memory.rm("/alias", recursive=True)
    assert (plain / "00000.tar").read_bytes() == original and sorted(os.listdir(plain)) == ["00000.tar"]


def test_overwrite_removes_only_this_runs_files_and_refuses_a_foreign_config(ws, tmp_path):
    output = tmp_path / "out"
    assert reinforce(ws["plain"][:2], output, _tiny(ws), ONE_VIEW).written == ["00000.tar", "00001.tar"]
    (output / "manifest" / "notes.txt").write_text("mine")
    (output / "notes.txt").write_text("mine too")
    overwrite = ReinforceOptions(num_augmentations=1, batch_size=4, overwrite=True)
    assert reinforce(ws["plain"][:1], output, _tiny(ws), overwrite).written == ["00000.tar"]
    assert (output / "manifest" / "notes.txt").read_text() == "mine" and (output / "notes.txt").is_file()
    assert (output / "00001.tar").is_file() and (output / "manifest" / "00001.tar.json").is_file()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"model": "something else"}')
    (foreign / "00000.tar").write_bytes(b"someone's shard")
    with pytest.raises(
        ReinforceOutputError, match="not written by `mobileclip2 reinforce`.*another --output"
    ):
        reinforce(ws["plain"][:1], foreign, _tiny(ws), overwrite)
    assert (foreign / "00000.tar").read_bytes() == b"someone's shard"


def test_a_record_of_other_arguments_is_never_taken_for_finished(ws, tmp_path):
    """--overwrite of fewer inputs keeps the other shards' records; they carry their request's digest,
    so a later run with the new arguments redoes those shards instead of trusting them."""
    output = tmp_path / "out"
    reinforce(ws["plain"][:2], output, _tiny(ws), ONE_VIEW)
    seven = ReinforceOptions(num_augmentations=1, batch_size=4, seed=7, overwrite=True)
    reinforce(ws["plain"][:1], output, _tiny(ws), seven)
    seven.overwrite = False
    report = reinforce(ws["plain"][:2], output, _tiny(ws), seven)
    assert report.resumed == ["00000.tar"] and report.written == ["00001.tar"]


def test_long_and_unsafe_keys(ws, tmp_path):
    """PAX headers hold a key of any length; a key that would escape the folder a tar is extracted into
    is skipped (counted, with its reason) before any teacher sees it, as another writer may store it."""
    import io

    good = read_shard(ws["plain"][0])
    samples = [
        {**good[0], "__key__": "deep/" * 40 + "k" * 120},  # 320 characters: more than ustar holds
        {**good[1], "__key__": "../escape"},
        {**good[2], "__key__": "/etc/absolute"},
    ]
    (tmp_path / "in").mkdir()
    with tarfile.open(tmp_path / "in" / "00000.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        for sample in samples:
            for extension, value in sample.items():
                if not extension.startswith("__"):
                    info = tarfile.TarInfo(f"{sample['__key__']}.{extension}")
                    info.size = len(value)
                    tar.addfile(info, io.BytesIO(value))
    report = reinforce([str(tmp_path / "in" / "00000.tar")], tmp_path / "out", _tiny(ws), ONE_VIEW)
    assert report.samples == 1 and report.skipped == {"unsafe key (absolute or with '..')": 2}
    written = read_shard(str(tmp_path / "out" / "00000.tar"))
    assert [sample["__key__"] for sample in written] == [samples[0]["__key__"]]


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_non_finite_teacher_embeddings_are_skipped_or_fail(ws, tmp_path, policy):
    import torch

    from mobileclip2.teachers import TeacherEnsemble, TeacherError

    teachers = TeacherEnsemble.load(_tiny(ws))
    encode = teachers.encode_unit_images

    def overflowing(images):  # the second image of every batch overflows, as fp16 can
        out = encode(images)
        out[1] = float("inf")
        return out

    teachers.encode_unit_images = overflowing
    options = ReinforceOptions(num_augmentations=1, batch_size=4, on_nonfinite=policy)
    if policy == "fail":
        with pytest.raises(TeacherError, match=r"hold NaN or inf.*--precision fp32.*--on-nonfinite skip"):
            reinforce(ws["plain"][:1], tmp_path / "out", teachers, options)
        assert not (tmp_path / "out" / "00000.tar").exists()
        return
    report = reinforce(ws["plain"][:1], tmp_path / "out", teachers, options)
    assert report.samples == 2 and report.skipped == {"non-finite teacher embedding": 1}
    for sample in read_shard(str(tmp_path / "out" / "00000.tar")):
        assert all(torch.isfinite(torch.as_tensor(v)).all() for v in decode_embeddings(sample).values())


_LOCKED_WRITER = """
import sys
from mobileclip2.reinforce.storage import Output, read_shard
output, name, source = Output(sys.argv[1]), sys.argv[2], sys.argv[3]
with output.lock(name):
    output.write_shard(name, read_shard(source))
"""


def test_a_second_writer_fails_and_a_killed_one_blocks_nobody(ws, tmp_path):
    from mobileclip2.errors import OutputLockedError
    from mobileclip2.files import PAUSE_BEFORE_REPLACE_ENV
    from mobileclip2.reinforce.storage import Output

    output = tmp_path / "out"
    env = {**python_env(), PAUSE_BEFORE_REPLACE_ENV: "120"}
    command = [sys.executable, "-c", _LOCKED_WRITER, str(output), "00000.tar", ws["plain"][0]]
    writer = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        announced = writer.stderr.readline()  # the shard is complete, not yet renamed, the lock held
        assert "complete, not yet renamed" in announced, announced + writer.stderr.read()
        with pytest.raises(OutputLockedError, match=rf"pid {writer.pid}, lock file .*Wait for the other run"):
            with Output(output).lock("00000.tar"):
                pass
        with pytest.raises(OutputLockedError):  # a second run fails before it embeds anything
            reinforce(ws["plain"][:1], output, _tiny(ws), ONE_VIEW)
    finally:
        writer.kill()  # SIGKILL, as kill -9
        writer.wait()
    assert len(list(output.glob(".00000.tar.tmp-*"))) == 1 and not (output / "00000.tar").exists()
    # The kernel released the dead writer's lock: a rerun makes the shard and leaves no hidden file.
    assert reinforce(ws["plain"][:1], output, _tiny(ws), ONE_VIEW).written == ["00000.tar"]
    assert [path.name for path in output.iterdir() if path.name.startswith(".")] == []


def test_cleaners_remove_only_temporaries_they_can_prove_are_theirs(tmp_path):
    from mobileclip2.files import _host, atomic_output

    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    gone = int(done.stdout)
    dead_here = tmp_path / f".00000.tar.tmp-{_host()}-{gone}-abcd"
    other_host = tmp_path / f".00000.tar.tmp-{_host()}x-{gone}-abcd"  # a shared file system's other machine
    alive = tmp_path / f".00000.tar.tmp-{_host()}-{os.getppid()}-abcd"
    for path in (dead_here, other_host, alive):
        path.write_bytes(b"partial")
    with atomic_output(tmp_path / "00000.tar") as partial:
        partial.write_bytes(b"whole")
    assert not dead_here.exists() and other_host.exists() and alive.exists()


def test_output_files_follow_the_umask(tmp_path):
    from mobileclip2.reinforce.storage import Output

    previous = os.umask(0o027)
    try:
        Output(tmp_path).write_shard("00000.tar", [{"__key__": "a", "txt": b"x"}])
        Output(tmp_path).write_json("config.json", {})
    finally:
        os.umask(previous)
    assert {os.stat(tmp_path / name).st_mode & 0o777 for name in ("00000.tar", "config.json")} == {0o640}


def test_rank_disagreements_name_the_option():
    from mobileclip2.reinforce.distributed import disagreements

    ranks = [{"seed": 0, "inputs": ["a.tar"]}, {"seed": 0, "inputs": ["a.tar"]}, {"seed": 1, "inputs": ["b"]}]
    assert disagreements(ranks) == [
        "rank 2 was given inputs=['b'], rank 0 inputs=['a.tar']",
        "rank 2 was given seed=1, rank 0 seed=0",
    ]
    assert disagreements(ranks[:2]) == []


def _pretend_world(monkeypatch, rank: int, others: list[dict]):
    """This process as rank ``rank`` of 2; the other rank's summary is ``others`` (its records)."""
    from mobileclip2.reinforce import distributed

    monkeypatch.setattr(distributed, "world", lambda: (rank, 2))
    monkeypatch.setattr(distributed, "on_rank0", lambda function: function())

    def gather(value):
        if "records" not in value:  # the arguments: the other rank agrees
            return [value, value]
        other = {**value, "rank": 1 - rank, "images": 0, "records": others}
        return [value, other] if rank == 0 else [other, value]

    monkeypatch.setattr(distributed, "gather", gather)


def test_an_idle_rank_loads_no_model(ws, tmp_path, monkeypatch):
    _pretend_world(monkeypatch, rank=1, others=[])
    monkeypatch.setattr(TeacherEnsemble, "load", lambda *a, **k: pytest.fail("an idle rank loaded teachers"))
    report = reinforce(ws["plain"][:1], tmp_path / "out", _tiny(ws), ONE_VIEW)  # rank 0 takes the one shard
    assert report.written == [] and report.devices[1]["images"] == 0


def test_a_manifest_never_lists_a_shard_that_is_not_in_the_output(ws, tmp_path, monkeypatch):
    """Rank 1 on another machine wrote 00001.tar into its own node-local folder of the same name."""
    elsewhere = {"shard": "00001.tar", "input": ws["plain"][1], "samples": 3, "skipped": [], "bytes": 10240}
    _pretend_world(monkeypatch, rank=0, others=[{**elsewhere, "rank": 1, "host": "node-b"}])
    with pytest.raises(
        ReinforceOutputError, match=r"'00001.tar', written by rank 1 on host node-b.*storage they all share"
    ):
        reinforce(ws["plain"][:2], tmp_path / "out", _tiny(ws), ONE_VIEW)
    assert (tmp_path / "out" / "00000.tar").is_file() and not (tmp_path / "out" / "manifest.json").exists()


_RANK_1_SEED = """
import os, sys
from mobileclip2.reinforce.main import main
argv = sys.argv[1:] + (["--seed", "1"] if os.environ["RANK"] == "1" else [])
sys.exit(main(argv))
"""


@pytest.mark.slow
def test_two_ranks_given_different_seeds_both_fail_naming_seed(ws, tmp_path):
    script = tmp_path / "rank_1_seed.py"
    script.write_text(_RANK_1_SEED)
    env = {**python_env(), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += [str(script), brace(ws["plain"]), "--output", str(tmp_path / "out"), *_tiny_args(ws)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "mobileclip2 reinforce: error:" in line]
    assert len(errors) == 2, proc.stderr[-4000:]  # both ranks
    assert all("rank 1 was given seed=1, rank 0 seed=0" in line for line in errors)
    assert not (tmp_path / "out").exists()

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


def test_foreign_outputs_and_changed_arguments_are_refused(ws, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "00000.tar").write_bytes(b"not ours")
    with pytest.raises(ReinforceOutputError, match="without a reinforce config.json.*--overwrite"):
        reinforce(ws["plain"][:1], output, MISSING_TEACHER, ReinforceOptions())
    assert (output / "00000.tar").read_bytes() == b"not ours"

    fresh = tmp_path / "fresh"
    with pytest.raises(Exception) as failed:  # the missing teacher fails to load, after config.json
        reinforce(ws["plain"][:1], fresh, MISSING_TEACHER, ReinforceOptions(num_augmentations=3))
    assert not isinstance(failed.value, ReinforceOutputError)
    config = json.loads((fresh / "config.json").read_text())
    assert config["request"]["num_augmentations"] == 3 and "status" in config
    assert sorted(p.name for p in fresh.iterdir()) == ["config.json"]  # nothing half-written
    with pytest.raises(ReinforceOutputError, match=r"different arguments \(num_augmentations: 3 -> 4\)"):
        reinforce(ws["plain"][:1], fresh, MISSING_TEACHER, ReinforceOptions(num_augmentations=4))


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
    specs = [(ws["models"]["teacher_a"], None), (ws["models"]["teacher_b"], None)]
    with pytest.raises(ShardStorageError, match=r"00000.tar is not a readable tar file.*rerun"):
        reinforce([str(broken)], tmp_path / "out", specs, ReinforceOptions(num_augmentations=1))
    assert not (tmp_path / "out" / "00000.tar").exists()

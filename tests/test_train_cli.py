"""End to end, in subprocesses, a few CPU steps each (fp32; open_clip_train's default bf16 autocast
is many times slower on CPUs without native bf16 arithmetic):

* plain ``python -m open_clip_train.main`` with MobileCLIP2-S0 and MobileCLIP-S0 on webdataset
  shards, from scratch and fine-tuning from ``--pretrained`` (64 px, 16-token context: real
  models, small inputs);
* ``python -m mobileclip2.train --dataset-reinforcement`` on shards made by ``mobileclip2 reinforce``:
  a fixed batch (one stored augmentation and one synthetic caption per image) over 4 epochs must
  lower the loss, checkpoints are written and ``--resume latest`` continues;
* online distillation from a live 2-teacher ensemble on plain shards, with --accum-freq 2.
"""

from __future__ import annotations

import math

import pytest
from train_support import brace, logged_losses, run_module, train_log

COMMON = [
    "--dataset-type",
    "webdataset",
    "--precision",
    "fp32",
    "--workers",
    "0",
    "--log-every-n-steps",
    "1",
    "--seed",
    "0",
]


@pytest.fixture
def ws(train_workspace, tmp_path):
    # Training logs and checkpoints (up to ~1 GB a run) go to the test's own tmp_path, which pytest
    # deletes when the test passes (tmp_path_retention_policy = "failed"); the shared workspace
    # (models, shards) lives for the whole session.
    return {**train_workspace, "logs": tmp_path / "logs"}


def _ok(proc):
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])


def _finite(values):
    assert values and all(math.isfinite(v) for v in values), values


def _plain_run(ws, model, name, extra=()):
    logs = ws["logs"]
    args = [
        "--model", model, "--train-data", brace(ws["plain"]), "--train-num-samples", "8", "--batch-size", "4",
        "--epochs", "1", "--force-image-size", "64", "--force-context-length", "16", "--logs", str(logs),
        "--name", name, *COMMON, *extra,
    ]  # fmt: skip
    _ok(run_module("open_clip_train.main", args, cwd=ws["root"]))
    return logs / name


@pytest.mark.slow
@pytest.mark.parametrize("model", ["MobileCLIP2-S0", "MobileCLIP-S0"])
def test_open_clip_train_runs_mobileclip_names_unchanged(ws, model):
    run = _plain_run(ws, model, f"plain-{model}")
    log = (run / "out.log").read_text()
    losses = logged_losses(log, "Contrastive_loss")
    assert len(losses) == 2
    _finite(losses)
    checkpoint = run / "checkpoints" / "epoch_1.pt"
    assert checkpoint.is_file()
    if model != "MobileCLIP2-S0":
        return
    # Fine-tuning: --pretrained takes the training checkpoint file directly.
    tuned = _plain_run(
        ws, model, f"tuned-{model}", ["--pretrained", str(checkpoint), "--train-num-samples", "4"]
    )
    log = (tuned / "out.log").read_text()
    assert f"pretrained weights from: {checkpoint}" in log
    _finite(logged_losses(log, "Contrastive_loss"))


def _dr_args(ws, name, epochs, extra=()):
    return [
        "--model", ws["models"]["student"], "--train-data", ws["fixed_dr"], "--train-num-samples", "8",
        "--batch-size", "8", "--epochs", str(epochs), "--lr", "5e-5", "--warmup", "0",
        "--lr-scheduler", "const", "--save-frequency", "0",
        "--logs", str(ws["logs"]), "--name", name, "--dataset-reinforcement",
        "--dataset-reinforcement-config", ws["fixed_config"], "--distill-average-after-softmax",
        "--distill-loss-weights", "0.5", "0.5", *COMMON, *extra,
    ]  # fmt: skip


def test_dr_training_overfits_a_fixed_batch_checkpoints_and_resumes(ws):
    _ok(run_module("mobileclip2.train", _dr_args(ws, "dr-fixed", epochs=3), cwd=ws["root"]))
    log = train_log(ws["logs"], "dr-fixed")
    assert "replaying stored augmentations, separate synthetic-caption loss" in log
    assert "teacher_dims=(32, 48)" in log  # widths and logit scales recorded by reinforce
    contrastive, distill, total = (
        logged_losses(log, k) for k in ("Contrastive_loss", "Distill_loss", "Loss")
    )
    assert len(total) == 3
    for values in (contrastive, distill, total):
        _finite(values)
    for c, d, t in zip(contrastive, distill, total):
        assert abs(c + d - t) < 1e-3 * max(1.0, abs(t))
    assert total[-1] < total[0] - 0.5, total  # the same 8 samples every step: the loss must go down
    checkpoints = ws["logs"] / "dr-fixed" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_3.pt"]

    _ok(
        run_module(
            "mobileclip2.train",
            _dr_args(ws, "dr-fixed", epochs=4, extra=["--resume", "latest"]),
            cwd=ws["root"],
        )
    )
    log = train_log(ws["logs"], "dr-fixed")
    assert "(epoch 3)" in log and "Train Epoch: 3" in log
    resumed = logged_losses(log, "Loss")[-1]
    assert math.isfinite(resumed) and resumed < total[0], (total, resumed)
    assert (checkpoints / "epoch_4.pt").is_file()


@pytest.mark.slow
def test_online_distillation_from_a_live_ensemble(ws):
    teachers = f"{ws['models']['teacher_a']},{ws['models']['teacher_b']}"
    args = [
        "--model", ws["models"]["student"], "--train-data", brace(ws["plain"]), "--train-num-samples", "16",
        "--batch-size", "4", "--accum-freq", "2", "--epochs", "1", "--logs", str(ws["logs"]),
        "--name", "online", "--distill-model", teachers, "--distill-pretrained", "N/A,N/A",
        "--distill-logit-scale", "50", *COMMON,
    ]  # fmt: skip
    _ok(run_module("mobileclip2.train", args, cwd=ws["root"]))
    log = train_log(ws["logs"], "online")
    assert "Online distillation teachers:" in log and "teacher_scales=(50.0, 50.0)" in log
    assert len(logged_losses(log, "Distill_loss")) == 2  # 16 samples / (4 x accum 2)
    _finite(logged_losses(log, "Distill_loss"))
    _finite(logged_losses(log, "Contrastive_loss"))
    assert (ws["logs"] / "online" / "checkpoints" / "epoch_1.pt").is_file()


def test_dr_flags_on_plain_shards_fail_with_the_fix(ws):
    args = [
        "--model", ws["models"]["student"], "--train-data", brace(ws["plain"]), "--train-num-samples", "8",
        "--batch-size", "4", "--epochs", "1", "--logs", str(ws["logs"]), "--name", "bad",
        "--dataset-reinforcement", "--dataset-reinforcement-config", ws["dr_config"], *COMMON,
    ]  # fmt: skip
    proc = run_module("mobileclip2.train", args, cwd=ws["root"])
    assert proc.returncode == 2
    assert "mobileclip2.train: error: DR shards lack paug.json" in proc.stderr
    assert "mobileclip2 reinforce" in proc.stderr


def test_flags_parse_with_apples_names_and_defaults_and_bad_combinations_fail():
    from open_clip_train.params import parse_args

    from mobileclip2.train.args import TrainArgsError
    from mobileclip2.train.main import Session

    session = Session()
    parse = session.wrap_parse_args(parse_args)
    args = parse(
        ["--model", "MobileCLIP2-S0", "--distill-model", "A,hf-hub:org/B", "--distill-pretrained", "tag,N/A"]
    )
    assert (
        args.distill_model is None and args.distill_pretrained is None
    )  # open_clip_train builds no dist_model
    assert args.online_distill_model == "A,hf-hub:org/B"
    assert session.teacher_specs == [("A", "tag"), ("hf-hub:org/B", None)]
    assert args.distill_loss_weights == [1.0, 1.0] and args.distill_teacher_dimension == [-1]
    assert args.distill_logit_scale is None and not args.distill_average_after_softmax
    assert args.dataset_reinforcement_syn_text_key_regex == r"^syn_text.*$"
    assert args.dataset_reinforcement_mix_synthetic_ratio == 0.0
    bad = {
        "--dataset-reinforcement-config": ["--dataset-reinforcement", "--train-data", "x.tar"],
        "--distill-pretrained": ["--distill-model", "A"],
        "--siglip": ["--siglip", "--distill-model", "A", "--distill-pretrained", "B"],
        "two numbers": ["--distill-model", "A", "--distill-pretrained", "B", "--distill-loss-weights", "1"],
        "does not exist": [
            "--dataset-reinforcement",
            "--train-data",
            "x.tar",
            "--dataset-reinforcement-config",
            "/nope.json",
        ],
    }
    for message, argv in bad.items():
        with pytest.raises(TrainArgsError, match=message):
            Session().wrap_parse_args(parse_args)(["--model", "MobileCLIP2-S0", *argv])


@pytest.mark.slow
def test_dr_training_with_two_cpu_processes_under_ddp(ws):
    """torchrun-style launch (env://, gloo): the DR loader splits shards by rank, the loss gathers
    student and teacher features; open_clip_train's CPU DDP failure (device_ids=[cpu]) is avoided."""
    import socket
    import subprocess
    import sys

    from train_support import python_env

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = _dr_args(ws, "dr-ddp", epochs=1, extra=["--local-loss", "--gather-with-grad"])
    args[args.index(ws["fixed_dr"])] = brace(ws["dr"])  # 2 shards: one per rank
    args[args.index("--train-num-samples") + 1] = "16"
    args[args.index("--batch-size") + 1] = "4"
    procs = []
    for rank in range(2):
        env = dict(
            python_env(),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            WORLD_SIZE="2",
            RANK=str(rank),
            LOCAL_RANK=str(rank),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "mobileclip2.train", *args],
                cwd=ws["root"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
        )  # fmt: skip
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-4000:]
    log = train_log(ws["logs"], "dr-ddp")
    assert "Running in distributed mode with multiple processes. Device: cpu" in log and "total 2" in log
    assert len(logged_losses(log, "Distill_loss")) == 2  # 16 samples / (4 x 2 ranks)
    _finite(logged_losses(log, "Loss"))
    assert (ws["logs"] / "dr-ddp" / "checkpoints" / "epoch_1.pt").is_file()


def test_hooks_delegate_when_no_dr_flags_and_are_restored():
    import torch
    from open_clip_train import main as train_main

    from mobileclip2.compat import open_clip_train as compat
    from mobileclip2.train.main import Session

    session = Session()
    session.args = type("Args", (), {"dataset_reinforcement": False})()
    sentinel = object()
    assert session.wrap_create_loss(lambda args: sentinel)(session.args) is sentinel
    assert session.wrap_get_data(lambda *a, **k: sentinel)(session.args, (None, None)) is sentinel

    loop = compat.training_loop(train_main)  # "loss" on open_clip_train 3.x, "task" on main
    originals = {name: getattr(train_main, name) for name in compat.LOOP_HOOKS[loop]}
    ddp = torch.nn.parallel.DistributedDataParallel
    hooks = {name: (lambda original: lambda *a, **k: original) for name in compat.OPEN_CLIP_TRAIN_HOOKS}
    with pytest.raises(RuntimeError, match="boom"):
        with compat.open_clip_train_hooks(hooks) as module:
            assert module.parse_args([]) is originals["parse_args"]
            # open_clip_train 3.x builds DDP itself (CPU-safe class while hooked); main's tasks do it.
            assert (torch.nn.parallel.DistributedDataParallel is not ddp) == (loop == "loss")
            raise RuntimeError("boom")
    assert {name: getattr(train_main, name) for name in originals} == originals
    assert torch.nn.parallel.DistributedDataParallel is ddp


class _RunsCode:
    """A pickled object that touches a marker file when unpickled: what a resume must never run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        from pathlib import Path

        return (Path(self.marker).touch, ())


def test_resume_reads_checkpoints_without_running_pickled_code(tmp_path, monkeypatch):
    """open_clip_train 3.3.0 reads --resume with torch.load and no weights_only: under torch < 2.6
    (simulated here) that runs a crafted checkpoint's code. Through our entry it is refused, while a
    real training checkpoint (model, optimizer, scaler) still loads."""
    import functools

    import torch
    from open_clip_train import main as train_main

    from mobileclip2.compat import open_clip_train as compat
    from mobileclip2.errors import CorruptCheckpointError

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"epoch": 1, "state_dict": _RunsCode(marker)}, evil)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), betas=(0.9, 0.98))
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    checkpoint = {
        "epoch": 2,
        "name": "run",
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    checkpoint["scaler"] = torch.amp.GradScaler("cpu").state_dict()
    torch.save(checkpoint, tmp_path / "epoch_2.pt")
    monkeypatch.setattr(torch, "load", functools.partial(torch.load, weights_only=False))  # torch < 2.6

    original = train_main.pt_load
    with compat.open_clip_train_hooks({}) as module:
        with pytest.raises(CorruptCheckpointError, match="evil.pt' could not be read"):
            module.pt_load(str(evil), map_location="cpu")
        assert not marker.exists()
        loaded = module.pt_load(str(tmp_path / "epoch_2.pt"), map_location="cpu")
        assert loaded["epoch"] == 2 and loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.98)
    assert train_main.pt_load is original
    original(str(evil))  # the test can fail: open_clip_train's own reader runs the code
    assert marker.exists()


def test_cpu_safe_ddp_only_drops_cpu_device_ids():
    import torch

    from mobileclip2.compat.ddp import cpu_safe_ddp_class, cpu_safe_task

    seen = []

    class FakeDDP:
        def __init__(self, module, device_ids=None, *args, **kwargs):
            seen.append(device_ids)

    safe = cpu_safe_ddp_class(FakeDDP)
    safe(None, device_ids=[torch.device("cpu")])
    safe(None, device_ids=["cpu"])
    safe(None, device_ids=[torch.device("cuda:1")])
    safe(None, device_ids=[0])
    assert seen == [None, None, [torch.device("cuda:1")], [0]]

    class FakeTask:  # open_clip_train >= 4: task.prepare_distributed(device_ids=[device], **ddp_args)
        def prepare_distributed(self, device_ids=None, **ddp_kwargs):
            seen.append((device_ids, ddp_kwargs))
            return self

    task = cpu_safe_task(FakeTask())
    assert task.prepare_distributed(device_ids=[torch.device("cpu")], static_graph=True) is task
    task.prepare_distributed(device_ids=[0])
    assert seen[-2:] == [(None, {"static_graph": True}), ([0], {})]


def test_channel_loader_pushes_or_hands_the_payload_on():
    """open_clip_train 3.x: (images, texts) out, payload pushed; >= 4: dict batches with the payload
    under its key (the task pushes it in loop order); the loop's dict batches are accepted too."""
    import torch

    from mobileclip2.train.channel import ChannelLoader, StepChannel

    images, texts = torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, dtype=torch.long)
    payload = {"batch_size": 2, "has_syn": False, "teacher": torch.ones(2, 8)}
    channel = StepChannel()
    assert [len(b) for b in ChannelLoader([(images, texts, payload)], channel)] == [2]
    assert channel.latest(1)[0]["teacher"].shape == (2, 8)
    batches = list(ChannelLoader([{"image": images, "text": texts}], None, raw_batch=True, payload_key="p"))
    assert sorted(batches[0]) == ["image", "p", "text"]
    assert batches[0]["p"]["images"] is images and batches[0]["p"]["batch_size"] == 2
    with pytest.raises(ValueError, match="channel"):
        ChannelLoader([], None)


def test_student_preprocess_is_read_from_open_clips_train_transform():
    import open_clip

    from mobileclip2.train.main import StudentPreprocess

    _, train, _ = open_clip.create_model_and_transforms("MobileCLIP2-S0", force_image_size=64)
    student = StudentPreprocess.from_transform(train)
    assert student.size == (64, 64) and student.interpolation.value == "bicubic"
    assert student.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)


def test_a_warmup_longer_than_the_run_is_named(caplog):
    """open_clip_train's default --warmup 10000 keeps a short run's learning rate near 0."""
    import argparse
    import logging
    from types import SimpleNamespace

    from mobileclip2.train.main import warn_if_warmup_outlasts_the_run

    data = {"train": SimpleNamespace(dataloader=SimpleNamespace(num_batches=4))}
    with caplog.at_level(logging.WARNING):
        warn_if_warmup_outlasts_the_run(argparse.Namespace(warmup=10000, epochs=1, accum_freq=1), data)
        assert "--warmup 10000 is not shorter than the run (4 optimizer steps)" in caplog.text
        caplog.clear()
        warn_if_warmup_outlasts_the_run(argparse.Namespace(warmup=1, epochs=1, accum_freq=1), data)
        assert caplog.text == ""

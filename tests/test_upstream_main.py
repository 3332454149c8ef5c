"""The acceptance checks of open_clip's and timm's main branches, on local source checkouts.

Run with ``MOBILECLIP2_OPEN_CLIP_SRC=<open_clip checkout>/src MOBILECLIP2_TIMM_SRC=<timm checkout>
python -m pytest -m upstream_main`` (skipped otherwise: CI cannot reach GitHub). Each test runs in
subprocesses whose PYTHONPATH puts the checkouts before the installed open_clip / timm; the
references (equivalence, CoCa tokens) come from the installed pair in this interpreter.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from compat_env import REPO_ROOT, env_for, source_paths
from train_support import COCA_CONFIG, COCA_SAMPLING_CASES, brace, logged_losses, train_log

pytestmark = pytest.mark.upstream_main

COMMON_TRAIN = [
    "--dataset-type", "webdataset", "--precision", "fp32", "--workers", "0",
    "--log-every-n-steps", "1", "--seed", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def sources() -> list[Path]:
    found = source_paths()
    if "open_clip" not in found:
        pytest.skip(
            "set MOBILECLIP2_OPEN_CLIP_SRC (and MOBILECLIP2_TIMM_SRC) to source checkouts of open_clip's "
            "and timm's main branches to run the upstream_main tests"
        )
    return [found[package] for package in ("open_clip", "timm") if package in found]


def run_on_main(sources, args: list[str], cwd: Path = REPO_ROOT, timeout: float = 900, **env):
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(cwd),
        env=env_for(list(sources), OMP_NUM_THREADS="1", **env),
    )


def _ok(proc) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return proc.stdout


def test_the_checkouts_are_what_runs(sources):
    out = _ok(
        run_on_main(sources, ["-c", "import open_clip, timm; print(open_clip.__file__, timm.__file__)"])
    )
    files = out.split()
    for source, file in zip(sources, files):
        assert Path(file).is_relative_to(source), (source, file)


def test_check_all_rows_ok(sources):
    out = _ok(
        run_on_main(
            sources,
            ["-m", "mobileclip2", "check", "--strict", "MobileCLIP2-S0", "MobileCLIP-S0", "MobileCLIP-B"],
        )
    )
    assert out.strip().endswith("3 passed, 0 failed"), out
    assert "skipped" not in out and "not installed" not in out, out


def test_equivalence_of_small_names(sources, tmp_path):
    from equivalence_support import Candidate, problems, run_equivalence

    names = {"MobileCLIP2-S0", "MobileCLIP-S0", "MobileCLIP-B"}
    from equivalence_support import default_cases

    cases = [case for case in default_cases() if case[0] in names]
    candidate = Candidate(("main", "main"), sources=tuple(str(path) for path in sources))
    run = run_equivalence(tmp_path, cases, [candidate])
    models = run.result(candidate)["models"]
    assert set(models) == names
    found = {name: problems(result, run.entries[name]) for name, result in models.items()}
    assert found == {name: [] for name in names}


@pytest.fixture
def ws(train_workspace, tmp_path):
    return {**train_workspace, "logs": tmp_path / "logs"}


def test_plain_open_clip_train(sources, ws):
    args = [
        "-m", "open_clip_train.main", "--model", "MobileCLIP2-S0", "--train-data", brace(ws["plain"]),
        "--train-num-samples", "8", "--batch-size", "4", "--epochs", "1", "--force-image-size", "64",
        "--force-context-length", "16", "--logs", str(ws["logs"]), "--name", "plain", *COMMON_TRAIN,
    ]  # fmt: skip
    _ok(run_on_main(sources, args, cwd=ws["root"]))
    losses = logged_losses(train_log(ws["logs"], "plain"), "Contrastive_loss")
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert (ws["logs"] / "plain" / "checkpoints" / "epoch_1.pt").is_file()


def test_dr_training_on_a_dr_shard(sources, ws):
    args = [
        "-m", "mobileclip2.train", "--model", ws["models"]["student"], "--train-data", ws["fixed_dr"],
        "--train-num-samples", "8", "--batch-size", "8", "--epochs", "3", "--lr", "5e-5", "--warmup", "0",
        "--lr-scheduler", "const", "--save-frequency", "0", "--logs", str(ws["logs"]), "--name", "dr",
        "--dataset-reinforcement", "--dataset-reinforcement-config", ws["fixed_config"],
        "--distill-average-after-softmax", "--distill-loss-weights", "0.5", "0.5", *COMMON_TRAIN,
    ]  # fmt: skip
    _ok(run_on_main(sources, args, cwd=ws["root"]))
    log = train_log(ws["logs"], "dr")
    assert "teacher_dims=(32, 48)" in log
    total = logged_losses(log, "Loss")
    distill = logged_losses(log, "Distill_loss")
    assert len(total) == len(distill) == 3 and all(math.isfinite(v) for v in total + distill)
    assert total[-1] < total[0] - 0.5, total  # the same 8 samples every step: the loss must go down
    assert (ws["logs"] / "dr" / "checkpoints" / "epoch_3.pt").is_file()


COCA_SCRIPT = r"""
import json, sys, torch
import open_clip
folder = sys.argv[1]
torch.manual_seed(0)
model = open_clip.create_model(f"local-dir:{folder}").eval()
image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
tokens = []
for kwargs in json.loads(sys.argv[2]):
    torch.manual_seed(2)
    tokens.append(model.generate(image, **kwargs).tolist())
try:
    model.generate(image)
    beam = "ran"
except Exception as error:
    beam = type(error).__name__
print("RESULT " + json.dumps({"version": open_clip.__version__, "tokens": tokens, "beam": beam}))
"""


def test_coca_sampling_gives_330s_tokens(sources, tmp_path):
    (tmp_path / "open_clip_config.json").write_text(json.dumps(COCA_CONFIG))
    results = {}
    for where, paths in (("installed", None), ("main", sources)):
        proc = subprocess.run(
            [sys.executable, "-c", COCA_SCRIPT, str(tmp_path), json.dumps(COCA_SAMPLING_CASES)],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=str(REPO_ROOT),
            env=env_for(list(paths) if paths else None, OMP_NUM_THREADS="1"),
        )
        line = next(line for line in _ok(proc).splitlines() if line.startswith("RESULT "))
        results[where] = json.loads(line[len("RESULT ") :])
    assert results["installed"]["version"] != results["main"]["version"]
    assert results["main"]["tokens"] == results["installed"]["tokens"]
    import importlib.util

    if importlib.util.find_spec("transformers") is None:  # beam search: a clear error on both
        assert results["main"]["beam"] == results["installed"]["beam"] == "GenerationUnavailableError"


OPTIMIZE_SCRIPT = r"""
import collections, json, torch, open_clip
from mobileclip2.inference import optimize
out = {}
for name in ("MobileCLIP2-S0", "MobileCLIP-B"):
    torch.manual_seed(0)
    model = open_clip.create_model(name).eval()
    tokens = open_clip.get_tokenizer(name)(["a photo of a cat", "x"])
    size = model.visual.image_size
    image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.encode_image(image), model.encode_text(tokens)
        fast = optimize(model)
        got = fast.encode_image(image), fast.encode_text(tokens)
    kinds = collections.Counter(type(m).__name__ for m in fast.modules())
    out[name] = {"diff": [float((a - b).abs().max()) for a, b in zip(want, got)],
                 "attention_blocks": kinds["OneDNNSelfAttentionBlock"]}
print("RESULT " + json.dumps(out))
"""


def test_optimize_takes_open_clips_own_attention(sources):
    import torch

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    line = next(
        line
        for line in _ok(run_on_main(sources, ["-c", OPTIMIZE_SCRIPT])).splitlines()
        if line.startswith("RESULT ")
    )
    for name, result in json.loads(line[len("RESULT ") :]).items():
        assert max(result["diff"]) < 1e-4, (name, result)
        assert result["attention_blocks"] == 12, (name, result)  # every text transformer block

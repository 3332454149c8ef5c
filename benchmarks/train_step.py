"""Time per training step: DR (stored teacher embeddings) vs plain CLIP (upstream) vs online distillation.

All three go through the real loops, in one invocation, on the same machine, same data, same
student and batch size:

* ``plain``: upstream ``python -m open_clip_train.main`` (the reference every ratio is against);
* ``dr``: ``python -m mobileclip2.train --dataset-reinforcement`` with one caption per image
  (``--dataset-reinforcement-mix-synthetic``, ratio 0.5): the same student work as ``plain`` plus
  everything DR adds (augmentation replay, decoding stored embeddings, the distillation loss);
* ``dr-syn``: DR as Apple trains by default, real *and* synthetic caption per image (the student
  embeds twice as many captions, so this costs more by design; reported for completeness);
* ``online``: ``python -m mobileclip2.train --distill-model ...`` with the same teacher ensemble
  run live on every batch, one caption per image.

The shards are made once with ``mobileclip2.reinforce.generate`` (the same teachers), so the DR run
reads real reinforced data. Weights are random (no downloads): compute does not depend on them.
Per-step time is open_clip_train's own ``Batch (t)`` log (data + forward + backward + optimizer),
median over the measured steps after ``--warmup-steps``. ``--workers 0`` so the data work DR adds
is inside the measured step, not hidden in a loader process.

Clock: on a machine shared with other jobs, wall-clock step times swing several-fold from one
step to the next. By default (``--clock cpu``) each run is single-threaded (OMP_NUM_THREADS=1) and
the loop's clock (``open_clip_train.train.time``) is pointed at the process CPU time, so
``Batch (t)`` is the CPU seconds one step costs, which other jobs do not change; on an idle core
it equals the wall time of that step. ``--clock wall --threads N`` measures wall time instead.
Modes run in ``--rounds`` interleaved rounds so slow phases hit all of them alike.

Writes a section into docs/benchmarks.md (between markers, replacing an older one).

    python benchmarks/train_step.py                       # defaults below (CPU, fp32)
    python benchmarks/train_step.py --teachers ViT-B-32,ViT-B-32 --steps 2   # quick look
    python benchmarks/train_step.py --device cuda        # GPU: batch 128, amp_bf16, 8 workers, wall clock

With ``--device cuda`` the section is the GPU one (its own markers): wall-clock step times,
data-loading workers on, and the time each step waited for data (open_clip_train's
``Data (t)``), from which the DR loader's samples/s per worker is derived.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- train_step:begin -->", "<!-- train_step:end -->"
GPU_BEGIN, GPU_END = "<!-- train_step-gpu:begin -->", "<!-- train_step-gpu:end -->"
WORDS = "red green blue square circle cat dog tree car sky stripes dots boat house hill".split()


def make_plain_shards(root: Path, count: int, size: int, seed: int = 0) -> list[str]:
    import numpy as np
    from PIL import Image

    from mobileclip2.reinforce.storage import Output

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for index in range(count):
        height, width = int(rng.integers(size, size * 5 // 4)), int(rng.integers(size, size * 5 // 4))
        pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        words = rng.choice(WORDS, size=4, replace=False)
        samples.append(
            {
                "__key__": f"{index:06d}",
                "jpg": buffer.getvalue(),
                "txt": f"a photo of a {' '.join(words)}".encode(),
                "syn.json": json.dumps({"syn_text": [f"an image of {words[0]} and {words[1]}"]}).encode(),
            }
        )
    path = root / "00000.tar"
    Output(path.parent).write_shard(path.name, samples)
    return [str(path)]


def train_command(
    module: str, args: argparse.Namespace, data: str, name: str, logs: Path, extra: list[str]
) -> list[str]:
    return [
        sys.executable, "-m", module, "--model", args.student, "--train-data", data,
        "--dataset-type", "webdataset",
        "--train-num-samples", str(args.batch_size * (args.steps + args.warmup_steps)),
        "--batch-size", str(args.batch_size), "--epochs", "1", "--precision", args.precision,
        "--workers", str(args.workers), "--log-every-n-steps", "1", "--logs", str(logs), "--name", name,
        "--seed", "0", "--save-frequency", "0", "--lr", "1e-5", "--warmup", "0", *extra,
    ]  # fmt: skip


def step_times(log: str) -> list[float]:
    return [float(v) for v in re.findall(r"Batch \(t\): ([0-9.]+)", log)]


def data_times(log: str) -> list[float]:
    """Seconds each step waited for its batch (open_clip_train's ``Data (t)``)."""
    return [float(v) for v in re.findall(r"Data \(t\): ([0-9.]+)", log)]


CPU_CLOCK_RUNNER = """
import runpy, sys, time
import open_clip_train.train as loop

class ProcessClock:
    def __getattr__(self, name):
        return getattr(time, name)

    def time(self):
        return time.process_time()

loop.time = ProcessClock()  # the loop's Batch (t) / Data (t) become CPU seconds of this process
module = sys.argv.pop(1)
sys.argv[0] = module
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def run_mode(
    command: list[str], logs: Path, name: str, threads: int, clock: str
) -> tuple[list[float], float, list[float]]:
    """Run one training command; -> (per-step times, wall seconds of the whole run, per-step data waits)."""
    if clock == "cpu":
        module_index = command.index("-m")
        command = [command[0], "-c", CPU_CLOCK_RUNNER, *command[module_index + 1 :]]
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=logs)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-4000:]}")
    log = (logs / name / "out.log").read_text()
    return step_times(log), wall, data_times(log)


def render(args, results, reinforce_seconds, started, load_before, load_after, waits=None) -> str:
    from _support import cpu_description, gpu_description

    from mobileclip2.system import package_versions, usable_cores

    gpu = args.device == "cuda"
    plain = statistics.median(results["plain"])
    device = (
        f"GPU, {gpu_description()}, {args.workers} data workers"
        if gpu
        else f"CPU, {cpu_description()}, {usable_cores()} cores visible"
    )
    lines = [
        GPU_BEGIN if gpu else BEGIN,
        f"## Training step time on {'GPU' if gpu else 'CPU'}: DR vs plain CLIP vs online distillation",
        "",
        f"Measured {started} with `benchmarks/train_step.py` (one run, modes back to back)"
        + (" -- DRY RUN on CPU, not a measurement" if args.dry_run else "")
        + ".",
        "",
        f"- device: {device}, OMP_NUM_THREADS={args.threads}; "
        f"load average before/after: {load_before} / {load_after}",
        "- clock: "
        + (
            "CPU seconds of the (single-threaded) training process per step, immune to the other jobs on the "
            "machine; equals wall time on an idle core"
            if args.clock == "cpu"
            else "wall-clock seconds per step"
        ),
        "- versions: "
        + ", ".join(
            f"{k} {v}"
            for k, v in package_versions("open_clip_torch", "timm", "webdataset", "mobileclip2").items()
        ),
        f"- student {args.student}, batch {args.batch_size}, precision {args.precision}, "
        f"--workers {args.workers}; teachers {args.teachers} (random weights, same compute as trained ones); "
        f"{args.rounds} interleaved round(s) of {args.steps} measured steps after {args.warmup_steps} "
        "warm-up step(s) per mode, median",
        "- command: `" + " ".join(["python benchmarks/train_step.py", *args.argv]) + "`",
        "- one-time cost of making the DR shards "
        f"(`mobileclip2 reinforce`, {args.num_augmentations} augmentation(s) "
        f"per image): {reinforce_seconds / args.samples:.2f} s per image",
        "",
        "| mode | what runs | s / step (median) | steps measured | vs plain |",
        "|---|---|---:|---:|---:|",
    ]
    what = {
        "plain": "upstream `open_clip_train.main`, CLIP loss",
        "dr": "`mobileclip2.train` DR, stored embeddings, one caption/image",
        "dr-syn": "`mobileclip2.train` DR, real + synthetic caption/image (Apple default)",
        "online": "`mobileclip2.train` online distillation, live teachers",
    }
    for mode, times in results.items():
        median = statistics.median(times)
        lines.append(f"| {mode} | {what[mode]} | {median:.3f} | {len(times)} | {median / plain:.2f}x |")
    if waits:
        lines += ["", "Waiting for data (median s of each step, open_clip_train's `Data (t)`):"]
        for mode, wait in waits.items():
            if wait:
                step = statistics.median(results[mode])
                per_worker = args.batch_size / step / max(1, args.workers)
                lines.append(
                    f"- {mode}: {statistics.median(wait):.3f} s of a {step:.3f} s step; the loader delivered "
                    f"{args.batch_size / step:.0f} samples/s, {per_worker:.0f} per worker"
                    + (" (data-bound: the loader's own rate)" if statistics.median(wait) > 0.2 * step else
                       " (not data-bound: a lower bound on the loader's rate)")
                )  # fmt: skip
    dr = statistics.median(results["dr"])
    online = statistics.median(results["online"])
    lines += [
        "",
        f"- DR / plain = **{dr / plain:.2f}x** (target <= 1.1x: {'met' if dr / plain <= 1.1 else 'NOT met'})",
        f"- online / DR = **{online / dr:.2f}x** (target >= 3x: {'met' if online / dr >= 3 else 'NOT met'})",
        "",
        "Raw step times (s): "
        + "; ".join(f"{m}: {', '.join(f'{t:.3f}' for t in ts)}" for m, ts in results.items()),
        GPU_END if gpu else END,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--dry-run", action="store_true", help="--device cuda settings, run on CPU with tiny sizes"
    )
    parser.add_argument("--student", default="MobileCLIP2-S0")
    parser.add_argument(
        "--teachers",
        default="ViT-L-14,ViT-L-14",
        help="ensemble (Apple's MobileCLIP2 teachers are 2x ViT-L-14)",
    )
    parser.add_argument("--teachers-pretrained", default="N/A,N/A")
    parser.add_argument("--batch-size", type=int, default=None, help="default 8 (CPU), 128 (cuda)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per mode")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--num-augmentations", type=int, default=1)
    parser.add_argument("--precision", default=None, help="default fp32 (CPU), amp_bf16 (cuda)")
    parser.add_argument("--workers", type=int, default=None, help="default 0 (CPU), 8 (cuda)")
    parser.add_argument(
        "--clock", choices=("cpu", "wall"), default=None, help="default cpu (CPU), wall (cuda)"
    )
    parser.add_argument("--threads", type=int, default=None, help="OMP threads per run (cpu clock: always 1)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of all modes")
    parser.add_argument("--modes", default="plain,dr,dr-syn,online")
    parser.add_argument("--output", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--workdir", default=None, help="keep data and logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    gpu = args.device == "cuda"
    if gpu and args.dry_run:
        defaults = dict(batch_size=2, precision="fp32", workers=1, clock="wall")  # CPU autocast bf16 crawls
        args.teachers, args.teachers_pretrained, args.steps = "ViT-B-32", "N/A", min(args.steps, 2)
        if args.modes == "plain,dr,dr-syn,online":
            args.modes = "plain,dr,online"
    elif gpu:
        defaults = dict(batch_size=128, precision="amp_bf16", workers=8, clock="wall")
        if args.modes == "plain,dr,dr-syn,online":
            args.modes = "plain,dr,online"
    else:
        defaults = dict(batch_size=8, precision="fp32", workers=0, clock="cpu")
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if gpu and not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("--device cuda: torch sees no CUDA device (use --dry-run to check the script on CPU)")
            return 2
    from mobileclip2.system import set_threads, usable_cores

    args.samples = args.batch_size * (args.steps + args.warmup_steps)
    if args.clock == "cpu" or args.threads is None:
        args.threads = 1 if args.clock == "cpu" else usable_cores()
    set_threads(args.threads)
    import open_clip
    from _support import utc_stamp

    from mobileclip2.reinforce.generate import ReinforceOptions, reinforce
    from mobileclip2.teachers import TeacherEnsemble, parse_teacher_specs

    started = utc_stamp()
    load_before = " ".join(f"{v:.1f}" for v in os.getloadavg())
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mc2-train-bench-"))
    size = open_clip.create_model(args.student).visual.preprocess_cfg["size"]
    size = size if isinstance(size, int) else max(size)
    plain = make_plain_shards(work / "plain", args.samples, size)
    print(f"data: {args.samples} images in {work}", flush=True)

    teacher_device = "cuda" if gpu and not args.dry_run else "cpu"
    teachers = TeacherEnsemble.load(
        parse_teacher_specs(args.teachers, args.teachers_pretrained), device=teacher_device
    )
    t0 = time.perf_counter()
    options = ReinforceOptions(
        num_augmentations=args.num_augmentations, batch_size=args.batch_size, overwrite=True
    )
    report = reinforce(plain, work / "dr", teachers, options, log=print)
    reinforce_seconds = time.perf_counter() - t0
    del teachers
    print(f"reinforce: {reinforce_seconds:.1f}s", flush=True)

    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    dr_flags = [
        "--dataset-reinforcement",
        "--dataset-reinforcement-config",
        report.config_path,
        "--distill-logit-scale",
        "70",
        "60",
    ]
    if len(args.teachers.split(",")) == 1:
        dr_flags[-2:] = ["100"]
    modes = {
        "plain": ("open_clip_train.main", plain[0], []),
        "dr": (
            "mobileclip2.train",
            report.shards[0],
            dr_flags
            + ["--dataset-reinforcement-mix-synthetic", "--dataset-reinforcement-mix-synthetic-ratio", "0.5"],
        ),
        "dr-syn": ("mobileclip2.train", report.shards[0], dr_flags),
        "online": (
            "mobileclip2.train",
            plain[0],
            ["--distill-model", args.teachers, "--distill-pretrained", args.teachers_pretrained],
        ),
    }
    results = {mode: [] for mode in args.modes.split(",")}
    waits = {mode: [] for mode in results}
    for round_index in range(args.rounds):
        for mode in results:
            module, data, extra = modes[mode]
            name = f"{mode}-{round_index}"
            times, wall, wait = run_mode(
                train_command(module, args, data, name, logs, extra), logs, name, args.threads, args.clock
            )
            results[mode] += times[args.warmup_steps :]
            waits[mode] += wait[args.warmup_steps :]
            print(f"{name}: {', '.join(f'{t:.3f}' for t in times)} s/step ({wall:.0f}s run)", flush=True)
    load_after = " ".join(f"{v:.1f}" for v in os.getloadavg())
    section = render(
        args, results, reinforce_seconds, started, load_before, load_after, waits if gpu else None
    )
    print(section)
    if {"plain", "dr", "online"} <= set(results):
        from _support import write_doc_section

        write_doc_section(Path(args.output), *((GPU_BEGIN, GPU_END) if gpu else (BEGIN, END)), section)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

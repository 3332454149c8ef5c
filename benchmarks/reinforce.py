"""Dataset-reinforcement throughput: images/s per device for the DataCompDR recipe, images/s per CPU
core for decoding + augmenting, and the wall time this implies for DataCompDR-12M on 8 devices.

The recipe (Apple's DataCompDR-12M): two ViT-L-14 teachers embed every stored augmentation
(10 or 30 per image) and the real + 5 synthetic captions; a CoCa ViT-L-14 writes the 5 synthetic
captions. Each stage runs the production code (mobileclip2.reinforce.generate: ShardViews for the
CPU side, embed_items / Captioner for the device side) on synthetic JPEGs, after a warm-up, for a
short timed window. Weights are random (``pretrained=None``, no downloads): compute does not
depend on them. There is no upstream implementation in this environment to compare against as a
ratio (Apple's generator, apple/ml-mobileclip-dr, is a separate project), so rows are absolute.

* ``--device cuda``: real-size ViT-L-14 x 2 in bf16 and CoCa ViT-L-14 under bf16 autocast;
* ``--device cpu``: small teachers (ViT-S-32 x 2, CoCa ViT-B-32), fp32 -- a smoke row, not the recipe.

Writes its own block of docs/benchmarks.md (between ``<!-- reinforce:<device>:begin/end -->``
markers inside the ``reinforce`` section), after every stage: a run cut short (``timeout``) leaves
the stages it finished and marks the rest "not measured".

    python benchmarks/reinforce.py --device cpu --doc docs/benchmarks.md
    timeout 120 python benchmarks/reinforce.py --device cuda --doc docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import shlex
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SECTION_BEGIN, SECTION_END = "<!-- reinforce:begin -->", "<!-- reinforce:end -->"
DATASET_IMAGES, DEVICES, SYN_CAPTIONS = 12_800_000, 8, 5
RECIPES = {
    "cuda": {"teachers": "ViT-L-14", "captioner": "coca_ViT-L-14", "batch": 32, "precision": "bf16"},
    "cpu": {"teachers": "ViT-S-32", "captioner": "coca_ViT-B-32", "batch": 2, "precision": "fp32"},
}
NOT_MEASURED = "not measured"


def block_markers(device: str) -> tuple[str, str]:
    return f"<!-- reinforce:{device}:begin -->", f"<!-- reinforce:{device}:end -->"


def empty_section() -> str:
    blocks = "\n\n".join(
        f"{begin}\n**{device}**: {NOT_MEASURED} as of {datetime.now(timezone.utc):%Y-%m-%d} "
        f"(run `python benchmarks/reinforce.py --device {device} "
        f"--doc docs/benchmarks.md`{' on a GPU machine' if device == 'cuda' else ''})\n{end}"
        for device in ("cuda", "cpu")
        for begin, end in [block_markers(device)]
    )
    return (
        f"{SECTION_BEGIN}\n## Dataset reinforcement throughput (`mobileclip2 reinforce`)\n\n"
        "Written by `benchmarks/reinforce.py` (see its docstring for what each number is). Recipe: "
        "DataCompDR's (2 x ViT-L-14 teachers, 10 or 30 augmentations, real + 5 synthetic captions embedded, "
        "5 CoCa captions generated); the CPU row uses small teachers and is only a smoke test. "
        "*images/s per device* is the device side (teachers, captioner), *per core* the decode + augment "
        "side (DataLoader workers); the wall time assumes enough cores per device (the `cores/device` "
        "column).\n\n"
        f"{blocks}\n{SECTION_END}"
    )


def write_block(doc: Path, device: str, text: str) -> None:
    """Replace this device's block (creating the section at the end if missing); atomic."""
    from _support import write_doc_section

    if SECTION_BEGIN not in (doc.read_text(encoding="utf-8") if doc.exists() else ""):
        write_doc_section(doc, SECTION_BEGIN, SECTION_END, empty_section())
    begin, end = block_markers(device)
    write_doc_section(doc, begin, end, f"{begin}\n{text.strip()}\n{end}")


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return NOT_MEASURED
    return f"{value:,.{digits}f}" if value >= 10 else f"{value:.3g}"


def render(device: str, info: dict, results: dict) -> str:
    recipe = RECIPES[device]
    lines = [
        f"**{device}** ({info['device_name']}), {info['date']}, torch {info['torch']}, "
        f"open_clip {info['open_clip']}, teachers 2 x {recipe['teachers']} ({recipe['precision']}), "
        f"captioner {recipe['captioner']}, batch {recipe['batch']} images; "
        f"command: `{info['command']}`",
        "",
        "| augmentations | teachers + text: images/s per device | + 5 CoCa captions: images/s per device "
        "| decode + augment: images/s per CPU core | cores/device needed | 12.8M images on 8 devices |",
        "|---|---|---|---|---|---|",
    ]
    caption_s = results.get("caption_s_per_image")
    for count in (10, 30):
        teacher = results.get(f"teachers_{count}")
        core = results.get(f"cpu_{count}")
        full = (
            None if teacher is None or caption_s is None else 1.0 / (1.0 / teacher + SYN_CAPTIONS * caption_s)
        )
        rate = full if full is not None else None
        cores = None if rate is None or core is None else rate / core
        if rate is not None:
            wall = f"{DATASET_IMAGES / (DEVICES * rate) / 3600:,.1f} h"
        elif teacher is not None:  # a lower bound: the captioner only adds time
            wall = (
                f">= {DATASET_IMAGES / (DEVICES * teacher) / 3600:,.1f} h "
                f"(teachers only; captioner {NOT_MEASURED})"
            )
        else:
            wall = NOT_MEASURED
        lines.append(f"| {count} | {fmt(teacher)} | {fmt(full)} | {fmt(core)} | {fmt(cores)} | {wall} |")
    if caption_s is not None:
        lines.append(
            f"\nCoCa: {1.0 / caption_s:,.1f} generated captions/s per device "
            "(open_clip `generate`, top-p, 30 tokens)."
        )
    missing = [stage for stage in results.get("_stages", []) if stage not in results.get("_done", [])]
    if missing:
        lines.append(f"\nNot measured (time budget or failure): {', '.join(missing)}.")
    for note in results.get("_notes", []):
        lines.append(f"\n{note}")
    return "\n".join(lines)


def synthetic_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """DataComp-like images: ~512 x 384 JPEGs with some structure (decode cost depends on size)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        height, width = (384, 512) if index % 2 else (512, 384)
        base = rng.integers(0, 255, size=(height // 16, width // 16, 3), dtype=np.uint8)
        pixels = np.kron(base, np.ones((16, 16, 1), dtype=np.uint8))
        pixels = np.clip(pixels.astype(int) + rng.integers(-20, 20, size=pixels.shape), 0, 255).astype(
            np.uint8
        )
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def samples_of(images: list[bytes]) -> list[dict]:
    captions = [f"a photo of thing number {i}" for i in range(SYN_CAPTIONS)]
    import json

    return [
        {
            "__key__": f"{i:09d}",
            "jpg": data,
            "txt": b"a photo of a thing",
            "syn.json": json.dumps({"syn_text": captions}).encode(),
        }
        for i, data in enumerate(images)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=sorted(RECIPES), default="cpu")
    parser.add_argument("--doc", type=Path, default=None, help="docs/benchmarks.md to write the block into")
    parser.add_argument("--window", type=float, default=None, help="timed seconds per stage (cuda 4, cpu 6)")
    parser.add_argument(
        "--budget", type=float, default=None, help="stop starting stages after this (cuda 105 s)"
    )
    parser.add_argument("--teachers", default=None, help="override the recipe's teacher (quick looks only)")
    parser.add_argument(
        "--captioner", default=None, help="override the recipe's captioner (quick looks only)"
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="override the recipe's batch (quick looks only)"
    )
    args = parser.parse_args(argv)
    RECIPES[args.device] = {
        **RECIPES[args.device],
        **{
            key: value
            for key in ("teachers", "captioner", "batch")
            if (value := getattr(args, key)) is not None
        },
    }
    from _support import utc_stamp

    date, started = utc_stamp(), time.perf_counter()
    window = args.window or (4.0 if args.device == "cuda" else 6.0)
    budget = args.budget or (105.0 if args.device == "cuda" else 480.0)

    import open_clip
    import torch

    from mobileclip2.benchmarking import seconds_per_call
    from mobileclip2.reinforce.generate import (
        DEFAULT_AUGMENTATION,
        Captioner,
        ReinforceOptions,
        ShardViews,
        embed_items,
        unit_range_augmentation,
    )
    from mobileclip2.system import set_threads, torch_dtype, usable_cores
    from mobileclip2.teachers import TeacherEnsemble, load_member

    recipe = RECIPES[args.device]
    device = torch.device(args.device)
    dtype = torch_dtype(recipe["precision"])
    info = {
        "date": date,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "device_name": torch.cuda.get_device_name(device)
        if args.device == "cuda"
        else f"{platform.processor() or platform.machine()}, {usable_cores()} cores",
        "command": "python benchmarks/reinforce.py "
        + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
    }
    stages = ["cpu_10", "cpu_30", "teachers_10", "teachers_30", "captioner"]
    results: dict = {"_stages": stages, "_done": [], "_notes": []}
    if args.device == "cpu":
        results["_notes"].append(
            "CPU row: small teachers, on whatever else the machine runs; it checks the benchmark works, "
            "it is not a throughput claim "
            "(on CPUs the text towers dominate: 12 captions x 2 teachers per image)."
        )

    def publish() -> None:
        text = render(args.device, info, results)
        if args.doc is not None:
            write_block(args.doc, args.device, text)
        print(text, flush=True)

    def stop(signum, frame):  # `timeout` sends SIGTERM: keep what was measured, say what was not
        results["_notes"].append("The run was stopped by its time limit.")
        publish()
        sys.exit(124)

    signal.signal(signal.SIGTERM, stop)
    config = dict(DEFAULT_AUGMENTATION, random_resized_crop={"interpolation": "bicubic", "size": [224, 224]})
    augmentation = unit_range_augmentation(config)
    samples = samples_of(synthetic_jpegs(recipe["batch"]))
    prepared = {}

    def left() -> float:
        return budget - (time.perf_counter() - started)

    # CPU side: one core, as one DataLoader worker.
    threads = torch.get_num_threads()
    set_threads(1)
    for count in (10, 30):
        options = ReinforceOptions(num_augmentations=count, batch_size=recipe["batch"])
        views = ShardViews(samples, "bench.tar", augmentation, options)
        index = iter(range(10**9))
        per_image = seconds_per_call(
            lambda views=views, index=index: views[next(index) % len(samples)], min(window, 3.0), minimum=3
        )
        results[f"cpu_{count}"] = 1.0 / per_image
        results["_done"].append(f"cpu_{count}")
        prepared[count] = [views[i] for i in range(len(samples))]
        publish()
    set_threads(threads)

    # Device side.
    with contextlib.suppress(Exception):
        torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with torch.device(device):
            members = [load_member(recipe["teachers"], None, device) for _ in range(2)]
        teachers = TeacherEnsemble(members).to(device=device, dtype=dtype)
        for count in (10, 30):
            if left() < window + 5:
                break
            options = ReinforceOptions(num_augmentations=count, batch_size=recipe["batch"])

            def step(count=count, options=options, teachers=teachers):
                embed_items(prepared[count], samples, teachers, options)
                if device.type == "cuda":
                    torch.cuda.synchronize()

            results[f"teachers_{count}"] = recipe["batch"] / seconds_per_call(step, window, minimum=2)
            results["_done"].append(f"teachers_{count}")
            publish()
        del teachers, members
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if left() > window + 20:
            with torch.device(device):
                captioner = Captioner(recipe["captioner"], None, device, dtype)
            batch = torch.stack([captioner.preprocess(_decode(s["jpg"])) for s in samples])

            def caption():
                captioner.caption(batch, 1, seed=0)
                if device.type == "cuda":
                    torch.cuda.synchronize()

            results["caption_s_per_image"] = seconds_per_call(caption, window, minimum=1) / recipe["batch"]
            results["_done"].append("captioner")
    except Exception as error:  # noqa: BLE001 - report what was measured and why the rest was not
        results["_notes"].append(f"Stopped early: {type(error).__name__}: {str(error)[:300]}")
    publish()
    return 0


def _decode(data: bytes):
    from mobileclip2.augment import decode_image

    return decode_image(data)


if __name__ == "__main__":
    sys.exit(main())

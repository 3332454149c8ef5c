"""DR shards: `mobileclip2 reinforce` output round-trips through the training data pipeline.

The stored teacher embeddings must equal the teachers' embeddings of the replayed augmentation,
the loader must hand the loop (images, texts) and the loss the matching stored embeddings, and
every way the shards can be unfit for a run must fail with a message that says what to do.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json

import numpy as np
import pytest
import torch
from train_support import brace

from mobileclip2.augment import Augmentation, student_augmentation_config
from mobileclip2.reinforce.shards import decode_embeddings
from mobileclip2.reinforce.storage import read_shard
from mobileclip2.teachers import TeacherEnsemble, member_input, parse_teacher_specs
from mobileclip2.train.data import (
    DRDataError,
    DRSampling,
    build_dr_dataloader,
    decode_sample,
    inspect_shards,
    prepare_sample,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ws(train_workspace):
    return train_workspace


@pytest.fixture(scope="module")
def teachers(ws):
    specs = parse_teacher_specs([ws["models"]["teacher_a"], ws["models"]["teacher_b"]], "N/A,N/A")
    return TeacherEnsemble.load(specs)


@pytest.fixture(scope="module")
def tokenizer(ws):
    import open_clip

    return open_clip.get_tokenizer(ws["models"]["student"])


def _config(path):
    return json.loads(open(path).read())


def test_reinforce_writes_apples_layout_and_a_config(ws, teachers):
    config = _config(ws["dr_config"])
    assert config["teacher_dimension"] == [32, 48] and config["num_samples"] == 3
    assert config["teacher_logit_scale"] == pytest.approx(teachers.logit_scales)
    assert config["reinforce"]["image_augmentation"]["random_resized_crop"]["size"] == [
        48,
        48,
    ]  # largest teacher
    plain, reinforced = read_shard(ws["plain"][0]), read_shard(ws["dr"][0])
    assert [s["__key__"] for s in plain] == [s["__key__"] for s in reinforced]
    for before, after in zip(plain, reinforced):
        for key, value in before.items():
            if key != "syn.json":
                assert after[key] == value  # original bytes kept: replay decodes the same pixels
        assert {"paug.json", "syn.json", "npz"} <= set(after)
        emb = decode_embeddings(after)
        assert emb["image_emb"].shape == (3, 80) and emb["text_emb"].shape == (1, 80)
        assert emb["syn_text_emb"].shape == (2, 80)


def test_stored_embeddings_equal_the_teachers_on_the_replayed_augmentation(ws, teachers):
    config = _config(ws["dr_config"])["reinforce"]["image_augmentation"]
    unit = Augmentation.from_config({k: v for k, v in config.items() if k != "normalize"})
    for raw in read_shard(ws["dr"][1])[:4]:
        sample = decode_sample(raw, online=False)
        emb = decode_embeddings(raw)
        views = torch.stack([unit.replay(sample["image"], unit.decompress(p)) for p in sample["params"]])
        assert torch.allclose(
            teachers.encode_unit_images(views), torch.from_numpy(emb["image_emb"]), atol=1e-5
        )
        assert torch.allclose(
            teachers.encode_strings(sample["texts"], "cpu"), torch.from_numpy(emb["text_emb"]), atol=1e-5
        )
        syn = sample["syn"]["syn_text"]
        assert torch.allclose(
            teachers.encode_strings(syn, "cpu"), torch.from_numpy(emb["syn_text_emb"]), atol=1e-5
        )
        # Each member saw its own size and normalization of the same view.
        first = views[:1]
        a = teachers.members[0]
        direct = torch.nn.functional.normalize(a.model.encode_image(member_input(first, a)), dim=-1)
        assert torch.allclose(direct, torch.from_numpy(emb["image_emb"][:1, :32]), atol=1e-5)


def _args(ws, **overrides):
    values = dict(
        train_data=brace(ws["dr"]),
        train_num_samples=16,
        batch_size=4,
        workers=0,
        world_size=1,
        seed=0,
        dataset_resampled=False,
        train_data_upsampling_factors=None,
        dataset_reinforcement_filter_image_size=None,
    )
    values.update(overrides)
    return argparse.Namespace(**values)


def _student_augmentation(ws):
    config = _config(ws["dr_config"])["reinforce"]["image_augmentation"]
    return Augmentation.from_config(
        student_augmentation_config(config, (64, 64), "bilinear", [0.0] * 3, [1.0] * 3)
    )


def test_loader_yields_replayed_images_real_then_synthetic_texts_and_matching_embeddings(ws, tokenizer):
    augmentation = _student_augmentation(ws)
    sampling = DRSampling(sample_sequential=True)  # epoch 0: augmentation 0, caption 0, synthetic caption 0
    layout = inspect_shards(brace(ws["dr"]), sampling, augmentation)
    assert layout.embedding_width == 80 and layout.num_augmentations == 3 and layout.syn_keys == ("syn_text",)
    info = build_dr_dataloader(_args(ws), augmentation, sampling, tokenizer)
    assert info.dataloader.num_batches == 4 and info.dataloader.num_samples == 16
    by_text = {}
    for shard in ws["dr"]:
        for raw in read_shard(shard):
            by_text[raw["txt"].decode()] = raw
    batches = list(info.dataloader)
    assert len(batches) == 4
    images, texts, payload = batches[0]
    assert images.shape == (4, 3, 64, 64) and texts.shape == (8, 77)
    assert payload["batch_size"] == 4 and payload["has_syn"]
    image_emb, text_emb, syn_emb = payload["teacher"]
    assert image_emb.shape == text_emb.shape == syn_emb.shape == (4, 80)
    from open_clip import decode

    for row in range(4):
        caption = decode(texts[row]).replace("<start_of_text>", "").split("<end_of_text>")[0].strip()
        raw = next(r for t, r in by_text.items() if t.lower() == caption)
        sample = decode_sample(raw, online=False)
        emb = decode_embeddings(raw)
        assert torch.equal(
            images[row], augmentation.replay(sample["image"], augmentation.decompress(sample["params"][0]))
        )
        assert torch.equal(image_emb[row], torch.from_numpy(emb["image_emb"][0]))
        assert torch.equal(text_emb[row], torch.from_numpy(emb["text_emb"][0]))
        assert torch.equal(syn_emb[row], torch.from_numpy(emb["syn_text_emb"][0]))
        assert torch.equal(texts[4 + row], tokenizer([sample["syn"]["syn_text"][0]])[0])


def test_mixing_synthetic_captions_swaps_text_and_embedding(ws, tokenizer):
    augmentation = _student_augmentation(ws)
    raw = read_shard(ws["dr"][0])[0]
    sample = decode_sample(raw, online=False)
    emb = decode_embeddings(raw)
    always = prepare_sample(
        sample,
        augmentation,
        tokenizer,
        DRSampling(mix_synthetic=True, mix_synthetic_ratio=1.0, sample_sequential=True),
    )
    assert always["syn_text"] is None and always["teacher"][2] is None
    assert torch.equal(always["text"], tokenizer([sample["syn"]["syn_text"][0]])[0])
    assert torch.equal(always["teacher"][1], torch.from_numpy(emb["syn_text_emb"][0]))
    never = prepare_sample(
        sample, augmentation, tokenizer, DRSampling(mix_synthetic=True, mix_synthetic_ratio=0.0)
    )
    assert torch.equal(never["text"], tokenizer(sample["texts"])[0])
    assert torch.equal(never["teacher"][1], torch.from_numpy(emb["text_emb"][0]))


def test_online_mode_draws_fresh_augmentations_and_needs_no_embeddings(ws, tokenizer):
    augmentation = _student_augmentation(ws)
    raw = {k: v for k, v in read_shard(ws["dr"][0])[0].items() if k not in ("npz", "paug.json")}
    sampling = DRSampling(online=True)
    inspect_shards(ws["dr"][0], sampling)  # embeddings not required
    first = prepare_sample(decode_sample(raw, online=True), augmentation, tokenizer, sampling)
    second = prepare_sample(decode_sample(raw, online=True), augmentation, tokenizer, sampling)
    assert first["teacher"] is None and first["syn_text"] is not None
    assert first["image"].shape == (3, 64, 64) and not torch.equal(first["image"], second["image"])


def test_bfloat16_pth_gz_and_datacompdr_v1_layout_load(ws, tokenizer):
    """DataCompDR-12M: bf16 pth.gz, param_aug as a JSON string, synthetic rows appended to text_emb."""
    augmentation = _student_augmentation(ws)
    raw = dict(read_shard(ws["dr"][0])[0])
    emb = decode_embeddings(raw)
    merged = torch.cat([torch.from_numpy(emb["text_emb"]), torch.from_numpy(emb["syn_text_emb"])])
    buffer = io.BytesIO()
    torch.save(
        {"image_emb": torch.from_numpy(emb["image_emb"]).bfloat16(), "text_emb": merged.bfloat16()}, buffer
    )
    raw.pop("npz")
    raw["pth.gz"] = gzip.compress(buffer.getvalue())
    raw["paug.json"] = json.dumps(
        {"param_aug": json.dumps(json.loads(raw["paug.json"])["param_aug"])}
    ).encode()
    sample = decode_sample(raw, online=False)
    out = prepare_sample(sample, augmentation, tokenizer, DRSampling(sample_sequential=True), epoch=1)
    image_emb, text_emb, syn_emb = out["teacher"]
    assert image_emb.dtype == torch.float32
    assert torch.allclose(image_emb, torch.from_numpy(emb["image_emb"][1]), atol=1e-2)
    assert torch.allclose(
        syn_emb, torch.from_numpy(emb["syn_text_emb"][1]), atol=1e-2
    )  # row 1 + 1 of text_emb
    assert torch.allclose(text_emb, torch.from_numpy(emb["text_emb"][0]), atol=1e-2)


def test_plain_shards_are_refused_with_what_is_missing_and_what_to_run(ws):
    with pytest.raises(DRDataError) as error:
        inspect_shards(ws["plain"][0], DRSampling())
    message = str(error.value)
    assert "paug.json" in message and "npz or pth.gz" in message and "mobileclip2 reinforce" in message


def test_missing_synthetic_captions_point_to_the_real_caption_only_mode(ws, tmp_path):
    from train_support import make_plain_shards

    bare = make_plain_shards(tmp_path, num_shards=1, per_shard=2, syn=False)
    with pytest.raises(DRDataError, match="mix-synthetic-ratio 0"):
        inspect_shards(bare[0], DRSampling(online=True))
    inspect_shards(bare[0], DRSampling(online=True, mix_synthetic=True, mix_synthetic_ratio=0.0))


def test_wrong_config_and_widths_are_refused(ws):
    other = Augmentation.from_config(
        {"random_resized_crop": {"size": 64}, "random_horizontal_flip": {}, "to_tensor": {}}
    )
    with pytest.raises(DRDataError, match="--dataset-reinforcement-config"):
        inspect_shards(ws["dr"][0], DRSampling(), other)
    from mobileclip2.train.args import TrainArgsError, resolve_teacher_dims, resolve_teacher_scales

    assert resolve_teacher_dims([-1], [32, 48], 80) == [32, 48]
    assert resolve_teacher_dims([-1], None, 80) == [80]
    with pytest.raises(TrainArgsError, match="does not split"):
        resolve_teacher_dims([40, 48], None, 80)
    with pytest.raises(TrainArgsError, match="contradicts"):
        resolve_teacher_dims([48, 32], [32, 48], 80)
    assert resolve_teacher_scales([100.0], None, 2, "x") == [100.0, 100.0]
    with pytest.raises(TrainArgsError, match="--distill-logit-scale"):
        resolve_teacher_scales(None, None, 2, "the DR shards")


def test_captioner_adds_synthetic_captions(ws, teachers, tmp_path):
    from train_support import COCA_CONFIG, make_plain_shards, write_model_dir

    from mobileclip2.reinforce.generate import ReinforceOptions, reinforce

    coca = write_model_dir(tmp_path / "coca", COCA_CONFIG, seed=3)
    plain = make_plain_shards(tmp_path / "plain", num_shards=1, per_shard=3, syn=False)
    options = ReinforceOptions(
        num_augmentations=1, captioner=coca, num_captions=2, caption_key="syn_text_coca", bfloat16=True
    )
    report = reinforce(plain, tmp_path / "dr", teachers, options, log=lambda _: None)
    assert report.samples == 3
    for raw in read_shard(report.shards[0]):
        syn = json.loads(raw["syn.json"])
        assert list(syn) == ["syn_text_coca"] and len(syn["syn_text_coca"]) == 2
        assert all(isinstance(caption, str) for caption in syn["syn_text_coca"])
        emb = decode_embeddings(raw)
        assert emb["syn_text_coca_emb"].dtype == torch.bfloat16 and emb["syn_text_coca_emb"].shape == (2, 80)
        assert isinstance(emb["image_emb"], torch.Tensor) and not isinstance(emb["image_emb"], np.ndarray)


# -- wrong data is never trained on silently ---------------------------------------------------


def _resized_jpg(data: bytes, factor: float) -> bytes:
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    size = (max(1, int(image.width * factor)), max(1, int(image.height * factor)))
    buffer = io.BytesIO()
    image.resize(size).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def damaged_shard(ws, tmp_path_factory):
    """One DR shard of 12 samples: 6 good, 1 shrunk and 1 enlarged after reinforcement, 1 without
    caption, 1 with a truncated npz, 1 with a 64-wide image_emb, 1 without its syn.json."""
    from train_support import write_shard

    samples = read_shard(ws["dr"][0]) + read_shard(ws["dr"][1])
    samples = [dict(s) for s in samples[:12]]
    image_key = next(k for k in ("jpg", "png", "jpeg", "webp") if k in samples[6])
    samples[6][image_key] = _resized_jpg(samples[6][image_key], 1 / 8)
    samples[7][image_key] = _resized_jpg(samples[7][image_key], 4)
    del samples[8]["txt"]
    samples[9]["npz"] = samples[9]["npz"][:40]
    wide = dict(decode_embeddings(samples[10]))
    wide["image_emb"] = np.zeros((wide["image_emb"].shape[0], 64), np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, **wide)
    samples[10]["npz"] = buffer.getvalue()
    del samples[11]["syn.json"]
    keys = {
        name: samples[i]["__key__"]
        for i, name in enumerate(["ok"] * 6 + ["small", "large", "no_txt", "npz", "wide", "no_syn"])
    }
    path = tmp_path_factory.mktemp("damaged") / "damaged-000.tar"
    write_shard(path, [{k: v for k, v in s.items() if k != "__url__"} for s in samples])
    return str(path), keys


def _stage_output(ws, shard, tally, tokenizer, min_image_size=None):
    from open_clip_train.data import SharedEpoch

    from mobileclip2.train.data import _prepare_stage, read_shards

    raws = read_shards([{"url": shard}], tally)
    return list(
        _prepare_stage(
            raws, _student_augmentation(ws), tokenizer, DRSampling(), SharedEpoch(0), min_image_size, tally
        )
    )


def test_skips_are_counted_by_reason_with_the_sample_and_shard(ws, damaged_shard, tokenizer):
    from mobileclip2.train.data import SKIP_CROP, SKIP_INCOMPLETE, SKIP_SMALL, SkipTally

    shard, keys = damaged_shard
    tally = SkipTally()
    prepared = _stage_output(ws, shard, tally, tokenizer)
    counts = tally.take()
    assert counts["seen"] == 12 and len(prepared) == 7  # the wide sample is prepared, collate refuses it
    skipped = counts["skipped"]
    assert skipped[SKIP_CROP] == 2 and skipped[SKIP_INCOMPLETE] == 1 and sum(skipped.values()) == 5
    assert keys["small"] in counts["examples"][SKIP_CROP] and shard in counts["examples"][SKIP_CROP]
    assert keys["no_txt"] in counts["examples"][SKIP_INCOMPLETE]
    assert any(keys["npz"] in example for example in counts["examples"].values())
    assert any(keys["no_syn"] in example and "syn_text" in example for example in counts["examples"].values())
    assert tally.take()["seen"] == 0  # take() resets

    filtered = SkipTally()
    _stage_output(ws, shard, filtered, tokenizer, min_image_size=10_000)
    assert filtered.take()["skipped"][SKIP_SMALL] == 10  # all but the caption-less and the unreadable one


def test_stored_crop_box_is_checked_against_the_decoded_image(ws):
    from mobileclip2.train.data import CropMismatchError, check_stored_crop

    augmentation = _student_augmentation(ws)
    params = {"random_resized_crop": [10, 20, 30, 40]}
    check_stored_crop(augmentation, params, (40, 60))
    with pytest.raises(CropMismatchError, match="reaches outside the decoded 39x60 image"):
        check_stored_crop(augmentation, params, (39, 60))
    with pytest.raises(CropMismatchError, match="larger than when it was reinforced"):
        check_stored_crop(augmentation, params, (400, 600))


def test_collate_names_the_shard_and_key_of_a_sample_that_does_not_fit(ws, damaged_shard, tokenizer):
    from mobileclip2.train.data import SkipTally, collate

    shard, keys = damaged_shard
    prepared = _stage_output(ws, shard, SkipTally(), tokenizer)
    wide = next(p for p in prepared if p["__key__"] == keys["wide"])
    with pytest.raises(DRDataError) as error:
        collate([prepared[0], wide])
    message = str(error.value)
    assert keys["wide"] in message and shard in message and "width 64" in message and "width 80" in message
    no_syn = dict(prepared[0], syn_text=None, __key__="k-no-syn")
    with pytest.raises(DRDataError, match="'k-no-syn' of shard .* lacks a synthetic caption"):
        collate([prepared[1], no_syn])


def test_monitor_stops_a_run_once_too_many_samples_were_skipped():
    from mobileclip2.train.data import SKIP_CROP, SKIP_SMALL, SKIPS_KEY, SkipMonitor

    def batch(seen, skipped):
        return (
            None,
            None,
            {SKIPS_KEY: {"seen": seen, "skipped": skipped, "examples": {SKIP_CROP: "sample 'k7'"}}},
        )

    fine = [batch(400, {SKIP_SMALL: 300, SKIP_CROP: 3}) for _ in range(3)]  # filtering does not count
    monitor = SkipMonitor(fine, max_fraction=0.01)
    assert len(list(monitor)) == 3 and monitor.last_epoch["skipped"][SKIP_CROP] == 9
    bad = [batch(400, {SKIP_CROP: 20}) for _ in range(5)]
    consumed = []
    with pytest.raises(DRDataError) as error:
        for item in SkipMonitor(bad, max_fraction=0.01):
            consumed.append(item)
    assert len(consumed) == 2  # stopped by the running check (1000 samples), not at the epoch's end
    message = str(error.value)
    assert (
        "60 of 1200 samples read (5.0%)" in message
        and "--dataset-reinforcement-max-skip-fraction 0.01" in message
    )
    assert "sample 'k7'" in message and "mobileclip2 reinforce" in message


def test_loader_logs_each_epochs_skips_and_judges_them(ws, damaged_shard, tokenizer, caplog, monkeypatch):
    import logging

    from mobileclip2.train import data

    # Read in shard order, so the skips (samples 6-9) reach the training process with the 7th batch.
    monkeypatch.setattr(data, "SAMPLE_SHUFFLE_SIZE", 1)
    monkeypatch.setattr(data, "SAMPLE_SHUFFLE_INITIAL", 1)
    shard, _ = damaged_shard
    augmentation, sampling = _student_augmentation(ws), DRSampling()

    def loader(max_fraction):
        args = _args(
            ws,
            train_data=shard,
            train_num_samples=7,
            batch_size=1,
            dataset_reinforcement_max_skip_fraction=max_fraction,
        )
        return build_dr_dataloader(args, augmentation, sampling, tokenizer).dataloader

    with caplog.at_level(logging.INFO):
        assert len(list(loader(1.0))) == 7
    assert "DR data, epoch 0: 11 samples read, 4 skipped: 2 stored crop box" in caplog.text
    with pytest.raises(
        DRDataError,
        match=r"4 of 11 samples read \(36.4%\) were skipped, "
        r"more than --dataset-reinforcement-max-skip-fraction 0.05",
    ):
        list(loader(0.05))


def _cut_inside_header(source: str, target, member: int) -> int:
    """Copy shard ``source`` to ``target`` cut inside the header of its ``member``-th member; -> the
    number of members per sample."""
    import tarfile

    data = open(source, "rb").read()
    with tarfile.open(source) as tar:
        members = tar.getmembers()
    target.write_bytes(data[: members[member].offset + 100])
    return sum(1 for m in members if m.name.split(".")[0] == members[0].name.split(".")[0])


def test_truncated_and_missing_shards_are_named_and_counted(ws, tmp_path):
    from mobileclip2.train.data import SKIP_SHARD, SkipTally, read_shards

    good, cut, missing = ws["dr"][0], tmp_path / "cut.tar", tmp_path / "missing.tar"
    per_sample = _cut_inside_header(ws["dr"][1], cut, member=0)
    _cut_inside_header(ws["dr"][1], cut, member=5 * per_sample)  # inside sample 5's first header
    tally = SkipTally()
    samples = list(read_shards([{"url": good}, {"url": str(cut)}, {"url": str(missing)}], tally))
    assert [s["__url__"] for s in samples] == [good] * 12 + [str(cut)] * 4  # sample 4 may lack members
    counts = tally.take()
    # cut: 12 (the size of the shard read whole) - 4 read; missing: 12
    assert counts["skipped"] == {SKIP_SHARD: 8 + 12} and counts["seen"] == 20
    assert "cut.tar" in counts["examples"][SKIP_SHARD] and "at byte" in counts["examples"][SKIP_SHARD]
    first = SkipTally()
    list(read_shards([{"url": str(missing)}], first))
    assert first.take()["skipped"] == {SKIP_SHARD: 1}  # no shard read whole yet: at least 1


def test_a_missing_shard_reaches_the_skip_fraction(ws, tokenizer, tmp_path):
    args = _args(ws, train_data=f"{ws['dr'][0]}::{tmp_path / 'missing.tar'}", train_num_samples=40)
    args.dataset_reinforcement_max_skip_fraction = 0.05
    loader = build_dr_dataloader(args, _student_augmentation(ws), DRSampling(), tokenizer).dataloader
    with pytest.raises(DRDataError, match=r"shard cannot be read .*missing.tar"):
        list(loader)


def test_skips_after_the_last_batch_still_reach_the_monitor():
    """A shard lost at the end of a worker's list: no batch follows to carry its count."""
    from mobileclip2.train.data import SKIP_SHARD, SkipMonitor, SkipTally, batches

    tally = SkipTally()

    def samples():
        for _ in range(4):
            tally.read()
            yield {"image": torch.zeros(3, 2, 2), "text": torch.zeros(3), "syn_text": None, "teacher": None}
        tally.lose_shard("shards/001.tar", 6, FileNotFoundError("no such file"))

    monitor = SkipMonitor(batches(samples(), 2, False, tally), max_fraction=1.0)
    assert [batch[0].shape[0] for batch in monitor] == [2, 2]  # the item that carries counts is taken out
    assert monitor.last_epoch["seen"] == 10 and monitor.last_epoch["skipped"] == {SKIP_SHARD: 6}


def test_a_truncated_first_shard_fails_the_check_before_training(ws, tmp_path):
    _cut_inside_header(ws["dr"][0], tmp_path / "cut.tar", member=2)
    with pytest.raises(DRDataError, match=r"first training shard cannot be read: shard .*cut.tar .*at byte"):
        inspect_shards(str(tmp_path / "cut.tar"), DRSampling())

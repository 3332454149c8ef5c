"""Reproducible augmentations: for every kind, params -> (JSON) -> replay == the augmented tensor;
seeded sampling matches torchvision; Apple's stored layout decodes; bad configs fail clearly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mobileclip2.augment import (
    RAND_AUGMENT_OPS,
    Augmentation,
    apply_rand_augment_op,
    rand_augment_magnitude,
    student_augmentation_config,
)

TENSOR = {"to_tensor": {"enable": True}}
KINDS = {
    "resize": {"resize": {"size": 40, "interpolation": "bicubic"}},
    "center_crop": {"center_crop": {"size": 30}},
    "random_crop": {"random_crop": {"size": 36, "padding": 4}},
    "random_crop_pad_if_needed": {"random_crop": {"size": [90, 100], "pad_if_needed": True, "fill": 7}},
    "random_resized_crop": {"random_resized_crop": {"size": 32, "interpolation": "bicubic"}},
    "random_resized_crop_fallback": {
        "random_resized_crop": {"size": 24, "scale": [0.99, 1.0], "ratio": [3.0, 4.0]}
    },
    "random_horizontal_flip": {"random_horizontal_flip": {"p": 0.5}},
    "rand_augment": {"rand_augment": {"p": 0.7, "num_ops": 3}},
    "random_erase": {"random_erase": {"p": 0.8}},
    "normalize": {"normalize": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}},
    "apple_datacompdr": {
        "normalize": {
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
        },
        "rand_augment": {"enable": True, "p": 1.0},
        "random_resized_crop": {"interpolation": "bicubic", "size": 48},
        "to_rgb": {"enable": True},
        "to_tensor": {"enable": True},
    },
    "everything": {
        "resize": {"size": 70},
        "random_crop": {"size": 64},
        "random_resized_crop": {"size": 40},
        "random_horizontal_flip": {},
        "rand_augment": {},
        "random_erase": {"p": 1.0},
        "normalize": {"mean": [0.1] * 3, "std": [0.9] * 3},
    },
}


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    pixels = (rng.random((57, 75, 3)) * 255).astype(np.uint8)
    pixels[:20, :, 0] = 255
    return Image.fromarray(pixels)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_params_replay_to_the_identical_tensor(image, kind):
    augmentation = Augmentation.from_config({**KINDS[kind], **TENSOR})
    generator = torch.Generator().manual_seed(1)
    seen = set()
    for _ in range(12):
        tensor, params = augmentation.augment(image, generator)
        stored = json.loads(json.dumps(augmentation.compress(params)))  # what paug.json holds
        assert len(stored) == len(augmentation.parameterized_steps)
        replayed = augmentation.replay(image, augmentation.decompress(stored))
        assert replayed.dtype == torch.float32 and torch.equal(replayed, tensor)
        seen.add(json.dumps(stored))
    if augmentation.parameterized_steps and kind not in ("resize", "random_resized_crop_fallback"):
        assert len(seen) > 1, "sampling should vary"


@pytest.mark.parametrize("op", RAND_AUGMENT_OPS)
def test_each_rand_augment_op_replays_and_matches_torchvision(image, op):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    augmentation = Augmentation.from_config({"rand_augment": {}, **TENSOR})
    for magnitude in (
        (0.0, 0.27, -0.27, 4.0, 128.0) if op in ("Posterize", "Solarize") else (0.0, 0.27, -0.27, 9.0, -9.0)
    ):
        if op == "Posterize":
            magnitude = abs(magnitude) % 8 + 1
        stored = augmentation.compress({"rand_augment": [(op, magnitude), ("Identity", 0.0)]})
        replayed = augmentation.replay(image, augmentation.decompress(json.loads(json.dumps(stored))))
        ours = F.to_tensor(apply_rand_augment_op(image, op, magnitude, InterpolationMode.NEAREST))
        assert torch.equal(replayed, ours)
        try:  # torchvision's private op table is what Apple's DR data was generated with
            from torchvision.transforms.autoaugment import _apply_op
        except ImportError:
            continue
        reference = F.to_tensor(
            _apply_op(image, op, magnitude, interpolation=InterpolationMode.NEAREST, fill=None)
        )
        assert torch.equal(ours, reference)
        pixels, fill = F.pil_to_tensor(image), [7.0, 8.0, 9.0]  # the tensor path, with a fill
        try:
            reference = _apply_op(pixels, op, magnitude, interpolation=InterpolationMode.BILINEAR, fill=fill)
        except ValueError:  # e.g. a negative enhancement factor: refused on tensors by both
            with pytest.raises(ValueError):
                apply_rand_augment_op(pixels, op, magnitude, InterpolationMode.BILINEAR, fill)
            continue
        assert torch.equal(
            apply_rand_augment_op(pixels, op, magnitude, InterpolationMode.BILINEAR, fill), reference
        )


def test_rand_augment_magnitude_tables_equal_torchvisions():
    """Bin -> magnitude for every op, bin count and image shape, against torchvision's RandAugment
    (the reference Apple's DR transforms sample with); compared as the floats the sampler returns."""
    import torchvision.transforms as T

    for bins in (2, 3, 7, 9, 25, 31, 33):
        for hw in ((57, 75), (224, 224), (331, 500)):
            theirs = T.RandAugment(num_magnitude_bins=bins)._augmentation_space(bins, hw)
            assert tuple(theirs) == RAND_AUGMENT_OPS
            for op, (table, signed) in theirs.items():
                for index in range(bins):
                    expected = float(table[index].item()) if table.ndim > 0 else 0.0
                    assert rand_augment_magnitude(op, index, bins, hw) == (expected, signed), (op, bins, hw)


@pytest.mark.parametrize("seed", range(6))
def test_seeded_sampling_matches_torchvision(image, seed):
    import torchvision.transforms as T

    crop = Augmentation.from_config(
        {"random_resized_crop": {"size": 32, "interpolation": "bicubic"}, **TENSOR}
    )
    torch.manual_seed(seed)
    ours, _ = crop.augment(image)
    torch.manual_seed(seed)
    theirs = T.ToTensor()(T.RandomResizedCrop(32, interpolation=T.InterpolationMode.BICUBIC)(image))
    assert torch.equal(ours, theirs)

    rand = Augmentation.from_config({"rand_augment": {"p": 1.0}, **TENSOR})
    torch.manual_seed(seed)
    ours, _ = rand.augment(image)
    torch.manual_seed(seed)
    torch.rand(1)  # Apple's RandAugment draws its p-coin first
    assert torch.equal(ours, T.ToTensor()(T.RandAugment()(image)))


def test_apple_stored_layout_decodes():
    """A DataCompDR-style param_aug entry: [rrc i,j,h,w], [[op index, magnitude], ...] or null."""
    augmentation = Augmentation.from_config(KINDS["apple_datacompdr"])
    assert augmentation.parameterized_steps == ["random_resized_crop", "rand_augment"]
    params = augmentation.decompress([[3, 5, 40, 50], [[9, 0.27000001072883606], [0, 0.0]]])
    assert params == {
        "random_resized_crop": [3, 5, 40, 50],
        "rand_augment": [("Sharpness", 0.27000001072883606), ("Identity", 0.0)],
    }
    skipped = augmentation.decompress([[3, 5, 40, 50], None])
    assert skipped["rand_augment"] is None
    with pytest.raises(ValueError, match="--dataset-reinforcement-config"):
        augmentation.decompress([[3, 5, 40, 50]])


@pytest.mark.parametrize(
    "config,message",
    [
        ({"mixup": {}, **TENSOR}, "second sample"),
        ({"auto_augment": {}, **TENSOR}, "cannot replay"),
        ({"colour_jitter": {}, **TENSOR}, "unknown augmentation"),
        ({"random_resized_crop": {"size": 8}}, "to_tensor"),
        ({"random_resized_crop": {"size": 8, "bogus": 1}, **TENSOR}, "bad options"),
    ],
)
def test_bad_configs_fail_clearly(config, message):
    with pytest.raises(ValueError, match=message):
        Augmentation.from_config(config)


def test_student_config_replays_at_the_students_size_and_normalization(image):
    from torchvision.transforms import InterpolationMode

    config = student_augmentation_config(
        KINDS["apple_datacompdr"], (24, 24), InterpolationMode.BILINEAR, [0.0] * 3, [1.0] * 3
    )
    assert config["random_resized_crop"] == {"interpolation": "bilinear", "size": [24, 24]}
    assert config["normalize"] == {"mean": [0.0] * 3, "std": [1.0] * 3}
    assert KINDS["apple_datacompdr"]["random_resized_crop"]["size"] == 48  # input untouched
    teacher = Augmentation.from_config(KINDS["apple_datacompdr"])
    student = Augmentation.from_config(config)
    _, params = teacher.augment(image, torch.Generator().manual_seed(3))
    out = student.replay(image, teacher.decompress(teacher.compress(params)))
    assert out.shape == (3, 24, 24)
    with pytest.raises(ValueError, match="student expects"):
        student_augmentation_config({"center_crop": {"size": 32}, **TENSOR}, (24, 24), None, None, None)

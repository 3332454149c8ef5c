"""Reproducible image augmentations: sample parameters, apply, store, replay.

Dataset reinforcement stores, per image, the *parameters* of several random augmentations
together with the teachers' embeddings of each augmented image. Training later picks one stored
augmentation and must rebuild exactly the tensor the teachers saw (up to the student's own output
size and normalization), so every random step here is split into ``sample`` (draw parameters)
and ``apply`` (a deterministic function of image and parameters). ``augment`` samples and applies
step by step through the same ``apply`` that ``replay`` uses, so replay is exact by construction.

The configuration and the stored parameter layout follow Apple's DR code (ml-mobileclip
``training/dr/transforms.py``, ml-mobileclip-dr), so real DataCompDR / DFNDR shards replay here:

* config: ``{"random_resized_crop": {"size": 224, "interpolation": "bicubic"},
  "rand_augment": {"enable": true, "p": 1.0}, "to_tensor": {...}, "normalize": {...}}``;
  steps run in the fixed order of ``STEP_ORDER``, not the order of the config, and a step with
  ``"enable": false`` is left out;
* stored parameters of one augmentation: a JSON list with one entry per step that has random
  parameters (every step except ``PARAMLESS_STEPS``), in ``STEP_ORDER``; ``null`` marks a step
  that was randomly skipped; RandAugment ops are stored as ``[op_index, magnitude]`` pairs
  indexing ``RAND_AUGMENT_OPS``.

Samplers draw from a ``torch.Generator`` when given one and from torch's global generator
otherwise, in the same order as torchvision's own transforms, so a seeded run here matches
torchvision's ``RandomResizedCrop`` / ``RandAugment`` on the same seed (tested). The ops are our
own code on torchvision's public functional API.

Not supported (clear error): ``mixup`` / ``cutmix`` (they mix in a second sample) and
``auto_augment`` / ``trivial_augment_wide`` (Apple's DR code cannot replay them either).
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from .shapes import height_width

__all__ = [
    "Augmentation",
    "RAND_AUGMENT_OPS",
    "STEP_ORDER",
    "decode_image",
    "student_augmentation_config",
]

# Apple's order (training/dr/transforms.py TRANSFORMATION_TO_NAME without uint8/mixup/cutmix).
STEP_ORDER = (
    "resize",
    "center_crop",
    "random_crop",
    "random_resized_crop",
    "random_horizontal_flip",
    "rand_augment",
    "to_tensor",
    "random_erase",
    "normalize",
)
# Steps without random parameters; they get no entry in the stored parameter list. "resize" is
# not among them on purpose: Apple's DR code stores its size as a (constant) parameter.
PARAMLESS_STEPS = frozenset({"center_crop", "to_tensor", "normalize"})
# Config keys that Apple's configs carry but that change nothing here: images are always decoded
# to RGB (to_rgb) and the uint8 step is a no-op on PIL images.
IGNORED_KEYS = frozenset({"to_rgb", "uint8"})
UNSUPPORTED_KEYS = {
    "mixup": "mixes in a second sample",
    "cutmix": "mixes in a second sample",
    "auto_augment": "Apple's DR code cannot replay it",
    "trivial_augment_wide": "Apple's DR code cannot replay it",
}


def decode_image(data: bytes) -> Image.Image:
    """Bytes -> RGB PIL image, exactly as DR generation (RGBA first, then RGB) so replay matches."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGBA").convert("RGB")


_PIL_INTERPOLATION = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _interpolation(value: Any):
    from torchvision.transforms import InterpolationMode

    if isinstance(value, InterpolationMode):
        return value
    if isinstance(value, str):
        aliases = {"cubic": "bicubic"}
        return InterpolationMode(aliases.get(value.lower(), value.lower()))
    if isinstance(value, int) and value in _PIL_INTERPOLATION:  # PIL constants, as torchvision accepts
        return InterpolationMode(_PIL_INTERPOLATION[value])
    raise ValueError(f"unknown interpolation {value!r}")


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return torch.empty(1).uniform_(low, high, generator=generator).item()


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Integer in [low, high), like torch.randint(low, high, (1,))."""
    return int(torch.randint(low, high, size=(1,), generator=generator).item())


def _rand(generator: torch.Generator | None) -> float:
    return torch.rand(1, generator=generator).item()


def _image_hw(image: Image.Image | torch.Tensor) -> tuple[int, int]:
    if isinstance(image, torch.Tensor):
        return int(image.shape[-2]), int(image.shape[-1])
    width, height = image.size
    return height, width


def _numbers(stored, count: int, what: str) -> list[int]:
    """Check a stored entry is ``count`` integers (e.g. a crop box); -> list of ints."""
    if (
        not isinstance(stored, (list, tuple))
        or len(stored) != count
        or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() for v in stored
        )
    ):
        raise ValueError(f"expected {count} integers ({what}), got {stored!r}")
    return [int(v) for v in stored]


# ---------------------------------------------------------------------------------------------
# Steps. Each has sample(image, generator) -> params (None = skipped), apply(image, params),
# compress(params) -> JSON value, decompress(JSON value) -> params.
# ---------------------------------------------------------------------------------------------


class _Step:
    name = ""

    def sample(self, image, generator):
        return ()

    def apply(self, image, params):
        raise NotImplementedError

    def compress(self, params):
        return params

    def decompress(self, stored):
        return stored


class Resize(_Step):
    name = "resize"

    def __init__(self, size, interpolation="bilinear", max_size=None, antialias=True):
        self.size = list(size) if isinstance(size, (list, tuple)) else size
        self.interpolation = _interpolation(interpolation)
        self.max_size = max_size
        self.antialias = antialias

    def sample(self, image, generator):
        return self.size  # constant; stored for layout compatibility with Apple's shards

    def apply(self, image, params):
        from torchvision.transforms import functional as F

        return F.resize(image, self.size, self.interpolation, self.max_size, self.antialias)


class CenterCrop(_Step):
    name = "center_crop"

    def __init__(self, size):
        self.size = height_width(size)

    def apply(self, image, params):
        from torchvision.transforms import functional as F

        return F.center_crop(image, list(self.size))


class RandomCrop(_Step):
    """Parameters: [top, left] after the configured padding (torchvision RandomCrop semantics)."""

    name = "random_crop"

    def __init__(self, size, padding=None, pad_if_needed=False, fill=0, padding_mode="constant"):
        self.size = height_width(size)
        self.padding = padding
        self.pad_if_needed = pad_if_needed
        self.fill = fill
        self.padding_mode = padding_mode

    def _pad(self, image):
        from torchvision.transforms import functional as F

        if self.padding is not None:
            image = F.pad(image, self.padding, self.fill, self.padding_mode)
        height, width = _image_hw(image)
        if self.pad_if_needed and width < self.size[1]:
            image = F.pad(image, [self.size[1] - width, 0], self.fill, self.padding_mode)
        height, width = _image_hw(image)
        if self.pad_if_needed and height < self.size[0]:
            image = F.pad(image, [0, self.size[0] - height], self.fill, self.padding_mode)
        return image

    def sample(self, image, generator):
        height, width = _image_hw(self._pad(image))
        crop_h, crop_w = self.size
        if height < crop_h or width < crop_w:
            raise ValueError(f"random_crop size {self.size} is larger than the image ({height}, {width})")
        if (height, width) == (crop_h, crop_w):
            return [0, 0]
        return [_randint(0, height - crop_h + 1, generator), _randint(0, width - crop_w + 1, generator)]

    def decompress(self, stored):
        return _numbers(stored, 2, "random_crop [top, left]")

    def apply(self, image, params):
        from torchvision.transforms import functional as F

        top, left = params
        return F.crop(self._pad(image), int(top), int(left), self.size[0], self.size[1])


class RandomResizedCrop(_Step):
    """Parameters: [top, left, height, width] of the crop in the input image's pixels.

    They do not depend on the output size, which is why training can replay at the student's
    resolution what generation sampled at the teachers' resolution.
    """

    name = "random_resized_crop"

    def __init__(
        self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), interpolation="bilinear", antialias=True
    ):
        self.size = height_width(size)
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.interpolation = _interpolation(interpolation)
        self.antialias = antialias

    def sample(self, image, generator):
        height, width = _image_hw(image)
        area = height * width
        log_ratio = torch.log(torch.tensor(self.ratio))
        for _ in range(10):
            target_area = area * _uniform(self.scale[0], self.scale[1], generator)
            aspect = math.exp(_uniform(float(log_ratio[0]), float(log_ratio[1]), generator))
            crop_w = int(round(math.sqrt(target_area * aspect)))
            crop_h = int(round(math.sqrt(target_area / aspect)))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                top = _randint(0, height - crop_h + 1, generator)
                left = _randint(0, width - crop_w + 1, generator)
                return [top, left, crop_h, crop_w]
        # Fallback: central crop within the allowed aspect ratios (torchvision's rule).
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            crop_w, crop_h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            crop_h, crop_w = height, int(round(height * max(self.ratio)))
        else:
            crop_w, crop_h = width, height
        return [(height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w]

    def decompress(self, stored):
        return _numbers(stored, 4, "random_resized_crop [top, left, height, width]")

    def apply(self, image, params):
        from torchvision.transforms import functional as F

        top, left, crop_h, crop_w = (int(v) for v in params)
        return F.resized_crop(
            image, top, left, crop_h, crop_w, list(self.size), self.interpolation, antialias=self.antialias
        )


class RandomHorizontalFlip(_Step):
    """Parameter: whether the image was flipped (always stored, never ``null``)."""

    name = "random_horizontal_flip"

    def __init__(self, p=0.5):
        self.p = p

    def sample(self, image, generator):
        return _rand(generator) < self.p

    def decompress(self, stored):
        if stored not in (True, False, 0, 1):
            raise ValueError(f"expected a flip flag (true/false), got {stored!r}")
        return bool(stored)

    def apply(self, image, params):
        from torchvision.transforms import functional as F

        return F.hflip(image) if params else image


# RandAugment as one table: per op, its magnitude per bin and what it does to an image.
# Bit-for-bit reference: torchvision.transforms.RandAugment (its magnitude space and op semantics),
# which Apple's DR transforms use when they store an augmentation, so stored DataCompDR
# parameters must replay to the same pixels; tests/test_train_augment.py compares each op and each
# magnitude table with torchvision's. The table's order is the stored op ids' (RAND_AUGMENT_OPS).


def _tv():
    from torchvision.transforms import functional

    return functional


def _linear(top: float, side: int | None = None):
    """Bins spread evenly from 0 to `top` (times the image's height (0) or width (1) if `side`)."""

    def table(bins: int, hw: tuple[int, int]) -> torch.Tensor:
        return torch.linspace(0.0, top if side is None else top * hw[side], bins)

    return table


def _posterize_bits(bins: int, hw: tuple[int, int]) -> torch.Tensor:
    """8 bits at bin 0 down to 4 bits at the last bin, rounded half to even. The float32 division by
    bins-per-bit is what the reference computes; a multiplication by its inverse rounds differently."""
    bins_per_bit = (bins - 1) / 4
    return 8 - (torch.arange(bins) / bins_per_bit).round().int()


def _solarize_thresholds(bins: int, hw: tuple[int, int]) -> torch.Tensor:
    return torch.linspace(255.0, 0.0, bins)


def _shear(axis: int):
    """Shear by atan(magnitude) degrees along one axis, about the top-left corner."""

    def apply(image, magnitude, interpolation, fill):
        angles = [0.0, 0.0]
        angles[axis] = math.degrees(math.atan(magnitude))
        return _tv().affine(
            image, angle=0.0, translate=[0, 0], scale=1.0, shear=angles,
            interpolation=interpolation, fill=fill, center=[0, 0],
        )  # fmt: skip

    return apply


def _translate(axis: int):
    """Shift by a whole number of pixels along one axis (truncated toward zero)."""

    def apply(image, magnitude, interpolation, fill):
        offset = [0, 0]
        offset[axis] = int(magnitude)
        return _tv().affine(
            image, angle=0.0, translate=offset, scale=1.0, shear=[0.0, 0.0],
            interpolation=interpolation, fill=fill,
        )  # fmt: skip

    return apply


def _enhance(adjust: str):
    """A PIL-style enhancement whose factor is 1 + magnitude (magnitude 0 leaves the image as is)."""
    return lambda image, magnitude, interpolation, fill: getattr(_tv(), adjust)(image, 1.0 + magnitude)


def _unary(function: str, magnitude_type=None):
    if magnitude_type is None:
        return lambda image, magnitude, interpolation, fill: getattr(_tv(), function)(image)
    return lambda image, magnitude, interpolation, fill: getattr(_tv(), function)(
        image, magnitude_type(magnitude)
    )


@dataclass(frozen=True)
class _RandAugmentOp:
    apply: Any  # (image, magnitude, interpolation, fill) -> image
    table: Any = None  # (bins, (height, width)) -> magnitude per bin; None: the op takes no magnitude
    signed: bool = False  # a coin flip negates the magnitude


_RAND_AUGMENT = {
    "Identity": _RandAugmentOp(lambda image, magnitude, interpolation, fill: image),
    "ShearX": _RandAugmentOp(_shear(0), _linear(0.3), signed=True),
    "ShearY": _RandAugmentOp(_shear(1), _linear(0.3), signed=True),
    "TranslateX": _RandAugmentOp(_translate(0), _linear(150.0 / 331.0, side=1), signed=True),
    "TranslateY": _RandAugmentOp(_translate(1), _linear(150.0 / 331.0, side=0), signed=True),
    "Rotate": _RandAugmentOp(
        lambda image, magnitude, interpolation, fill: _tv().rotate(
            image, magnitude, interpolation=interpolation, fill=fill
        ),
        _linear(30.0),
        signed=True,
    ),
    "Brightness": _RandAugmentOp(_enhance("adjust_brightness"), _linear(0.9), signed=True),
    "Color": _RandAugmentOp(_enhance("adjust_saturation"), _linear(0.9), signed=True),
    "Contrast": _RandAugmentOp(_enhance("adjust_contrast"), _linear(0.9), signed=True),
    "Sharpness": _RandAugmentOp(_enhance("adjust_sharpness"), _linear(0.9), signed=True),
    "Posterize": _RandAugmentOp(_unary("posterize", int), _posterize_bits),
    "Solarize": _RandAugmentOp(_unary("solarize", float), _solarize_thresholds),
    "AutoContrast": _RandAugmentOp(_unary("autocontrast")),
    "Equalize": _RandAugmentOp(_unary("equalize")),
}
# Stored op id = position in this tuple: the table's order, which is torchvision's RandAugment op
# order and Apple's RandAugment.op_names (tested).
RAND_AUGMENT_OPS = tuple(_RAND_AUGMENT)


def rand_augment_magnitude(op: str, bin_index: int, bins: int, hw: tuple[int, int]) -> tuple[float, bool]:
    """(unsigned magnitude of `op` at `bin_index` of `bins`, whether its sign is random)."""
    spec = _RAND_AUGMENT[op]
    if spec.table is None:
        return 0.0, spec.signed
    return float(spec.table(bins, hw)[bin_index].item()), spec.signed


def apply_rand_augment_op(image, op: str, magnitude: float, interpolation, fill=None):
    """One RandAugment op with a given (signed) magnitude on a PIL image or an image tensor."""
    if op not in _RAND_AUGMENT:
        raise ValueError(f"unknown RandAugment op {op!r}; known: {RAND_AUGMENT_OPS}")
    return _RAND_AUGMENT[op].apply(image, magnitude, interpolation, fill)


class RandAugment(_Step):
    """Parameters: ``[(op_name, magnitude), ...]`` (stored as ``[[op_index, magnitude], ...]``),
    or ``None`` when the step was skipped with probability ``1 - p``."""

    name = "rand_augment"

    def __init__(
        self, p=1.0, num_ops=2, magnitude=9, num_magnitude_bins=31, interpolation="nearest", fill=None
    ):
        self.p = p
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.num_magnitude_bins = num_magnitude_bins
        self.interpolation = _interpolation(interpolation)
        self.fill = fill

    def sample(self, image, generator):
        if _rand(generator) > self.p:
            return None
        height, width = _image_hw(image)
        ops = []
        for _ in range(self.num_ops):
            op = RAND_AUGMENT_OPS[_randint(0, len(RAND_AUGMENT_OPS), generator)]
            magnitude, signed = rand_augment_magnitude(
                op, self.magnitude, self.num_magnitude_bins, (height, width)
            )
            if signed and _randint(0, 2, generator):
                magnitude *= -1.0
            ops.append((op, magnitude))
        return ops

    def apply(self, image, params):
        fill = self.fill
        if isinstance(image, torch.Tensor) and fill is not None:
            fill = (
                [float(fill)] * int(image.shape[-3])
                if isinstance(fill, (int, float))
                else [float(f) for f in fill]
            )
        for op, magnitude in params:
            image = apply_rand_augment_op(image, op, magnitude, self.interpolation, fill)
        return image

    def compress(self, params):
        return [[RAND_AUGMENT_OPS.index(op), magnitude] for op, magnitude in params]

    def decompress(self, stored):
        try:
            return [(RAND_AUGMENT_OPS[int(index)], float(magnitude)) for index, magnitude in stored]
        except (IndexError, TypeError, ValueError) as error:
            raise ValueError(f"bad stored rand_augment parameters {stored!r}: {error}") from None


class ToTensor(_Step):
    name = "to_tensor"

    def apply(self, image, params):
        from torchvision.transforms import functional as F

        return image if isinstance(image, torch.Tensor) else F.to_tensor(image)


class RandomErasing(_Step):
    """Parameters: [top, left, height, width] of a region set to 0 (Apple's DR replay zeroes it;
    torchvision would fill noise that cannot be replayed), ``[-1, -1, -1, -1]`` when no region fit,
    ``None`` when skipped."""

    name = "random_erase"

    def __init__(self, p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3)):
        self.p = p
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)

    def sample(self, image, generator):
        if _rand(generator) > self.p:
            return None
        height, width = _image_hw(image)
        log_ratio = torch.log(torch.tensor(self.ratio))
        for _ in range(10):
            erase_area = height * width * _uniform(self.scale[0], self.scale[1], generator)
            aspect = math.exp(_uniform(float(log_ratio[0]), float(log_ratio[1]), generator))
            erase_h = int(round(math.sqrt(erase_area * aspect)))
            erase_w = int(round(math.sqrt(erase_area / aspect)))
            if erase_h < height and erase_w < width:
                top = _randint(0, height - erase_h + 1, generator)
                left = _randint(0, width - erase_w + 1, generator)
                return [top, left, erase_h, erase_w]
        return [-1, -1, -1, -1]

    def decompress(self, stored):
        return _numbers(stored, 4, "random_erase [top, left, height, width]")

    def apply(self, image, params):
        if not isinstance(image, torch.Tensor):
            raise TypeError("random_erase runs on tensors; enable to_tensor in the augmentation config")
        top, left, erase_h, erase_w = (int(v) for v in params)
        if top == -1:
            return image
        image = image.clone()
        image[..., top : top + erase_h, left : left + erase_w] = 0
        return image


class Normalize(_Step):
    name = "normalize"

    def __init__(self, mean, std):
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]

    def apply(self, image, params):
        from torchvision.transforms import functional as F

        return F.normalize(image, self.mean, self.std)


STEP_CLASSES: dict[str, type[_Step]] = {
    cls.name: cls
    for cls in (
        Resize,
        CenterCrop,
        RandomCrop,
        RandomResizedCrop,
        RandomHorizontalFlip,
        RandAugment,
        ToTensor,
        RandomErasing,
        Normalize,
    )
}


# ---------------------------------------------------------------------------------------------
# The pipeline.
# ---------------------------------------------------------------------------------------------


def enabled_steps(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Config -> {step: kwargs} for enabled steps, validating names (Apple's ``clean_config``)."""
    steps = {}
    for name, options in config.items():
        options = dict(options or {})
        if not options.pop("enable", True) or name in IGNORED_KEYS:
            continue
        if name in UNSUPPORTED_KEYS:
            raise ValueError(
                f"augmentation {name!r} is not supported for dataset reinforcement: {UNSUPPORTED_KEYS[name]}"
            )
        if name not in STEP_CLASSES:
            raise ValueError(
                f"unknown augmentation {name!r}; known: {sorted(STEP_CLASSES)} "
                f"(ignored: {sorted(IGNORED_KEYS)})"
            )
        steps[name] = options
    if "to_tensor" not in steps:
        raise ValueError("the augmentation config must enable 'to_tensor' (training needs tensors)")
    return steps


@dataclass
class Augmentation:
    """A composed, replayable augmentation pipeline built from an Apple-style config."""

    steps: list[_Step]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Augmentation:
        options = enabled_steps(config)
        steps = []
        for name in STEP_ORDER:
            if name in options:
                try:
                    steps.append(STEP_CLASSES[name](**options[name]))
                except TypeError as error:
                    raise ValueError(f"bad options for augmentation {name!r}: {error}") from None
        return cls(steps)

    @property
    def parameterized_steps(self) -> list[str]:
        """Names of the steps that own one entry each in a stored parameter list, in order."""
        return [step.name for step in self.steps if step.name not in PARAMLESS_STEPS]

    def augment(
        self, image: Image.Image, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict]:
        """Sample parameters step by step and apply them; returns (tensor, params)."""
        params = {}
        for step in self.steps:
            value = step.sample(image, generator)
            params[step.name] = value
            if value is not None:
                image = step.apply(image, value)
        return image, params

    def replay(self, image: Image.Image, params: Mapping[str, Any]) -> torch.Tensor:
        """Apply stored parameters; a step missing from ``params`` or set to None is skipped."""
        for step in self.steps:
            if step.name in PARAMLESS_STEPS:
                image = step.apply(image, ())
            elif params.get(step.name) is not None:
                image = step.apply(image, params[step.name])
        return image

    def compress(self, params: Mapping[str, Any]) -> list:
        """Params -> the stored JSON list (Apple's layout: one entry per parameterized step)."""
        stored = []
        for step in self.steps:
            if step.name in PARAMLESS_STEPS:
                continue
            value = params.get(step.name)
            stored.append(None if value is None else step.compress(value))
        return stored

    def decompress(self, stored: Sequence) -> dict[str, Any]:
        """The stored JSON list -> params; checks that it was made by a pipeline of this shape."""
        names = self.parameterized_steps
        if not isinstance(stored, (list, tuple)) or len(stored) != len(names):
            raise ValueError(
                f"stored augmentation parameters {stored!r} have "
                f"{len(stored) if isinstance(stored, (list, tuple)) else '?'} "
                f"entries, but this augmentation config has {len(names)} parameterized steps {names}; "
                "pass the --dataset-reinforcement-config the shards were generated with"
            )
        steps = {step.name: step for step in self.steps}
        params = {}
        for name, value in zip(names, stored):
            try:
                params[name] = None if value is None else steps[name].decompress(value)
            except ValueError as error:
                raise ValueError(
                    f"stored parameters {stored!r} do not fit this augmentation config's steps {names} "
                    f"({name}: {error}); "
                    "pass the --dataset-reinforcement-config the shards were generated with"
                ) from None
        return params


def student_augmentation_config(
    config: Mapping[str, Any],
    size: tuple[int, int] | None,
    interpolation: Any | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> dict[str, Any]:
    """Adapt a DR augmentation config to the student, as Apple's training does.

    The random crop is replayed at the student's input size and interpolation, and the image is
    normalized with the student's mean/std; everything else (the stored random parameters) is
    kept. A config without random_resized_crop must already crop to the student's size.
    """
    config = copy.deepcopy(dict(config))
    options = enabled_steps(config)
    if size is not None:
        if "random_resized_crop" in options:
            config["random_resized_crop"]["size"] = list(size)
            if interpolation is not None:
                config["random_resized_crop"]["interpolation"] = _interpolation(interpolation).value
        else:
            final = options.get("random_crop", options.get("center_crop", {})).get("size")
            if final is None or height_width(final) != tuple(size):
                raise ValueError(
                    f"the augmentation config produces {final!r} px images without a random_resized_crop to "
                    f"resize them, but the student expects {tuple(size)}; add random_resized_crop or "
                    "crop to the student's size"
                )
    config.pop("normalize", None)
    if mean is not None and std is not None:
        config["normalize"] = {"mean": list(mean), "std": list(std)}
    return config

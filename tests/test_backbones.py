"""Our backfilled MCi backbones are timm 1.0.31's models: structure, weights, numerics, cfgs, old timm.

Every name is built twice, by timm 1.0.31 (``timm.create_model``) and by calling our variant function,
and must agree on module names, state_dict keys and shapes, outputs, fused outputs and pretrained cfgs.
The weights are randomised on purpose (see ``_randomize_``). ``compat`` tests rebuild ours under
timm 0.9.16 in a subprocess and compare against references saved here.
"""

from __future__ import annotations

import json
from functools import partial
from typing import NamedTuple

import pytest
import timm
import torch
from compat_env import OLDEST_PAIR, REPO_ROOT, ensure_pair, run_python
from safetensors.torch import save_file
from scripts.backbone_parity_old_timm import CFG_FIELDS
from seeded_weights import seed_model_
from timm.utils import reparameterize_model

from mobileclip2.models import mci, vit_mci

# name -> (our module, CLIP embed dim, open_clip timm_pool, test image size)
SPECS = {
    "fastvit_mci0": (mci, 512, "avg", 128),
    "fastvit_mci1": (mci, 512, "avg", 128),
    "fastvit_mci2": (mci, 512, "avg", 128),
    "fastvit_mci3": (mci, 768, "avg", 128),
    "fastvit_mci4": (mci, 768, "avg", 128),
    "vit_base_mci_224": (vit_mci, 512, "token", 224),  # fixed input size
}
BIG = {"fastvit_mci1", "fastvit_mci2", "fastvit_mci3", "fastvit_mci4"}  # mci0 covers the family code
NAMES = [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in SPECS]

# CLIP image tower sizes (M params, open_clip construction) after reparameterization, as published;
# and before it, with the train-time branches (BN affine, scale branches) that fusing folds away.
PARAMS_FUSED_M = {
    "fastvit_mci0": 11.4,
    "fastvit_mci1": 21.5,
    "fastvit_mci2": 35.7,
    "fastvit_mci3": 125.1,
    "fastvit_mci4": 321.6,
    "vit_base_mci_224": 86.3,
}
PARAMS_TRAIN_M = {**PARAMS_FUSED_M, "fastvit_mci2": 35.8, "fastvit_mci3": 125.2, "fastvit_mci4": 321.8}

ATOL = 1e-5
close = partial(torch.testing.assert_close, atol=ATOL, rtol=0)


def _variant(name: str):
    return getattr(SPECS[name][0], name)


def _open_clip_kwargs(name: str) -> dict:
    """What open_clip's TimmModel passes for MobileCLIP configs (timm_proj null, timm_drop_path 0)."""
    _, embed_dim, pool, _ = SPECS[name]
    return dict(num_classes=embed_dim, global_pool=pool, drop_path_rate=0.0)


def _randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Seeded O(1) values for every float tensor (tools/seeded_weights.py says why)."""
    seed_model_(model, seed)


def _build_uninitialised(build, **kwargs) -> torch.nn.Module:
    """Build on 'meta', then allocate without running the init: the weights are all set right after."""
    with torch.device("meta"):
        model = build(**kwargs)
    return model.to_empty(device="cpu").eval()


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _module_names(model: torch.nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules()]


def _params_m(model: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 1)


class Pair(NamedTuple):
    name: str
    theirs: torch.nn.Module  # timm 1.0.31's model, random weights
    ours: torch.nn.Module  # our variant function's model, the same weights
    x: torch.Tensor
    features: torch.Tensor  # theirs.forward_features(x), computed once
    logits: torch.Tensor  # theirs(x)


@pytest.fixture(scope="module", params=NAMES)
def pair(request) -> Pair:
    name = request.param
    theirs = _build_uninitialised(partial(timm.create_model, name))
    _randomize_(theirs)
    ours = _build_uninitialised(_variant(name))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    size = SPECS[name][3]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = theirs.forward_features(x)
        logits = theirs.forward_head(features)
    return Pair(name, theirs, ours, x, features, logits)


def test_same_modules_keys_and_shapes(pair):
    theirs, ours = pair.theirs, pair.ours
    assert _module_names(ours) == _module_names(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert _shapes(ours) == _shapes(theirs)
    for attr in ("num_classes", "num_features", "global_pool", "feature_info"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr


def test_same_outputs(pair):
    theirs, ours, features = pair.theirs, pair.ours, pair.features
    with torch.no_grad():
        close(ours.forward_features(pair.x), features)
        close(ours.forward_head(features, pre_logits=True), theirs.forward_head(features, pre_logits=True))
        close(ours(pair.x), pair.logits)


def test_reparameterized_outputs_and_published_size(pair):
    name, x, reference = pair.name, pair.x[:1], pair.logits[:1]  # one image: fused forwards are many
    with torch.no_grad():
        fused_theirs = reparameterize_model(pair.theirs)
        fused_ours = reparameterize_model(pair.ours)
        out = fused_ours(x)
        close(out, fused_theirs(x))
        torch.testing.assert_close(out, reference, atol=1e-4, rtol=0)
        assert list(fused_ours.state_dict()) == list(fused_theirs.state_dict())
        # Idempotent: fusing a fused model again leaves every module and tensor as it was.
        modules, tensors = list(fused_ours.modules()), list(fused_ours.state_dict(keep_vars=True).values())
        reparameterize_model(fused_ours, inplace=True)
        assert all(a is b for a, b in zip(fused_ours.modules(), modules, strict=True))
        assert all(
            a is b for a, b in zip(fused_ours.state_dict(keep_vars=True).values(), tensors, strict=True)
        )
        if name.startswith("fastvit"):  # a fused checkpoint loads into a model built fused
            deployed = _build_uninitialised(_variant(name), inference_mode=True)
            deployed.load_state_dict(fused_theirs.state_dict(), strict=True)
            close(deployed(x), out)
    assert _params_m(fused_ours) == PARAMS_FUSED_M[name]
    assert _params_m(pair.ours) == PARAMS_TRAIN_M[name]


def test_open_clip_construction_same_outputs(pair):
    """open_clip's ``create_model(name, num_classes=embed_dim, global_pool=pool)`` on the same weights."""
    ours = _build_uninitialised(_variant(pair.name), **_open_clip_kwargs(pair.name))
    ours.load_state_dict(pair.theirs.state_dict(), strict=True)
    with torch.no_grad():
        close(ours(pair.x), pair.logits)


@pytest.mark.parametrize("name", list(SPECS))
def test_constructions_match_timm(name):
    """Same structure as timm's for the default, open_clip's and other kwargs; built on 'meta' (cheap)."""
    variants = [
        {},
        _open_clip_kwargs(name),
        dict(num_classes=0, global_pool="", drop_path_rate=0.1, drop_rate=0.1, in_chans=1),
    ]
    if name.startswith("fastvit"):
        variants.append(dict(inference_mode=True))  # built already fused
    with torch.device("meta"):
        built = [(kwargs, _variant(name)(**kwargs), timm.create_model(name, **kwargs)) for kwargs in variants]
    for kwargs, ours, theirs in built:
        assert _module_names(ours) == _module_names(theirs), kwargs
        assert _shapes(ours) == _shapes(theirs), kwargs
        drop_paths = [m.drop_prob for m in theirs.modules() if isinstance(m, timm.layers.DropPath)]
        assert [m.drop_prob for m in ours.modules() if isinstance(m, timm.layers.DropPath)] == drop_paths
        assert (ours.num_classes, ours.global_pool) == (theirs.num_classes, theirs.global_pool), kwargs
    # The default construction is open_clip's, so the `pair` fixture covers what open_clip builds.
    (_, default, _), (_, open_clip_style, _) = built[:2]
    assert _shapes(default) == _shapes(open_clip_style)
    assert (default.num_classes, default.global_pool) == SPECS[name][1:3]


def _upstream_default_cfg(name: str):
    module = timm.models.vision_transformer_hybrid if name == "vit_base_mci_224" else timm.models.fastvit
    return module.default_cfgs[name]


@pytest.mark.parametrize("name", list(SPECS))
def test_pretrained_cfgs_equal_timm(name):
    ours, theirs = SPECS[name][0].default_cfgs[name], _upstream_default_cfg(name)
    assert list(ours.tags) == list(theirs.tags)  # the first tag is the default
    for tag in theirs.tags:
        for field in CFG_FIELDS:  # first, to name the field that differs
            assert getattr(ours.cfgs[tag], field) == getattr(theirs.cfgs[tag], field), (tag, field)
        assert ours.cfgs[tag] == theirs.cfgs[tag], tag  # and every other field


@pytest.mark.parametrize("name", ["fastvit_mci0", "vit_base_mci_224"])
def test_seeded_init_matches_timm(name):
    """Modules are created in timm's order, so one seed gives the same initial weights (training parity)."""
    torch.manual_seed(0)
    theirs = timm.create_model(name)
    torch.manual_seed(0)
    ours = _variant(name)()
    for (key, a), b in zip(theirs.state_dict().items(), ours.state_dict().values()):
        assert torch.equal(a, b), key


def test_registration_contract():
    for module in (mci, vit_mci):
        assert isinstance(module.__all__, list)  # timm's register_model appends to it
        for fn in module.BACKBONES:
            assert fn.__module__ == module.__name__ and fn.__name__ in module.default_cfgs
            # Not registered by import: timm 1.0.31's own definitions still answer.
            assert timm.models.model_entrypoint(fn.__name__) is not fn


def test_timm_interface_mci0():
    torch.manual_seed(0)
    theirs = timm.create_model("fastvit_mci0").eval()
    _randomize_(theirs)
    ours = mci.fastvit_mci0().eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 3, 64, 64)
    assert ours.group_matcher() == theirs.group_matcher()
    assert ours.group_matcher(coarse=True) == theirs.group_matcher(coarse=True)
    assert ours.no_weight_decay() == theirs.no_weight_decay()
    with torch.no_grad():
        for kwargs in ({}, dict(indices=2), dict(indices=[0, -3], stop_early=True)):
            out_t, inter_t = theirs.forward_intermediates(x, **kwargs)
            out_o, inter_o = ours.forward_intermediates(x, **kwargs)
            close(out_o, out_t)
            assert len(inter_o) == len(inter_t)
            for a, b in zip(inter_o, inter_t):
                close(a, b)
        for model in (theirs, ours):
            model.reset_classifier(10, "max")
        ours.get_classifier().load_state_dict(theirs.get_classifier().state_dict())
        assert ours.get_classifier().out_features == 10 and ours.global_pool == "max"
        close(ours(x), theirs(x))
        ours.reset_classifier(0)
        assert ours(x).shape == (1, ours.num_features)
    ours.set_grad_checkpointing(True)
    ours.train()(x).sum().backward()
    features = mci.fastvit_mci0(features_only=True)
    assert features.feature_info.channels() == [64, 128, 256, 512]
    assert [f.shape[-1] for f in features(x)] == [16, 8, 4, 2]


@pytest.mark.slow
def test_same_model_under_old_timm(pair, tmp_path):
    """timm 0.9.16 (+ open_clip 2.24.0): register ours, create_model, load 1.0.31 weights, compare."""
    name = pair.name
    weights = tmp_path / "weights.safetensors"  # up to 1.3 GB (mci4): removed after the run
    save_file({k: v.contiguous() for k, v in pair.theirs.state_dict().items()}, weights)
    save_file({"x": pair.x, "logits": pair.logits, "features": pair.features}, tmp_path / "io.safetensors")
    ref_cfgs = {}
    for tag in _upstream_default_cfg(name).tags:
        cfg = timm.models.get_pretrained_cfg(f"{name}.{tag}").to_dict()
        ref_cfgs[tag] = {f: list(v) if isinstance(v, tuple) else v for f, v in cfg.items() if f in CFG_FIELDS}
    (tmp_path / "request.json").write_text(json.dumps({"name": name, "pretrained_cfgs": ref_cfgs}))

    script = REPO_ROOT / "tests" / "scripts" / "backbone_parity_old_timm.py"
    try:
        proc = run_python(ensure_pair(*OLDEST_PAIR), [str(script), str(tmp_path)], MOBILECLIP2_AUTOLOAD="0")
    finally:
        weights.unlink()
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())

    assert result["timm_version"] == OLDEST_PAIR[1]
    assert result["backfilled"] and result["entrypoint_module"] == SPECS[name][0].__name__
    assert (
        result["missing_keys"] == [] and result["unexpected_keys"] == [] and result["shape_mismatches"] == []
    )
    assert result["max_abs_logits"] <= ATOL
    assert result["max_abs_features"] <= ATOL
    assert result["max_abs_fused_vs_ref"] <= 1e-4
    assert result["fused_twice_equal"]
    assert result["pretrained_cfg_mismatches"] == []
    assert result["default_tag"] == timm.models.get_pretrained_cfg(name).tag

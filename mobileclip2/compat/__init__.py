"""The only code that touches open_clip / timm / torch internals, one module per upstream concern.

=====================  =========================================================================
module                 upstream concern (each module's docstring names the versions it handles)
=====================  =========================================================================
``registry``           open_clip's model-config and pretrained-tag tables, Hub weight file names
``text_tower``         open_clip's text-tower builder; its LayerNorm / LayerNormFp32 / QuickGELU
``factory``            open_clip's create_model / download / load hooks (clear errors, converters)
``open_clip_train``    open_clip_train's main() hooks and the data pieces the DR loader reuses
``ddp``                torch's DistributedDataParallel on CPU-only (gloo) runs
``coca``               open_clip's CoCa generation without transformers; stopping-criteria protocol
``timm_layers``        timm's head / feature-index / ViT embed-layer / reparameterize conventions
``plugins``            plugin discovery in a patched open_clip (read by the startup hook)
``torch_ops``          private torch operators and flags the CPU/GPU inference path uses
=====================  =========================================================================

A newcomer supporting a new open_clip / timm release reads only this package. The names below are
re-exported for convenience; each lives in its concern module. Every hook prefers feature detection
over version strings and is idempotent: installing it twice changes nothing. Importing this package
imports no upstream module (each function imports what it touches when called).
"""

from __future__ import annotations

from ._common import open_clip_version
from .coca import Verdicts, enable_coca_sampling
from .ddp import cpu_safe_ddp_class
from .factory import (
    StateDictConverter,
    add_state_dict_converter,
    check_model_and_tag,
    install_factory_hooks,
)
from .open_clip_train import OPEN_CLIP_TRAIN_HOOKS, open_clip_train_hooks, open_clip_train_main_module
from .registry import (
    add_model_config_files,
    add_pretrained_cfgs,
    hub_weight_file_names,
    native_model_config_names,
)
from .text_tower import TEXT_TOWER_KEY, quick_gelu_layer, register_text_tower, text_norm_layer
from .timm_layers import is_fused, reset_classifier_head, take_indices

# Old private names some callers and tests still use.
_check_model_and_tag = check_model_and_tag
_cpu_safe_ddp_class = cpu_safe_ddp_class

__all__ = [
    "OPEN_CLIP_TRAIN_HOOKS",
    "StateDictConverter",
    "TEXT_TOWER_KEY",
    "Verdicts",
    "add_model_config_files",
    "add_pretrained_cfgs",
    "add_state_dict_converter",
    "check_model_and_tag",
    "cpu_safe_ddp_class",
    "enable_coca_sampling",
    "hub_weight_file_names",
    "install_factory_hooks",
    "is_fused",
    "native_model_config_names",
    "open_clip_train_hooks",
    "open_clip_train_main_module",
    "open_clip_version",
    "quick_gelu_layer",
    "register_text_tower",
    "reset_classifier_head",
    "take_indices",
    "text_norm_layer",
]

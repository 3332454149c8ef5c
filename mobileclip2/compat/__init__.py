"""The only code that touches open_clip / timm / torch internals, one module per upstream concern.

=====================  =========================================================================
module                 upstream concern (each module's docstring names the versions it handles)
=====================  =========================================================================
``registry``           open_clip's model-config and pretrained-tag tables, Hub files, config defaults
``text_tower``         open_clip's text-tower builder; its LayerNorm / LayerNormFp32 / QuickGELU
``factory``            open_clip's create_model / download / load hooks (clear errors, converters)
``safe_load``          open_clip releases that unpickle checkpoints (no ``weights_only``)
``open_clip_train``    open_clip_train's main() hooks and the data pieces the DR loader reuses
``ddp``                torch's DistributedDataParallel on CPU-only (gloo) runs
``coca``               open_clip's CoCa generation without transformers (the loop in ``sampling``)
``timm_layers``        timm's head / feature-index / ViT embed-layer / reparameterize conventions
``block_types``        the timm / open_clip block classes the inference rewrites recognize
``plugins``            plugin discovery in a patched open_clip (read by the startup hook)
``torch_ops``          private torch operators and flags the CPU/GPU inference path uses
``export``             exporter switches (MHA fast path, ExecuTorch's thread pool)
``surface``            the table of every upstream internal the modules above touch (``INTERNALS``)
=====================  =========================================================================

A newcomer supporting a new open_clip / timm release reads only this package. Every hook prefers
feature detection over version strings and is idempotent: installing it twice changes nothing. Each
module lists the upstream internals it touches in ``INTERNALS`` (``surface`` gathers them into
docs/compatibility.md); a hook that no longer fits is skipped by mobileclip2.plugin, not fatal.
Importing this package imports no upstream module (each function imports what it touches when
called); callers import the concern module they need.
"""

"""Dataset reinforcement at scale: the torchrun entry point and its storage/manifest helpers.

``torchrun --nproc-per-node G --nnodes N -m mobileclip2.reinforce SHARDS --output OUT ...`` runs
``mobileclip2 reinforce`` on every rank (same flags); the work itself is
:func:`mobileclip2.train.reinforce.reinforce`. This package holds what does not depend on torch
models: where shards come from and go to (:mod:`.storage`) and what a run has already finished
(:mod:`.manifest`). Importing it is cheap.
"""

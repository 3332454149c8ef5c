"""Dataset-reinforcement (DR) training and distillation on an unmodified open_clip_train.

``python -m mobileclip2.train`` = open_clip_train's main loop with Apple's DR flags added
(mobileclip2.train.main explains how, without forking the loop). Modules, one concern each:

* ``args``      - the extra flags (Apple's names and defaults) and their validation;
* ``augment``   - reproducible augmentations: sample parameters, apply, store, replay;
* ``data``      - reinforced webdataset shards -> batches + stored teacher embeddings;
* ``channel``   - hands each batch's teacher half from the loader to the loss;
* ``losses``    - CLIP + ensemble distillation loss (Apple's DRClipLoss), DDP-correct;
* ``teachers``  - frozen open_clip teacher ensembles (online distillation, reinforce);
* ``reinforce`` - writes DR shards from plain image/caption shards (`mobileclip2 reinforce`).

See docs/training.md for the shard format and recipes. Nothing here is imported by the plugin.
"""

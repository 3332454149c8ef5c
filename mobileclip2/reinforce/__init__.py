"""Dataset reinforcement (DR): add teacher embeddings, augmentation parameters and synthetic captions
to plain image/caption webdataset shards.

Modules, one concern each: :mod:`.shards` (the shard format, the one description of it),
:mod:`.storage` (where shards come from and go to: paths, ``pipe:``, fsspec URLs; whole-or-nothing
writes), :mod:`.manifest` (what a run has finished; whether an output folder may be reused),
:mod:`.distributed` (ranks under torchrun), :mod:`.generate` (the work) and :mod:`.main` (the flags
of ``mobileclip2 reinforce`` and ``torchrun -m mobileclip2.reinforce``). Importing it is cheap.
"""

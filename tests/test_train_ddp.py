"""The DR / distillation loss across 2 CPU processes (gloo) == the single-process loss on the whole batch.

Each rank holds half of a global batch; losses and feature gradients are compared with the
single-process computation for the settings open_clip_train offers (--local-loss,
--gather-with-grad), with synthetic captions and both ensemble averaging modes.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp
from train_support import make_batch

WORLD = 2
PER_RANK = 3
DIMS = (3, 4)
SETTINGS = [
    # local_loss, gather_with_grad, average_after_softmax
    (True, True, True),
    (True, True, False),
    (False, False, True),
    (False, True, False),
]


def _global_batch():
    return make_batch(batch=WORLD * PER_RANK, width=5, dims=DIMS)


def _loss(student, teacher, after, dist=None):
    from mobileclip2.train.losses import DistillConfig, dr_clip_loss

    cfg = DistillConfig(
        teacher_dims=DIMS, teacher_scales=(30.0, 40.0), loss_weights=(0.5, 1.0), average_after_softmax=after
    )
    return dr_clip_loss(student, teacher, torch.tensor(10.0, dtype=torch.float64), cfg, dist)


def _worker(rank, init_file, results):
    import torch.distributed as dist

    from mobileclip2.train.losses import DistInfo, Features

    torch.set_num_threads(1)  # 2 processes on 2 cores
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        student, teacher = _global_batch()
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        for index, (local_loss, gather_with_grad, after) in enumerate(SETTINGS):
            local = Features(*(t[rows].clone().requires_grad_(True) for t in student))
            losses = _loss(
                local,
                Features(*(t[rows] for t in teacher)),
                after,
                DistInfo(rank, WORLD, local_loss, gather_with_grad),
            )
            total = losses["contrastive_loss"] + losses["distill_loss"]
            total.backward()
            results[(index, rank)] = (
                {k: v.item() for k, v in losses.items()},
                [t.grad.clone() for t in local],
            )
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results():
    manager = mp.Manager()
    results = manager.dict()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(_worker, args=(init_file, results), nprocs=WORLD, join=True)
    out = dict(results)
    manager.shutdown()
    return out


@pytest.mark.parametrize(
    "index", range(len(SETTINGS)), ids=[f"local{a}-grad{b}-after{c}" for a, b, c in SETTINGS]
)
def test_two_process_loss_matches_single_process(ddp_results, index):
    local_loss, gather_with_grad, after = SETTINGS[index]
    student, teacher = _global_batch()
    student = type(student)(*(t.clone().requires_grad_(True) for t in student))
    expected = _loss(student, teacher, after)
    (expected["contrastive_loss"] + expected["distill_loss"]).backward()
    ranks = [ddp_results[(index, rank)] for rank in range(WORLD)]
    for key, value in expected.items():
        if local_loss:  # each rank scores its own rows: the global loss is the mean over ranks
            got = sum(r[0][key] for r in ranks) / WORLD
        else:  # every rank scores the whole global matrix
            got = ranks[0][0][key]
            assert abs(ranks[1][0][key] - value.item()) < 1e-9
        assert abs(got - value.item()) < 1e-9, key
    if gather_with_grad or not local_loss:
        # Gradient of each rank's own rows. With gather-with-grad, all_gather's backward sums the
        # gradients every rank's loss sends to these rows, i.e. world x the mean (DDP then averages).
        scale = 1.0 / WORLD if gather_with_grad else 1.0
        for rank, (_, grads) in enumerate(ranks):
            rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
            for got, full in zip(grads, student):
                assert torch.allclose(got * scale, full.grad[rows], atol=1e-9)

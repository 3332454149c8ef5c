"""Shared pytest setup: seed torch and free each module's temp files.

Helper modules (tests/support/, tools/) are importable by plain name through pytest's `pythonpath`
setting in pyproject.toml.
"""

import os
import shutil
from pathlib import Path

import pytest
from temp_dirs import SESSION_DIR_PREFIX


@pytest.fixture(autouse=True)
def _seeded():
    import torch

    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module", autouse=True)
def _free_module_disk(tmp_path_factory):
    """Delete what a test module wrote under pytest's temp dir once the module is done.

    Why: the suite writes full-size checkpoints, offline Hub caches and training checkpoints
    (~19 GB in all); kept until the session ends, they can fill a CI disk. Set
    MOBILECLIP2_KEEP_TEST_FILES=1 to keep them for debugging. Dirs named SESSION_DIR_PREFIX...
    are shared by several modules and live until the session ends.
    """
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    if os.environ.get("MOBILECLIP2_KEEP_TEST_FILES") == "1":
        return
    for path in set(base.iterdir()) - before:
        if not path.name.startswith(SESSION_DIR_PREFIX):
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def s0_checkpoint(tmp_path_factory) -> Path:
    """A local MobileCLIP-S0 checkpoint file with generated weights (seed 0; no download anywhere),
    shared by the modules that load a model from a file path."""
    import open_clip
    import torch

    from mobileclip2.convert import save_safetensors

    torch.manual_seed(0)
    state = open_clip.create_model("MobileCLIP-S0").state_dict()
    path = tmp_path_factory.mktemp(SESSION_DIR_PREFIX + "ckpt") / "mobileclip_s0_generated.safetensors"
    save_safetensors(state, path)
    return path


@pytest.fixture(scope="session")
def train_workspace(tmp_path_factory) -> dict:
    """Tiny models and plain/DR shards shared by the training test modules (train_support)."""
    from train_support import build_workspace

    return build_workspace(tmp_path_factory)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread, as every torchrun rank gets (OMP_NUM_THREADS=1), and faster than two
    spinning OpenMP threads on a shared 2-core machine. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Shared pytest setup: seed torch and free each module's temp files.

Helper modules (tests/support/, tools/) are importable by plain name through pytest's `pythonpath`
setting in pyproject.toml.
"""

import os
import shutil
from pathlib import Path

import pytest
from temp_dirs import SESSION_DIR_PREFIX


def _threads_per_worker() -> int | None:
    """Under pytest-xdist, each worker gets its share of the cores (2 workers on 2 cores: 1 thread
    each). Why: torch sizes its pool to every core, and two workers' OpenMP pools spinning on the
    same cores run slower than one. None when not under xdist."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // workers)


def pytest_configure(config):
    threads = _threads_per_worker()
    if threads is not None and "PYTEST_XDIST_WORKER" in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # subprocesses (torchrun ranks, workers) too
        import torch

        torch.set_num_threads(threads)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the marks into group suffixes
def pytest_collection_modifyitems(config, items):
    """Keep each module on one xdist worker (``--dist loadgroup``): most modules share an expensive
    module fixture (a reference bundle, an export, a training workspace). A module whose tests are
    independent and long sets ``XDIST_PER_TEST = True`` and its tests spread over the workers."""
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and not getattr(module, "XDIST_PER_TEST", False):
            item.add_marker(pytest.mark.xdist_group(module.__name__))


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

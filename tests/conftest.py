"""Shared pytest setup: seed torch, share the modules out to xdist workers, free each module's temp
files and heap.

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


# How two pytest-xdist workers share the suite (``-n 2``): each test module is one unit, run
# whole on one worker, because most modules share an expensive module fixture (a reference bundle,
# an export, a training workspace). In the slow tier, two exceptions, by file name:
# - the modules that build full-size models (several GB each) form ONE unit, so two of them never
#   overlap on a 24 GB machine;
BIG_MODEL_FILES = (
    "test_backbones.py",
    "test_coca.py",
    "test_convert.py",
    "test_dtypes.py",
    "test_equivalence.py",
    "test_optimize.py",
    "test_registration.py",
    "test_reparam.py",
)
BIG_MODELS_UNIT = "big-models"
# - modules whose tests are independent, minutes-long exports: each test is its own unit.
PER_TEST_FILES = ("test_export_mobile.py",)


def xdist_unit(nodeid: str, slow_tier: bool = True) -> str:
    """The scheduling unit of a test id (see above); the default tier's models are small, so there
    every module is its own unit."""
    path = nodeid.split("::", 1)[0]
    file_name = path.rsplit("/", 1)[-1]
    if not slow_tier:
        return path
    if file_name in PER_TEST_FILES:
        return nodeid
    if file_name in BIG_MODEL_FILES:
        return BIG_MODELS_UNIT
    return path


def unit_priority(unit: str) -> int:
    """Order in which units are handed out: the big-model unit first (the longest one that cannot be
    split), then the single long export tests, then whole modules. Otherwise xdist hands out the
    modules with most tests first and the minutes-long one-test export units come last, on one
    worker, while the other idles."""
    if unit == BIG_MODELS_UNIT:
        return 0
    return 1 if "::" in unit else 2


def _slow_tier(config) -> bool:
    return "not slow" not in (config.option.markexpr or "")


@pytest.hookimpl(optionalhook=True)  # a pytest without xdist (`-p no:xdist`) must still run the suite
def pytest_xdist_make_scheduler(config, log):
    """Schedule by :func:`xdist_unit`, in :func:`unit_priority` order, whatever ``--dist`` says
    (pytest-xdist 3.5 - 3.8: subclass of ``LoadScopeScheduling``, overriding ``_split_scope`` and
    the ``workqueue`` it pops units from with ``popitem(last=False)``).

    Why not ``--dist loadgroup`` with ``xdist_group`` marks: with pytest 9.2 the marks' node-id
    suffixes no longer reach the scheduler and every test is scheduled on its own (pytest-xdist
    issue 1386), which builds module fixtures on both workers. This scheduler reads only the node
    ids, the same on every pytest version."""
    from collections import OrderedDict

    from xdist.scheduler import LoadScopeScheduling

    slow_tier = _slow_tier(config)

    class UnitsByPriority(OrderedDict):
        def popitem(self, last: bool = True):
            if last:
                return super().popitem(last=True)
            unit = min(self, key=unit_priority)  # the first of the most urgent, in xdist's order
            return unit, self.pop(unit)

    class ModuleUnits(LoadScopeScheduling):
        def __init__(self, config, log=None):
            super().__init__(config, log)
            self.workqueue = UnitsByPriority()

        def _split_scope(self, nodeid: str) -> str:
            return xdist_unit(nodeid, slow_tier)

    return ModuleUnits(config, log)


@pytest.fixture(autouse=True)
def _seeded():
    import torch

    torch.manual_seed(0)
    yield


def _return_freed_heap_to_the_os() -> None:
    """glibc keeps freed heap pages (a full-size model's weights) mapped to the process; a worker
    that built one would hold several GB while it runs small tests next to a worker building
    another. ``malloc_trim(0)`` gives them back. No-op off glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@pytest.fixture(scope="module", autouse=True)
def _free_module_memory():
    yield
    _return_freed_heap_to_the_os()


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With MOBILECLIP2_TEST_MEMORY_LOG=FILE, append per test: worker, test id, resident MB after it,
    and the peak MB of this process and of its finished children so far (to size the xdist units)."""
    yield
    path = os.environ.get("MOBILECLIP2_TEST_MEMORY_LOG")
    if not path or not os.path.exists("/proc/self/statm"):
        return
    import resource

    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(path, "a") as log:
        log.write(f"{worker}\t{item.nodeid}\t{_rss_mb():.0f}\t{peak_self:.0f}\t{peak_children:.0f}\n")


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


def pytest_terminal_summary(terminalreporter):
    """How many documentation blocks tests/test_docs.py skipped, and why (each skipped block is
    listed with its place and reason)."""
    skipped = [
        entry
        for report in terminalreporter.stats.get("passed", [])
        for name, value in getattr(report, "user_properties", [])
        if name == "doc_blocks_skipped"
        for entry in value
    ]
    if skipped:
        terminalreporter.write_sep("-", f"documentation blocks not run here: {len(skipped)}")
        for entry in sorted(set(skipped)):
            terminalreporter.write_line(f"  {entry}")

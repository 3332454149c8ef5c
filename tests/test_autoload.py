"""The startup hook: names appear on a plain `import open_clip`, in regular (wheel) and editable
installs (with every model config as package data), cost almost nothing at interpreter start, can
be switched off, and survive a broken plugin."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from compat_env import REPO_ROOT

PROBE = (
    "import json, sys; import open_clip; "
    "print(json.dumps({'s3': 'MobileCLIP-S3' in open_clip.list_models(), "
    "'tags': open_clip.list_pretrained_tags_by_model('MobileCLIP-S3'), "
    "'plugin_loaded': 'mobileclip2.plugin' in sys.modules}))"
)


def _python(args, env_extra=None, python=sys.executable, cwd="/"):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MOBILECLIP2_AUTOLOAD")}
    env.update(env_extra or {})
    # cwd=/ so the checkout itself is not on sys.path: only the installed distribution counts.
    return subprocess.run([python, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def _probe(**kwargs) -> dict:
    proc = _python(["-c", PROBE], **kwargs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_plain_import_open_clip_registers_everything():
    assert _probe() == {"s3": True, "tags": ["datacompdr"], "plugin_loaded": True}


def test_autoload_can_be_switched_off():
    assert _probe(env_extra={"MOBILECLIP2_AUTOLOAD": "0"}) == {
        "s3": False,
        "tags": [],
        "plugin_loaded": False,
    }


def test_interpreter_start_runs_the_hook_and_stays_torch_free():
    """The .pth hook runs at every start and imports neither torch nor open_clip. How long it takes
    is measured by benchmarks/startup.py (no wall-clock assertions in tests)."""
    proc = _python(
        ["-X", "importtime", "-c", "import sys; print('torch' in sys.modules, 'open_clip' in sys.modules)"]
    )
    assert proc.stdout.strip() == "False False"
    ours = [line for line in proc.stderr.splitlines() if re.search(r"\|\s+mobileclip2", line)]
    assert ours, "the .pth hook did not run"
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert not {name for name in imported if name.split(".")[0] in ("torch", "numpy", "open_clip", "timm")}


@pytest.mark.slow
def test_timm_alone_gets_backbones_through_its_own_group():
    code = (
        "import json, sys, timm; print(json.dumps(['mobileclip2.plugin' in sys.modules, "
        "'open_clip' in sys.modules, timm.is_model('fastvit_mci0')]))"
    )
    proc = _python(["-c", code])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [True, False, True]


def _fake_distribution(root: Path, name: str, module_source: str, entry: str) -> None:
    """A minimal installed distribution with an open_clip.plugins entry point, on PYTHONPATH."""
    (root / f"{name}.py").write_text(module_source)
    dist_info = root / f"{name}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(f"[open_clip.plugins]\n{name} = {entry}\n")


def test_broken_plugin_warns_once_and_never_breaks_open_clip(tmp_path):
    _fake_distribution(
        tmp_path, "broken_plugin", "def register():\n    raise ValueError('boom')\n", "broken_plugin:register"
    )
    code = "import open_clip; import open_clip; print('MobileCLIP-S3' in open_clip.list_models())"
    proc = _python(["-W", "always", "-c", code], env_extra={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"  # the other plugin (ours) still ran
    warnings = [line for line in proc.stderr.splitlines() if "plugin 'broken_plugin'" in line]
    assert len(warnings) == 1, proc.stderr
    assert "broken_plugin:register" in warnings[0] and "ValueError: boom" in warnings[0]


def test_plugin_discovery_runs_each_entry_point_once(monkeypatch):
    """pluggy-style: discovery is tested against a fake importlib.metadata."""
    import importlib.metadata

    from mobileclip2 import _autoload

    calls = []

    class FakeEntryPoint:
        def __init__(self, name, value):
            self.name, self.value = name, value

        def load(self):
            return lambda: calls.append(self.name)

    points = [FakeEntryPoint("a", "x:a"), FakeEntryPoint("a", "x:a"), FakeEntryPoint("b", "y:b")]
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda group: points if group == "test.group" else []
    )
    monkeypatch.setattr(_autoload, "_groups_run", set())
    assert _autoload.run_entry_points("test.group") == ["a", "b"]
    assert _autoload.run_entry_points("test.group") == []  # once per process
    assert calls == ["a", "b"]


def _venv_with_shared_site_packages(path: Path) -> Path:
    """A venv that sees the system site-packages as a plain path entry, so their .pth files
    (including any editable install of this checkout) do not run: only what we install counts."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    venv_site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (venv_site / "zz_shared_site_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _clean_copy(destination: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        source = REPO_ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


CONFIG_PROBE = (
    "import json; from importlib import resources; from mobileclip2.configs import config_files; "
    "print(json.dumps([sorted(p.name for p in config_files()), "
    "sorted(e.name for e in resources.files('mobileclip2.model_configs').iterdir() "
    "if e.name.endswith('.json'))]))"
)


def _shipped_configs() -> list[str]:
    return sorted(path.name for path in (REPO_ROOT / "model_configs").glob("*.json"))


def _wheel(source: Path, dist: Path) -> Path:
    """Build the wheel a regular install gets, and check that it ships every config as package data
    (model_configs/ is a top-level folder of the checkout, mobileclip2/model_configs/ in the wheel)."""
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist)]
    subprocess.run([*build, str(source)], check=True, capture_output=True)
    (wheel,) = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    prefix = "mobileclip2/model_configs/"
    shipped = sorted(n[len(prefix) :] for n in names if n.startswith(prefix) and n.endswith(".json"))
    assert shipped == _shipped_configs() and len(shipped) >= 14
    assert not any(n.startswith("model_configs/") for n in names)  # no stray top-level package
    return wheel


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["regular", "editable"])
def test_install_modes_register_on_plain_import(tmp_path, editable):
    """Both install modes: the hook registers on a plain `import open_clip`, every model config is
    found as package data, the switch works, and an editable install whose checkout is gone stays
    silent."""
    python = _venv_with_shared_site_packages(tmp_path / "venv")
    source = _clean_copy(tmp_path / "src")
    target = ["-e", str(source)] if editable else [str(_wheel(source, tmp_path / "dist"))]
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps"]
    subprocess.run([*install, "--no-build-isolation", *target], check=True, capture_output=True, cwd=tmp_path)
    where = _python(["-c", "import mobileclip2; print(mobileclip2.__file__)"], python=str(python))
    assert Path(where.stdout.strip()).is_relative_to(source if editable else tmp_path / "venv")
    assert _probe(python=str(python)) == {"s3": True, "tags": ["datacompdr"], "plugin_loaded": True}
    assert _probe(python=str(python), env_extra={"MOBILECLIP2_AUTOLOAD": "0"})["s3"] is False
    configs = _python(["-c", CONFIG_PROBE], python=str(python))
    assert configs.returncode == 0, configs.stderr[-2000:]
    expected = _shipped_configs()
    assert json.loads(configs.stdout.strip().splitlines()[-1]) == [expected, expected]
    if editable:
        # The checkout goes away but the .pth stays: every Python start must stay silent.
        shutil.rmtree(source)
        orphaned = _python(["-c", "import open_clip; print('started')"], python=str(python))
        assert (orphaned.returncode, orphaned.stdout.strip()) == (0, "started"), orphaned.stderr[-2000:]
        assert "mobileclip2" not in orphaned.stderr, orphaned.stderr[-2000:]


@pytest.mark.slow
def test_open_clip_train_sees_the_names(tmp_path):
    args = [
        "-m",
        "open_clip_train.main",
        "--model",
        "MobileCLIP2-S0",
        "--dataset-type",
        "synthetic",
        "--train-num-samples",
        "16",
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--precision",
        "fp32",
        "--workers",
        "0",
        "--logs",
        str(tmp_path),
        "--name",
        "smoke",
    ]
    proc = _python(args, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "smoke" / "checkpoints" / "epoch_1.pt").is_file()
    log = (tmp_path / "smoke" / "out.log").read_text()
    assert "Train Epoch: 0" in log and "Loss" in log


def test_reloading_the_hook_keeps_one_finder():
    """importlib.reload(_autoload) must not add a second finder: two would call each other
    (RecursionError on the next `import open_clip`)."""
    code = (
        "import importlib, json, sys; import mobileclip2._autoload as hook; "
        "importlib.reload(hook); importlib.reload(hook); "
        "ours = [f for f in sys.meta_path if getattr(f, hook.FINDER_MARK, False)]; "
        "import open_clip; "
        "print(json.dumps([len(ours), type(ours[0]) is hook.PostImportFinder, "
        "'MobileCLIP-S3' in open_clip.list_models()]))"
    )
    proc = _python(["-c", code], env_extra={"PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [1, True, True]

"""Every bad input gets a clear error: a table of wrong names, tags, files, shapes, dtypes, devices,
CLI arguments and shard contents.

Each row: what is called, the error type, fragments saying *what is wrong* and fragments saying
*what to do*. Library rows run in this process on tiny files; the CLI rows run in ONE subprocess
(`python -S`, MOBILECLIP2_AUTOLOAD=0, so the CLI must register the models itself) and must print
`mobileclip2 COMMAND: error: ...` without a traceback.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import site
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Row:
    id: str
    call: object  # (files: dict) -> None, expected to raise
    error: type[BaseException]
    what: tuple[str, ...]  # the message says what is wrong ...
    todo: tuple[str, ...]  # ... and what to do


# -- files and shards the rows read ---------------------------------------------------------------


class _RunsCode:
    """A pickle that writes a marker file when unpickled: what a weights_only reader must refuse."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).touch, ())


def _jpg(size=(32, 32)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _tar(path: Path, samples: list[dict[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tar:
        for index, sample in enumerate(samples):
            for ext, payload in sample.items():
                info = tarfile.TarInfo(f"{index:06d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad_inputs")
    out = {"root": str(root), "marker": str(root / "code-ran")}
    out["missing"] = str(root / "nope.pt")
    (root / "truncated.pt").write_bytes(b"PK\x03\x04 not really a zip")
    out["truncated"] = str(root / "truncated.pt")
    (root / "text.safetensors").write_text("hello")
    out["text_safetensors"] = str(root / "text.safetensors")
    with open(root / "evil.pt", "wb") as handle:
        pickle.dump({"visual.proj": _RunsCode(out["marker"])}, handle)
    out["evil"] = str(root / "evil.pt")
    torch.save([torch.zeros(1)], root / "list.pt")
    out["list"] = str(root / "list.pt")
    torch.save({"visual.proj": torch.zeros(2), "epoch": 3}, root / "not_tensors.pt")
    out["not_tensors"] = str(root / "not_tensors.pt")
    torch.save({"visual.trunk.stem.0.weight": torch.zeros(3, 3)}, root / "other_model.pt")
    out["other_model"] = str(root / "other_model.pt")
    (root / "existing.safetensors").write_bytes(b"keep me")
    out["existing"] = str(root / "existing.safetensors")
    (root / "labels.txt").write_text("")
    out["image"] = str(root / "image.jpg")
    Path(out["image"]).write_bytes(_jpg())

    paug = json.dumps({"param_aug": [[[0, 0, 32, 32]]]}).encode()
    syn = json.dumps({"syn_text": ["a red square"]}).encode()
    out["plain_shard"] = _tar(root / "plain-000.tar", [{"jpg": _jpg(), "txt": b"red"}])
    out["no_emb_shard"] = _tar(
        root / "noemb-000.tar", [{"jpg": _jpg(), "txt": b"red", "paug.json": paug, "syn.json": syn}]
    )
    npz = io.BytesIO()
    np.savez(npz, image_emb=np.zeros((1, 8), np.float32), text_emb=np.zeros((1, 8), np.float32))
    out["no_syn_shard"] = _tar(
        root / "nosyn-000.tar", [{"jpg": _jpg(), "txt": b"red", "paug.json": paug, "npz": npz.getvalue()}]
    )
    two = _tar(root / "two-000.tar", [{"jpg": _jpg(), "txt": b"red"}, {"jpg": _jpg(), "txt": b"blue"}])
    with tarfile.open(two) as tar:
        third = tar.getmembers()[2].offset  # sample 1's first header
    whole = Path(two).read_bytes()
    (root / "truncated-000.tar").write_bytes(whole[: third + 100])  # a copy that died half way
    out["truncated_shard"] = str(root / "truncated-000.tar")
    damaged = bytearray(whole)
    damaged[third + 3] ^= 0x55  # a flipped bit in a member name: the header's checksum fails
    (root / "checksum-000.tar").write_bytes(bytes(damaged))
    out["checksum_shard"] = str(root / "checksum-000.tar")
    (root / "in").mkdir()
    (root / "in" / "000.tar").write_bytes(whole)
    (root / "link").symlink_to(root / "in", target_is_directory=True)  # the input folder by another name
    (root / "foreign").mkdir()
    (root / "foreign" / "config.json").write_text('{"model": "a config of something else"}')
    return out


# -- library rows ---------------------------------------------------------------------------------


def _create(name, pretrained=None):
    import open_clip

    return lambda files: open_clip.create_model(name, pretrained=files.get(pretrained, pretrained))


def _read(key):
    from mobileclip2.checkpoints import read_state_dict

    return lambda files: read_state_dict(files[key])


def _inspect(key, **sampling):
    from mobileclip2.train.data import DRSampling, inspect_shards

    return lambda files: inspect_shards(files[key], DRSampling(**sampling))


def _crop(hw):
    from mobileclip2.augment import Augmentation
    from mobileclip2.train.data import check_stored_crop

    augmentation = Augmentation.from_config({"random_resized_crop": {"size": 32}, "to_tensor": {}})
    return lambda files: check_stored_crop(augmentation, {"random_resized_crop": [0, 0, 32, 32]}, hw)


def _collate_widths(files):
    from mobileclip2.train.data import collate

    def sample(key, width):
        return {
            "image": torch.zeros(3, 4, 4),
            "text": torch.zeros(77, dtype=torch.long),
            "syn_text": None,
            "teacher": (torch.zeros(width), torch.zeros(width), None),
            "__key__": key,
            "__url__": "shards/000.tar",
        }

    collate([sample("a", 8), sample("b", 16)])


def _pth_gz_list(files):
    from mobileclip2.reinforce.shards import decode_embeddings

    buffer = io.BytesIO()
    torch.save([torch.zeros(2)], buffer)
    decode_embeddings({"__key__": "k9", "pth.gz": gzip.compress(buffer.getvalue())})


def _too_many_skips(files):
    from mobileclip2.train.data import SKIPS_KEY, SkipMonitor

    counts = {"seen": 10, "skipped": {"cannot be decoded or prepared (OSError)": 5}, "examples": {}}
    list(SkipMonitor([(None, None, {SKIPS_KEY: counts})], max_fraction=0.01))


def _train_args(*argv):
    import argparse

    from open_clip_train.params import parse_args

    from mobileclip2.train.args import split_argv, validate

    def call(files):
        ours, rest = split_argv(list(argv))
        validate(argparse.Namespace(**{**vars(parse_args(rest)), **vars(ours)}))

    return call


def _webdataset(version):
    from mobileclip2.train import check_webdataset

    versions = {"webdataset": version, "open_clip_torch": "3.3.0"}
    return lambda files: check_webdataset(versions.get)


def _mismatch(files):
    from mobileclip2.errors import CheckpointMismatchError
    from mobileclip2.identify import explain_mismatch

    with torch.device("meta"):
        import open_clip

        into = open_clip.create_model("MobileCLIP2-S0", device="meta").state_dict()
        other = open_clip.create_model("MobileCLIP2-B", device="meta").state_dict()
    raise CheckpointMismatchError(explain_mismatch(into, other, source="checkpoint"))


def _device(device):
    from mobileclip2.loading import check_device

    return lambda files: check_device(device)


def _augmentation(config):
    from mobileclip2.augment import Augmentation

    return lambda files: Augmentation.from_config(config)


def _nan_weights(role):
    """A tiny teacher (CLIP) or captioner (CoCa) model folder whose weights hold a NaN."""

    def call(files):
        from train_support import COCA_CONFIG, teacher_config, write_model_dir

        from mobileclip2.reinforce.generate import Captioner
        from mobileclip2.teachers import load_member

        folder = Path(files["root"]) / f"nan-{role}"
        config = COCA_CONFIG if role == "captioner" else teacher_config(32, 32, [0.5] * 3, [0.5] * 3)
        name = write_model_dir(folder, config, seed=0)
        weights = folder / "open_clip_pytorch_model.bin"
        state = torch.load(weights, weights_only=True)
        state["logit_scale"] = torch.tensor(float("nan"))
        torch.save(state, weights)
        (Captioner if role == "captioner" else load_member)(name, None, "cpu")

    return call


def _plan(sources, output, overwrite=True):
    from mobileclip2.reinforce.manifest import plan_run
    from mobileclip2.reinforce.storage import Output

    def call(files):
        root = files["root"]
        plan_run([s.format(root=root) for s in sources], Output(output.format(root=root)), {}, overwrite)

    return call


def _read_shard(key):
    from mobileclip2.reinforce.storage import read_shard

    return lambda files: read_shard(files[key])


def _second_lock(files):
    from mobileclip2.files import exclusive_lock

    with (
        exclusive_lock(Path(files["root"]) / "locked.tar"),
        exclusive_lock(Path(files["root"]) / "locked.tar"),
    ):
        pass


def _ranks_disagree(files):
    from mobileclip2.reinforce import distributed

    gather = distributed.gather
    distributed.gather = lambda value: [value, {**value, "seed": 1}]  # rank 1 given --seed 1
    try:
        distributed.require_agreement({"seed": 0, "inputs": ["000.tar"]})
    finally:
        distributed.gather = gather


def _node_local(files):
    from mobileclip2.reinforce.generate import _check_listed_shards
    from mobileclip2.reinforce.storage import Output

    record = {"shard": "000.tar", "bytes": 10240, "rank": 1, "host": "node-b"}
    _check_listed_shards(Output(Path(files["root"]) / "foreign"), [record])  # 000.tar is not there


def _call(module, name, *args):
    def call(files):
        import importlib

        getattr(importlib.import_module(module), name)(
            *(files.get(a, a) if isinstance(a, str) else a for a in args)
        )

    return call


def _convert_check(src, dst, overwrite=False):
    from mobileclip2.commands.convert import check_destination

    return lambda files: check_destination(files.get(src, src), files.get(dst, dst), overwrite)


def _rows() -> list[Row]:
    from mobileclip2.errors import (
        CheckpointMismatchError,
        CorruptCheckpointError,
        DependencyVersionError,
        OutputLockedError,
        RankDisagreementError,
        ReinforceOutputError,
        ShardReadError,
        ShardStorageError,
        UnknownModelError,
        UnknownPretrainedTagError,
    )
    from mobileclip2.teachers import TeacherError
    from mobileclip2.train.args import TrainArgsError
    from mobileclip2.train.data import CropMismatchError, DRDataError

    return [
        # names and tags
        Row(
            "name-typo-O-for-0",
            _create("MobileCLIP2-SO"),
            UnknownModelError,
            ("Unknown model name",),
            ("Did you mean: MobileCLIP2-S0",),
        ),
        Row(
            "name-with-tag",
            _create("MobileCLIP-B-LT"),
            UnknownModelError,
            ("'MobileCLIP-B-LT'",),
            ("pretrained='datacompdr_lt'",),
        ),
        Row(
            "name-unknown",
            _create("MobileCLIP-S9"),
            UnknownModelError,
            ("'MobileCLIP-S9'",),
            ("mobileclip2 list",),
        ),
        Row(
            "tag-unknown",
            _create("MobileCLIP2-S0", "dfn2b_s39bb"),
            UnknownPretrainedTagError,
            ("neither a pretrained tag",),
            ("Valid tags", "local checkpoint file"),
        ),
        # files
        Row("file-missing", _read("missing"), FileNotFoundError, ("not found", "nope.pt"), ("nope.pt",)),
        Row(
            "file-truncated",
            _read("truncated"),
            CorruptCheckpointError,
            ("could not be read",),
            ("download it again",),
        ),
        Row(
            "file-not-safetensors",
            _read("text_safetensors"),
            CorruptCheckpointError,
            ("text.safetensors",),
            ("check the path",),
        ),
        Row(
            "file-runs-code",
            _read("evil"),
            CorruptCheckpointError,
            ("could not be read", "evil.pt"),
            ("download it again",),
        ),
        Row(
            "file-holds-a-list",
            _read("list"),
            CorruptCheckpointError,
            ("non-empty mapping of tensors",),
            ("check the path",),
        ),
        Row(
            "file-holds-non-tensors",
            _read("not_tensors"),
            CorruptCheckpointError,
            ("not tensors", "epoch"),
            ("check the path",),
        ),
        # shapes
        Row(
            "shapes-other-model",
            lambda f: _create("MobileCLIP-S0", "other_model")(f),
            CheckpointMismatchError,
            ("does not fit", "missing"),
            ("mobileclip2 info", "mobileclip2 convert"),
        ),
        Row(
            "shapes-looks-like",
            _mismatch,
            CheckpointMismatchError,
            ("does not fit the model MobileCLIP2-S0",),
            ("looks like a MobileCLIP-B or MobileCLIP2-B checkpoint",),
        ),
        Row(
            "shapes-collate-width",
            _collate_widths,
            DRDataError,
            ("sample 'b' of shard 'shards/000.tar'", "width 16", "width 8"),
            ("mobileclip2 reinforce",),
        ),
        Row(
            "shapes-crop-box",
            _crop((16, 16)),
            CropMismatchError,
            ("reaches outside the decoded 16x16 image",),
            (),
        ),
        # dtypes and containers
        Row("dtype-pth-gz-list", _pth_gz_list, DRDataError, ("'k9'", "holds list, not a dict"), ()),
        # devices
        Row("device-name", _device("gpu0"), ValueError, ("'gpu0' is not a device name",), ("'cpu', 'cuda'",)),
        Row(
            "device-absent",
            _device("cuda:64"),
            ValueError,
            ("cuda:64",),
            ("cpu" if not torch.cuda.is_available() else "cuda:0",),
        ),
        # shard contents
        Row(
            "shard-plain",
            _inspect("plain_shard"),
            DRDataError,
            ("paug.json", "npz or pth.gz"),
            ("mobileclip2 reinforce",),
        ),
        Row(
            "shard-no-embeddings",
            _inspect("no_emb_shard"),
            DRDataError,
            ("stored teacher embeddings",),
            ("--distill-model",),
        ),
        Row(
            "shard-no-synthetic",
            _inspect("no_syn_shard"),
            DRDataError,
            ("synthetic captions",),
            ("--dataset-reinforcement-mix-synthetic-ratio 0",),
        ),
        Row(
            "shard-too-many-skips",
            _too_many_skips,
            DRDataError,
            ("5 of 10 samples read",),
            ("--dataset-reinforcement-max-skip-fraction",),
        ),
        Row(
            "shard-truncated",
            _read_shard("truncated_shard"),
            ShardReadError,
            ("truncated-000.tar is not a readable tar file at byte", "ends inside a tar header", "after 0"),
            ("copy or make the shard again",),
        ),
        Row(
            "shard-bad-checksum",
            _read_shard("checksum_shard"),
            ShardReadError,
            ("checksum-000.tar is not a readable tar file at byte", "bad checksum"),
            ("copy or make the shard again",),
        ),
        Row(
            "train-first-shard-truncated",
            _inspect("truncated_shard"),
            DRDataError,
            ("first training shard cannot be read", "truncated-000.tar", "at byte"),
            ("copy or make the shard again",),
        ),
        Row(
            "train-resume-runs-code",
            _call("mobileclip2.compat.open_clip_train", "weights_only_pt_load", "evil"),
            CorruptCheckpointError,
            ("could not be read", "evil.pt"),
            ("download it again",),
        ),
        # reinforce: outputs, arguments, ranks
        Row(
            "reinforce-output-is-input-by-symlink",
            _plan(["{root}/in/000.tar"], "{root}/link"),
            ReinforceOutputError,
            ("could be overwritten", "it is the output file '000.tar'"),
            ("choose an --output folder that holds no input",),
        ),
        Row(
            "reinforce-pipe-reads-output",
            _plan(["pipe:cat {root}/in/000.tar"], "{root}/in"),
            ReinforceOutputError,
            ("its command reads", "inside the output folder"),
            ("choose an --output folder",),
        ),
        Row(
            "reinforce-overwrite-foreign-config",
            _plan(["{root}/in/000.tar"], "{root}/foreign"),
            ReinforceOutputError,
            ("not written by `mobileclip2 reinforce`", "--overwrite must not delete"),
            ("Choose another --output",),
        ),
        Row(
            "reinforce-teacher-typo",
            _call("mobileclip2.teachers", "check_model_specs", [("RN5O", None)]),
            UnknownModelError,
            ("Unknown model name 'RN5O'",),
            ("Did you mean: RN50",),
        ),
        Row(
            "reinforce-teacher-folder",
            _call("mobileclip2.teachers", "check_model_specs", [("local-dir:/no/such/model", None)]),
            TeacherError,
            ("/no/such/model holds no open_clip_config.json",),
            ("local-dir: must name an open_clip model folder",),
        ),
        Row(
            "reinforce-aug-config",
            _call("mobileclip2.reinforce.generate", "check_augmentation_config", {"sharpen": {}}),
            ValueError,
            ("--aug-config cannot be used", "unknown augmentation 'sharpen'"),
            ("known:",),
        ),
        Row(
            "reinforce-unsafe-key",
            _call("mobileclip2.reinforce.storage", "write_samples", io.BytesIO(), [{"__key__": "../x"}]),
            ShardStorageError,
            ("refusing to write sample key '../x'", "key with '..'"),
            (),
        ),
        Row(
            "reinforce-second-writer",
            _second_lock,
            OutputLockedError,
            ("locked.tar is being written by another process", "pid"),
            ("Wait for the other run to finish",),
        ),
        Row(
            "reinforce-ranks-disagree",
            _ranks_disagree,
            RankDisagreementError,
            ("rank 1 was given seed=1, rank 0 seed=0",),
            ("same command line",),
        ),
        Row(
            "reinforce-node-local-output",
            _node_local,
            ReinforceOutputError,
            ("'000.tar', written by rank 1 on host node-b",),
            ("storage they all share", "one reinforce per node"),
        ),
        # training arguments and environment
        Row(
            "train-skip-fraction",
            _train_args(
                "--dataset-reinforcement",
                "--dataset-reinforcement-config",
                "c.json",
                "--train-data",
                "x.tar",
                "--dataset-reinforcement-max-skip-fraction",
                "2",
            ),
            TrainArgsError,
            ("must be in [0, 1]", "got 2"),
            (),
        ),
        Row(
            "train-no-config",
            _train_args("--dataset-reinforcement", "--train-data", "x.tar"),
            TrainArgsError,
            ("needs --dataset-reinforcement-config",),
            (),
        ),
        Row(
            "train-webdataset-1x",
            _webdataset("1.0.2"),
            DependencyVersionError,
            ("webdataset 1.0.2", "KeyError: 'fname'"),
            ("pip install 'webdataset<=0.2.86,>=0.2.5'",),  # the train extra's pin, read from metadata
        ),
        Row(
            "train-webdataset-missing",
            _webdataset(None),
            DependencyVersionError,
            ("not installed",),
            ("mobileclip2[train]",),
        ),
        Row(
            "augmentation-unknown-step",
            _augmentation({"sharpen": {}, "to_tensor": {}}),
            ValueError,
            ("unknown augmentation 'sharpen'",),
            ("known:",),
        ),
        *[
            Row(
                f"{role}-nan-weights",
                _nan_weights(role),
                TeacherError,
                (f"{role} ", "non-finite (NaN/inf) weights in logit_scale"),
                ("check that the checkpoint is complete",),
            )
            for role in ("teacher", "captioner")
        ],
        # convert's output rules (the CLI rows below run them end to end)
        Row(
            "convert-onto-input",
            _convert_check("existing", "existing", True),
            ValueError,
            ("is the input file",),
            ("another output name",),
        ),
        Row(
            "convert-existing",
            _convert_check("other_model", "existing"),
            FileExistsError,
            ("already exists",),
            ("--overwrite",),
        ),
        Row(
            "convert-output-name",
            _convert_check("other_model", "root"),
            ValueError,
            ("name must end in '.safetensors'",),
            (),
        ),
    ]


ROWS = _rows()


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_says_what_is_wrong_and_what_to_do(row, files):
    with pytest.raises(row.error) as caught:
        row.call(files)
    message = str(caught.value)
    for fragment in (*row.what, *row.todo):
        assert fragment in message, f"{row.id}: {fragment!r} not in {message!r}"
    assert not os.path.exists(files["marker"]), "unpickling ran code"


def test_the_table_is_long_enough():
    assert len(ROWS) + len(CLI_ROWS) >= 25


# -- CLI rows: one subprocess, python -S, autoload off --------------------------------------------

# (id, argv, exit status, fragments of stderr). Files are named by their key in `files`.
CLI_ROWS = [
    ("info-unknown", ["info", "MobileCLIP-S9"], 1, ["Unknown model name 'MobileCLIP-S9'", "Did you mean"]),
    ("info-registered-without-hook", ["info", "MobileCLIP-S0", "--no-params"], 0, []),
    (
        "convert-wrong-suffix",
        ["convert", "{other_model}", "{root}/out.bin"],
        1,
        ["must end in '.safetensors'"],
    ),
    ("convert-missing-input", ["convert", "{missing}", "{root}/out.safetensors"], 1, ["not found"]),
    ("convert-existing", ["convert", "{other_model}", "{existing}"], 1, ["already exists", "--overwrite"]),
    ("convert-onto-input", ["convert", "{existing}", "{existing}", "--overwrite"], 1, ["is the input file"]),
    (
        "convert-needs-model",
        ["convert", "{other_model}", "{root}/o.safetensors"],
        1,
        ["already in OpenCLIP format", "pass the model name to check it against (--model NAME)"],
    ),
    (
        "classify-no-image",
        [
            "classify",
            "{root}/none.jpg",
            "--labels",
            "cat",
            "--model",
            "MobileCLIP-S0",
            "--pretrained",
            "{other_model}",
        ],
        1,
        ["image file(s) not found"],
    ),
    (
        "classify-no-labels",
        [
            "classify",
            "{image}",
            "--labels-file",
            "{root}/labels.txt",
            "--model",
            "MobileCLIP-S0",
            "--pretrained",
            "{other_model}",
        ],
        1,
        ["no labels"],
    ),
    ("unknown-subcommand", ["frobnicate"], 2, ["invalid choice"]),
    (
        "reinforce-teacher-typo",
        ["reinforce", "{plain_shard}", "--output", "{root}/typo-out", "--teachers", "RN5O"],
        1,
        ["Unknown model name 'RN5O'", "Did you mean: RN50"],
    ),
]

_CLI_SCRIPT = """
import contextlib, io, json, sys
from mobileclip2.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def _site_packages() -> list[str]:
    return [p for p in site.getsitepackages() if os.path.isdir(p)]


@pytest.fixture(scope="module")
def cli_results(files) -> dict[str, tuple[int, str]]:
    argvs = [[arg.format(**files) for arg in argv] for _, argv, _, _ in CLI_ROWS]
    env = {
        **os.environ,
        "MOBILECLIP2_AUTOLOAD": "0",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *_site_packages()]),
    }
    done = subprocess.run(
        [sys.executable, "-S", "-c", _CLI_SCRIPT, json.dumps(argvs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=files["root"],
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    return {row[0]: tuple(result) for row, result in zip(CLI_ROWS, results)}


@pytest.mark.parametrize("row", CLI_ROWS, ids=[row[0] for row in CLI_ROWS])
def test_cli_prints_a_clean_error(row, cli_results):
    row_id, _, status, fragments = row
    code, stderr = cli_results[row_id]
    assert code == status, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in stderr, f"{row_id}: {fragment!r} not in {stderr!r}"
    if status == 1:
        command = CLI_ROWS[[r[0] for r in CLI_ROWS].index(row_id)][1][0]
        assert stderr.startswith(f"mobileclip2 {command}: error: ")


def test_traceback_flag_shows_the_traceback(capsys):
    from mobileclip2.cli import main
    from mobileclip2.errors import UnknownModelError

    with pytest.raises(UnknownModelError):
        main(["--traceback", "info", "MobileCLIP-S9"])
    assert main(["info", "MobileCLIP-S9"]) == 1


def test_unexpected_errors_point_to_traceback(monkeypatch, capsys):
    from mobileclip2 import cli

    monkeypatch.setattr(cli, "register_plugin", lambda: (_ for _ in ()).throw(ZeroDivisionError("boom")))
    assert cli.main(["list"]) == 1
    err = capsys.readouterr().err
    assert "ZeroDivisionError: boom" in err and "--traceback" in err and "Traceback" not in err


@pytest.mark.slow
def test_train_entry_registers_the_models_itself(files):
    """`python -S -m mobileclip2.train` with autoload off: the models are registered before main runs."""
    script = (
        "import runpy, mobileclip2.train.main as m\n"
        "m.main = lambda: print('registered', "
        "'MobileCLIP-S0' in __import__('open_clip').list_models()) or 0\n"
        "runpy.run_module('mobileclip2.train', run_name='__main__')\n"
    )
    env = {
        **os.environ,
        "MOBILECLIP2_AUTOLOAD": "0",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *_site_packages()]),
    }
    done = subprocess.run(
        [sys.executable, "-S", "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert "registered True" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 0


@pytest.mark.slow
def test_old_open_clip_never_unpickles_code_from_a_checkpoint(files):
    """open_clip 2.24.0 calls torch.load(path) without weights_only; under torch < 2.6 that runs a
    pickle. The subprocess makes torch.load default to weights_only=False (torch < 2.6's default),
    shows that open_clip's own reader then runs the payload, and that through the plugin it does not."""
    from compat_env import OLDEST_PAIR, ensure_pair, run_python

    marker = Path(files["root"]) / "old-open-clip-ran-code"
    with open(Path(files["root"]) / "evil_old.pt", "wb") as handle:
        pickle.dump({"visual.proj": _RunsCode(str(marker))}, handle)
    script = f"""
import functools, os, torch
torch.load = functools.partial(torch.load, weights_only=False)  # torch < 2.6's default
import open_clip
from open_clip import factory
evil, marker = {str(Path(files["root"]) / "evil_old.pt")!r}, {str(marker)!r}
try:
    open_clip.create_model("MobileCLIP-S0", pretrained=evil)
except Exception as error:
    print("plugin:", type(error).__name__, error)
print("ran through plugin:", os.path.exists(marker))
upstream = factory.load_state_dict
while hasattr(upstream, "__wrapped__"):
    upstream = upstream.__wrapped__
try:
    upstream(evil)
except Exception:
    pass
print("ran through upstream reader:", os.path.exists(marker))
"""
    done = run_python(ensure_pair(*OLDEST_PAIR), ["-c", script], timeout=600)
    assert "ran through plugin: False" in done.stdout, done.stdout + done.stderr
    assert "plugin: CorruptCheckpointError" in done.stdout and "download it again" in done.stdout
    assert "ran through upstream reader: True" in done.stdout, done.stdout + done.stderr  # the test can fail

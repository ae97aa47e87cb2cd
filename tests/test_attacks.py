"""The attack suite of issue 19 (bad input and untrusted files) as tests: every case is refused in one line naming the
key or file, before anything is planned, trained or written; nothing an attacker wrote runs or lands outside its
folder; a full disk stops with one ``error:`` line (exit 2) and the run resumes. Cases that hang on the old code run
under ``deadline`` (SIGALRM), so they fail instead of hanging."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import signal
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from comhe import data, run, train
from comhe.data import cifar, modelnet, pickles, synthetic
from comhe.train import checkpoint
from comhe.train.records import RunDir

BASE = {"dataset": "synthetic", "data": {"num_classes": 4, "train_per_class": 8, "test_per_class": 4},
        "model": "cnn6", "model_options": {"width": 1}, "iterations": 2, "batch_size": 8, "eval_every": 2,
        "milestones": [1], "threads": 1}


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise ``TimeoutError`` in this (main) thread after ``seconds``: a hang fails the test."""
    def alarm(*_):
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def one_error_line(err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def alias_bomb(levels: int = 9) -> str:
    """A YAML list of ``levels`` anchored lists, each ten aliases of the one before: 10^levels strings."""
    lines = ["  - &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"  - &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def nested(key: str, depth: int) -> str:
    """``key:`` nested ``depth`` mappings deep, in flow style on one line."""
    return f"{key}: " + "{a: " * depth + "1" + "}" * depth + "\n"


# --- python -m comhe.train: config files and overrides --------------------------------------------------------------

def train_cli(tmp_path, capsys, text=None, *overrides):
    path = tmp_path / "cfg.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(json.dumps({**BASE, "data_root": str(tmp_path / "data")}) if text is None else text)
    run_dir = tmp_path / "runs" / "run"
    with deadline(60):
        code = train.main([str(path), "--run-dir", str(run_dir), "--progress", "none", *overrides])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not run_dir.exists() and not (tmp_path / "data").exists()  # nothing trained or written
    return err


def base_yaml(tmp_path, **extra) -> str:
    """The base config as block YAML (other keys can follow)."""
    import yaml
    return yaml.safe_dump({**BASE, "data_root": str(tmp_path / "data"), **extra}, sort_keys=False)


def base_flow(tmp_path, **extra) -> str:
    """The base config as one flow mapping (JSON is YAML), for ``base:`` in an experiment file."""
    return json.dumps({**BASE, "data_root": str(tmp_path / "data"), **extra}) + "\n"


@pytest.mark.parametrize("overrides, needles", [
    (["lr=.nan"], ["lr must be a finite number, got nan"]),
    (["lr=.inf"], ["lr must be a finite number, got inf"]),
    (["weight_decay=.nan"], ["weight_decay must be a finite number, got nan"]),
    (["label_smoothing=.nan"], ["label_smoothing must be a finite number"]),
    (["label_smoothing=2.0"], ["label_smoothing must be in [0, 1), got 2.0"]),
    (["label_smoothing=1.0"], ["label_smoothing must be in [0, 1), got 1.0"]),
    (["regularizer=mhe", "reg.lambda_hidden=.nan"], ["reg.lambda_hidden must be a finite number, got nan"]),
    (["regularizer=mhe", "reg.lambda_hidden=.inf"], ["reg.lambda_hidden must be a finite number, got inf"]),
    (["regularizer=mhe", "reg.lambda_hidden=-1.0"], ["reg.lambda_hidden must be >= 0", "got -1.0"]),
    (["regularizer=mhe", "reg.lambda_output=-0.5"], ["reg.lambda_output must be >= 0"]),
    (["seed=-1"], ["seed must be in [0, 4294967295], got -1"]),
    (["seed=4294967296"], ["seed must be in [0, 4294967295]"]),
    (["momentum=.nan"], ["momentum must be a finite number"]),
    (["model_options.width=.inf"], ["model_options.width must be a finite number"]),
    (["dataset=synthetic_planetoid", "model=gcn", "data.num_classes=100000000", "data.train_per_class=5"],
     ["data.num_classes must be <= 100,000, got 100,000,000"]),
    (["dataset=synthetic_planetoid", "model=gcn", "data.num_classes=50000"], ["synthetic dataset of ~", "GiB"]),
    (["data.num_classes=4", "data.train_per_class=100000000"], ["data.train_per_class must be <= 100,000"]),
    (["monitor_exclude=[&a x, *a]"], ["override monitor_exclude: cannot parse", "alias *a", "refused"]),
    (["lr=" + "1" * 5000], ["override lr: cannot parse", "Exceeds the limit"]),
], ids=lambda v: " ".join(v)[:50] if isinstance(v, list) and "=" in v[0] else None)
def test_numbers_out_of_range_are_refused(tmp_path, capsys, overrides, needles):
    one_error_line(train_cli(tmp_path, capsys, None, *overrides), *needles)


def test_lr_nan_in_a_file_names_lr_not_lr_min(tmp_path, capsys):
    err = train_cli(tmp_path, capsys, base_yaml(tmp_path) + "lr: .nan\n")
    assert "lr_min" not in one_error_line(err, "lr must be a finite number, got nan")


@pytest.mark.parametrize("case", ["latin-1 byte", "nested 5,000 deep", "alias bomb", "huge integer", "2 MiB file"])
def test_hostile_config_files_are_refused(tmp_path, capsys, case):
    head = base_yaml(tmp_path)
    text, needles = {
        "latin-1 byte": ((head + "# caf\xe9\n").encode("latin-1"), ["cfg.yaml: line ", ": byte 0xe9 is not UTF-8"]),
        "nested 5,000 deep": (head + nested("data", 5000), ["cfg.yaml: line ", "nests deeper than 32"]),
        "alias bomb": (head + "monitor_exclude:\n" + alias_bomb(), ["uses the alias *a0", "refused"]),
        "huge integer": (head + "iterations: " + "9" * 5000 + "\n", ["cfg.yaml: holds a value that cannot be read"]),
        "2 MiB file": (head + "#" * (2 << 20) + "\n", ["cfg.yaml is larger than 1024 KiB"]),
    }[case]
    one_error_line(train_cli(tmp_path, capsys, text), *needles)


# --- python -m comhe.run (make tableN): experiment files and seeds --------------------------------------------------

EXPERIMENT = """rows: [{name: a, config: {}}]
columns: [{name: b}]
seeds: 1
"""


def runner_cli(tmp_path, capsys, *args):
    with deadline(60):
        code = run.main([*args, "--results", str(tmp_path / "results"), "--figures", str(tmp_path / "figures")])
    err = capsys.readouterr().err
    assert code == 2, err
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".yaml"]
    assert written == [], written  # no run, data, table or figure
    return err


def experiment_file(tmp_path, extra: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "exp.yaml"
    path.write_bytes((EXPERIMENT + f"base: {base_flow(tmp_path)}" + extra).encode(encoding))
    return path


@pytest.mark.parametrize("extra, needles", [
    ("notes: ['caf\xe9']\n", ["exp.yaml: line 5: byte 0xe9 is not UTF-8"]),
    (nested("title", 5000), ["exp.yaml: line 5, column", "nests deeper than 32 levels"]),
    ("notes:\n" + alias_bomb(), ["exp.yaml: line 7, column 10 uses the alias *a0", "refused"]),
    ("seeds: 1000000000000\n", ["at most 1000 seeds, got a count of 1000000000000"]),
    ("seeds: [0, -3]\n", ["seeds must be in [0, 4294967295], got -3"]),
    ("name: ../../../x\n", ["name must be a plain file name", "'../../../x'"]),
    ("name: /tmp/x\n", ["name must be a plain file name", "'/tmp/x'"]),
    ("name: a/b\n", ["name must be a plain file name"]),
    ("selected_by: ../../../etc/passwd\n", ["selected_by '../../../etc/passwd' is neither a shipped experiment"]),
    ("selected_by: table99\n", ["selected_by 'table99' is neither a shipped experiment"]),
    ("selected_by: /etc/passwd.yaml\n", ["selected_by '/etc/passwd.yaml' is neither"]),
], ids=["latin-1", "nested", "alias-notes", "seeds-1e12", "seed-negative", "name-dotdot", "name-absolute",
        "name-folder", "selected_by-passwd", "selected_by-unknown", "selected_by-missing-path"])
def test_hostile_experiment_files_are_refused(tmp_path, capsys, extra, needles):
    path = experiment_file(tmp_path, extra, "latin-1" if "\xe9" in extra else "utf-8")
    one_error_line(runner_cli(tmp_path, capsys, str(path)), *needles)


@pytest.mark.parametrize("extra, needles", [
    ("base: 5\n", ["base must be a mapping, got 5"]),
    ("notes: [1, {a: 2}]\n", ["notes[0] must be text, got 1"]),
    ("references: [{values: 1}]\n", ["references[0].values must be a mapping, got 1"]),
    ("claims: [5]\n", ["claims[0] must be a mapping, got 5"]),
    ("metric: [1]\n", ["metric must be text, got [1]"]),
    ("profiles: 5\n", ["profiles must be a mapping, got 5"]),
    ("rows: [{name: a, config: 5}]\n", ["rows[0].config must be a mapping, got 5"]),
    ("rows: [{name: {a: 1}, config: {}}]\n", ["rows[0].name must be text"]),
    ("columns: [{name: b, x: abc}]\n", ["columns[0].x must be a number, got 'abc'"]),
    ("columns: [{name: b, config: 5}]\n", ["columns[0].config must be a mapping, got 5"]),
], ids=lambda v: v.strip()[:30] if isinstance(v, str) else None)
def test_values_of_the_wrong_type_are_refused_in_one_line(tmp_path, capsys, extra, needles):
    """Each of these was a TypeError, AttributeError or KeyError traceback."""
    one_error_line(runner_cli(tmp_path, capsys, str(experiment_file(tmp_path, extra))), *needles)


def test_an_alias_bomb_in_the_base_config_is_refused(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(EXPERIMENT + "base:\n  dataset: synthetic\n  monitor_exclude:\n" +
                    alias_bomb().replace("  - ", "    - "))
    one_error_line(runner_cli(tmp_path, capsys, str(path)), "uses the alias *a0")


@pytest.mark.parametrize("seeds, needles", [("-1", ["seeds must be in [0, 4294967295], got -1"]),
                                            ("1000000000000", ["at most 1000 seeds"]),
                                            ("0,-1", ["got -1"])])
def test_seeds_from_the_command_line_are_bounded(tmp_path, capsys, seeds, needles):
    """``make table1 SEEDS=-1`` trained 15 runs named ``s-1``; ``SEEDS=1000000000000`` ran out of memory."""
    one_error_line(runner_cli(tmp_path, capsys, "table1", "--profile", "smoke", "--seeds", seeds), *needles)


def test_a_selected_by_path_that_exists_is_accepted(tmp_path):
    from comhe.suite import experiments
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(EXPERIMENT)
    path = experiment_file(tmp_path, f"selected_by: {sweep}\nname: my table 2.b\n")
    exp = experiments.load(path)
    assert exp.selected_by == str(sweep) and exp.name == "my table 2.b"


def test_every_shipped_yaml_reads_with_the_bounded_loader():
    from comhe.train import inputs
    repo = Path(__file__).resolve().parents[1]
    files = sorted((repo / "experiments").rglob("*.yaml"))
    assert len(files) > 10
    for path in files:
        assert isinstance(inputs.read_yaml(path, ValueError), dict), path


# --- pickles --------------------------------------------------------------------------------------------------------

def test_a_memo_sharing_pickle_is_not_expanded():
    """40 levels of ``[prev, prev]``: 2^40 leaves if every reference were copied; read in milliseconds, shared."""
    value = []
    for _ in range(40):
        value = [value, value]
    with deadline(10):
        out = pickles.safe_loads(pickle.dumps(value, protocol=2))
    for _ in range(40):
        assert out[0] is out[1]
        out = out[0]


@pytest.mark.parametrize("depth", [65, 200_000])
def test_deeply_nested_lists_get_their_own_refusal(depth):
    payload = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."  # EMPTY_LIST x depth, APPEND x (depth - 1)
    with deadline(20), pytest.raises(pickles.UnsafePickle, match="nests containers deeper than 64 levels"):
        pickles.safe_loads(payload)


def test_a_list_holding_itself_is_refused():
    value = []
    value.append(value)
    with deadline(10), pytest.raises(pickles.UnsafePickle, match="deeper than"):
        pickles.safe_loads(pickle.dumps(value, protocol=2))


def test_an_array_whose_shape_overflows_is_refused():
    array = np.zeros(0, np.uint8)
    payload = pickle.dumps(array, protocol=2).replace(b"K\x00\x85", b"\x8a\x09" + (2**64).to_bytes(9, "little")
                                                      + b"\x8a\x09" + (2**64).to_bytes(9, "little") + b"\x86")
    with pytest.raises(pickles.UnsafePickle):
        pickles.safe_loads(payload)


def test_a_file_over_the_size_budget_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(pickles, "MAX_BYTES", 100)
    (tmp_path / "big").write_bytes(pickle.dumps(list(range(100)), protocol=2))
    with pytest.raises(pickles.UnsafePickle, match="is larger than"):
        pickles.safe_load(tmp_path / "big")


class _Payload:
    """Unpickling this calls ``os.mkdir(path)``: arbitrary code in a planted file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def _plant(path: Path, obj) -> str:
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_a_planted_synthetic_cifar_batch_with_its_recorded_md5_does_not_run(tmp_path):
    """The synthetic set records its md5s: an attacker who can write the batch can write the record too."""
    root, marker = tmp_path / "data", tmp_path / "pwned"
    data.build("synthetic", root=root, num_classes=4, train_per_class=8, test_per_class=4)
    folder = next(root.glob("synthetic-cifar10-*")) / "cifar-10-batches-py"
    manifest = json.loads((folder / synthetic.MANIFEST).read_text())
    manifest["files"]["data_batch_1"] = _plant(folder / "data_batch_1", {"data": _Payload(marker), "labels": []})
    (folder / synthetic.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(data.DatasetUnavailable, match="data_batch_1 names posix.mkdir.*not a CIFAR batch"):
        data.build("synthetic", root=root, num_classes=4, train_per_class=8, test_per_class=4)
    assert not marker.exists()


def test_a_planted_cifar10_batch_matching_the_md5_table_does_not_run(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10
    root, marker = tmp_path / "data", tmp_path / "pwned"
    synthetic.write_cifar(root, num_classes=10, train_per_class=5, test_per_class=2)
    folder = root / CIFAR10.base_folder
    md5 = {name: hashlib.md5((folder / name).read_bytes()).hexdigest()
           for name in [n for n, _ in CIFAR10.train_list + CIFAR10.test_list] + ["batches.meta"]}
    md5["test_batch"] = _plant(folder / "test_batch", {"data": _Payload(marker), "labels": []})
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5[n]] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    with pytest.raises(data.DatasetUnavailable, match="test_batch names posix.mkdir"):
        data.build("cifar10", root=root, download=False)
    assert not marker.exists()


def test_cifar_batches_read_by_our_reader_match_torchvision(tmp_path):
    """The same images, labels and classes as torchvision's reader (on files we trust: our own synthetic ones)."""
    from torchvision.datasets import CIFAR100
    folder = synthetic.write_cifar(tmp_path, num_classes=20, train_per_class=3, test_per_class=2)
    recorded = synthetic.cifar_class_with_recorded_md5(CIFAR100, folder)
    for train_split in (True, False):
        images, labels = cifar.read_split(recorded, tmp_path, train_split, 20)
        reference = recorded(str(tmp_path), train=train_split)
        assert np.array_equal(images, reference.data.transpose(0, 3, 1, 2))
        assert labels.tolist() == list(reference.targets)
    assert cifar.class_names(recorded, tmp_path, 20) == reference.classes


def test_a_cifar_batch_of_the_wrong_shape_is_refused(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10
    synthetic.write_cifar(tmp_path, num_classes=10, train_per_class=5, test_per_class=2)
    _plant(tmp_path / CIFAR10.base_folder / "test_batch", {"data": np.zeros((2, 5), np.uint8), "labels": [0, 1]})
    with pytest.raises(data.DatasetUnavailable, match=r"test_batch: 'data' is not uint8 \[n, 3072\]"):
        cifar.read_split(CIFAR10, tmp_path, False, 10)
    _plant(tmp_path / CIFAR10.base_folder / "test_batch", {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]})
    with pytest.raises(data.DatasetUnavailable, match=r"the labels are not 2 integers in \[0, 10\)"):
        cifar.read_split(CIFAR10, tmp_path, False, 10)


# --- archives -------------------------------------------------------------------------------------------------------

def modelnet_zip(path: Path, members) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, payload in members:
            zf.writestr(name, payload)
    return path


RELEASE = [(f"{modelnet.FOLDER}/{name}", "x\n") for name in ("train_files.txt", "test_files.txt", "shape_names.txt")]


def data_root_with_cora(tmp_path) -> Path:
    root = tmp_path / "data"
    (root / "planetoid").mkdir(parents=True)
    (root / "planetoid" / "ind.cora.x").write_bytes(b"the real file")
    return root


def assert_untouched(root: Path):
    """Only the archive and Cora's file: no partial folder, no release, nothing replaced."""
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == \
        sorted([modelnet.ARCHIVE, "planetoid", "planetoid/ind.cora.x"])
    assert (root / "planetoid" / "ind.cora.x").read_bytes() == b"the real file"


@pytest.mark.parametrize("member", ["planetoid/ind.cora.x", "../planetoid/ind.cora.x", "/abs/x", "other/x"])
def test_a_modelnet_zip_cannot_write_outside_its_release_folder(tmp_path, member):
    root = data_root_with_cora(tmp_path)
    modelnet_zip(root / modelnet.ARCHIVE, RELEASE + [(member, "pwned")])
    with pytest.raises(data.DatasetUnavailable, match="outside modelnet40_ply_hdf5_2048/, the release's own folder"):
        modelnet.ensure(root, download_ok=False)
    assert_untouched(root)


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    root = data_root_with_cora(tmp_path)
    modelnet_zip(root / modelnet.ARCHIVE, RELEASE + [(f"{modelnet.FOLDER}/ply_data_train0.h5", b"\0" * (64 << 20))])
    assert (root / modelnet.ARCHIVE).stat().st_size < 1 << 20
    with pytest.raises(data.DatasetUnavailable, match="a zip bomb"):
        modelnet.ensure(root, download_ok=False)
    assert_untouched(root)


def test_the_declared_sizes_are_bounded_by_what_the_release_can_be(tmp_path, monkeypatch):
    root = data_root_with_cora(tmp_path)
    modelnet_zip(root / modelnet.ARCHIVE, RELEASE + [(f"{modelnet.FOLDER}/big.h5", os.urandom(4096))])
    monkeypatch.setattr(modelnet, "RELEASE_BYTES", 4000)
    with pytest.raises(data.DatasetUnavailable, match="more than the 4,000 this release can be"):
        modelnet.ensure(root, download_ok=False)
    monkeypatch.setattr(modelnet, "RELEASE_BYTES", 1 << 30)
    monkeypatch.setattr(modelnet, "RELEASE_MEMBERS", 3)
    with pytest.raises(data.DatasetUnavailable, match="4 members, more than the 3"):
        modelnet.ensure(root, download_ok=False)
    assert_untouched(root)


def test_an_incomplete_release_is_checked_aside_and_never_moved_into_place(tmp_path):
    root = data_root_with_cora(tmp_path)
    modelnet_zip(root / modelnet.ARCHIVE, RELEASE[:1])
    with pytest.raises(data.DatasetUnavailable, match="holds no modelnet40_ply_hdf5_2048/test_files.txt"):
        modelnet.ensure(root, download_ok=False)
    assert_untouched(root)


def test_a_good_release_replaces_an_incomplete_folder_and_nothing_else(tmp_path):
    root = data_root_with_cora(tmp_path)
    (root / modelnet.FOLDER).mkdir()
    (root / modelnet.FOLDER / "stale.h5").write_bytes(b"half")
    modelnet_zip(root / modelnet.ARCHIVE, RELEASE)
    folder = modelnet.ensure(root, download_ok=False)
    assert sorted(p.name for p in folder.iterdir()) == ["shape_names.txt", "test_files.txt", "train_files.txt"]
    assert sorted(p.name for p in root.iterdir()) == sorted([modelnet.ARCHIVE, modelnet.FOLDER, "planetoid"])
    assert (root / "planetoid" / "ind.cora.x").read_bytes() == b"the real file"


def test_a_cifar_tar_cannot_replace_files_beside_its_folder(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10
    root = tmp_path / "data"
    (root / "planetoid").mkdir(parents=True)
    (root / "planetoid" / "ind.cora.x").write_bytes(b"the real file")
    archive = root / CIFAR10.filename
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("cifar-10-batches-py/batches.meta", "planetoid/ind.cora.x"):
            info = tarfile.TarInfo(name)
            info.size = 5
            tar.addfile(info, io.BytesIO(b"pwned"))
    monkeypatch.setattr(CIFAR10, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())
    with pytest.raises(data.DatasetUnavailable, match="'planetoid/ind.cora.x' would be extracted"):
        cifar._ensure_cifar(CIFAR10, root, download=False)
    assert (root / "planetoid" / "ind.cora.x").read_bytes() == b"the real file"
    assert sorted(p.name for p in root.iterdir()) == sorted([CIFAR10.filename, "planetoid"])


# --- a full disk ----------------------------------------------------------------------------------------------------

def _fail_second_checkpoint(monkeypatch):
    """``checkpoint.save`` raises ENOSPC on its second call, after writing part of a file (as a full disk does)."""
    real, calls = checkpoint.save, []

    def save(directory, iteration, state, **kwargs):
        calls.append(iteration)
        if len(calls) == 2:
            (Path(directory) / f".partial-{iteration}").write_bytes(b"\0" * 10)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(directory, iteration, state, **kwargs)
    monkeypatch.setattr(checkpoint, "save", save)


def test_a_full_disk_during_a_run_is_one_line_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(base_yaml(tmp_path, iterations=6, checkpoint_every=2, eval_every=2, milestones=[4]))
    args = [str(cfg), "--run-dir", str(tmp_path / "run"), "--progress", "none"]
    with monkeypatch.context() as patch:
        _fail_second_checkpoint(patch)
        code = train.main(args)
    one_error_line(capsys.readouterr().err, "I/O error: No space left on device", "rerun the same command")
    assert code == 2 and RunDir(tmp_path / "run").status() != "done"
    assert train.main(args) == 0 and RunDir(tmp_path / "run").status() == "done"   # resumed
    resumed = json.loads((tmp_path / "run" / "final.json").read_text())
    assert train.main([*args[:2], str(tmp_path / "again"), *args[3:]]) == 0     # the same run, uninterrupted
    straight = json.loads((tmp_path / "again" / "final.json").read_text())
    assert resumed["final_test_error"] == straight["final_test_error"] and resumed["iterations"] == 6


def test_a_full_disk_in_the_suite_is_one_line_exit_2_and_resumable(tmp_path, capsys, monkeypatch):
    path = tmp_path / "exp.yaml"
    path.write_text(EXPERIMENT.replace("seeds: 1", "seeds: 2") +
                    f"base: {base_flow(tmp_path, iterations=4, checkpoint_every=2, milestones=[2])}")
    args = [str(path), "--results", str(tmp_path / "results"), "--no-figures"]
    with monkeypatch.context() as patch:
        _fail_second_checkpoint(patch)
        code = run.main(args)
    captured = capsys.readouterr()
    one_error_line(captured.err, "I/O error: No space left on device")
    assert code == 2 and "Traceback" not in captured.out and not (tmp_path / "results" / "exp.csv").exists()
    assert run.main(args) == 0 and (tmp_path / "results" / "exp.csv").is_file()


def test_a_full_disk_while_rendering_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    import pandas
    path = tmp_path / "exp.yaml"
    path.write_text(EXPERIMENT + f"base: {base_flow(tmp_path)}")
    args = [str(path), "--results", str(tmp_path / "results"), "--no-figures"]

    def full(*_, **__):
        raise OSError(errno.ENOSPC, "No space left on device")
    with monkeypatch.context() as patch:
        patch.setattr(pandas.DataFrame, "to_csv", full)
        code = run.main(args)
    one_error_line(capsys.readouterr().err, "I/O error: No space left on device", "rendered again")
    assert code == 2 and run.main(args) == 0


@pytest.mark.slow
def test_a_real_file_size_limit_mid_run_is_one_line_exit_2(tmp_path):
    """A real EFBIG from the kernel (RLIMIT_FSIZE) while ``python -m comhe.train`` writes its checkpoint."""
    import resource
    import subprocess
    import sys
    repo = Path(__file__).resolve().parents[1]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(base_yaml(tmp_path, iterations=4, checkpoint_every=2, milestones=[2]))
    data.build("synthetic", root=tmp_path / "data", **BASE["data"])  # the data exists: the checkpoint hits it

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
    command = [sys.executable, "-m", "comhe.train", str(cfg), "--run-dir", str(tmp_path / "run"), "--progress",
               "none"]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr
    one_error_line(proc.stderr, "I/O error", "File too large")
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and RunDir(tmp_path / "run").status() == "done", proc.stderr


@pytest.mark.slow
def test_the_real_command_line_prints_one_line_for_an_alias_bomb(tmp_path):
    """A real ``python -m comhe.run``: exactly one stderr line, nothing on stdout, nothing written, no hang."""
    import subprocess
    import sys
    repo = Path(__file__).resolve().parents[1]
    path = experiment_file(tmp_path, "notes:\n" + alias_bomb())
    proc = subprocess.run([sys.executable, "-m", "comhe.run", str(path), "--results", str(tmp_path / "results")],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    one_error_line(proc.stderr, "exp.yaml: line 7, column 10 uses the alias *a0")
    assert [p.name for p in tmp_path.iterdir()] == ["exp.yaml"]


@pytest.mark.parametrize("dataset, writer", [("synthetic", "write_cifar"),
                                             ("synthetic_modelnet40", "write_modelnet40")])
def test_a_full_disk_while_writing_a_synthetic_set_leaves_no_half_copy(tmp_path, monkeypatch, dataset, writer):
    from comhe.data import synthetic_points
    module = synthetic if writer == "write_cifar" else synthetic_points
    if dataset == "synthetic_modelnet40":
        pytest.importorskip("h5py")

    def full(folder, **_):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "half").write_bytes(b"\0")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(module, writer, full)
    (tmp_path / "data").mkdir()  # a data root in use (a root the build created is removed whole on failure)
    with pytest.raises(OSError, match="No space left"):
        data.build(dataset, root=tmp_path / "data", num_classes=4)
    assert list((tmp_path / "data").iterdir()) == []

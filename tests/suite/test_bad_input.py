"""Bad input through the CLI: one ``error:`` line naming the problem and its fix, exit 2, and no run directory.

``comhe.train.main`` is called in-process (a subprocess costs ~4 s of torch import); one case goes through a real
``python -m comhe.train`` to check that nothing else (a traceback, a library warning) reaches stderr.
"""
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import torch

from comhe import run, train
from comhe.data import synthetic
from run_helpers import REPO

BASE = {"dataset": "synthetic", "data": {"num_classes": 4, "train_per_class": 8, "test_per_class": 4},
        "model": "cnn6", "model_options": {"width": 1}, "iterations": 2, "batch_size": 8, "eval_every": 2,
        "milestones": [1], "threads": 1}


def run_cli(tmp_path, capsys, config=None, *overrides, run_dir=None, extra=()):
    """``python -m comhe.train <config> --run-dir <run_dir> <overrides>``; ``config`` is YAML text or a dict
    (merged onto ``BASE``, with ``data_root`` in ``tmp_path``)."""
    path = tmp_path / "cfg.yaml"
    if isinstance(config, str):
        path.write_text(config)
    elif config is not None or not path.exists():
        path.write_text(json.dumps({**BASE, "data_root": str(tmp_path / "data"), **(config or {})}))
    run_dir = run_dir or tmp_path / "runs" / "run"
    code = train.main([str(path), "--run-dir", str(run_dir), "--progress", "none", *extra, *overrides])
    return code, capsys.readouterr().err, run_dir


def assert_refused(code, err, run_dir, *needles):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not run_dir.exists()


@pytest.mark.parametrize("config, overrides, needles", [
    ("lr: [0.1\nseed: 1\n", [], ["cfg.yaml: line 2, column 5 is not valid YAML (expected ',' or ']'"]),
    ("- lr\n", [], ["must hold a mapping of config keys, got list"]),
    ("learning_rate: 0.1\n", [], ["unknown config key 'learning_rate' in", "valid: dataset"]),
    ("lr: fast\n", [], ["lr in", "must be float, got 'fast'"]),
    (None, ["itertions=5"], ["unknown config key 'itertions' (override) (closest: iterations"]),
    (None, ["batch_size=8.5"], ["batch_size (override) must be int, got 8.5"]),
    (None, ["lr=-0.1"], ["lr must be > 0, got -0.1"]),
    (None, ["seed="], ["seed (override) must be int, got ''"]),
    (None, ["milestones=[5, 1]"], ["milestones must be increasing positive iterations"]),
    (None, ["regularizer=rp_comhe", "reg.proj_dimm=3"], ["unknown option reg.proj_dimm", "closest: proj_dim"]),
    (None, ["regularizer=rp_comhe", "reg.proj_dim=0"], ["proj_dim must be an integer >= 1, got 0"]),
    (None, ["regularizer=rp_comhe", "reg.num_proj=-2"], ["num_proj must be an integer >= 1, got -2"]),
    (None, ["regularizer=mhe", "reg.lambda_hidden=abc"], ["reg.lambda_hidden must be float, got 'abc'"]),
    (None, ["regularizer=mhe", "reg.layers=all"],
     ["regularizer 'mhe': unknown layer set layers='all'; valid: both, hidden, output"]),
    (None, ["model_options.width=-1"], ["model 'cnn6': width"]),
    (None, ["data.workers=2"], ["unknown option data.workers for 'synthetic'"]),
    (None, ["dataset=cifar1000"], ["unknown dataset 'cifar1000'"]),
    (None, ["dataset=cifar10"], ["unknown option data.num_classes for 'cifar10'; valid: (none)"]),
    (None, ["device=gpu"], ["device 'gpu' is not a torch device: use auto, cpu, cuda"]),
    (None, ["batch_size=64"], ["cannot fill one global batch of 64"]),
], ids=lambda v: str(v)[:30])
def test_config_and_option_errors(tmp_path, capsys, config, overrides, needles):
    code, err, run_dir = run_cli(tmp_path, capsys, config, *overrides)
    assert_refused(code, err, run_dir, *needles)


def test_missing_config_file(tmp_path, capsys):
    code = train.main([str(tmp_path / "nope.yaml"), "--run-dir", str(tmp_path / "run")])
    assert_refused(code, capsys.readouterr().err, tmp_path / "run", f"config file {tmp_path / 'nope.yaml'} does not")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda(tmp_path, capsys):
    code, err, run_dir = run_cli(tmp_path, capsys, None, "device=cuda")
    assert_refused(code, err, run_dir, "no usable CUDA device: use device=auto or device=cpu")


# --- data ----------------------------------------------------------------------------------------------------------

CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"


def test_missing_dataset_with_downloads_off(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COMHE_OFFLINE", "1")
    code, err, run_dir = run_cli(tmp_path, capsys, {"dataset": "cifar100", "data": {}})
    assert_refused(code, err, run_dir, "cifar-100-python missing or incomplete", "COMHE_OFFLINE",
                   f"put cifar-100-python.tar.gz (md5 {CIFAR100_MD5}) in {tmp_path / 'data'}")


def test_missing_dataset_and_the_download_fails(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("COMHE_OFFLINE", raising=False)

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    code, err, run_dir = run_cli(tmp_path, capsys, {"dataset": "cifar100", "data": {}})
    assert_refused(code, err, run_dir, "could not download https://www.cs.toronto.edu/",
                   "Temporary failure in name resolution", f"put cifar-100-python.tar.gz (md5 {CIFAR100_MD5})")


def test_archive_with_the_wrong_md5(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COMHE_OFFLINE", "1")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cifar-100-python.tar.gz").write_bytes(b"half a download")
    code, err, run_dir = run_cli(tmp_path, capsys, {"dataset": "cifar100", "data": {}})
    assert_refused(code, err, run_dir, "cifar-100-python.tar.gz has md5 ", f"expected {CIFAR100_MD5}",
                   "delete it and put")


def test_image_folder_with_an_empty_class(tmp_path, capsys):
    synthetic.write_imagenet_folder(tmp_path / "data", num_classes=2, per_class=2, size=36)
    empty = tmp_path / "data" / "imagenet" / "train" / "n00000007"
    empty.mkdir()
    code, err, run_dir = run_cli(tmp_path, capsys, {"dataset": "imagenet", "workers": 0, "data": {"image_size": 32},
                                                    "model": "resnet18", "model_options": {}, "batch_size": 2})
    assert_refused(code, err, run_dir, f"empty class folder(s) {empty}", "every class folder needs at least one")


# --- where the records go --------------------------------------------------------------------------------------

def test_run_dir_below_a_regular_file(tmp_path, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the runs root should be")
    code, err, run_dir = run_cli(tmp_path, capsys, None, run_dir=blocker / "runs" / "run")
    assert_refused(code, err, run_dir, f"cannot write the run directory {run_dir}", "Not a directory",
                   "choose a writable --runs-root or --run-dir")
    assert not (tmp_path / "data").exists()  # refused before any data was loaded


def test_read_only_runs_root(tmp_path, capsys):
    root = tmp_path / "runs"
    root.mkdir()
    root.chmod(0o500)
    try:
        try:  # root (and CAP_DAC_OVERRIDE) ignores the mode bits: nothing to test then
            (root / "probe").write_text("")
            (root / "probe").unlink()
            pytest.skip("running with privileges that ignore a read-only directory's mode")
        except PermissionError:
            pass
        (tmp_path / "cfg.yaml").write_text(json.dumps({**BASE, "data_root": str(tmp_path / "data")}))
        code = train.main([str(tmp_path / "cfg.yaml"), "--runs-root", str(root), "--progress", "none"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Permission denied" in err and "choose a writable" in err
        assert list(root.iterdir()) == []
    finally:
        root.chmod(0o700)


def test_real_cli_prints_one_line_and_no_traceback(tmp_path):
    """A real ``python -m comhe.train``: a missing dataset gives exactly one stderr line and exit 2."""
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps({**BASE, "dataset": "cifar10", "data": {}, "data_root": str(tmp_path / "data")}))
    env = {**os.environ, "COMHE_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "comhe.train", str(path), "--runs-root", str(tmp_path / "runs")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: cifar-10-batches-py missing or incomplete in") and proc.stdout == ""
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


# --- the same through the runner (``make tableN`` / ``python -m comhe.run``) -----------------------------------------

def run_runner(tmp_path, capsys, *args):
    """``python -m comhe.run <args> --results <tmp>/results --figures <tmp>/figures`` in-process."""
    code = run.main([*args, "--results", str(tmp_path / "results"), "--figures", str(tmp_path / "figures")])
    return code, capsys.readouterr().err


def assert_runner_refused(tmp_path, code, err, *needles):
    """Exit 2, one ``error:`` line with the needles, and nothing trained or written: no run, table or figure."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".yaml"]
    assert written == [], written


@pytest.mark.parametrize("args, needles", [
    (["table1", "reg.proj_dim=0"], ["table1.yaml, row RP-CoMHE", "proj_dim must be an integer >= 1, got 0"]),
    (["table1", "reg.proj_dimm=5"], ["no run of this experiment has the option reg.proj_dimm", "closest: proj_dim"]),
    (["table1", "regg.s=1"], ["unknown config key 'regg.s'", "closest: reg"]),
    (["table1", "reg.lambda_hidden=abc"], ["reg.lambda_hidden must be float, got 'abc'"]),
    (["table1", "lr=-1"], ["lr must be > 0, got -1"]),
    (["table1", "--seeds", ","], ["seeds must be distinct and non-empty"]),
    (["table1", "--seeds", "0"], ["seeds must be >= 1, got 0"]),
    (["table99"], ["no experiment 'table99': valid names are table1"]),
], ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0].startswith("table") else None)
def test_runner_refuses_bad_options_before_training(tmp_path, capsys, args, needles):
    code, err = run_runner(tmp_path, capsys, *args, "--profile", "smoke")
    assert_runner_refused(tmp_path, code, err, *needles)


@pytest.mark.parametrize("text, needles", [
    ("rows: [\n  {name: a\ncolumns: 1\n", ["bad.yaml: line 3, column 8 is not valid YAML (expected ',' or '}'"]),
    ("- a list\n", ["bad.yaml: must hold a mapping"]),
    ("rows: [{name: a}]\ncolumns: [{name: b}]\nseeds: []\n", ["seeds must be distinct and non-empty, got []"]),
    ("rows: [{name: a, config: {}}]\ncolumns: [{name: b}]\nbase: {lr: -0.1}\n", ["row a, column b: lr must be > 0"]),
    ("rows: [{name: a}]\ncolums: [{name: b}]\n", ["unknown key(s) ['colums']"]),
])
def test_runner_refuses_a_malformed_experiment_file(tmp_path, capsys, text, needles):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, err = run_runner(tmp_path, capsys, str(path))
    assert_runner_refused(tmp_path, code, err, *needles)


@pytest.mark.parametrize("blocked", ["results", "figures"])
def test_runner_with_an_unwritable_results_or_figures_folder(tmp_path, capsys, blocked):
    (tmp_path / blocked).write_text("a file where a folder should be")
    code, err = run_runner(tmp_path, capsys, "table1", "--profile", "smoke")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "cannot write to" in lines[0], err
    assert ("Not a directory" if blocked == "results" else "exists and is not a directory") in lines[0], err
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [tmp_path / blocked]  # no data, run or table

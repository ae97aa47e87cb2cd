"""What a new user meets on the command line (issue 14, item 9): one line for a bad PROFILE / JOBS / target, the
figures follow RESULTS=dir, one resume hint, and comhe.train's columns after its run: line, no NaN at iteration 0."""
import json
import subprocess
import sys

import pytest

from comhe import run, train
from comhe.suite import runner
from comhe.train import engine
from run_helpers import REPO


@pytest.mark.parametrize("args, needle", [
    (["--profile", "smok"], "unknown profile 'smok' (did you mean smoke?); valid: paper, quick, smoke"),
    (["--jobs", "0"], "JOBS (--jobs) must be >= 1, got 0"),
    (["--jobs", "-1"], "JOBS (--jobs) must be >= 1, got -1"),
    (["--launcher", "slrum"], "unknown launcher 'slrum' (did you mean slurm?)"),
    (["--nproc", "0"], "NPROC (--nproc) must be >= 1, got 0"),
])
def test_bad_runner_options_get_one_line(tmp_path, capsys, args, needle):
    code = run.main(["table1", *args, "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "r").exists()


def test_a_mistyped_make_target_lists_the_valid_ones():
    done = subprocess.run(["make", "--no-print-directory", "tabel1", "STAMP="], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "unknown target 'tabel1'; valid: table1 table2" in lines[0] and "smoke demo" in lines[0]


def test_results_dir_alone_moves_the_figures_out_of_the_checkout(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = run.main(["table1", "--profile", "smoke", "--collect-only", "--results", str(tmp_path / "elsewhere")])
    assert code == 0 and (tmp_path / "elsewhere" / "figures" / "table1.png").is_file()
    assert not (tmp_path / "figures").exists()
    make = subprocess.run(["make", "-n", "table1", "STAMP=", "RESULTS=/x"], cwd=REPO, capture_output=True, text=True)
    assert "--results /x" in make.stdout and "--figures" not in make.stdout


def test_the_resume_hint_is_said_once(tmp_path, capsys, monkeypatch):
    def stopped(*args, **kwargs):
        raise engine.Preempted("stopped by a signal at iteration 3; rerun the same command to resume")
    monkeypatch.setattr(runner, "train", stopped)
    code = run.main(["table1", "--profile", "smoke", "--results", str(tmp_path / "r"), "--no-figures"])
    err = capsys.readouterr().err
    assert code == 130 and err.count("resume") == 1 and "relaunch" not in err


def test_comhe_train_prints_the_device_and_run_lines_first_and_no_nan_at_iteration_0(tmp_path, capsys):
    cfg = {"dataset": "synthetic", "data": {"num_classes": 4, "train_per_class": 8, "test_per_class": 4},
           "data_root": str(tmp_path / "data"), "model": "cnn6", "model_options": {"width": 1}, "iterations": 2,
           "batch_size": 8, "eval_every": 2, "milestones": [1], "threads": 1}
    (tmp_path / "cfg.yaml").write_text(json.dumps(cfg))
    code = train.main([str(tmp_path / "cfg.yaml"), "--run-dir", str(tmp_path / "run"), "--progress", "lines"])
    device, *lines = capsys.readouterr().out.splitlines()  # where it trains first (docs/gpu.md), then the run
    assert code == 0 and device.startswith("device: CPU, 1 threads; torch ")
    assert lines[0].startswith("run: ") and lines[1].split()[:2] == ["iter", "epoch"]
    first = lines[2].split()
    assert first[0] == "0" and first[3:6] == ["-", "-", "-"] and "nan" not in lines[2].lower()
    assert "nan" not in lines[3].lower() and lines[3].split()[0] == "2"


def test_make_help_documents_the_new_options():
    done = subprocess.run(["make", "--no-print-directory", "help", "STAMP="], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert "RUNNING=1" in done.stdout and "make report" in done.stdout and sys.executable

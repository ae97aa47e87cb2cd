"""Two runner invocations on one results folder, and a runner killed under its workers.

1. Two concurrent `make table1 PROFILE=smoke`: every run is trained exactly once (training sessions are counted by
   a wrapper around the engine's locked section, from outside the code under test), both invocations end with every
   run done and render the same complete table, and no CSV or table is torn.
2. `kill -9` of a runner with JOBS=2: its spawned workers stop within seconds (PR_SET_PDEATHSIG -> SIGTERM -> the
   engine checkpoints) instead of training on as orphans, and the next invocation resumes the killed runs from those
   checkpoints, ending bitwise equal to an uninterrupted run.
"""
import collections
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from comhe.train import checkpoint, engine
from comhe.suite import runner
from comhe.train.records import RunDir
from run_helpers import REPO, assert_same_run

# make's $(PYTHON) for test 1: `python -m comhe.run ...`, with each training session (the engine's section that runs
# under the run's lock, entered on a run not yet finished) appended to $COMHE_TEST_SESSIONS as "<run> <pid>".
WRAPPER = '''#!{python}
import os, runpy, sys
from comhe.train import engine
real = engine._train_locked
def counted(s, run, main, report):
    if run.status() != "done":
        with open(os.environ["COMHE_TEST_SESSIONS"], "a") as f:  # O_APPEND: one short line is one write
            f.write(f"{{run.path.name}} {{os.getpid()}}\\n")
    return real(s, run, main, report)
engine._train_locked = counted
assert sys.argv[1:3] == ["-m", "comhe.run"], sys.argv
sys.argv = ["comhe.run"] + sys.argv[3:]
runpy.run_module("comhe.run", run_name="__main__", alter_sys=True)
'''


RESULT_LINE = re.compile(r"^\[\s*\d+/\d+\] (\w+)\s+(\S+)", re.M)  # "[ 3/30] finished  <run>  (...)"


def _stamp() -> str:
    return subprocess.run("cat requirements/ci.txt pyproject.toml | cksum | cut -d' ' -f1", shell=True, cwd=REPO,
                          capture_output=True, text=True).stdout.strip()


def test_two_concurrent_make_table1_train_each_run_once(tmp_path):
    python = tmp_path / "python"
    python.write_text(WRAPPER.format(python=sys.executable))
    python.chmod(0o755)
    sessions = tmp_path / "sessions.log"
    env = {**os.environ, "COMHE_DATA": str(tmp_path / "data"), "COMHE_TEST_SESSIONS": str(sessions)}
    env.pop("JOBS", None)  # the default: 1 on the CPU, so both invocations train in their own process
    cmd = ["make", "--no-print-directory", "-o", f".venv/.installed-{_stamp()}", f"PYTHON={python}",
           f"RESULTS={tmp_path / 'results'}", f"FIGURES={tmp_path / 'figures'}", "table1", "PROFILE=smoke"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-3000:] + err[-3000:]

    runs_root = tmp_path / "results" / "runs"
    names = [p.name for p in runner.make_plan(["table1"], "smoke").runs]
    trained = collections.Counter(line.split()[0] for line in sessions.read_text().splitlines())
    assert set(trained) == set(names) and set(trained.values()) == {1}, trained.most_common(3)   # once each
    for name in names:
        run = RunDir(runs_root / name)
        assert run.read_final()["status"] in ("finished", "diverged")
        assert [r["iteration"] for r in run.read_metrics()] == ["0", "4"]        # no duplicated or lost rows
        assert run.read_meta()["resumed_from"] == 0
    # The runners' own account agrees: each run "finished" by exactly one of them; the other skipped it, found it
    # finished by the other ("elsewhere") or waited for it ("locked", then "elsewhere").
    here = [{m.group(2) for m in RESULT_LINE.finditer(out) if m.group(1) == "finished"} for out, _ in outs]
    assert not here[0] & here[1] and here[0] | here[1] == set(names), (len(here[0]), len(here[1]))
    contended = sum(out.count(" elsewhere ") + out.count(" locked ") for out, _ in outs)
    assert contended > 0, "the two invocations never met: the test did not test concurrency"
    print(f"trained by each invocation: {len(here[0])} + {len(here[1])}; locked or elsewhere lines: {contended}")
    for out, _ in outs:
        assert "30 runs:" in out and "wrote " in out
    table = pd.read_csv(tmp_path / "results" / "table1.csv")
    assert len(table) == 30 and set(table["status"]) == {"done"} and table["final_test_error"].notna().all()
    assert "Runs: 30 done." in (tmp_path / "results" / "table1.md").read_text()
    assert (tmp_path / "results" / "table1.tex").read_text().rstrip().endswith(r"\end{tabular}")
    assert not list((tmp_path / "results").glob(".*.tmp*"))                     # no temporary file left


ORPHANS = """
name: orphans
title: Orphans
seeds: 2
base: {dataset: synthetic, data: {num_classes: 4, train_per_class: 8, test_per_class: 4}, model: cnn6,
       model_options: {width: 1, bn_momentum: 0.1}, iterations: 100, milestones: [60], lr: 0.05, eval_every: 50,
       batch_size: 8, eval_batch_size: 16, checkpoint_every: 1000, threads: 1}
columns: [{name: c}]
rows: [{name: Baseline, config: {regularizer: none}}]
"""


def _alive(pid: int) -> bool:
    """Running, not a zombie (a reparented orphan waits as a zombie until the init process reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_killed_runner_takes_its_workers_along_and_the_runs_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("COMHE_DATA", str(tmp_path / "data"))  # the in-process plan and resume too, not ./data
    spec = tmp_path / "orphans.yaml"
    spec.write_text(textwrap.dedent(ORPHANS))
    env = {**os.environ, "COMHE_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    results = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "comhe.run", str(spec), "--jobs", "2", "--results", str(results),
                             "--no-figures"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    plan = runner.make_plan([str(spec)])
    runs = [RunDir(results / "runs" / p.name) for p in plan.runs]
    deadline = time.monotonic() + 120
    while not all(r.read_metrics() for r in runs):  # row 0: both are training
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()  # its workers go with it
            raise AssertionError(proc.communicate()[0].decode()[-3000:])
        time.sleep(0.05)
    time.sleep(0.2)  # well inside the training loop (row 0 is written just before the engine takes its signals)
    workers = [int((r.path / ".lock").read_text().split()[1]) for r in runs]
    try:
        assert proc.pid not in workers and len(set(workers)) == 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()
        while any(_alive(pid) for pid in workers) and time.monotonic() - killed < 10:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in workers), "the workers outlived the runner by 10 s"
        print(f"workers gone {time.monotonic() - killed:.2f} s after the runner's SIGKILL")
    finally:  # never leave orphans behind, even when the test fails
        for pid in filter(_alive, workers):
            os.kill(pid, signal.SIGKILL)
    stopped = [checkpoint.load_latest(r.checkpoint_dir)["iteration"] for r in runs]  # SIGTERM: checkpoint
    assert all(0 < it < 100 for it in stopped) and all(r.status() == "partial" for r in runs), stopped

    assert runner.train(plan, results / "runs") == {"skipped": 0, "finished": 2}
    assert [r.read_meta()["resumed_from"] for r in runs] == stopped
    reference = RunDir(tmp_path / "reference")
    engine.train(plan.runs[0].cfg, reference.path)
    assert_same_run(reference, runs[0])


def _pids_with(text: str):
    """Live processes whose command line contains ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace") and _alive(int(cmdline.parent.name)):
                found.append(int(cmdline.parent.name))
        except OSError:
            pass
    return found


@pytest.mark.slow  # ~40 s: two torchrun launches
def test_killed_runner_takes_torchrun_along_and_the_run_resumes(tmp_path, monkeypatch):
    """NPROC=2: `kill -9` of the runner; torchrun (PR_SET_PDEATHSIG) stops its workers with SIGTERM, rank 0
    checkpoints (its output goes to a file: through a pipe to the dead runner it would die of a broken pipe first)."""
    monkeypatch.setenv("COMHE_DATA", str(tmp_path / "data"))  # the in-process plan and resume too, not ./data
    spec = tmp_path / "orphans.yaml"
    spec.write_text(textwrap.dedent(ORPHANS).replace("seeds: 2", "seeds: 1"))
    env = {**os.environ, "COMHE_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    results = tmp_path / "results"
    plan = runner.make_plan([str(spec)])
    run = RunDir(results / "runs" / plan.runs[0].name)
    proc = subprocess.Popen([sys.executable, "-m", "comhe.run", str(spec), "--nproc", "2", "--results", str(results),
                             "--no-figures"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not run.read_metrics():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(proc.communicate()[0].decode()[-3000:])
        time.sleep(0.05)
    launched = _pids_with(f".launch/{run.path.name}.yaml")            # torchrun and its two workers
    try:
        assert len(launched) == 3, launched
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()
        while any(map(_alive, launched)) and time.monotonic() - killed < 30:  # torchrun waits for its workers
            time.sleep(0.1)
        assert not any(map(_alive, launched)), "torchrun or its workers outlived the runner by 30 s"
        print(f"torchrun and its workers gone {time.monotonic() - killed:.1f} s after the runner's SIGKILL")
    finally:
        for pid in filter(_alive, launched):
            os.kill(pid, signal.SIGKILL)
    stopped = checkpoint.load_latest(run.checkpoint_dir)["iteration"]
    # ranks agree on a stop at their checks: every CHECK_EVERY iterations and at each evaluation (every 50)
    assert 0 < stopped < 100 and (stopped % engine.CHECK_EVERY == 0 or stopped % 50 == 0) and run.status() == "partial"
    assert runner.train(plan, results / "runs", nproc=2) == {"skipped": 0, "finished": 1}
    assert run.read_meta()["resumed_from"] == stopped and run.read_meta()["world_size"] == 2

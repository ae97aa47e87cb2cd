"""Stopping: Ctrl-C or SIGTERM to `make <target>`, `python -m comhe.run` and `python -m comhe.train`, at several points
(planning, training, rendering), in real subprocesses.

What every stop must give: one line saying what the process does; no run starts after the signal; the runs in
progress checkpoint and stop (resuming finishes them); the finished runs are reported; the tables (and figures) are
rendered from what exists, marked INCOMPLETE; exit 130 for Ctrl-C and SIGTERM alike; no traceback.
A second Ctrl-C stops at once, without a traceback and without damaging any file.

A terminal's Ctrl-C goes to the whole foreground process group: the processes start in their own session and get
the signal with ``killpg`` (the runner's spawned workers and make included); ``kill`` (SIGTERM) goes to one process.
The tests wait on files the processes write (metrics.csv, config.yaml), not on fixed sleeps; the machine may be loaded.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from comhe.suite import runner
from comhe.train import checkpoint, engine
from comhe.train.interrupt import STOP, StopNow
from comhe.train.records import RunDir
from run_helpers import REPO

TIMEOUT = 300  # seconds for a whole subprocess (two loaded cores: a fresh interpreter alone can take 10 s)

# Runs long enough that none finishes between the signal and the stop; the stop comes a few iterations in.
EXPERIMENT = """
name: stopping
title: Stopping
seeds: 3
base: {dataset: synthetic, data: {num_classes: 4, train_per_class: 8, test_per_class: 4}, model: cnn6,
       model_options: {width: 1, bn_momentum: 0.1}, iterations: 200, milestones: [150], lr: 0.05, eval_every: 50,
       batch_size: 8, eval_batch_size: 16, checkpoint_every: 1000, threads: 1}
columns: [{name: c}]
rows: [{name: Baseline, config: {regularizer: none}}]
"""

# `python -m comhe.run` (or `comhe.train`) with one function patched to signal this very process at a chosen point.
WRAPPER = '''
import os, runpy, signal, sys
from comhe.suite import report, runner
{patch}
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
'''


def _env(tmp_path):
    return {**os.environ, "COMHE_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _start(cmd, tmp_path):
    """``cmd`` in its own session (the signal's process group), Ctrl-C not ignored (pytest may run in the
    background); stdout and stderr go to files the test can read while it runs."""
    out, err = open(tmp_path / "stdout.txt", "w"), open(tmp_path / "stderr.txt", "w")
    return subprocess.Popen(cmd, cwd=REPO, env=_env(tmp_path), stdout=out, stderr=err, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _outputs(tmp_path):
    return (tmp_path / "stdout.txt").read_text(), (tmp_path / "stderr.txt").read_text()


def _wait_for(condition, proc, tmp_path, what: str):
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            out, err = _outputs(tmp_path)
            pytest.fail(f"never saw {what} (exit {proc.returncode}):\n{out[-2000:]}\n{err[-2000:]}")
        time.sleep(0.05)


def _end(proc, tmp_path):
    """(exit code, stdout, stderr); the process group is killed should it hang."""
    try:
        proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail("still running %d s after the signal:\n%s" % (TIMEOUT, "\n".join(_outputs(tmp_path))[-3000:]))
    return (proc.returncode,) + _outputs(tmp_path)


def _no_traceback(out: str, err: str) -> None:
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err, (out + err)[-3000:]


def _whole(run: RunDir) -> None:
    """Every record of the run reads back (no half-written file), and no temporary file was left outside a
    stopped-at-once write."""
    if run.config_path.exists():
        assert yaml.safe_load(run.config_path.read_text())["seed"] >= 0
    run.read_metrics()
    run.read_meta()
    if run.checkpoint_dir.exists():
        checkpoint.load_latest(run.checkpoint_dir)


def _experiment(tmp_path) -> Path:
    spec = tmp_path / "stopping.yaml"
    spec.write_text(textwrap.dedent(EXPERIMENT))
    return spec


# --- the runner: make / python -m comhe.run ------------------------------------------------------------------------

def test_ctrl_c_to_make_with_two_workers_stops_everything_and_renders_the_table_incomplete(tmp_path, monkeypatch):
    """JOBS=2: before, the workers went on starting runs for a minute, the finished runs were never reported and a
    KeyboardInterrupt traceback ended it with nothing rendered."""
    monkeypatch.setenv("COMHE_DATA", str(tmp_path / "data"))
    results = tmp_path / "results"
    longer = ["iterations=200", "milestones=[150]", "eval_every=50"]  # smoke runs are 4 iterations: too short
    proc = _make(tmp_path, results, "table1", "PROFILE=smoke", "JOBS=2", f"FIGURES={tmp_path / 'figures'}", *longer)
    plan = runner.make_plan(["table1"], "smoke", overrides=longer)
    runs = [RunDir(results / "runs" / p.name) for p in plan.runs]
    _wait_for(lambda: sum(bool(r.read_metrics()) for r in runs) >= 2, proc, tmp_path, "two runs training")
    os.killpg(proc.pid, signal.SIGINT)                                      # Ctrl-C at the terminal
    code, out, err = _end(proc, tmp_path)
    started = [r for r in runs if r.path.exists()]
    _no_traceback(out, err)
    assert code in (-signal.SIGINT, 130), (code, out[-2000:], err[-2000:])  # make re-raises the SIGINT: 130
    assert err.count("Ctrl-C: no run starts; the runs in progress checkpoint and stop") == 1, err[-2000:]
    assert len(started) == 2, [r.path.name for r in started]               # no run started after the signal
    for run in started:
        assert run.status() == "partial"
        _whole(run)
        assert 0 < checkpoint.load_latest(run.checkpoint_dir)["iteration"] < 200   # checkpointed where it stopped
    assert out.count("] stopped ") == 2 and f"2 stopped, {len(runs) - 2} not started" in out, out[-2000:]
    md = (results / "table1.md").read_text()
    assert "INCOMPLETE: stopped by Ctrl-C" in md and (results / "table1.csv").is_file()
    assert "INCOMPLETE" in (results / "table1.tex").read_text() and (tmp_path / "figures" / "table1.png").is_file()
    _resume_one(plan, started[0], results / "runs")


def _make(tmp_path, results, *args):
    stamp = subprocess.run("cat requirements/ci.txt pyproject.toml | cksum | cut -d' ' -f1", shell=True, cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return _start(["make", "--no-print-directory", "-o", f".venv/.installed-{stamp}", f"PYTHON={sys.executable}",
                   f"RESULTS={results}", *args], tmp_path)


@pytest.mark.slow  # ~60 s each on two loaded cores
@pytest.mark.parametrize("how", ["sigterm to make", "ctrl-c twice"])
def test_sigterm_to_make_alone_and_a_second_ctrl_c_with_two_workers(tmp_path, monkeypatch, how):
    """`kill <make>`: make passes SIGTERM to the runner, which forwards it to its workers (they are not in the
    signal's reach otherwise). Ctrl-C twice: the runner and its workers stop at once, no traceback, nothing torn."""
    monkeypatch.setenv("COMHE_DATA", str(tmp_path / "data"))
    results = tmp_path / "results"
    longer = ["iterations=200", "milestones=[150]", "eval_every=50"]
    proc = _make(tmp_path, results, "table1", "PROFILE=smoke", "JOBS=2", "ARGS=--no-figures", *longer)
    runs = [RunDir(results / "runs" / p.name) for p in runner.make_plan(["table1"], "smoke", overrides=longer).runs]
    _wait_for(lambda: sum(bool(r.read_metrics()) for r in runs) >= 2, proc, tmp_path, "two runs training")
    if how == "sigterm to make":
        os.kill(proc.pid, signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
    code, out, err = _end(proc, tmp_path)
    _no_traceback(out, err)
    started = [r for r in runs if r.path.exists()]
    assert len(started) == 2 and all(r.status() == "partial" for r in started), [r.path.name for r in started]
    for run in started:
        _whole(run)
    if how == "sigterm to make":
        assert code in (-signal.SIGTERM, 143) and err.count("SIGTERM: no run starts") == 1, (code, err[-2000:])
        assert all(checkpoint.load_latest(r.checkpoint_dir)["iteration"] > 0 for r in started)
        assert "INCOMPLETE: stopped by SIGTERM" in (results / "table1.md").read_text()
    else:
        assert code in (-signal.SIGINT, 130) and "stopped at once by a second Ctrl-C" in err, (code, err[-2000:])


def _resume_one(plan, run: RunDir, runs_root: Path) -> None:
    """Resuming finishes a stopped run: in this process, from its checkpoint."""
    stopped_at = checkpoint.load_latest(run.checkpoint_dir)["iteration"]
    one = runner.Plan(plan.experiments, plan.cells, [p for p in plan.runs if p.name == run.path.name],
                      plan.keep_weights)
    assert runner.train(one, runs_root) == {"skipped": 0, "finished": 1}
    assert run.read_meta()["resumed_from"] == stopped_at and run.status() == "done"


TWO_LENGTHS = """
name: lengths
title: Lengths
seeds: 1
base: {dataset: synthetic, data: {num_classes: 4, train_per_class: 8, test_per_class: 4}, model: cnn6,
       model_options: {width: 1, bn_momentum: 0.1}, milestones: [150], lr: 0.05, eval_every: 50, batch_size: 8,
       eval_batch_size: 16, checkpoint_every: 1000, threads: 1}
columns: [{name: c}]
rows: [{name: Short, config: {regularizer: none, iterations: 4, milestones: [2]}},
       {name: Long, config: {regularizer: hs_mhe, iterations: 150}},
       {name: Later, config: {regularizer: mhe, iterations: 150}}]
"""


def test_sigterm_to_the_runner_in_one_process_reports_the_finished_run_and_starts_no_other(tmp_path, monkeypatch):
    """JOBS=1, `kill <runner>` during the second run: the first run's result line is there, the second checkpoints,
    the third never starts; exit 130. Before: a traceback and no checkpoint of the run in progress."""
    monkeypatch.setenv("COMHE_DATA", str(tmp_path / "data"))
    spec = tmp_path / "lengths.yaml"
    spec.write_text(textwrap.dedent(TWO_LENGTHS))
    results = tmp_path / "results"
    plan = runner.make_plan([str(spec)])
    short, long, later = [RunDir(results / "runs" / p.name) for p in plan.runs]
    proc = _start([sys.executable, "-m", "comhe.run", str(spec), "--jobs", "1", "--results", str(results),
                   "--no-figures"], tmp_path)
    _wait_for(lambda: bool(long.read_metrics()), proc, tmp_path, "the second run training")
    os.kill(proc.pid, signal.SIGTERM)
    code, out, err = _end(proc, tmp_path)
    _no_traceback(out, err)
    assert code == 130, (code, out[-2000:], err[-2000:])
    assert err.count("SIGTERM: no run starts; the runs in progress checkpoint and stop") == 1, err
    assert "] finished  " + short.path.name in out and "] stopped   " + long.path.name in out, out
    assert short.status() == "done" and long.status() == "partial" and not later.path.exists()
    assert "1 finished, 1 stopped, 1 not started" in out
    assert "INCOMPLETE: stopped by SIGTERM" in (results / "lengths.md").read_text()
    _whole(long)
    _resume_one(plan, long, results / "runs")


def _wrapped(tmp_path, patch: str, module: str, *args):
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER.format(patch=textwrap.dedent(patch)))
    return _start([sys.executable, str(wrapper), module, *args], tmp_path)


def test_ctrl_c_while_planning_trains_nothing_and_renders_what_exists(tmp_path):
    proc = _wrapped(tmp_path, """
        real = runner.make_plan
        def make_plan(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)             # Ctrl-C in the middle of planning
            return real(*args, **kwargs)
        runner.make_plan = make_plan
        """, "comhe.run", "table1", "--profile", "smoke", "--results", str(tmp_path / "results"), "--no-figures")
    code, out, err = _end(proc, tmp_path)
    _no_traceback(out, err)
    assert code == 130, (code, out[-2000:], err[-2000:])
    assert err.count("Ctrl-C: stopping after planning") == 1, err
    assert not (tmp_path / "results" / "runs").exists() or not any((tmp_path / "results" / "runs").iterdir())
    md = (tmp_path / "results" / "table1.md").read_text()
    assert "INCOMPLETE: stopped by Ctrl-C" in md and "Runs: 30 todo." in md


def test_ctrl_c_while_rendering_finishes_the_tables_and_a_second_stops_at_once(tmp_path):
    results = tmp_path / "results"
    proc = _wrapped(tmp_path, """
        real, calls = report.write, []
        def write(*args, **kwargs):
            if not calls:
                os.kill(os.getpid(), signal.SIGINT)         # Ctrl-C as the first table is written
            calls.append(1)
            return real(*args, **kwargs)
        report.write = write
        """, "comhe.run", "table1", "table2", "--profile", "smoke", "--results", str(results), "--no-figures",
        "--collect-only")
    code, out, err = _end(proc, tmp_path)
    _no_traceback(out, err)
    assert code == 130 and err.count("Ctrl-C: finishing the tables and figures from what exists") == 1, (code, err)
    assert (results / "table1.md").is_file() and (results / "table2.md").is_file()   # rendering went on

    (tmp_path / "second").mkdir()
    proc = _wrapped(tmp_path / "second", """
        from comhe.train import records
        real = records.atomic_write
        def atomic_write(path, data):
            if path.name == "table1.md":                     # Ctrl-C twice, inside the write of a table
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
            return real(path, data)
        report.atomic_write = atomic_write
        """, "comhe.run", "table1", "table2", "--profile", "smoke", "--results", str(results), "--no-figures",
        "--collect-only")
    before = (results / "table1.md").read_text()
    code, out, err = _end(proc, tmp_path / "second")
    _no_traceback(out, err)
    assert code == 130 and "stopped at once by a second Ctrl-C" in err, (code, err)
    assert (results / "table1.md").read_text() == before             # the old version, whole
    assert "wrote" not in out                                        # table2 was not rendered: stopped at once


GRAPH = """
dataset: synthetic_planetoid
model: gcn
regularizer: hs_mhe
iterations: 1000
early_stopping: 0
eval_every: 10
checkpoint_every: 100000
threads: 1
"""


def test_ctrl_c_to_a_graph_run_checkpoints_and_the_same_command_resumes_it(tmp_path):
    """`python -m comhe.train` on a Cora-like synthetic graph. Before: a 30-line traceback and no checkpoint."""
    cfg = tmp_path / "graph.yaml"
    cfg.write_text(GRAPH)
    run = RunDir(tmp_path / "run")
    cmd = [sys.executable, "-m", "comhe.train", str(cfg), f"data_root={tmp_path / 'data'}", "--run-dir",
           str(run.path), "--progress", "none"]
    proc = _start(cmd, tmp_path)
    _wait_for(run.config_path.exists, proc, tmp_path, "the run's config.yaml")
    os.killpg(proc.pid, signal.SIGINT)
    code, out, err = _end(proc, tmp_path)
    _no_traceback(out, err)
    assert code == 130, (code, out[-2000:], err[-2000:])
    assert err.count("Ctrl-C: the run checkpoints at its next step and stops") == 1, err
    stopped_at = checkpoint.load_latest(run.checkpoint_dir)["iteration"]
    assert 0 < stopped_at < 1000 and run.status() == "partial"
    _whole(run)
    again = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True,
                           timeout=TIMEOUT)
    assert again.returncode == 0, again.stderr[-2000:]
    assert run.read_meta()["resumed_from"] == stopped_at and run.read_final()["iterations"] == 1000


IMAGE = """
dataset: synthetic
data: {num_classes: 4, train_per_class: 8, test_per_class: 4}
model: cnn6
model_options: {width: 1, bn_momentum: 0.1}
regularizer: rp_comhe
reg: {proj_dim: 4, num_proj: 2}
iterations: 60
milestones: [40]
lr: 0.05
batch_size: 8
eval_every: 20
checkpoint_every: 10
eval_batch_size: 16
threads: 1
"""


def test_a_second_ctrl_c_inside_a_checkpoint_write_stops_at_once_and_damages_nothing(tmp_path):
    """The first Ctrl-C asks for the checkpoint; the second lands inside its write (after the temporary file is
    written, before the rename): the process stops at once (130, no traceback), the last checkpoint is intact and
    the rerun, which removes the temporary file, resumes from it and finishes."""
    cfg = tmp_path / "image.yaml"
    cfg.write_text(IMAGE)
    run = RunDir(tmp_path / "run")
    args = [str(cfg), f"data_root={tmp_path / 'data'}", "--run-dir", str(run.path), "--progress", "none"]
    proc = _wrapped(tmp_path, """
        from comhe.train import checkpoint, records
        real = records.atomic_write
        def atomic_write(path, data):
            if path.name == "ckpt-000000020.pt":           # the second periodic checkpoint: Ctrl-C, then Ctrl-C again
                os.kill(os.getpid(), signal.SIGINT)         # inside its write
                tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
                tmp.write_bytes(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGINT)
            return real(path, data)
        checkpoint.atomic_write = atomic_write
        """, "comhe.train", *args)
    code, out, err = _end(proc, tmp_path)
    _no_traceback(out, err)
    assert code == 130 and "stopped at once by a second Ctrl-C" in err, (code, out[-2000:], err[-2000:])
    assert checkpoint.load_latest(run.checkpoint_dir)["iteration"] == 10       # the previous one, intact
    assert list(run.checkpoint_dir.glob(".*.tmp*"))                             # the half-written file, aside
    _whole(run)
    again = subprocess.run([sys.executable, "-m", "comhe.train", *args], cwd=REPO, env=_env(tmp_path),
                           capture_output=True, text=True, timeout=TIMEOUT)
    assert again.returncode == 0, again.stderr[-2000:]
    assert run.read_meta()["resumed_from"] == 10 and run.read_final()["iterations"] == 60
    assert not list(run.checkpoint_dir.glob(".*.tmp*"))


# --- the stop state itself (in this process) ----------------------------------------------------------------------

def test_first_signal_asks_a_repeated_sigterm_does_not_escalate_a_second_ctrl_c_stops_at_once():
    with STOP.handling("testing"):
        assert not STOP.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert STOP.requested and STOP.exit_code() == 130
        os.kill(os.getpid(), signal.SIGTERM)              # forwarded or repeated: nothing more
        with pytest.raises(StopNow):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)                                 # the handler runs at the next bytecode
    assert not STOP.requested and signal.getsignal(signal.SIGINT) is not STOP._handle


def test_a_ctrl_c_ignored_at_start_stays_ignored():
    """A background job of a non-interactive shell (or nohup) ignores SIGINT: Ctrl-C is not meant for it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with STOP.handling("testing"):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == STOP._handle
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_engine_stops_on_ctrl_c_like_on_sigterm(tmp_path):
    """In-process: the image engine's loop takes SIGINT as a stop request (checkpoint, Preempted), not as a
    KeyboardInterrupt raised from wherever it is."""
    from run_helpers import small_cfg
    cfg = small_cfg(tmp_path, iterations=40, checkpoint_every=1000)

    def interrupt(row):
        if row["iteration"] == 4:
            os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(engine.Preempted, match="at iteration 5"):
        engine.train(cfg, tmp_path / "run", report=interrupt)
    assert checkpoint.load_latest(RunDir(tmp_path / "run").checkpoint_dir)["iteration"] == 5


@pytest.mark.slow  # ~60 s on two loaded cores: torchrun starts two workers
def test_ctrl_c_with_nproc_2_checkpoints_through_torchrun_without_a_traceback(tmp_path, monkeypatch):
    """NPROC=2: torchrun runs in its own session; the runner sends it one SIGTERM, the ranks agree on a step and
    rank 0 checkpoints; torchrun's own account of the shutdown stays in its log."""
    monkeypatch.setenv("COMHE_DATA", str(tmp_path / "data"))
    spec = _experiment(tmp_path)
    spec.write_text(spec.read_text().replace("seeds: 3", "seeds: 2").replace("batch_size: 8", "batch_size: 16"))
    results = tmp_path / "results"
    plan = runner.make_plan([str(spec)])
    first, second = [RunDir(results / "runs" / p.name) for p in plan.runs]
    proc = _start([sys.executable, "-m", "comhe.run", str(spec), "--nproc", "2", "--results", str(results),
                   "--no-figures"], tmp_path)
    _wait_for(lambda: bool(first.read_metrics()), proc, tmp_path, "the first run training")
    os.killpg(proc.pid, signal.SIGINT)
    code, out, err = _end(proc, tmp_path)
    _no_traceback(out, err)
    assert code == 130, (code, out[-2000:], err[-2000:])
    stopped_at = checkpoint.load_latest(first.checkpoint_dir)["iteration"]
    assert 0 < stopped_at < 200 and stopped_at % engine.CHECK_EVERY == 0 and first.status() == "partial"
    assert not second.path.exists() and "1 stopped, 1 not started" in out, out[-2000:]
    assert "INCOMPLETE: stopped by Ctrl-C" in (results / "stopping.md").read_text()

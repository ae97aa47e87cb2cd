"""Live progress (issue 14, item 4): each run's progress.json (throttled, written only where the engine already
syncs), the table's ETA from measured rates, bars on a terminal and lines in a log, DRY=1's partial runs, and a
read-only lock probe."""
import io
import json
import time

import pytest

from comhe.suite import progress, runner
from comhe.train import engine
from comhe.train import progress as run_progress
from comhe.train.records import RunDir
from run_helpers import small_cfg


def fake_run(root, name, iteration, total=100, rate=10.0, status="running", batch=8, finished=False):
    run = RunDir(root / name)
    run.path.mkdir(parents=True)
    run.write_config({"iterations": total})
    now = time.time()
    record = {"iteration": iteration, "iterations": total, "iterations_per_s": rate,
              "images_per_s": rate * batch if rate else None, "eta_s": (total - iteration) / rate if rate else None,
              "status": status, "updated": now, "started": now - 5, "host": "node7", "pid": 4242,
              "latest": {"iteration": iteration, "test_error": 55.5}}
    (run.path / "progress.json").write_text(json.dumps(record))
    if finished:
        run.write_final({"status": "finished", "iterations": total, "train_images_per_s": rate * batch})
    cfg = {"iterations": total, "batch_size": batch, "dataset": "synthetic", "model": "cnn6"}
    return str(run.path), cfg


def test_the_record_is_throttled_and_forced_writes_go_through(tmp_path):
    record = run_progress.ProgressRecord(tmp_path, iterations=100, batch_size=4, start_iteration=10, every_s=3600)
    writes = []
    original = run_progress.atomic_write
    run_progress.atomic_write = lambda path, text: writes.append(json.loads(text))
    try:
        for it in range(11, 60):
            record.update(it)
        assert len(writes) == 1 and writes[0]["iteration"] == 11            # the first, then one per hour at most
        record.update(60, row={"iteration": 60, "test_error": 12.5, "epoch": 3}, force=True)
        record.write("finished")
    finally:
        run_progress.atomic_write = original
    assert [w["iteration"] for w in writes] == [11, 60, 60]
    assert writes[1]["latest"] == {"iteration": 60, "test_error": 12.5} and writes[2]["status"] == "finished"
    assert writes[1]["iterations_per_s"] > 0 and writes[1]["eta_s"] == pytest.approx(40 / writes[1]["iterations_per_s"])


def test_the_engine_writes_progress_only_at_its_existing_sync_points(tmp_path, monkeypatch):
    """No host sync per step: the record is fed at the divergence checks (every CHECK_EVERY iterations) and after
    evaluations only, and ends with the final status."""
    seen = []
    real = run_progress.ProgressRecord.update
    monkeypatch.setattr(run_progress.ProgressRecord, "update",
                        lambda self, it, row=None, force=False: seen.append(it) or real(self, it, row, force))
    cfg = small_cfg(tmp_path, iterations=45, eval_every=15, checkpoint_every=100, milestones=[30])
    run_dir = tmp_path / "run"
    final = engine.train(cfg, run_dir)
    assert set(seen) <= {0, 15, 20, 30, 40, 45} and {0, 20, 40, 45} <= set(seen)
    record = run_progress.read(run_dir)
    assert record["status"] == "finished" and record["iteration"] == 45 == final["iterations"]
    assert record["iterations"] == 45 and record["latest"]["iteration"] == 45 and record["images_per_s"] > 0


def test_table_eta_from_measured_rates(tmp_path):
    a = fake_run(tmp_path, "a", iteration=50, total=100, rate=10.0)                 # 5 s left
    b = fake_run(tmp_path, "b", iteration=0, total=100, rate=None, status="todo")    # no rate: a's (same model)
    c = fake_run(tmp_path, "c", iteration=100, total=100, rate=20.0, finished=True)  # done; its rate counts
    eta = progress.table_eta([a, b, c], concurrent=1)
    assert eta == pytest.approx(5.0 + 100 / 15.0)                                   # b at the mean of 10 and 20
    assert progress.table_eta([a, b, c], concurrent=2) == pytest.approx(max((5.0 + 100 / 15.0) / 2, 100 / 15.0))
    assert progress.table_eta([b], concurrent=1) is None                             # nothing measured yet
    assert progress.duration(3 * 86400 + 4 * 3600) == "3d 4h" and progress.duration(125) == "2m 05s"


def test_log_lines_show_every_running_run_and_the_table_eta(tmp_path):
    runs = [("a", *fake_run(tmp_path, "a", iteration=50, rate=10.0)),
            ("b", *fake_run(tmp_path, "b", iteration=100, rate=20.0, finished=True))]
    out = io.StringIO()
    monitor = progress.Monitor(runs, concurrent=2, out=out, bars=False, line_every_s=0)
    monitor.poll()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[progress] 1/2 runs finished, 1 running; 150/200 iterations (75.0%); table ETA 5s")
    assert lines[1] == "[progress]   a  50/100 (50.0%)  80 img/s  ETA 5s, test error 55.50% at 50"


def test_bars_on_a_terminal(tmp_path):
    runs = [("run-a", *fake_run(tmp_path, "a", iteration=30, rate=10.0))]
    out = io.StringIO()
    monitor = progress.Monitor(runs, concurrent=1, out=out, bars=True)
    monitor.poll()
    monitor.print("[1/1] finished  run-a")
    monitor.stop()
    text = out.getvalue()
    assert "table" in text and "run-a" in text and "30/100" in text and "ETA" in text
    assert "[1/1] finished  run-a" in text


def test_runner_prints_progress_lines_while_training(tmp_path, monkeypatch):
    """A non-terminal runner output gets the periodic progress block while workers train."""
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    monkeypatch.setattr(progress, "POLL_S", 0.05)
    import textwrap
    from test_runner import TINY
    (tmp_path / "tiny.yaml").write_text(textwrap.dedent(TINY).replace("iterations: 4", "iterations: 200")
                                        .replace("eval_every: 2", "eval_every: 100"))
    monkeypatch.setenv("COMHE_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(run_progress, "EVERY_S", 0.0)
    plan = runner.make_plan([str(tmp_path / "tiny.yaml")], seeds=1)
    out = io.StringIO()
    assert runner.train(plan, tmp_path / "runs", out=out) == {"skipped": 0, "finished": 1}
    assert "[progress] 0/1 runs finished, 1 running;" in out.getvalue()
    assert "[1/1] finished" in out.getvalue()


def test_dry_run_shows_partial_runs_and_probes_the_lock_read_only(tmp_path):
    path, cfg = fake_run(tmp_path, "p", iteration=25, total=100, rate=5.0)
    before = sorted(p.name for p in (tmp_path / "p").iterdir())
    text = progress.describe(path, cfg)
    assert text.startswith("iteration 25/100 (25.0%), stopped") and "15s left at its last rate" in text
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == before          # no .lock created
    holder = RunDir(path)
    holder.lock()
    try:
        text = progress.describe(path, cfg)
    finally:
        holder.unlock()
    assert "training now on node7 (pid 4242), 40 img/s, ETA 15s" in text
    assert progress.locked_now(path) is False


def test_finished_runs_lend_their_rates_to_the_eta(tmp_path):
    """Issue 20: "ETA unknown" with 28 of 40 runs done: the runs finished before this command had measured rates."""
    done = [fake_run(tmp_path, f"done{i}", 100, rate=10.0, status="finished", finished=True) for i in range(3)]
    todo = [fake_run(tmp_path, f"todo{i}", 0, rate=None, status="stopped") for i in range(2)]
    assert progress.table_eta(todo, 1) is None
    assert progress.table_eta(todo, 1, reference=done) == pytest.approx(2 * 100 / 10.0)
    monitor = progress.Monitor([(f"todo{i}", d, c) for i, (d, c) in enumerate(todo)], 1, out=io.StringIO(),
                               bars=False, finished=done)
    assert monitor.snapshot()["eta_s"] == pytest.approx(20.0)


def test_the_eta_keeps_the_pace_the_command_has_kept(tmp_path):
    """Issue 20: "table ETA 0s" with a run minutes from done: run rates leave out each run's start-up; once a run
    has finished here, the ETA is at least (iterations left) x (wall time / iterations done here)."""
    runs = [fake_run(tmp_path, f"r{i}", 0, total=200, rate=None, status="stopped") for i in range(4)]
    monitor = progress.Monitor([(f"r{i}", d, c) for i, (d, c) in enumerate(runs)], 1, out=io.StringIO(),
                               bars=False)
    assert monitor.snapshot()["eta_s"] is None                  # baseline: nothing measured, nothing done
    monitor._started -= 30.0                                    # 30 s later: one run done (200 epochs at 1000/s)
    RunDir(runs[0][0]).write_final({"status": "finished", "iterations": 200, "train_images_per_s": 8000.0})
    snap = monitor.snapshot()
    assert snap["finished"] == 1
    assert snap["eta_s"] == pytest.approx(600 * 30.0 / 200, rel=0.05)   # not 3 x 0.2 s at the run's own rate


def test_a_running_node_run_is_counted_and_shown_in_epochs(tmp_path):
    run_dir, cfg = fake_run(tmp_path, "gcn", 50, total=200, rate=25.0)
    record = json.loads((tmp_path / "gcn" / "progress.json").read_text())
    record.update(unit="epoch", images_per_s=None, latest={"iteration": 50, "test_acc": 71.25})
    (tmp_path / "gcn" / "progress.json").write_text(json.dumps(record))
    monitor = progress.Monitor([("gcn", run_dir, cfg)], 1, out=io.StringIO(), bars=False, line_every_s=0)
    lines = monitor.lines(monitor.snapshot())
    assert "1 running" in lines[0]
    assert "25.0 epochs/s" in lines[1] and "test accuracy 71.25% at 50" in lines[1] and "img/s" not in lines[1]

"""Faults: SIGKILL anywhere (inside checkpoint writes included), damaged checkpoints, divergence, stale locks.

Every killed run is relaunched and must end bitwise equal to an uninterrupted one (CPU, deterministic): metrics rows
except ``seconds``, final.json's numbers, final weights and momentum buffers. Runs are forked from this process
(``run_helpers.run_forked``) so that a kill costs no interpreter start-up.
"""
import json
import os
import random
import time
import warnings
from pathlib import Path

import pytest

from comhe.train import checkpoint, engine
from comhe import train
from comhe.train.records import RunDir, RunLocked
from run_helpers import assert_same_run, kill_self, run_forked, small_cfg, stale_temp_files


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One data folder and one uninterrupted reference run for the whole module."""
    root = tmp_path_factory.mktemp("faults")
    reference = RunDir(root / "reference")
    start = time.perf_counter()
    engine.train(small_cfg(root), reference.path)
    return root, reference, time.perf_counter() - start


def resume(cfg, run: RunDir):
    """Relaunch in this process; returns the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.train(cfg, run.path)
    return [str(w.message) for w in caught]


# --- a SIGKILL inside each step of the write protocol (records.atomic_write, checkpoint.save, engine._finish) -------
# (patched call, file-name prefix, which occurrence, expected warning on resume). Checkpoints come at 2, 4, ..., 10;
# the first deletion of an old one is at 6; metrics rows are written at 0, 4, 8, 12.
WINDOWS = {
    "first checkpoint renamed, no manifest yet": ("replace", "manifest.json", 1, "have no manifest"),
    "checkpoint temp file written, not renamed": ("replace", "ckpt-", 4, None),
    "checkpoint renamed, manifest not updated": ("replace", "manifest.json", 4, None),
    "manifest updated, old checkpoint not deleted": ("unlink", "ckpt-", 1, None),
    "metrics row in a temp file, not renamed": ("replace", "metrics.csv", 3, None),
    "final checkpoint written, final.json not": ("replace", "final.json", 1, None),
}


def _arm(call: str, prefix: str, nth: int) -> None:
    """In the child only: SIGKILL on the ``nth`` os.replace / Path.unlink of a file whose name starts ``prefix``."""
    seen = [0]

    def hit(name: str) -> None:
        if name.startswith(prefix):
            seen[0] += 1
            if seen[0] == nth:
                kill_self()

    if call == "replace":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            hit(Path(dst).name)
            return real_replace(src, dst, *args, **kwargs)
        os.replace = replace
    else:
        real_unlink = Path.unlink

        def unlink(self, *args, **kwargs):
            hit(self.name)
            return real_unlink(self, *args, **kwargs)
        Path.unlink = unlink


@pytest.mark.parametrize("window", list(WINDOWS))
def test_sigkill_inside_a_write_then_resume_equals_uninterrupted(shared, window):
    root, reference, _ = shared
    cfg, run = small_cfg(root), RunDir(root / window.replace(" ", "_").replace(",", ""))
    call, prefix, nth, warning = WINDOWS[window]

    def killed_run():
        _arm(call, prefix, nth)
        engine.train(cfg, run.path)

    assert run_forked(killed_run) == -9  # the hook fired: the child died inside that write
    assert run.status() == "partial"
    if window.startswith("checkpoint temp file"):
        assert any(name.startswith(".ckpt-000000008.pt.tmp") for name in stale_temp_files(run))
    messages = resume(cfg, run)
    assert (warning is None and not any("checkpoint" in m for m in messages)) or \
        any(warning in m for m in messages), messages
    assert_same_run(reference, run)
    assert stale_temp_files(run) == []  # removed by the relaunch, not merely ignored


def test_sigkill_at_random_times_then_resume_equals_uninterrupted(shared):
    """3 runs, each SIGKILLed from outside at 2 random instants (uniform over the middle 80% of a run), then
    relaunched to the end."""
    root, reference, _ = shared
    cfg, rng, outcomes = small_cfg(root), random.Random(6), []
    start = time.perf_counter()  # the length of a forked run here and now (the machine may be busy)
    assert run_forked(lambda: engine.train(cfg, root / "timed")) == 0
    seconds = time.perf_counter() - start
    for trial in range(3):
        run = RunDir(root / f"random-{trial}")
        for _ in range(2):
            delay = rng.uniform(0.1, 0.9) * seconds
            code = run_forked(lambda run=run: engine.train(cfg, run.path), kill_after=delay)
            entries = json.loads((run.checkpoint_dir / "manifest.json").read_text()) \
                if (run.checkpoint_dir / "manifest.json").exists() else []
            outcomes.append((round(delay, 2), code, run.status(), [e["iteration"] for e in entries]))
        resume(cfg, run)
        assert_same_run(reference, run)
        assert stale_temp_files(run) == []
    # the test is only meaningful if kills landed mid-run, after at least one checkpoint
    assert any(code == -9 and status == "partial" and its for _, code, status, its in outcomes), outcomes


# --- damaged checkpoints -----------------------------------------------------------------------------------------

class _Stop(Exception):
    pass


def _interrupted_run(cfg, run: RunDir) -> None:
    """Crash at the evaluation of iteration 12, before its checkpoint: checkpoints 8 and 10 remain."""
    def report(row):
        if row["iteration"] == 12:
            raise _Stop
    with pytest.raises(_Stop):
        engine.train(cfg, run.path, report=report)
    assert [e["iteration"] for e in json.loads((run.checkpoint_dir / "manifest.json").read_text())] == [8, 10]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_byte(path: Path) -> None:
    payload = bytearray(path.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    path.write_bytes(bytes(payload))


@pytest.mark.parametrize("damage, files, resumed_from, warning", [
    (_truncate, ["ckpt-000000010.pt"], 8, "ckpt-000000010.pt is corrupted (checksum mismatch)"),
    (_flip_byte, ["ckpt-000000010.pt"], 8, "ckpt-000000010.pt is corrupted (checksum mismatch)"),
    (_flip_byte, ["ckpt-000000010.pt", "ckpt-000000008.pt"], 0, "ckpt-000000008.pt is corrupted"),
    (_truncate, ["manifest.json"], 0, "have no manifest"),
], ids=["truncated-newest", "bitflip-newest", "both-damaged-restart", "manifest-truncated-restart"])
def test_damaged_checkpoint_falls_back_or_restarts_with_a_warning(shared, damage, files, resumed_from, warning):
    root, reference, _ = shared
    cfg, run = small_cfg(root), RunDir(root / f"damaged-{damage.__name__}-{len(files)}-{files[0]}")
    _interrupted_run(cfg, run)
    for name in files:
        damage(run.checkpoint_dir / name)
    messages = resume(cfg, run)
    assert any(warning in m for m in messages), messages
    assert run.read_meta()["resumed_from"] == resumed_from
    assert_same_run(reference, run)


# --- divergence --------------------------------------------------------------------------------------------------

def test_nan_loss_stops_the_run_records_diverged_and_exits_4(shared, capsys):
    root, _, _ = shared
    cfg_path, run = root / "diverge.yaml", RunDir(root / "diverged")
    cfg_path.write_text(json.dumps(small_cfg(root, loss="cross_entropy")))  # JSON is YAML
    code = train.main([str(cfg_path), "--run-dir", str(run.path), "--progress", "none", "lr=1000000.0"])
    out = capsys.readouterr().out
    final = run.read_final()
    assert final["status"] == "diverged" and 1 <= final["diverged_at"] <= final["iterations"] == 4  # a check at 2, 4
    assert code == 4 and f"diverged (non-finite loss from iteration {final['diverged_at']}, stopped at 4): N/C" in out
    assert final["final_test_error"] is None and final["best_test_error"] is None
    assert [r["iteration"] for r in run.read_metrics()] == ["0"]  # nothing recorded from the non-finite window
    assert run.read_meta()["status"] == "diverged"
    assert engine.train(small_cfg(root, loss="cross_entropy", lr=1e6), run.path) == final  # done: not retrained


# --- locks -------------------------------------------------------------------------------------------------------

def test_lock_of_a_live_process_blocks_and_of_a_killed_one_does_not(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    ready_r, ready_w = os.pipe()

    def holder():
        held = RunDir(run.path)  # keep a reference: a collected RunDir closes its file, which releases the lock
        held.lock()
        os.write(ready_w, b"x")
        time.sleep(60)

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            holder()
        finally:
            os._exit(0)
    try:
        assert os.read(ready_r, 1) == b"x"
        with pytest.raises(RunLocked, match=f"pid {pid} on"):
            run.lock()
        cfg_path = tmp_path / "cfg.yaml"
        cfg_path.write_text(json.dumps(small_cfg(tmp_path)))
        assert train.main([str(cfg_path), "--run-dir", str(run.path), "--progress", "none"]) == 3
        assert f"is being trained by pid {pid}" in capsys.readouterr().err
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert (run.path / ".lock").read_text().startswith(f"pid {pid}")  # the dead holder's file is still there
    run.lock()  # ... and does not block: flock died with its process
    run.unlock()


def test_checkpoint_save_leaves_no_temp_file_and_keeps_two(tmp_path):
    for it in (1, 2, 3):
        checkpoint.save(tmp_path, it, {"iteration": it})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000002.pt", "ckpt-000000003.pt", "manifest.json"]
    assert checkpoint.load_latest(tmp_path)["iteration"] == 3

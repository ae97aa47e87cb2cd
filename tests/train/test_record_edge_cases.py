"""Run records where the disk or the folder is not what the writer expects: a checkpoint listed but gone, a run path
that is a file, progress.json on an unwritable folder, the commit of a folder outside git; and ``make verify``'s
sealing of older records when the run is locked or already sealed."""
import json
import os

import pytest
import torch

from comhe.suite import verify
from comhe.train import checkpoint, progress
from comhe.train.records import RunDir, git_sha


def test_a_listed_checkpoint_that_is_gone_falls_back_to_the_one_before(tmp_path):
    for iteration in (2, 4):
        checkpoint.save(tmp_path, iteration, {"iteration": iteration, "w": torch.full((2,), float(iteration))})
    assert [e["file"] for e in json.loads((tmp_path / checkpoint.MANIFEST).read_text())] == [
        "ckpt-000000002.pt", "ckpt-000000004.pt"]
    (tmp_path / "ckpt-000000004.pt").unlink()
    with pytest.warns(UserWarning, match=r"checkpoint .* is missing; falling back to an earlier one"):
        state = checkpoint.load_latest(tmp_path)
    assert state["iteration"] == 2 and torch.equal(state["w"], torch.full((2,), 2.0))


def test_a_run_path_that_is_a_file_is_not_writable(tmp_path):
    (tmp_path / "run").write_text("")
    with pytest.raises(NotADirectoryError, match="exists and is not a directory"):
        RunDir(tmp_path / "run").check_writable()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_progress_on_a_read_only_folder_is_skipped_not_fatal(tmp_path):
    tmp_path.chmod(0o500)
    try:
        record = progress.ProgressRecord(tmp_path, iterations=10, batch_size=8, start_iteration=0)
        record.write("training")
    finally:
        tmp_path.chmod(0o700)
    assert record.last_write == float("-inf") and progress.read(tmp_path) is None


def test_progress_on_a_folder_that_is_gone_is_skipped_not_fatal(tmp_path):
    record = progress.ProgressRecord(tmp_path / "gone", iterations=10, batch_size=8, start_iteration=0)
    record.write("training")   # the run folder was deleted under the run: no traceback, nothing written
    assert record.last_write == float("-inf") and not (tmp_path / "gone").exists()


def test_the_commit_of_a_folder_outside_git_is_unknown(tmp_path):
    assert git_sha(tmp_path) == "unknown"             # git answers, with an error
    assert git_sha(tmp_path / "missing") == "unknown"  # git cannot even start there


def test_make_verify_seals_only_an_unlocked_unverified_record(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    (run.path / "config.yaml").write_text("model: cnn9\n")
    (run.path / "metrics.csv").write_text("iteration,test_error\n10,50.0\n")
    (run.path / "meta.json").write_text("{}")
    (run.path / "final.json").write_text(json.dumps({"status": "finished", "final_test_error": 50.0}))
    assert run.verify().state == "unverified"
    holder = RunDir(run.path)
    holder.lock()
    try:
        assert verify.seal_unverified(run.path).startswith(f"not sealed: {run.path} is being trained by pid ")
    finally:
        holder.unlock()
    assert verify.seal_unverified(run.path) == "sealed" and run.verify().state == "sealed"
    assert verify.seal_unverified(run.path) == "not sealed: sealed"

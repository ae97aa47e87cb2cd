"""A node run killed after its final checkpoint but before ``final.json`` (the seal and final.json come last) is
finished on relaunch from that checkpoint, without training again, with the numbers of the run that was killed."""
import json

from comhe.train import config, node_engine
from comhe.train.records import RunDir

SAME = ("status", "iterations", "diverged_at", "stopped_early", "final_test_accuracy", "final_test_error",
        "final_val_accuracy", "final_val_loss", "final_train_loss", "best_test_accuracy", "best_test_error",
        "best_iteration", "final_hidden_energy")


def test_a_kill_between_the_final_checkpoint_and_final_json_finishes_on_relaunch(tmp_path):
    cfg = config.resolve(base={"model": "gcn", "dataset": "synthetic_planetoid", "data": {"num_classes": 4},
                               "data_root": str(tmp_path / "data"), "milestones": [], "threads": 1, "lr": 0.01,
                               "loss": "cross_entropy", "label_smoothing": 0.0, "iterations": 12,
                               "checkpoint_every": 5, "eval_every": 1, "regularizer": "rp_comhe",
                               "reg": {"lambda_hidden": 0.1, "lambda_output": 1.0}})
    first = node_engine.train(cfg, tmp_path / "run")
    run = RunDir(tmp_path / "run")
    rows = run.read_metrics()
    run.final_path.unlink()                      # the kill: the final checkpoint is on disk, final.json is not
    (run.path / "record.sha256").unlink()
    assert run.status() != "done"
    again = node_engine.train(cfg, tmp_path / "run")
    assert {k: again[k] for k in SAME} == {k: first[k] for k in SAME}
    assert run.read_metrics() == rows            # not one epoch trained or logged again
    assert json.loads(run.final_path.read_text())["final_test_accuracy"] == first["final_test_accuracy"]
    assert run.verify().state == "sealed"

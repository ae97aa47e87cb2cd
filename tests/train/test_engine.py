"""The engine: init oracle, the official loss and schedule, records, kill-and-resume, a real-data run."""
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from comhe.train import config, engine, setup
from comhe import models, regularizers
from comhe.train.losses import official_loss
from comhe.train.records import RunDir

REPO = Path(__file__).resolve().parents[2]


def tiny_cfg(tmp_path, **overrides):
    base = {"dataset": "synthetic", "data": {"num_classes": 10}, "data_root": str(tmp_path / "data"),
            "model": "cnn9", "model_options": {"width": 1, "bn_momentum": 0.1}, "iterations": 30,
            "milestones": [20], "lr": 0.02, "batch_size": 16, "eval_every": 10, "checkpoint_every": 10,
            "eval_batch_size": 50, "threads": 1}
    base.update(overrides)
    return config.resolve(base=base)


# --- docs/reference.md §2: at He init, CNN-9 on CIFAR-100, the regulariser totals of the official logs' iteration 0
ORACLE = [("hs_mhe", {}, "hidden", 5.01, 5.04), ("rp_comhe", {}, "hidden", 5.135, 5.135),
          ("rp_comhe", {"proj_dim": 30, "num_proj": 1}, "hidden", 5.18, 5.18), ("mhe", {}, "output", 5.02, 5.03)]


@pytest.mark.parametrize("name, options, part, low, high", ORACLE)
def test_init_oracle(name, options, part, low, high):
    torch.manual_seed(0)
    model = models.build("cnn9", 100)
    _, stats = regularizers.build(name, model, **options)()
    assert low * 0.99 <= stats[part] <= high * 1.01


def test_official_loss():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 30.0]])
    labels = torch.tensor([0, 0])
    probs = torch.softmax(logits, 1)
    target = torch.full((2, 3), 0.01 / 3)
    target[0, 0] = target[1, 0] = 0.99 + 0.01 / 3
    expected = -(target * torch.log(probs + 1e-4)).sum(1).mean()
    assert official_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    # the +1e-4 bounds a confident mistake near -log(1e-4) = 9.21, where plain cross-entropy keeps growing
    assert official_loss(logits[1:], labels[1:]).item() < 9.22


def test_schedule_and_weight_decay_groups():
    cfg = config.resolve()
    assert [engine.lr_at(cfg, i) for i in (0, 29999, 30000, 50000, 65000, 74999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.001, 0.0001, 0.0001])
    model = models.build("cnn9", 10, width=1)
    official = setup.param_groups(model, 5e-4, exclude_bn=False)
    assert len(official) == 1 and len(official[0]["params"]) == len(list(model.parameters()))
    split = setup.param_groups(model, 5e-4, exclude_bn=True)
    assert all(p.dim() == 4 for p in split[0]["params"]) and all(p.dim() == 1 for p in split[1]["params"])
    assert split[1]["weight_decay"] == 0.0


def test_short_run_writes_all_records(tmp_path):
    cfg = tiny_cfg(tmp_path, regularizer="rp_comhe", reg={"proj_dim": 4, "num_proj": 2})
    run = RunDir(tmp_path / "run")
    final = engine.train(cfg, run.path)
    assert run.status() == "done" and final["status"] == "finished" and final["iterations"] == 30
    assert run.read_config() == cfg
    rows = run.read_metrics()
    assert [int(r["iteration"]) for r in rows] == [0, 10, 20, 30]
    energy_columns = [k for k in rows[0] if k.startswith("energy/")]
    assert len(energy_columns) == 11  # 9 convs + fc6 + classifier
    for r in rows[1:]:
        assert 0 <= float(r["test_error"]) <= 100 and float(r["reg_loss"]) > 0 and float(r["seconds"]) > 0
        hidden = sum(float(r[k]) for k in energy_columns if k != "energy/classifier")
        assert float(r["hidden_energy"]) == pytest.approx(hidden)
    assert rows[1]["lr"] == "0.02" and float(rows[3]["lr"]) == pytest.approx(0.002)
    assert final["final_test_error"] == float(rows[-1]["test_error"])
    assert final["best_test_error"] == min(float(r["test_error"]) for r in rows)
    meta = run.read_meta()
    assert {"git_sha", "torch", "device", "host", "seed", "wall_time_s"} <= set(meta)
    # a finished run is not retrained
    assert engine.train(cfg, run.path) == final
    assert len(run.read_metrics()) == 4


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, yaml
    from comhe.train import engine
    cfg = yaml.safe_load(open(sys.argv[1]))
    kill_at = int(sys.argv[3])
    def report(row):
        if row["iteration"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    engine.train(cfg, sys.argv[2], report=report)
""")


def _compare_runs(a: RunDir, b: RunDir):
    rows_a, rows_b = a.read_metrics(), b.read_metrics()
    assert [int(r["iteration"]) for r in rows_b] == [int(r["iteration"]) for r in rows_a]
    for ra, rb in zip(rows_a, rows_b):
        assert {k: v for k, v in ra.items() if k != "seconds"} == {k: v for k, v in rb.items() if k != "seconds"}
    fa, fb = json.loads(a.final_path.read_text()), json.loads(b.final_path.read_text())
    for key in ("final_test_error", "best_test_error", "final_train_loss", "final_hidden_energy", "iterations"):
        assert fa[key] == fb[key]
    wa = torch.load(sorted(a.checkpoint_dir.glob("*.pt"))[-1], weights_only=True)["model"]
    wb = torch.load(sorted(b.checkpoint_dir.glob("*.pt"))[-1], weights_only=True)["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("regularizer, reg", [("rp_comhe", {"proj_dim": 4, "num_proj": 2}),
                                              ("ap_comhe", {"proj_dim": 4})])
def test_sigkill_and_resume_equals_uninterrupted(tmp_path, regularizer, reg):
    """Killed right after the evaluation at iteration 20 (its checkpoint not yet written), then relaunched: the
    resumed run replays 11..20 from the checkpoint at 10 and ends bitwise equal to an uninterrupted run."""
    cfg = tiny_cfg(tmp_path, regularizer=regularizer, reg=reg)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(config.dump(cfg))
    whole, killed = RunDir(tmp_path / "whole"), RunDir(tmp_path / "killed")
    engine.train(cfg, whole.path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(cfg_path), str(killed.path), "20"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert killed.status() == "partial"
    assert [int(r["iteration"]) for r in killed.read_metrics()] == [0, 10, 20]
    engine.train(cfg, killed.path)  # resume in this process
    _compare_runs(whole, killed)
    assert killed.read_meta()["resumed_from"] == 10


def test_divergence_is_recorded(tmp_path):
    cfg = tiny_cfg(tmp_path, lr=1e6, iterations=20, loss="cross_entropy")
    final = engine.train(cfg, tmp_path / "run")
    assert final["status"] == "diverged" and final["final_test_error"] is None
    assert 1 <= final["diverged_at"] <= final["iterations"] == 10  # found at the first check (the evaluation)


@pytest.mark.parametrize("first_nan", [7, 23])
def test_divergence_stops_at_the_next_check_and_names_the_first_bad_iteration(tmp_path, first_nan):
    """The loss turns NaN at ``first_nan`` (the weights with it, as a real divergence does): the run stops at the next
    check (every engine.CHECK_EVERY iterations, evaluations and checkpoints), long before its next evaluation, and
    records ``first_nan``."""
    cfg = tiny_cfg(tmp_path, iterations=200, eval_every=100, checkpoint_every=100, milestones=[150])
    s = engine.prepare(cfg)
    real_step, calls = s.step, []

    def step(x, y, lr):
        calls.append(lr)
        if len(calls) == first_nan:
            with torch.no_grad():
                for p in s.model.parameters():
                    p.fill_(float("nan"))
        return real_step(x, y, lr)

    s.step = step
    final = engine.train(cfg, tmp_path / "run", setup=s)
    stop = -(-first_nan // engine.CHECK_EVERY) * engine.CHECK_EVERY
    assert final["status"] == "diverged" and final["diverged_at"] == first_nan
    assert final["iterations"] == len(calls) == stop


def test_cli_resumes_and_skips_finished(tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(config.dump(tiny_cfg(tmp_path, iterations=10, eval_every=5)))
    cmd = [sys.executable, "-m", "comhe.train", str(cfg_path), "--runs-root", str(tmp_path / "runs"),
           "--progress", "lines", "seed=1"]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "test_err%" in first.stdout and "final test error" in first.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("synthetic-cnn9-none-s1-")
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "already finished" in second.stdout
    bad = subprocess.run(cmd[:-1] + ["lr=-1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: lr must be > 0, got -1"


@pytest.mark.slow
def test_fashion_mnist_real_data_beats_80_percent(tmp_path):
    """1,000 iterations of a narrow CNN-9 on real Fashion-MNIST, CPU: > 80% test accuracy (~5 min on 2 cores).

    LR 0.01: at the official 0.1 (and 0.05) this narrow net collapses to one class for the first thousands of
    iterations, as the official CIFAR runs do (docs/reference.md §2), and 1,000 iterations are not enough to recover."""
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    cfg = config.resolve(base={"dataset": "fashion_mnist", "data_root": str(tmp_path), "model": "cnn9",
                               "model_options": {"width": 1, "bn_momentum": 0.1}, "iterations": 1000,
                               "milestones": [800], "lr": 0.01, "eval_every": 1000, "checkpoint_every": 1000,
                               "augment": False, "regularizer": "hs_mhe"})
    final = engine.train(cfg, tmp_path / "run")
    assert final["status"] == "finished" and final["final_test_error"] < 20.0
    assert math.isfinite(final["final_hidden_energy"])

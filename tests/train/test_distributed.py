"""Multi-process runs (torchrun, DDP over gloo on the CPU) equal, bitwise, to one process doing the same arithmetic.

A plain single-process run with the same global batch differs from a 2-rank run in two ways. (1) Without
SyncBatchNorm (CUDA-only) each rank normalises its own half of the batch, and DDP copies rank 0's BN running
statistics to every rank at each forward. (2) DDP sums the ranks' gradients, each already holding the regulariser's
gradient, so the float sums run in another order; on these width-1 networks with an energy regulariser such 1-ulp
differences grow to ~1e-3 relative in 12 steps (measured; with ``regularizer: none`` the runs are bitwise equal).
The reference here is therefore a single process whose step (``TwoRankStep``) computes what the two ranks compute:
each half of the batch through the model apart (BN statistics per half, only the first half updating the running
statistics), each half's gradient of ``task + regulariser``, then their mean. Everything else is the real DDP code
path: data shards, DDP's gradient all-reduce, the regulariser on each rank, metrics summed over ranks, evaluation
split over ranks, checkpoints and records from rank 0, resume.
"""
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack

import pytest
import torch
from torch import nn

from comhe.train import checkpoint, config, engine
from comhe import data
from comhe.train.records import RunDir
from run_helpers import REPO, assert_same_run, small_cfg


class _RunningStatsFrozen:
    """BN running statistics and counters left as they are (momentum 0), as a rank > 0's are overwritten by rank
    0's at DDP's next forward."""

    def __init__(self, model: nn.Module):
        self.norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self):
        self.saved = [(m.momentum, m.num_batches_tracked.clone()) for m in self.norms]
        for m in self.norms:
            m.momentum = 0.0  # running = 1 * running + 0 * batch, exactly
        return self

    def __exit__(self, *exc):
        for m, (momentum, tracked) in zip(self.norms, self.saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


class TwoRankStep:
    """``step(x, y, lr)`` of the engine, computed as ``ranks`` DDP ranks compute it (see the module docstring)."""

    def __init__(self, setup, ranks: int = 2):
        self.s, self.ranks = setup, ranks

    def __call__(self, x, y, lr):
        s = self.s
        for group in s.optimizer.param_groups:
            group["lr"] = lr
        params = [p for p in s.model.parameters() if p.requires_grad]
        reg_loss, _ = s.reg(lr=lr, stats=False)  # one draw of the projections: every rank draws the same
        grads, task_sum, correct = [], torch.zeros((), dtype=torch.float64), 0
        for rank, (xr, yr) in enumerate(zip(x.chunk(self.ranks), y.chunk(self.ranks))):
            with ExitStack() as stack:
                if rank > 0:
                    stack.enter_context(_RunningStatsFrozen(s.model))
                logits = s.model(xr)
            task = s.loss_fn(logits, yr)
            grads.append(torch.autograd.grad(task + reg_loss, params, retain_graph=True))
            task_sum += task.detach()
            correct = correct + (logits.argmax(1) == yr).sum()
        for p, *per_rank in zip(params, *grads):
            p.grad = sum(g / self.ranks for g in per_rank)  # DDP: each rank's gradient / world size, summed
        s.optimizer.step()
        return task_sum / self.ranks, correct, reg_loss.detach()


def reference_run(cfg, run_dir, report=None):
    s = engine.prepare(cfg)
    s.step = TwoRankStep(s)
    return engine.train(cfg, run_dir, setup=s, report=report)


def torchrun_command(cfg_path, run_dir, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
            "comhe.train", str(cfg_path), "--run-dir", str(run_dir), "--progress", "lines"]


TORCHRUN_ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COMHE_OFFLINE": "1"}


def torchrun(cfg_path, run_dir, nproc=2):
    return subprocess.run(torchrun_command(cfg_path, run_dir, nproc), cwd=REPO, env=TORCHRUN_ENV,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    # 8 images per rank; 64 test images in 8 batches, 4 per rank. lr 0.01: the network learns (test error 25% at
    # iteration 4, 0% at 12), so the test error reacts to the BN statistics each rank evaluates with; bn_momentum 0.9
    # makes those mostly the last batch's (without evaluate()'s broadcast of rank 0's, the rows differ: measured).
    cfg = small_cfg(root, batch_size=16, eval_batch_size=8, lr=0.01, model_options={"width": 1, "bn_momentum": 0.9},
                    data={"num_classes": 4, "train_per_class": 8, "test_per_class": 16})
    cfg_path = root / "cfg.yaml"
    cfg_path.write_text(config.dump(cfg))
    reference = RunDir(root / "reference")
    reference_run(cfg, reference.path)
    return root, cfg, cfg_path, reference


def test_two_process_run_matches_single_process(setting):
    root, cfg, cfg_path, reference = setting
    ddp = RunDir(root / "ddp")
    proc = torchrun(cfg_path, ddp.path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(reference, ddp)
    assert len({r["test_error"] for r in reference.read_metrics()}) >= 3  # the evaluations carry information
    # records by rank 0 only: one header and one row per evaluation, one progress table, no stray files
    assert ddp.metrics_path.read_text().count("iteration,") == 1 and proc.stdout.count("test_err%") == 1
    assert sorted(p.name for p in ddp.path.iterdir()) == [".lock", "checkpoints", "config.yaml", "final.json",
                                                           "meta.json", "metrics.csv", "progress.json",
                                                           "record.sha256"]
    assert ddp.read_meta()["world_size"] == 2


def test_two_process_run_resumes_a_single_process_checkpoint(setting):
    """Crash a single-process run at iteration 8 (checkpoints at 4 and 6), finish it with torchrun: the saved
    window (steps 5-6) is carried by rank 0 alone and the result matches the uninterrupted reference."""
    root, cfg, cfg_path, reference = setting
    run = RunDir(root / "resumed")

    class Crash(Exception):
        pass

    def crash_at_8(row):
        if row["iteration"] == 8:
            raise Crash
    with pytest.raises(Crash):
        reference_run(cfg, run.path, report=crash_at_8)
    proc = torchrun(cfg_path, run.path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run.read_meta()["resumed_from"] == 6 and run.read_meta()["world_size"] == 2
    assert_same_run(reference, run)


def test_rp_projections_do_not_depend_on_the_global_rng(tmp_path):
    """Each rank's global RNG drifts its own way (the ImageNet crops draw from it, per rank); the RP-CoMHE draws come
    from a generator seeded with the run's seed, so every rank projects with the same matrices."""
    cfg = small_cfg(tmp_path)
    losses = []
    for drift in (0, 1000, 0):
        s = engine.prepare(cfg)
        torch.rand(drift)
        losses.append([s.reg()[0].item() for _ in range(3)])
    assert losses[0] == losses[1] == losses[2]
    s = engine.prepare(small_cfg(tmp_path, reg={"proj_dim": 4, "num_proj": 2, "seed": 1}))
    assert [s.reg()[0].item() for _ in range(3)] != losses[0]


@pytest.mark.parametrize("kind", ["tensor", "loader"])
def test_evaluation_batches_split_over_ranks_cover_the_test_set_once(tmp_path, kind):
    if kind == "tensor":
        bundle = data.build("synthetic", tmp_path, num_classes=4, train_per_class=2, test_per_class=5)
    else:
        bundle = data.build("synthetic_imagenet", tmp_path, image_size=32, num_classes=2, per_class=5, size=36)
    single = [y for _, y in bundle.test_loader(3)]
    for world_size in (2, 3):
        shards = [[y for _, y in bundle.test_loader(3, rank, world_size)] for rank in range(world_size)]
        merged = [shards[i % world_size][i // world_size] for i in range(len(single))]
        assert sum(len(s) for s in shards) == len(single)
        assert all(torch.equal(a, b) for a, b in zip(merged, single))


# --- ending a DDP run early -----------------------------------------------------------------------------------------

@pytest.mark.slow  # ~45 s: a reference run and two torchrun launches
def test_stop_signal_to_rank_0_only_checkpoints_and_resumes(tmp_path):
    """SIGTERM reaches rank 0 alone (the other rank never learns of it from the OS): both ranks must agree to stop
    (at the next multiple of engine.CHECK_EVERY, the evaluations' cadence too), rank 0 checkpoints, both exit 130;
    the relaunch resumes there and ends bitwise equal to the uninterrupted reference."""
    cfg = small_cfg(tmp_path, batch_size=16, lr=0.01, iterations=100, milestones=[80], eval_every=20,
                    checkpoint_every=1000)  # no periodic checkpoint: the resume point is the stop's
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(config.dump(cfg))
    reference, run = RunDir(tmp_path / "reference"), RunDir(tmp_path / "run")
    reference_run(cfg, reference.path)
    proc = subprocess.Popen(torchrun_command(cfg_path, run.path), cwd=REPO, env=TORCHRUN_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(run.read_metrics()) < 2 and time.monotonic() < deadline:  # rows 0 and 20: training is under way
        time.sleep(0.05)
    rank0 = int((run.path / ".lock").read_text().split()[1])
    os.kill(rank0, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and err.count("stopped by a signal at iteration") == 2, err[-3000:]
    stopped_at = checkpoint.load_latest(run.checkpoint_dir)["iteration"]
    assert 0 < stopped_at < 100 and stopped_at % engine.CHECK_EVERY == 0 and run.status() == "partial"
    again = torchrun(cfg_path, run.path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert run.read_meta()["resumed_from"] == stopped_at
    assert_same_run(reference, run)


def test_divergence_under_ddp_stops_every_rank(tmp_path):
    """A non-finite loss on any rank: both ranks see the summed window, take the same branch, and exit 4."""
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(config.dump(small_cfg(tmp_path, batch_size=16, lr=1e6, loss="cross_entropy")))
    run = RunDir(tmp_path / "run")
    proc = torchrun(cfg_path, run.path)
    assert proc.returncode != 0 and proc.stdout.count("N/C") == 1, proc.stderr[-3000:]
    final = run.read_final()
    assert final["status"] == "diverged" and 1 <= final["diverged_at"] <= final["iterations"] == 4

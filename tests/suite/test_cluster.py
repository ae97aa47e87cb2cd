"""Cluster and multi-GPU paths on the CPU: submitit requeue-on-preemption, NPROC through torchrun (gloo), the SLURM
parameters, the default JOBS on CUDA, and one run name whichever entry point plans it."""
import io
import json
import os
import signal
import subprocess
import time

import pytest
import torch

from comhe.train import config
from comhe.suite import launchers, runner
from comhe import train
from comhe.train.config import ConfigError
from comhe.train.records import RunDir
from run_helpers import REPO, assert_same_run, small_cfg


def test_submitit_requeue_resumes_from_the_checkpoint(tmp_path):
    """A job gets submitit's preemption signal mid-run (USR2, what SLURM sends with `--signal=USR2@90` and what the
    local controller sends before its time limit): the engine checkpoints, submitit calls ``SubmititRun.checkpoint``
    and requeues, and the requeued job resumes and ends bitwise equal to an uninterrupted run.

    The signal goes to the job's process (its pid is in the run's lock file): submitit 1.5's ``LocalJob._interrupt()``
    signals the controller process instead, which has no handler for USR2 and dies, leaving the job to finish."""
    submitit = pytest.importorskip("submitit")
    cfg = small_cfg(tmp_path, iterations=40, milestones=[30], eval_every=10, checkpoint_every=1000)
    reference, run = RunDir(tmp_path / "reference"), RunDir(tmp_path / "runs" / "run")
    executor = submitit.AutoExecutor(folder=str(tmp_path / "submitit"), cluster="local")
    executor.update_parameters(timeout_min=5)
    job = executor.submit(launchers.SubmititRun(), cfg, str(run.path), True)
    launchers.execute_one(cfg, str(reference.path))  # meanwhile: the uninterrupted run, in this process
    deadline = time.monotonic() + 120
    while len(run.read_metrics()) < 2:  # rows 0 and 10: inside the training loop
        assert time.monotonic() < deadline and not job.done(), job.stderr()
        time.sleep(0.02)
    os.kill(int((run.path / ".lock").read_text().split()[1]), signal.SIGUSR2)
    result = job.result()
    log = job.stdout() + (job.stderr() or "")
    assert result["outcome"] == "finished", log[-3000:]
    assert "Calling checkpoint method" in log and "Requeued job" in log and log.count("Starting with") == 2
    assert 10 <= run.read_meta()["resumed_from"] < 40
    assert_same_run(reference, run)


def _one_run_plan(name: str, row: str, column: str):
    plan = runner.make_plan([name], "smoke")
    cell = next(c for c in plan.cells[name] if c.row == row and c.column == column)
    plan.runs = [p for p in plan.runs if p.name == cell.name]
    return plan


def test_nproc_2_trains_a_table6_smoke_run_through_torchrun(tmp_path, monkeypatch):
    """`make table6 NPROC=2` on the CPU: ResNet-18 on the synthetic ImageNet folder, two DDP processes over gloo."""
    monkeypatch.setenv("COMHE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    plan = _one_run_plan("table6", "Baseline", "ResNet-18")
    out = io.StringIO()
    counts = runner.train(plan, tmp_path / "runs", nproc=2, out=out)
    assert counts == {"skipped": 0, "finished": 1}, out.getvalue()[-3000:]
    run = RunDir(tmp_path / "runs" / plan.runs[0].name)
    assert run.read_final()["status"] == "finished" and run.read_config()["model"] == "resnet18"
    assert run.read_meta()["world_size"] == 2 and [r["iteration"] for r in run.read_metrics()] == ["0", "2"]
    assert "final test error" in out.getvalue()                # comhe.train's own output, passed through
    assert not run.checkpoint_dir.exists()                     # smoke: weights dropped, as without NPROC
    assert runner.train(plan, tmp_path / "runs", nproc=2, out=out) == {"skipped": 1}
    with pytest.raises(ConfigError, match="NPROC=3 must .* divide every batch_size"):
        runner.train(plan, tmp_path / "other", nproc=3, out=out)


def test_slurm_parameters_follow_nproc(tmp_path, monkeypatch):
    """LAUNCHER=slurm NPROC=4: one task per job, running torchrun on 4 GPUs of one node (submitit is faked: no
    cluster here); user SLURM=... options win."""
    submitit = pytest.importorskip("submitit")
    seen = {}

    class FakeExecutor:
        def __init__(self, folder, cluster=None, **limits):
            seen["limits"] = limits

        def update_parameters(self, **params):
            seen["params"] = params

        def map_array(self, fn, *args):
            seen["fn"] = fn
            return []
    monkeypatch.setattr(submitit, "AutoExecutor", FakeExecutor)
    launchers.launch_slurm([], [], [], [], jobs=1, on_result=None, folder=tmp_path, nproc=4,
                           options={"timeout_min": 240, "slurm_max_num_timeout": 10})
    params = seen["params"]
    assert (params["gpus_per_node"], params["tasks_per_node"], params["cpus_per_task"]) == (4, 1, 32)
    assert params["timeout_min"] == 240 and seen["limits"] == {"slurm_max_num_timeout": 10}
    assert seen["fn"].nproc == 4 and callable(seen["fn"].checkpoint)


@pytest.mark.parametrize("cuda, device, file, expected", [
    (False, None, None, 1),
    (True, "NVIDIA H100 80GB HBM3", {"device": "NVIDIA H100 80GB HBM3", "best_jobs": 6, "mode": "eager"}, 6),
    (True, "NVIDIA A100-SXM4-80GB", {"device": "NVIDIA H100 80GB HBM3", "best_jobs": 6, "mode": "eager"}, 4),
    (True, "NVIDIA H100 80GB HBM3", None, 4),
    (True, "NVIDIA H100 80GB HBM3", {"device": "NVIDIA H100 80GB HBM3", "best_jobs": 0}, 4),
])
def test_default_jobs(tmp_path, monkeypatch, cuda, device, file, expected):
    monkeypatch.chdir(tmp_path)  # no results/bench/ of the repository's
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: device)
    if file is not None:
        (tmp_path / "out" / "bench").mkdir(parents=True)
        (tmp_path / "out" / "bench" / "best_jobs.json").write_text(json.dumps(file))
    assert runner.default_jobs(tmp_path / "out") == expected


def test_make_passes_jobs_and_nproc():
    stamp = subprocess.run("cat requirements/ci.txt pyproject.toml | cksum | cut -d' ' -f1", shell=True, cwd=REPO,
                           capture_output=True, text=True).stdout.strip()

    def dry(*args):
        return subprocess.run(["make", "-n", "--no-print-directory", "-o", f".venv/.installed-{stamp}", *args],
                              cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "--nproc 8" in dry("table6", "NPROC=8") and "--jobs" not in dry("table6")   # JOBS unset: the default
    assert "--jobs 2" in dry("smoke") and "--jobs 2" in dry("demo") and "--jobs 3" in dry("table1", "JOBS=3")
    assert "lr=0.05" in dry("table1", "lr=0.05") and "NPROC" not in dry("table1", "NPROC=2")  # not an override
    assert "-m comhe.bench.gpu --out results/bench" in dry("bench-gpu")


def test_cli_and_runner_name_a_run_identically(tmp_path, monkeypatch):
    """A config spelling out defaults (RP-CoMHE's k = 40, C = 20) is the runner's run: same directory."""
    monkeypatch.setenv("COMHE_DATA", str(tmp_path / "data"))
    cell = next(c for c in runner.make_plan(["table1"], "smoke").cells["table1"]
                if c.row == "RP-CoMHE" and c.column == "CNN-6" and c.seed == 0)
    spelled = {**cell.cfg, "reg": {**cell.cfg["reg"], "proj_dim": 40, "num_proj": 20, "layers": "both"}}
    assert config.normalize(spelled) == cell.cfg
    path = tmp_path / "cell.yaml"
    path.write_text(config.dump(spelled))
    assert train.main([str(path), "--runs-root", str(tmp_path / "runs"), "--progress", "none"]) == 0
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [cell.name]
    overridden = runner.make_plan(["table1"], "smoke", overrides=["reg.proj_dim=40", "reg.num_proj=20"])
    assert cell.name in {c.name for c in overridden.cells["table1"]}

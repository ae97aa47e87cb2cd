"""``make doctor`` on a CPU-only machine (its measurements stubbed: they take a minute), and with a visible GPU that
torch cannot use (a fake ``nvidia-smi``): says so in one line and exits 1, after writing doctor.json."""
import json
import os

import pytest
import torch

from comhe.suite import doctor

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only report")


def stub(monkeypatch):
    seen = []

    def time_config(bundle, reg, mode, steps, seconds):
        seen.append((reg, mode, steps, str(bundle.train_images.device)))
        ms = 1000.0 if reg == "none" else 1250.0
        return {"regularizer": reg, "mode": mode, "requested": mode, "steps": 2, "step_ms": ms,
                "images_per_s": 128e3 / ms, "loss": 4.6, "self_check": "", "flops_per_s": 2e10}
    monkeypatch.setattr(doctor, "time_config", time_config)
    monkeypatch.setattr(doctor, "gcn_run", lambda root: {"graph": "stub", "epoch_s": 0.01, "run_s": 2.0,
                                                          "threads": 2})
    monkeypatch.setattr(doctor, "table_times", lambda rate, gcn_s: [
        {"target": "table1", "runs": 45, "train_flops": 1e18, "seconds": 1e18 / rate},
        {"target": "table11", "runs": 120, "train_flops": 0.0, "seconds": 120 * gcn_s},
        {"target": "demo", "runs": 9, "train_flops": 2e13, "seconds": 2e13 / rate}])
    return seen


def test_doctor_on_a_cpu_only_machine(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    seen = stub(monkeypatch)
    assert doctor.main(["--results", str(tmp_path), "--data-root", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("device: CPU, ") and "RP-CoMHE / baseline step time (eager): 1.25x" in out
    assert "no usable GPU: this machine runs well make table11 (~4m 00s), make demo (~16m 40s)" in out
    assert "table1     45 runs    579 days" in out  # 1e18 FLOPs at 20 GFLOP/s: 5e7 s
    assert [s[:2] for s in seen] == [("none", "eager"), ("rp_comhe", "eager")]
    report = json.loads((tmp_path / "doctor.json").read_text())
    assert report["cpu"]["flops_per_s"] == 2e10 and report["cpu"]["threads"] == torch.get_num_threads()
    assert report["problem"] is None and report["disk"]["free_gib"] > 0 and not (tmp_path / "data").exists()


def test_doctor_with_a_visible_gpu_torch_cannot_use(tmp_path, monkeypatch, capsys):
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\necho 'NVIDIA A100-SXM4-80GB, 535.104.05, 81920'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    stub(monkeypatch)
    assert doctor.main(["--results", str(tmp_path)]) == 1
    problem = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PROBLEM: ")]
    assert len(problem) == 1 and "an NVIDIA GPU is visible (NVIDIA A100-SXM4-80GB, driver 535.104.05)" in problem[0]
    report = json.loads((tmp_path / "doctor.json").read_text())
    assert report["gpus"] == [{"name": "NVIDIA A100-SXM4-80GB", "unusable": True}] and report["driver"] == "535.104.05"


def test_the_gcn_timing_on_a_cora_sized_graph(tmp_path):
    gcn = doctor.gcn_run(tmp_path, epochs=2)
    assert gcn["graph"].startswith("synthetic graph of Cora's sizes") and gcn["run_s"] == pytest.approx(
        200 * gcn["epoch_s"])


def test_a_timed_configuration_on_the_cpu():
    row = doctor.time_config(doctor.random_bundle(torch.device("cpu"), train=256, test=64), "rp_comhe", "eager",
                             steps=2, seconds=0.0)
    assert row["mode"] == row["requested"] == "eager" and row["steps"] == 2 and row["images_per_s"] > 0
    assert row["flops_per_s"] == pytest.approx(row["images_per_s"] * doctor.estimate.image_flops(
        doctor.config.resolve(base={"model": "cnn9", "dataset": "cifar100"})))


def test_table_times_at_the_measured_rates(monkeypatch):
    monkeypatch.setattr(doctor.experiments, "names", lambda: ["table1", "table11"])
    rows = {r["target"]: r for r in doctor.table_times(flops_per_s=1e10, gcn_s=3.0)}
    plan = doctor.runner.make_plan(["table1"], "paper")
    assert rows["table1"]["runs"] == 45 and rows["table1"]["seconds"] == pytest.approx(
        doctor.estimate.plan_flops(plan.runs) / 1e10)
    assert rows["table11"]["train_flops"] == 0 and rows["table11"]["seconds"] == 3.0 * rows["table11"]["runs"]

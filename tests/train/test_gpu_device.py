"""Device honesty on the CPU: a visible NVIDIA GPU (a fake ``nvidia-smi`` on PATH) that torch cannot use stops a run
and a table before anything is trained or written, in one line; the device line; the torch build for a driver
(``make venv``); the CPU estimate of a GPU-sized plan."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from comhe import run
from comhe.suite import estimate, runner
from comhe.train import devices
from run_helpers import REPO

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch cannot use CUDA")


def fake_nvidia_smi(folder: Path, answer: str = "NVIDIA A100-SXM4-80GB, 535.104.05, 81920", code: int = 0) -> str:
    """A folder holding an ``nvidia-smi`` that answers as a real one with a GPU does; PATH with it first."""
    folder.mkdir(parents=True, exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho '{answer}'\nexit {code}\n")
    smi.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


@pytest.fixture
def visible_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "bin"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_nvidia_smi_and_the_kernel_module_tell_of_a_gpu(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "a", "NVIDIA H100 80GB HBM3, 580.65.06, 81559\n"
                                                               "NVIDIA H100 80GB HBM3, 580.65.06, 81559"))
    assert devices.nvidia_visible() == {"gpus": ["NVIDIA H100 80GB HBM3"] * 2, "memory_mib": [81559.0] * 2,
                                        "driver": "580.65.06"}
    # nvidia-smi installed but failing (no driver loaded), no kernel module: nothing visible
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "b", "NVIDIA-SMI has failed", code=9))
    monkeypatch.setattr(devices, "PROC_VERSION", str(tmp_path / "absent"))
    assert devices.nvidia_visible() is None
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n")
    monkeypatch.setattr(devices, "PROC_VERSION", str(proc))
    assert devices.nvidia_visible() == {"gpus": [], "memory_mib": [], "driver": "535.104.05"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # hidden on purpose
    assert devices.nvidia_visible() is None


@pytest.mark.parametrize("driver, flavour", [("590.1", ""), ("580.65.06", ""), ("575.51", "cu128"),
                                             ("535.104.05", "cu126"), ("525.60", "cu126"), ("470.82", None)])
def test_the_torch_build_for_a_driver(driver, flavour):
    assert devices.torch_flavour(driver) == flavour


def test_why_a_build_cannot_use_the_gpu():
    gpu = {"gpus": ["NVIDIA A100-SXM4-80GB"], "memory_mib": [81920.0], "driver": "535.104.05"}
    assert devices.why_unusable(gpu, "2.14.1", "13.0") == \
        "its CUDA 13.0 needs driver >= 580, this machine has 535.104.05"
    assert devices.why_unusable(gpu, "2.14.1+cpu", None) == "torch 2.14.1+cpu is a CPU-only build"
    assert devices.why_unusable(gpu, "2.14.1", "12.6", "CUDA driver initialization failed") == \
        "torch says: CUDA driver initialization failed"
    line = devices.refusal(gpu, "2.14.1", "13.0")
    assert "\n" not in line and line.startswith("an NVIDIA GPU is visible (NVIDIA A100-SXM4-80GB, driver 535.104.05)")
    assert "make venv (picks cu126 for driver 535.104.05" in line and "device=cpu" in line
    old = devices.refusal({**gpu, "driver": "470.82"}, "2.14.1", "13.0")
    assert "update the NVIDIA driver (CUDA 12 builds need >= 525)" in old


def test_make_venv_pip_options(tmp_path, monkeypatch):
    """The script the Makefile runs (stdlib only, by path): nothing without a driver (the install of today), the
    extra index of the build that fits a driver, the flavour given on the command line as is."""
    script = [sys.executable, str(REPO / "comhe" / "train" / "devices.py"), "--pip-index"]
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if not Path(devices.PROC_VERSION).exists():
        assert subprocess.run(script, env=env, capture_output=True, text=True).stdout == "\n"
    env["PATH"] = fake_nvidia_smi(tmp_path / "bin")
    assert subprocess.run(script, env=env, capture_output=True, text=True).stdout == \
        "--extra-index-url=https://download.pytorch.org/whl/cu126\n"
    assert subprocess.run(script + ["cpu"], env=env, capture_output=True, text=True).stdout == \
        "--extra-index-url=https://download.pytorch.org/whl/cpu\n"
    env["PATH"] = fake_nvidia_smi(tmp_path / "new", "NVIDIA H100, 580.65.06, 81559")
    assert subprocess.run(script, env=env, capture_output=True, text=True).stdout == "\n"  # PyPI's build fits


def test_a_run_refuses_in_one_line_and_writes_nothing(tmp_path, visible_gpu):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"dataset": "synthetic", "data": {"num_classes": 4}, "model": "cnn6",
                                   "data_root": str(tmp_path / "data"), "iterations": 2}))
    out = subprocess.run([sys.executable, "-m", "comhe.train", str(cfg), "--runs-root", str(tmp_path / "runs")],
                         capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: an NVIDIA GPU is visible (NVIDIA A100-SXM4-80GB, "
                                                   "driver 535.104.05) but torch"), out.stderr
    assert "device=cpu" in lines[0] and "make venv" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "run.yaml"]  # no run dir, no data


def test_a_table_refuses_before_writing_and_device_cpu_goes_on(tmp_path, visible_gpu, capsys, monkeypatch):
    monkeypatch.setenv("COMHE_DATA", str(tmp_path / "data"))
    results = tmp_path / "results"
    args = ["table1", "--profile", "smoke", "--seeds", "1", "--results", str(results), "--no-figures"]
    assert run.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: an NVIDIA GPU is visible"), err
    assert not results.exists() and not (tmp_path / "data").exists()
    assert run.main(args + ["--dry-run"]) == 2  # DRY=1 says so too
    seen = {}
    monkeypatch.setattr(runner, "train", lambda plan, *a, **k: seen.update(devices={r.cfg["device"] for r in
                                                                                  plan.runs}) or {})
    monkeypatch.setattr(runner, "render", lambda *a, **k: [])
    assert run.main(args + ["device=cpu"]) == 0 and seen == {"devices": {"cpu"}}
    out = capsys.readouterr().out
    assert "device: CPU, " in out and "(on purpose: device=cpu; an NVIDIA GPU is visible)" in out
    assert "driver 535.104.05" in out


def test_every_run_records_and_prints_its_device(tmp_path, capsys):
    from comhe.train import cli
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"dataset": "synthetic", "data": {"num_classes": 4, "train_per_class": 8,
                                                                    "test_per_class": 4},
                                   "model": "cnn6", "model_options": {"width": 1}, "data_root": str(tmp_path / "d"),
                                   "iterations": 2, "batch_size": 8, "eval_every": 2, "threads": 1,
                                   "eval_batch_size": 16}))
    assert cli.main([str(cfg), "--run-dir", str(tmp_path / "run"), "--progress", "none"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("device: CPU, 1 threads; torch ") and "cuDNN" in first and "driver" in first
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["device_line"] == first and meta["cpu_threads"] == 1 and meta["step_mode"] == "eager"


def test_a_gpu_sized_plan_on_the_cpu_shows_its_estimate(tmp_path):
    plan = runner.make_plan(["table1"], "paper", 1)
    (tmp_path / "doctor.json").write_text(json.dumps({"cpu": {"threads": 2, "flops_per_s": 5e10,
                                                              "date": "2026-12-06"}}))
    flops = estimate.plan_flops(plan.runs)
    cnn9 = next(r.cfg for r in plan.runs if r.cfg["model"] == "cnn9")
    # CNN-9 on CIFAR: 3x (9 convs + fc6 + classifier) multiply-adds x 2, from the layer shapes (independent count)
    macs = (32 * 32 * 64 * 27 + 2 * 32 * 32 * 64 * 576 + 16 * 16 * 128 * 576 + 2 * 16 * 16 * 128 * 1152 +
            8 * 8 * 256 * 1152 + 2 * 8 * 8 * 256 * 2304 + 256 * 256 * 16 + 256 * 100)
    assert estimate.image_flops(cnn9) == pytest.approx(3 * 2 * macs, rel=0.02)
    assert flops > estimate.GPU_SIZED_FLOPS
    lines = estimate.start_lines(plan, tmp_path / "runs", 2, "local", tmp_path, cores=4)
    assert lines[0].startswith("device: CPU, 2 threads")
    days = flops / 5e10 / 2 / 86400
    assert lines[1].startswith(f"GPU-sized plan on the CPU: {len(plan.runs)} runs left, {flops:.2g} training FLOPs, "
                               f"about {days:,.0f} days with 2 worker(s) at 50.0 GFLOP/s per worker")
    smoke = runner.make_plan(["table1"], "smoke", 1)
    assert len(estimate.start_lines(smoke, tmp_path / "runs", 1, "local", tmp_path)) == 1  # not GPU-sized


def test_measured_cpu_rate_is_positive():
    assert estimate.measure_cpu_rate(seconds=0.2, batch=4) > 1e6


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_venv_takes_the_build_for_the_driver(tmp_path):
    """``make venv``'s pip line: unchanged without a driver (CI, this machine), the build for a fake driver 535,
    and TORCH_CUDA by hand."""
    def pip_line(path: str, *extra: str) -> str:
        out = subprocess.run(["make", "-C", str(REPO), "-n", "venv", f"VENV={tmp_path / 'venv'}", *extra],
                             capture_output=True, text=True, env={**os.environ, "PATH": path})
        return next(line for line in out.stdout.splitlines() if "-r requirements/ci.txt" in line)
    plain = "/usr/bin:/bin"
    if not Path(devices.PROC_VERSION).exists():
        assert pip_line(plain).endswith("pip install --quiet --disable-pip-version-check -r requirements/ci.txt")
    assert pip_line(fake_nvidia_smi(tmp_path / "bin")).endswith(
        "--disable-pip-version-check --extra-index-url=https://download.pytorch.org/whl/cu126 -r requirements/ci.txt")
    assert "--extra-index-url=https://download.pytorch.org/whl/cu128 -r" in pip_line(plain, "TORCH_CUDA=cu128")

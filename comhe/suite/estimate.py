"""Where a plan will train, said before it starts, and what a GPU-sized plan costs on the CPU.

    for line in start_lines(plan, runs_root, jobs, launcher, results): print(line)   # raises DeviceUnusable

The first line is the device (``train/devices.py``: GPU name and memory, or "CPU, N threads", with the torch, CUDA,
cuDNN and driver versions). ``device: auto`` while a visible NVIDIA GPU cannot be used stops the command here
(``DeviceUnusable``), before anything is trained, created or written. A plan left to train on the CPU whose training
is GPU-sized (more than ``GPU_SIZED_FLOPS``: tables 1-10, fig1 and fig2 at the paper protocol) gets a second line: its
estimated time at this CPU's rate, from the layer shapes (``models/flops.py``: 3x the forward FLOPs per training
image) over the CNN-9 training rate ``make doctor`` measured (``<results>/doctor.json``), or one measured now (a few
seconds) where there is none for this thread count.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import data, models
from ..models.flops import forward_flops
from ..train import devices
from ..train.records import RunDir

GPU_SIZED_FLOPS = 1e15   # training FLOPs left: ~1 day at 10 GFLOP/s; the demo is ~1e14, table1 ~1e18
CALIBRATION_S = 3.0      # seconds of CNN-9 training steps when no measured CPU rate exists


def input_shape(cfg: Dict[str, Any]) -> Tuple[int, ...]:
    """One training example's shape: ``[C, H, W]`` for images, ``[3, P]`` for point clouds."""
    options = {**data.option_defaults(cfg["dataset"]), **cfg["data"]}
    if "num_points" in options:
        return (3, int(options["num_points"]))
    grey = "mnist" in cfg["dataset"]
    return (1 if grey else 3, *(2 * [int(options.get("image_size") or (28 if grey else 32))]))


_FLOPS: Dict[str, int] = {}


def image_flops(cfg: Dict[str, Any]) -> float:
    """Training FLOPs of one example of this run (3x a forward pass: backward computes two gradients)."""
    shape = input_shape(cfg)
    key = json.dumps([cfg["model"], cfg["model_options"], shape, cfg["dataset"]], sort_keys=True, default=str)
    if key not in _FLOPS:
        options = dict(cfg["model_options"])
        if "in_channels" in models.option_defaults(cfg["model"]):
            options.setdefault("in_channels", shape[0])
        if "image_size" in models.option_defaults(cfg["model"]) and len(shape) == 3:
            options.setdefault("image_size", shape[-1])
        model = models.build(cfg["model"], data.declared_num_classes(cfg["dataset"], cfg["data"]), **options)
        _FLOPS[key] = forward_flops(model, shape)
    return 3.0 * _FLOPS[key]


def plan_flops(runs: Sequence[Any]) -> float:
    """Training FLOPs of ``runs`` (``runner.Planned``) on images or points (graph runs are not counted)."""
    return sum(p.cfg["iterations"] * p.cfg["batch_size"] * image_flops(p.cfg) for p in runs
               if data.task(p.cfg["dataset"]) == "image")


def measure_cpu_rate(seconds: float = CALIBRATION_S, batch: int = 32) -> float:
    """FLOP/s of CNN-9 training steps (eager, baseline) on this CPU now, on random CIFAR-shaped tensors in memory."""
    import torch

    from ..train import config, engine
    images = torch.randint(0, 256, (4 * batch, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 100, (4 * batch,))
    bundle = data.tensor_bundle("calibration", (images, labels), (images[:batch], labels[:batch]), 100,
                                torch.device("cpu"))
    cfg = config.resolve(base={"dataset": "cifar100", "model": "cnn9", "batch_size": batch, "device": "cpu",
                               "regularizer": "none"})
    s = engine.prepare(cfg, bundle=bundle)
    s.step(*s.loader.next_batch(), cfg["lr"])  # the first step allocates
    steps, start = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - start < seconds:
        s.step(*s.loader.next_batch(), cfg["lr"])
        steps += 1
    return steps * batch * image_flops(cfg) / (time.perf_counter() - start)


def cpu_rate(results: Path, threads: int) -> Tuple[float, str]:
    """``(FLOP/s, where it comes from)``: ``make doctor``'s measurement at this thread count, else measured now."""
    try:
        cpu = json.loads((Path(results) / "doctor.json").read_text()).get("cpu") or {}
        if cpu.get("threads") == threads and cpu.get("flops_per_s", 0) > 0:
            return float(cpu["flops_per_s"]), f"measured by make doctor, {cpu.get('date', '')}".rstrip(", ")
    except (OSError, ValueError, AttributeError):
        pass
    if threads not in _MEASURED:  # once per process and thread count
        import torch
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            _MEASURED[threads] = measure_cpu_rate()
        finally:
            torch.set_num_threads(before)
    return _MEASURED[threads], f"measured now in {CALIBRATION_S:g} s; make doctor measures it once"


_MEASURED: Dict[int, float] = {}


def long_duration(seconds: float) -> str:
    """``progress.duration`` up to three days, then whole days (a CPU estimate of a GPU table runs into years)."""
    from .progress import duration
    return duration(seconds) if seconds < 3 * 86400 else f"{seconds / 86400:,.0f} days"


def start_lines(plan, runs_root: Path, jobs: int, launcher: str, results: Path,
                cores: Optional[int] = None) -> List[str]:
    """The device line (and the CPU estimate of a GPU-sized plan); raises ``devices.DeviceUnusable``."""
    if launcher == "slurm":
        return ["device: decided on each SLURM node (every run prints and records its own)"]
    wanted = {p.cfg["device"] for p in plan.runs}
    if "auto" in wanted:
        devices.check_auto()
    import os

    import torch
    gpu = next((d for d in sorted(wanted) if d.startswith("cuda")), "cuda") if torch.cuda.is_available() else None
    on_cpu = gpu is None or wanted == {"cpu"}
    cores = cores or os.cpu_count() or 1
    threads = max(1, cores // jobs) if jobs > 1 else (plan.runs[0].cfg["threads"] or torch.get_num_threads())
    lines = [devices.describe("cpu" if on_cpu else gpu, threads)["device_line"]]
    if not on_cpu:
        return lines
    todo = [p for p in plan.runs if RunDir(Path(runs_root) / p.name).status() != "done"]
    if sum(p.cfg["iterations"] * p.cfg["batch_size"] for p in todo if data.task(p.cfg["dataset"]) == "image") < 1e6:
        return lines  # far from GPU-sized (smoke, the demo): no model is built to count FLOPs
    flops = plan_flops(todo)
    if flops < GPU_SIZED_FLOPS:
        return lines
    rate, source = cpu_rate(results, threads)
    lines.append(f"GPU-sized plan on the CPU: {len(todo)} runs left, {flops:.2g} training FLOPs, about "
                 f"{long_duration(flops / rate / max(jobs, 1))} with {jobs} worker(s) at {rate / 1e9:.1f} GFLOP/s per "
                 f"worker (CNN-9 training, {source}); a GPU takes hours (docs/gpu.md)")
    return lines

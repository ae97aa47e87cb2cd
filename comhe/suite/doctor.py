"""``make doctor``: where this machine trains, how fast, and what each table would take here (under 3 minutes).

    python -m comhe.suite.doctor [--results results] [--data-root DIR] [--steps 50] [--budget-s 150]

1. The fit of torch, CUDA, cuDNN and the NVIDIA driver (``train/devices.py``); the GPUs with their free memory; the
   free disk of the data root. A visible NVIDIA GPU that torch cannot use is reported in one line and the exit code
   is 1 (everything else is still measured, on the CPU).
2. CNN-9 at batch 128, baseline and RP-CoMHE (the paper's main network and method), on random CIFAR-shaped tensors
   held on the device: images/s and the RP / baseline step-time ratio, eager and, on CUDA, with the captured step,
   whose self-check against the eager step (``train/steps.py``: losses and parameter update from the same state) is
   the loss agreement. ``--steps`` per configuration (50), fewer where a configuration would pass its share of the
   budget (the CPU: a CNN-9 step at batch 128 takes about a second).
3. A Cora-sized GCN (real Cora when the data root has it, else a synthetic graph of Cora's sizes): seconds per epoch
   (20 timed) and per run of 200 epochs.
4. Every table and figure at the paper protocol: runs and estimated wall time with one job at the rates just measured
   (image runs: training FLOPs from the layer shapes over the CNN-9 rate, ``suite/estimate.py``; evaluations and other
   networks' efficiency are not counted, so this is a lower bound; graph runs: 200 epochs each, an upper bound).

``<results>/doctor.json`` holds it all; ``DRY=1`` and the runner's start use its CPU rate for GPU-sized plans.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

from .. import data
from ..train import config, devices, engine, node_engine
from . import estimate, experiments, runner

CPU_FRIENDLY = ("demo", "table11", "fig3")  # what `make` runs well without a GPU


def fit() -> Dict[str, Any]:
    """torch / CUDA / cuDNN / driver, the GPUs and their free memory; ``problem``: the refusal line, if any."""
    ok, said = devices.cuda_available()
    gpu = devices.nvidia_visible()
    out = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "driver": gpu["driver"] if gpu else None,
           "cuda_usable": ok, "gpus": [], "problem": None}
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if ok:
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            out["gpus"].append({"index": i, "name": torch.cuda.get_device_name(i), "total_gib": total / 2**30,
                                "free_gib": free / 2**30})
    elif gpu is not None:
        out["problem"] = devices.refusal(gpu, torch.__version__, torch.version.cuda, said)
        out["gpus"] = [{"name": name, "unusable": True} for name in gpu["gpus"]]
    return out


def disk(data_root) -> Dict[str, Any]:
    root = data.data_root(data_root).resolve()
    probe = next(p for p in [root, *root.parents] if p.exists())  # the folder may not exist yet
    return {"data_root": str(root), "free_gib": shutil.disk_usage(probe).free / 2**30}


def random_bundle(device: torch.device, train: int = 1024, test: int = 256):
    images = torch.randint(0, 256, (train + test, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 100, (train + test,))
    return data.tensor_bundle("doctor", (images[:train], labels[:train]), (images[train:], labels[train:]), 100,
                              device)


def time_config(bundle, regularizer: str, mode: str, steps: int, seconds: float) -> Dict[str, Any]:
    """One configuration: up to ``steps`` timed steps (at least 2) within about ``seconds``."""
    device = bundle.train_images.device
    cfg = config.resolve(base={"dataset": "cifar100", "model": "cnn9", "regularizer": regularizer,
                               "batch_size": 128, "device": str(device), "cuda_graph": mode == "cuda_graph"})
    s = engine.prepare(cfg, bundle=bundle)
    batches = [engine.next_batch_on_device(s) for _ in range(4)]
    warm = 5 if device.type == "cuda" else 1  # graph warm-up and capture; cuDNN autotuning
    for i in range(warm):
        s.step(*batches[i % 4], cfg["lr"])
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    sync()
    done, start = 0, time.perf_counter()
    while done < steps and (done < 2 or time.perf_counter() - start < seconds):
        loss, _, _ = s.step(*batches[done % 4], cfg["lr"])
        done += 1
    sync()
    step_s = (time.perf_counter() - start) / done
    return {"regularizer": regularizer, "mode": s.step.mode, "requested": mode, "steps": done,
            "step_ms": 1e3 * step_s, "images_per_s": 128 / step_s, "loss": float(loss),
            "self_check": s.step.meta.get("step_self_check") or s.step.meta.get("step_fallback", ""),
            "flops_per_s": 128 * estimate.image_flops(cfg) / step_s}


def gcn_run(data_root, epochs: int = 20) -> Dict[str, Any]:
    """One baseline GCN run (tkipf/gcn's recipe, the table 11 protocol: at most 200 full-batch epochs, each with an
    evaluation) on Cora or a Cora-sized graph: ``epochs`` timed, ``run_s`` for 200 (early stopping ends sooner)."""
    from ..data import planetoid
    from ..data.synthetic_planetoid import SyntheticGraph, recorded_checksums, write_planetoid
    cfg = config.resolve(base={"dataset": "cora", "model": "gcn", "iterations": epochs, "milestones": [], "lr": 0.01,
                               "weight_decay": 5e-4, "loss": "cross_entropy", "early_stopping": 0,
                               "eval_every": 1, "regularizer": "none"})
    graph: Any  # a GraphBundle (data.build's declared type is the image bundle's)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            graph, source = data.build("cora", data_root, download=False), "real Cora"
        except data.DatasetUnavailable:
            spec = SyntheticGraph(num_classes=7, num_features=1433, train_per_class=20, num_extra=1068,
                                  num_test=1000, words=18)
            write_planetoid(Path(tmp), spec)
            graph = planetoid.load_graph(Path(tmp), "synthetic", "cpu", download=False,
                                         checksums=recorded_checksums(Path(tmp)))
            source = "synthetic graph of Cora's sizes (real Cora not in the data root)"
        s = node_engine.prepare(cfg, bundle=graph)
        start = time.perf_counter()
        node_engine.train(cfg, Path(tmp) / "run", s)
        epoch_s = (time.perf_counter() - start) / epochs
    return {"graph": source, "epoch_s": epoch_s, "run_s": 200 * epoch_s, "threads": torch.get_num_threads()}


def table_times(flops_per_s: float, gcn_s: float) -> List[Dict[str, Any]]:
    rows = []
    for name in experiments.names():
        plan = runner.make_plan([name], "paper")
        image = [p for p in plan.runs if data.task(p.cfg["dataset"]) == "image"]
        flops = estimate.plan_flops(image)
        seconds = flops / flops_per_s + (len(plan.runs) - len(image)) * gcn_s
        rows.append({"target": name, "runs": len(plan.runs), "train_flops": flops, "seconds": seconds})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m comhe.suite.doctor", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results", help="doctor.json goes here")
    p.add_argument("--data-root", default=None, help="the data root to check (default $COMHE_DATA or ./data)")
    p.add_argument("--steps", type=int, default=50, help="timed steps per CNN-9 configuration (at most)")
    p.add_argument("--budget-s", type=float, default=90.0, help="seconds of timed steps in all (about)")
    args = p.parse_args(argv)
    t0 = time.time()
    found = fit()
    cuda = found["cuda_usable"]
    device = torch.device("cuda" if cuda else "cpu")
    print(devices.describe(device)["device_line"], flush=True)
    if found["problem"]:
        print(f"PROBLEM: {found['problem']}", flush=True)
    for g in found["gpus"]:
        if "free_gib" in g:
            print(f"  cuda:{g['index']} {g['name']}: {g['free_gib']:.1f} of {g['total_gib']:.1f} GiB free")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU: {os.cpu_count()} cores, load average {load:.1f} (a load above the core count slows every rate "
          "below)", flush=True)
    where = disk(args.data_root)
    print(f"data root {where['data_root']}: {where['free_gib']:.1f} GiB free on its disk "
          f"(CIFAR ~0.3 GiB, ImageNet ~150 GiB)", flush=True)
    modes = ["eager", "cuda_graph"] if cuda else ["eager"]
    bundle = random_bundle(device)
    share = args.budget_s * 0.7 / (2 * len(modes))  # the GCN run and the table plans take the rest
    steps = []
    for mode in modes:
        for reg in ("none", "rp_comhe"):
            row = time_config(bundle, reg, mode, args.steps, share)
            steps.append(row)
            print(f"  CNN-9 batch 128 {reg:<8} {mode:<10} -> {row['mode']:<10} {row['step_ms']:8.1f} ms/step "
                  f"{row['images_per_s']:8.0f} img/s  ({row['steps']} steps)  {row['self_check'][:100]}", flush=True)
    by = {(r["regularizer"], r["requested"]): r for r in steps}
    for mode in modes:
        ratio = by[("rp_comhe", mode)]["step_ms"] / by[("none", mode)]["step_ms"]
        print(f"  RP-CoMHE / baseline step time ({mode}): {ratio:.2f}x")
    fastest = min((r for r in steps if r["regularizer"] == "none" and r["mode"] == r["requested"]),
                  key=lambda r: r["step_ms"])
    gcn = gcn_run(args.data_root)
    print(f"  GCN baseline, {gcn['graph']}: {1e3 * gcn['epoch_s']:.1f} ms/epoch, {gcn['run_s']:.1f} s for the 200 "
          f"epochs of a run ({gcn['threads']} threads)", flush=True)
    tables = table_times(fastest["flops_per_s"], gcn["run_s"])
    print(f"\nestimated wall time at the paper protocol, one job on this {'GPU' if cuda else 'CPU'} "
          f"({fastest['mode']} CNN-9 rate, {fastest['flops_per_s'] / 1e9:.1f} GFLOP/s: image runs a lower bound; graph "
          "runs at 200 epochs each, an upper bound):")
    for r in tables:
        print(f"  {r['target']:<8} {r['runs']:>4} runs  {estimate.long_duration(r['seconds']):>10}")
    if not cuda:
        quick = [r for r in tables if r["target"] in CPU_FRIENDLY]
        print("\nno usable GPU: this machine runs well " + ", ".join(
            f"make {r['target']} (~{estimate.long_duration(r['seconds'])})" for r in quick) +
            " and make smoke (every code path, synthetic data, minutes); the other targets are GPU-sized")
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": socket.gethostname(),
              "python": platform.python_version(), **found, "cores": os.cpu_count(), "load_average": load,
              "disk": where, "steps": steps, "gcn": gcn, "tables": tables, "seconds": time.time() - t0}
    if not cuda:  # what estimate.cpu_rate reads for DRY=1 and the start of a GPU-sized plan on this CPU
        report["cpu"] = {"threads": torch.get_num_threads(), "flops_per_s": fastest["flops_per_s"],
                         "cnn9_images_per_s": fastest["images_per_s"], "date": report["date"]}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "doctor.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {out / 'doctor.json'} in {time.time() - t0:.0f} s")
    return 1 if found["problem"] else 0


if __name__ == "__main__":
    sys.exit(main())

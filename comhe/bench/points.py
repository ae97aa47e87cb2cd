"""PointNet step times (part of ``make bench``): whole training steps (model, cross-entropy, the T-Net loss, the
regulariser, Adam) at the table 10 protocol, batch 32 x 1,024 points, on random clouds of the real shape, for
PointNet (PN) and PointNet with T-Nets (PN (T)) x none / HS-MHE / RP-CoMHE / AP-CoMHE with the T-Nets' transform
layers excluded (table 10's choice), plus RP-CoMHE on PN (T) *with* them (what excluding them saves) and with the
whole T-Nets excluded (what regularising their other layers costs). The goal of the point-cloud issue: RP-CoMHE <=
1.5x the baseline step with the transform layers excluded.

    python -m comhe.bench.points [--device cpu|cuda] [--steps 2] [--rounds 3] [--models pointnet,pointnet_tnet]

PointNet++ (the table's PN++) is ``--models pointnet2_ssg`` (not in the default list: its CPU step is ~8x PointNet's;
``--regularizers none`` times the baseline alone).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Dict, List, Tuple

import numpy as np
import torch

from ..data.modelnet import points_bundle
from ..train import config, engine
from . import write_csv

TRANSFORMS = ["*_transform.transform"]
EXCLUDES = {"-": None, "excluded": TRANSFORMS, "regularised": None, "T-Nets excluded": ["*_transform.*"]}
PROTOCOL = {"optimizer": "adam", "lr": 0.001, "lr_schedule": "staircase", "lr_decay": 0.7, "lr_decay_every": 6250,
            "lr_min": 1e-5, "milestones": [], "bn_schedule": "staircase", "weight_decay": 0.0,
            "loss": "cross_entropy", "label_smoothing": 0.0}


def random_bundle(device, shapes: int = 320, points: int = 1024, classes: int = 40):
    """Clouds of the ModelNet-40 shape, ``[shapes, points, 3]`` in the unit ball, random labels (timing only)."""
    rng = np.random.default_rng(0)

    def split(n):
        x = rng.normal(size=(n, points, 3)).astype(np.float32)
        return x / np.linalg.norm(x, axis=-1).max(1)[:, None, None], rng.integers(0, classes, n)
    return points_bundle("random-modelnet40-shape", split(shapes), split(64), [f"c{i}" for i in range(classes)],
                         torch.device(device), "pointnet")


def configurations(models: List[str]) -> List[Tuple[str, str, str]]:
    """(model, regulariser, which T-Net layers are left out: a key of ``EXCLUDES``)."""
    out = []
    for model in models:
        if model != "pointnet_tnet":
            out += [(model, reg, "-") for reg in ("none", "hs_mhe", "rp_comhe", "ap_comhe")]
            continue
        out += [(model, reg, "excluded") for reg in ("none", "hs_mhe", "rp_comhe", "ap_comhe")]
        out += [(model, "rp_comhe", "regularised"), (model, "rp_comhe", "T-Nets excluded")]
    return out


def setup_for(model: str, reg: str, transforms: str, bundle, device: str, batch: int, width: float = 1.0,
              compile: bool = False):
    options: Dict = {} if reg == "none" else {"classifier": "classifier"}
    if reg != "none" and EXCLUDES[transforms]:
        options["exclude"] = EXCLUDES[transforms]
    if reg == "ap_comhe":
        options["proj_lr_fixed"] = True
    cfg = config.resolve(base={**PROTOCOL, "dataset": "synthetic_modelnet40", "model": model, "regularizer": reg,
                               "reg": options, "batch_size": batch, "device": device, "compile": compile,
                               "model_options": {} if width == 1.0 else {"width": width}})
    return engine.prepare(cfg, bundle=bundle)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--models", default="pointnet,pointnet_tnet")
    p.add_argument("--regularizers", default="", help="only these (comma-separated; default: all of them)")
    p.add_argument("--points", type=int, default=1024)
    p.add_argument("--width", type=float, default=1.0, help="channel width t (1 = the paper's; < 1: plumbing tests)")
    p.add_argument("--compile", action="store_true", help="config compile=true: torch.compile model and energy")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default, all cores)")
    p.add_argument("--out", default="results/bench/points_cpu.csv")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = random_bundle(args.device, points=args.points)
    cuda = torch.device(args.device).type == "cuda"
    setups = {}
    only = set(filter(None, args.regularizers.split(",")))
    for key in [k for k in configurations(args.models.split(",")) if not only or k[1] in only | {"none"}]:
        s = setup_for(*key, bundle, args.device, args.batch, args.width, args.compile)
        batches = [s.loader.next_batch() for _ in range(2)]
        s.step(*batches[0], 1e-3)  # warm-up: allocator, thread pool, Adam's state
        setups[key] = (s, batches)
    times = {key: [] for key in setups}
    for _ in range(args.rounds):  # interleaved rounds: load from other processes hits every configuration alike
        for key, (s, batches) in setups.items():
            if cuda:
                torch.cuda.synchronize()  # pragma: cuda
            start = time.perf_counter()
            for i in range(args.steps):
                s.step(*batches[i % 2], 1e-3)
            if cuda:
                torch.cuda.synchronize()  # pragma: cuda
            times[key].append((time.perf_counter() - start) / args.steps)
    rows = []
    for (model, reg, transforms), samples in times.items():
        seconds = statistics.median(samples)
        base = statistics.median(times[(model, "none", "excluded" if model == "pointnet_tnet" else "-")])
        rows.append({"model": model, "regularizer": reg, "transforms": transforms,
                     "batch": args.batch, "points": args.points, "width": args.width, "compile": args.compile,
                     "step_ms": 1e3 * seconds, "x_baseline": seconds / base,
                     "device": args.device, "threads": torch.get_num_threads(),
                     "loadavg": " ".join(f"{v:.2f}" for v in os.getloadavg())})
    print(f"\n{'model':<14} {'regularizer':<10} {'T-Net layers':<16} {'step ms':>9} {'x base':>7}")
    for r in rows:
        print(f"{r['model']:<14} {r['regularizer']:<10} {r['transforms']:<16} {r['step_ms']:>9.0f} "
              f"{r['x_baseline']:>7.2f}")
    write_csv(args.out, rows)
    return rows


if __name__ == "__main__":
    main()

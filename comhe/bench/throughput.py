"""CPU training throughput of the engine (part of ``make bench``): images/s of whole training steps (model,
official loss, regulariser, SGD) for CNN-9 at 1/8 of the paper's width (t = 0.5: 8/16/32 channels), batch 128, on
CIFAR-shaped synthetic data, for the baseline and each CoMHE regulariser.

    python -m comhe.bench.throughput [--steps 20] [--width 0.5] [--keep-subnormals]

Subnormal floats are flushed to zero for the whole process (``torch.set_flush_denormal``, set before the first
parallel op so that every intra-op thread inherits it; TensorFlow's CPU default). Why: this benchmark trains on
random labels at lr 0.1, so within ~20 steps some runs saturate their softmax and the convolutions' backward then
runs on subnormal gradients, 15-20x slower on x86 (measured: RP-CoMHE's step 60 ms -> 1.2-1.3 s from step 22 on,
2 threads); the median of later rounds then measures that artifact of the synthetic data, not the step.
``--keep-subnormals`` measures it as it is.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ..train import config, engine
from . import write_csv
from .shapes import synthetic_bundle


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--regularizers", default="none,hs_mhe,rp_comhe,ap_comhe")
    p.add_argument("--out", default="results/bench/throughput_cpu.csv")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default, all cores)")
    p.add_argument("--keep-subnormals", action="store_true",
                   help="do not flush subnormal floats to zero (see the module docstring)")
    args = p.parse_args(argv)
    # set_flush_denormal returns False where the CPU cannot flush (not x86 with SSE3)
    flushed = torch.set_flush_denormal(not args.keep_subnormals) and not args.keep_subnormals
    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = synthetic_bundle("cpu", train=5000, test=1000)
    setups = {}
    for reg in args.regularizers.split(","):
        cfg = config.resolve(base={"model": "cnn9", "model_options": {"width": args.width}, "regularizer": reg,
                                   "device": "cpu", "threads": args.threads,
                                   "flush_subnormals": not args.keep_subnormals})  # prepare() applies both
        s = engine.prepare(cfg, bundle=bundle)
        batches = [s.loader.next_batch() for _ in range(4)]
        for x, y in batches:  # warm-up: allocator, thread pool, lazily built state (AP momentum-free P steps)
            s.step(x, y, 0.1)
        setups[reg] = (s, batches)
    times = {reg: [] for reg in setups}
    for _ in range(args.rounds):  # interleaved rounds: load from other processes hits every configuration alike
        for reg, (s, batches) in setups.items():
            start = time.perf_counter()
            for i in range(args.steps):
                s.step(*batches[i % 4], 0.1)
            times[reg].append((time.perf_counter() - start) / args.steps)
    rows = []
    for reg, samples in times.items():
        seconds = statistics.median(samples)
        rows.append({"model": f"cnn9 t={args.width}", "regularizer": reg, "batch": 128, "step_ms": 1e3 * seconds,
                     "images_per_s": 128 / seconds, "threads": torch.get_num_threads(),
                     "subnormals_flushed": bool(flushed)})
    print(f"\n{torch.get_num_threads()} thread(s), subnormal floats {'flushed to zero' if flushed else 'kept'}")
    print(f"{'model':<12} {'regularizer':<11} {'step ms':>8} {'images/s':>9}")
    for r in rows:
        print(f"{r['model']:<12} {r['regularizer']:<11} {r['step_ms']:>8.1f} {r['images_per_s']:>9.0f}")
    write_csv(args.out, rows)
    return rows


if __name__ == "__main__":
    main()

"""A run's fixed cost on the CPU: the CPU seconds (user + system) of a fresh Python process that imports torch, that
imports ``comhe.train`` and seeds as every run does, and that then takes one optimiser step (torch's own first-step
cost: ``Optimizer.step`` imports ``torch._dynamo``, ~2 s, whatever the caller does).

    python -m comhe.bench.startup [--repeats 3] [--repo <another checkout>] [--out results/bench/startup_cpu.csv]

Each case runs ``--repeats`` times in a new process (median reported); CPU seconds, not wall time, so that other
processes on a shared machine count less (they still slow caches and the import's page faults). Goal: importing
``comhe.train`` and seeding costs no more than torch's own import plus 0.3 s.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import write_csv

REPO = Path(__file__).resolve().parents[2]
CASES = {
    "import torch": "import torch",
    "import comhe.train": "import comhe.train",
    "import comhe.train + seeding": "import comhe.train; from comhe.train.seeding import seed_everything; "
                                    "seed_everything(0)",
    "+ one optimiser step": "import comhe.train, torch; from comhe.train.seeding import seed_everything; "
                            "seed_everything(0); w = torch.nn.Parameter(torch.ones(3)); "
                            "o = torch.optim.Adam([w]); w.sum().backward(); o.step()",
}


def cpu_seconds(code: str, repo: Path = REPO) -> tuple:
    """(CPU seconds, wall seconds) of ``python -c code`` in a fresh process, run from ``repo`` (its ``comhe``)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=repo, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, wall


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="results/bench/startup_cpu.csv")
    p.add_argument("--repo", type=Path, default=REPO, help="the checkout to measure (before/after: an older one)")
    args = p.parse_args(argv)
    samples = {name: [] for name in CASES}
    for _ in range(args.repeats):  # interleaved: load from other processes hits every case alike
        for name, code in CASES.items():
            samples[name].append(cpu_seconds(code, args.repo))
    rows = [{"case": name, "cpu_s": statistics.median(c for c, _ in s), "wall_s": statistics.median(w for _, w in s),
             "repeats": args.repeats} for name, s in samples.items()]
    print(f"{'case':<30} {'CPU s':>6} {'wall s':>7}   (median of {args.repeats} fresh processes)")
    for r in rows:
        print(f"{r['case']:<30} {r['cpu_s']:>6.2f} {r['wall_s']:>7.2f}")
    print(f"load average {os.getloadavg()[0]:.1f} (other processes on this machine)")
    write_csv(args.out, rows)
    return rows


if __name__ == "__main__":
    main()

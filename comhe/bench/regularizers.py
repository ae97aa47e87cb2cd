"""``make bench``: what one forward+backward of each regulariser costs on CNN-9- and ResNet-56-shaped layer stacks.

For every registered regulariser: the ATen ops dispatched (counted with ``TorchDispatchMode``, AccumulateGrad
included) and the median CPU time; beside it, a per-layer, per-projection loop written the way the official TF code
computes the energy (``W`` concatenated with ``-W`` into a ``2N x 2N`` Gram, one ``randn`` and one matmul per
projection), to show what batching saves. Goals (library issue): RP-CoMHE (C=20, k=40) <= 700 ops on CNN-9 and
<= 1,000 on ResNet-56; HS-MHE <= 500 and <= 800.

    python -m comhe.bench.regularizers [--repeats 5] [--out results/bench/regularizers.csv]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from typing import Callable, Dict, List

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .. import regularizers
from ..layers import find_layers
from . import write_csv
from .shapes import STACKS

GOALS = {("rp_comhe", "cnn9"): 700, ("rp_comhe", "resnet56"): 1000, ("hs_mhe", "cnn9"): 500,
         ("hs_mhe", "resnet56"): 800}


class OpCounter(TorchDispatchMode):
    """Counts every ATen op dispatched while active (forward and autograd's backward alike)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def official_style_loss(name: str, model: torch.nn.Module, proj_dim: int = 40, num_proj: int = 20) -> torch.Tensor:
    """The official code's structure, one layer and one projection at a time (for comparison only)."""
    def energy(w: torch.Tensor, half_space: bool) -> torch.Tensor:  # w: [N, d]
        if half_space:
            w = torch.cat([w, -w])
        norm = torch.sqrt((w * w).sum(1, keepdim=True) + 1e-4)
        cos = (w @ w.T) / (norm @ norm.T)
        n = w.shape[0]
        term = torch.pow(2.0 - 2.0 * cos + torch.eye(n), -1.0)
        term = term - torch.tril(term)
        return term.sum() / (n * (n - 1) / 2)

    total = torch.zeros(())
    for layer in find_layers(model):
        w = layer.weight.reshape(layer.num_neurons, -1)
        if layer.role == "output":
            total = total + 10.0 * energy(w, False)
        elif name == "rp_comhe" and not layer.is_rgb_conv and layer.fan_in > proj_dim:  # the official n_input == 3
            proj = sum(energy(w @ torch.randn(proj_dim, w.shape[1]).T, True) for _ in range(num_proj))
            total = total + proj / num_proj
        else:
            total = total + energy(w, name != "mhe")
    return total


def measure(step: Callable[[], torch.Tensor], model: torch.nn.Module, repeats: int) -> Dict[str, float]:
    def run() -> None:
        for p in model.parameters():
            p.grad = None
        step().backward()

    run()  # warm-up (lazy generator, caches)
    counter = OpCounter()
    with counter:
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"ops": counter.total, "cpu_ms": 1e3 * statistics.median(times)}


def main(argv: List[str] = None) -> List[Dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="results/bench/regularizers.csv")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared 2-core machine two OpenMP threads make small "
                             "ops up to 10x slower and the timings erratic; 0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for stack_name, make in STACKS.items():
        model = make()
        for name in regularizers.names():
            if name == "none":
                continue
            reg = regularizers.build(name, model)
            rows.append({"stack": stack_name, "regularizer": name, "impl": "comhe",
                         **measure(lambda: reg(lr=0.1, stats=False)[0], model, args.repeats)})
        for name in ("hs_mhe", "rp_comhe"):
            rows.append({"stack": stack_name, "regularizer": name, "impl": "official-style loop",
                         **measure(lambda: official_style_loss(name, model), model, args.repeats)})
    for row in rows:
        goal = GOALS.get((row["regularizer"], row["stack"])) if row["impl"] == "comhe" else None
        row["goal_ops"] = goal or ""
        row["meets_goal"] = "" if goal is None else ("yes" if row["ops"] <= goal else "NO")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    header = f"{'stack':<9} {'regularizer':<12} {'implementation':<20} {'ATen ops':>9} {'goal':>6} {'CPU ms':>9}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['stack']:<9} {r['regularizer']:<12} {r['impl']:<20} {r['ops']:>9} {str(r['goal_ops']):>6} "
              f"{r['cpu_ms']:>9.2f}")
    print(f"wrote {write_csv(args.out, rows)}")
    return rows


if __name__ == "__main__":
    main()

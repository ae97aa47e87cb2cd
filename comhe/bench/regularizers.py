"""``make bench``: what one forward+backward of each regulariser costs on CNN-9- and ResNet-56-shaped layer stacks.

For every registered regulariser: the kernel-launching ATen ops of one eager forward + backward (counted with
``TorchDispatchMode``, AccumulateGrad included; views, aliases, detaches and bare allocations launch no kernel and are
not counted, ``all_ops`` counts them too), with the weights row-major and channels_last (the engine's CUDA layout),
and the median CPU time; beside it, a per-layer, per-projection loop written the way the official TF code computes the
energy (``W`` concatenated with ``-W`` into a ``2N x 2N`` Gram, one ``randn`` and one matmul per projection), to show
what batching saves. On a GPU each such op is at least one launch (~5 us): at batch 128 a CNN-9 step is ~0.2-0.6 ms of
GPU work, so the count is the cost. Goal (GPU issue): at most 3 ops per regularised layer + 40 (CNN-9 <= 73,
ResNet-56 <= 208) for MHE, HS-MHE, RP-CoMHE and G-CoMHE (``GOALS``); AP / Adv-CoMHE differentiate their inner
objective ``proj_iters`` + 1 times (twice for the look-ahead) and are reported, not held to it.

    python -m comhe.bench.regularizers [--repeats 5] [--out results/bench/regularizers.csv]
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections import Counter
from typing import Any, Callable, Dict, List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .. import regularizers
from ..layers import find_layers
from . import write_csv
from .shapes import STACKS

LAYERS = {"cnn9": 11, "resnet56": 56}  # regularised layers of each stack (every conv and linear)
GOALS = {(name, stack): 3 * layers + 40 for stack, layers in LAYERS.items()
         for name in ("mhe", "hs_mhe", "rp_comhe", "g_comhe")}
# ATen ops that launch no kernel: views and aliases (``func.is_view``), and these.
NO_KERNEL = {"detach", "alias", "lift_fresh", "empty", "empty_strided", "new_empty", "new_empty_strided",
             "_unsafe_view"}


class OpCounter(TorchDispatchMode):
    """Counts the kernel-launching ATen ops dispatched while active (forward and autograd's backward alike): ``ops``
    by name, ``total``; ``all_ops`` counts views and allocations too."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.all_ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.all_ops += 1
        name = func.overloadpacket.__name__
        if not (func.is_view or name in NO_KERNEL):
            self.ops[name] += 1
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


def measure(step: Callable[[], torch.Tensor], model: torch.nn.Module, repeats: int) -> Dict[str, Any]:
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
    return {"ops": counter.total, "all_ops": counter.all_ops,
            "cpu_ms": 1e3 * statistics.median(times) if times else float("nan")}


def loss_of(reg: torch.nn.Module) -> Callable[[], torch.Tensor]:
    """The regulariser's loss as a no-argument step (its stats off), bound to this ``reg``."""
    return lambda: reg(lr=0.1, stats=False)[0]


def channels_last_ops(name: str, make: Callable[[], torch.nn.Module]) -> int:
    """The op count with every conv weight stored channels_last (how the engine holds them on CUDA)."""
    model = make().to(memory_format=torch.channels_last)
    reg = regularizers.build(name, model)
    return int(measure(loss_of(reg), model, 0)["ops"])


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
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
    rows: List[Dict[str, Any]] = []
    for stack_name, make in STACKS.items():
        model = make()
        for name in regularizers.names():
            if name == "none":
                continue
            reg = regularizers.build(name, model)
            rows.append({"stack": stack_name, "regularizer": name, "impl": "comhe",
                         **measure(loss_of(reg), model, args.repeats),
                         "ops_channels_last": channels_last_ops(name, make)})
        for name in ("hs_mhe", "rp_comhe"):
            rows.append({"stack": stack_name, "regularizer": name, "impl": "official-style loop",
                         **measure(functools.partial(official_style_loss, name, model), model, args.repeats)})
    for row in rows:
        goal = GOALS.get((row["regularizer"], row["stack"])) if row["impl"] == "comhe" else None
        row["goal_ops"] = goal or ""
        row["meets_goal"] = "" if goal is None else ("yes" if row["ops"] <= goal else "NO")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; kernel-launching ATen ops of one "
          "forward + backward (views, aliases, detaches, allocations not counted)")
    header = (f"{'stack':<9} {'regularizer':<12} {'implementation':<20} {'ops':>6} {'ch-last':>8} {'goal':>5} "
              f"{'all ops':>8} {'CPU ms':>9}")
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['stack']:<9} {r['regularizer']:<12} {r['impl']:<20} {r['ops']:>6} "
              f"{str(r.get('ops_channels_last', '')):>8} {str(r['goal_ops']):>5} {r['all_ops']:>8} "
              f"{r['cpu_ms']:>9.2f}")
    print(f"wrote {write_csv(args.out, rows)}")
    return rows


if __name__ == "__main__":
    main()

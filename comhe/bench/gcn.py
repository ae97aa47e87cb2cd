"""CPU cost of the GCN table (part of ``make bench``): the wall time of one whole node-classification run per method
(tkipf/gcn's recipe: at most 200 full-batch epochs, early stopping) at 1 thread, and the input dropout the model uses
(sparse, on the stored values) against dense dropout of the same features followed by the same product.

    python -m comhe.bench.gcn [--data-root <folder holding planetoid/>] [--runs 3] [--self-test]

The graph is real Cora when ``<data root>/planetoid/ind.cora.*`` is there (never downloaded here), else a synthetic
graph of Cora's sizes (2,708 nodes, 1,433 features, 7 classes, the public split), said so in the output.
``--self-test`` runs every part on a small synthetic graph (its numbers mean nothing). Goal: one run <= 5 s.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import data
from ..data import planetoid
from ..data.synthetic_planetoid import SyntheticGraph, recorded_checksums, write_planetoid
from ..models.gcn import sparse_dropout
from ..train import config, node_engine
from . import write_csv

GOAL_S = 5.0
CORA_SIZED = SyntheticGraph(num_classes=7, num_features=1433, train_per_class=20, num_extra=1068, num_test=1000,
                            words=18)
RECIPE = {"model": "gcn", "iterations": 200, "milestones": [], "lr": 0.01, "weight_decay": 5e-4,
          "loss": "cross_entropy", "label_smoothing": 0.0, "early_stopping": 10, "eval_every": 1, "threads": 1}


def load(data_root, self_test: bool):
    """(graph, description): real Cora if present, else a synthetic graph (Cora's sizes, or small)."""
    if not self_test:
        try:
            return data.build("cora", data_root, download=False), "real Cora"
        except data.DatasetUnavailable:
            pass
    spec = SyntheticGraph() if self_test else CORA_SIZED
    folder = Path(tempfile.mkdtemp(prefix="comhe-bench-gcn-"))
    write_planetoid(folder, spec)
    graph = planetoid.load_graph(folder, "synthetic", "cpu", download=False, checksums=recorded_checksums(folder))
    return graph, "synthetic, small (self-test)" if self_test else "synthetic, Cora's sizes (real Cora not found)"


def time_call(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def dropout_rows(graph, repeats: int):
    weight = torch.randn(16, graph.num_features)
    dense = graph.features.to_dense()
    sparse_ms = 1e3 * time_call(lambda: torch.sparse.mm(sparse_dropout(graph.features, 0.5, True), weight.t()),
                                repeats)
    dense_ms = 1e3 * time_call(lambda: F.dropout(graph.features.to_dense(), 0.5, True) @ weight.t(), repeats)
    dense_only_ms = 1e3 * time_call(lambda: F.dropout(dense, 0.5, True), repeats)
    return [{"what": "input dropout + X W (sparse, values only)", "ms": sparse_ms},
            {"what": "input dropout + X W (densified each call)", "ms": dense_ms},
            {"what": "dense dropout alone (features already dense)", "ms": dense_only_ms}]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None, help="folder holding planetoid/ind.cora.* (default $COMHE_DATA)")
    p.add_argument("--runs", type=int, default=3, help="runs per method (seeds 0..runs-1); the median is reported")
    p.add_argument("--regularizers", default="none,hs_mhe,rp_comhe,ap_comhe")
    p.add_argument("--self-test", action="store_true", help="a small synthetic graph, 20 epochs: plumbing only")
    p.add_argument("--out", default="results/bench/gcn_cpu.csv")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    graph, source = load(args.data_root, args.self_test)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for reg in args.regularizers.split(","):
            lambdas = {} if reg == "none" else {"lambda_hidden": 0.1, "lambda_output": 1.0}
            seconds, cpu, epochs = [], [], []
            for seed in range(args.runs):
                cfg = config.resolve(base={**RECIPE, "dataset": "cora", "regularizer": reg, "reg": lambdas,
                                           "seed": seed, **({"iterations": 20} if args.self_test else {})})
                start, start_cpu = time.perf_counter(), time.process_time()
                s = node_engine.prepare(cfg, bundle=graph)
                final = node_engine.train(cfg, Path(tmp) / f"{reg}-{seed}", s)
                seconds.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)  # CPU time: what other jobs on the machine disturb least
                epochs.append(final["iterations"])
            rows.append({"graph": source, "regularizer": reg, "run_s": statistics.median(seconds),
                         "max_run_s": max(seconds), "cpu_s": statistics.median(cpu),
                         "epochs": statistics.median(epochs),
                         "epochs_per_s": statistics.median(e / t for e, t in zip(epochs, seconds)), "goal_s": GOAL_S,
                         "threads": torch.get_num_threads()})
    print(f"\n{source}, 1 thread, {args.runs} run(s) per method (run = setup + training + records)")
    print(f"{'regulariser':<11} {'run s':>6} {'max s':>6} {'CPU s':>6} {'epochs':>6} {'epochs/s':>8}  goal <= "
          f"{GOAL_S:g} s (wall)")
    for r in rows:
        print(f"{r['regularizer']:<11} {r['run_s']:>6.2f} {r['max_run_s']:>6.2f} {r['cpu_s']:>6.2f} "
              f"{r['epochs']:>6.0f} {r['epochs_per_s']:>8.1f}  {'met' if r['max_run_s'] <= GOAL_S else 'NOT MET'}")
    drop = dropout_rows(graph, 3 if args.self_test else 20)
    for r in drop:
        print(f"{r['what']:<48} {r['ms']:>8.2f} ms")
    write_csv(args.out, rows + [{"graph": source, **r} for r in drop])
    return rows, drop


if __name__ == "__main__":
    main()

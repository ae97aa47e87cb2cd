"""What a plan will cost and whether it needs a GPU, for ``DRY=1`` (``runner.dry_run``), before anything runs.

No GPU run of this suite has been timed, so the GPU figure is an estimate at an ASSUMED rate (the one the experiment
files' headers use) and says so. "Needs a GPU" is decided per run from its training samples: above
``CPU_SAMPLES_PER_RUN`` a run would take more than half an hour on a CPU even for the narrow demo network (``make
demo``: 345,600 Fashion-MNIST images in 667 s of training, ~520 images/s with 2 workers, BENCHMARKS.md §3), and hours
to days at the paper's widths or with point clouds; full-batch graph runs take seconds.
"""
from __future__ import annotations

from typing import Any, Callable, List, Mapping, Sequence

ASSUMED_GPU_SAMPLES_S = 10_000     # training images (or point clouds) per second on one GPU: ASSUMED, not measured
CPU_SAMPLES_PER_RUN = 1_000_000    # a run training more samples than this needs a GPU (module docstring)


def _count(n: float) -> str:
    return f"{n:,.0f}"


def lines(cfgs: Sequence[Mapping[str, Any]], task: Callable[[str], str]) -> List[str]:
    """The cost and GPU lines for the runs left to train (``cfgs``; ``task(dataset)``: "node" or "image")."""
    if not cfgs:
        return []
    node = [c for c in cfgs if task(c["dataset"]) == "node"]
    batched = [c for c in cfgs if task(c["dataset"]) != "node"]
    samples = [c["iterations"] * c["batch_size"] for c in batched]
    out = []
    parts = []
    if batched:
        hours = sum(samples) / ASSUMED_GPU_SAMPLES_S / 3600
        gpu = f"~{hours:,.1f} GPU-hours" if hours >= 0.1 else "under 0.1 GPU-hours"
        parts.append(f"{len(batched)} minibatch run(s), {_count(sum(samples))} training samples: {gpu} at an "
                     f"ASSUMED {ASSUMED_GPU_SAMPLES_S:,} samples/s (not measured)")
    if node:
        parts.append(f"{len(node)} full-batch graph run(s), at most {_count(sum(c['iterations'] for c in node))} "
                     "epochs: seconds each on a CPU")
    out.append("cost: " + "; ".join(parts))
    heavy = [c for c, n in zip(batched, samples) if n > CPU_SAMPLES_PER_RUN and c.get("device") != "cpu"]
    if heavy:
        kinds = sorted({f"{c['dataset']}/{c['model']}" for c in heavy})
        out.append(f"needs a GPU: yes, for {len(heavy)} of {len(cfgs)} runs ({', '.join(kinds[:6])}"
                   f"{' ...' if len(kinds) > 6 else ''}: more than {_count(CPU_SAMPLES_PER_RUN)} training samples "
                   "each: from half an hour to days per run on a CPU); PROFILE=smoke runs every code path on the CPU")
    else:
        out.append("needs a GPU: no (every run left is CPU-sized)")
    return out

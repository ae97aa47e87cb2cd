"""How a run uses the CPU: subnormal floats and torch's thread count (execution only: neither is in a run's name).

Subnormal floats (``flush_subnormals``, default true). x86 computes with subnormals (|x| < 1.2e-38 in float32) in
microcode, 15-100x slower than with normal numbers. They appear once a softmax saturates: the convolutions' backward
then runs 15-20x slower (BENCHMARKS.md §2: a CNN-9 step from 60 ms to 1.2-1.3 s). Flushing them to zero
(``torch.set_flush_denormal``: FTZ and DAZ, TensorFlow's CPU default) changes a value only where it is below 1.2e-38,
where a gradient contributes nothing a float32 weight update can hold, so tables do not move; the bits of a run can
(docs/speed.md, numerics note). A run is repeatable, and resumes bit for bit, under either setting; the setting
applies to the CPU only (CUDA kernels are not affected by it). The flag is per thread and torch's intra-op threads
copy it from the main thread when they are created, at the process's first parallel op: ``configure`` runs before
the run's first parallel op, and the state recorded in ``meta.json`` (``subnormals``) is measured over every thread,
not assumed.

Threads (``threads``, default 0 = auto). A full-batch GCN on a citation graph is too small to gain from a second
thread and, on a shared machine, loses up to 20x to it (OpenMP threads spin waiting for a busy core: a Cora run
took 47 s on 2 threads against 2.4 s on 1): graph runs take 1 thread. Image and point-cloud runs keep torch's
default (one per core; ``OMP_NUM_THREADS`` where set), about 1.8x faster on 2 quiet cores than 1. Where
``OMP_NUM_THREADS`` is set, graph runs follow it too; ``threads=N`` sets N for any run.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Mapping, Optional

import torch

_DEFAULT_THREADS: Optional[int] = None  # torch's thread count before the first run of this process set it


def default_threads(graph: bool) -> int:
    """The thread count of a run with ``threads=0``: 1 for a graph run (unless ``OMP_NUM_THREADS`` is set), else the
    process's default (torch's: one per core, or ``OMP_NUM_THREADS``)."""
    global _DEFAULT_THREADS
    if _DEFAULT_THREADS is None:
        _DEFAULT_THREADS = torch.get_num_threads()
    return 1 if graph and not os.environ.get("OMP_NUM_THREADS") else _DEFAULT_THREADS


def subnormal_state() -> str:
    """``flushed``, ``kept`` or ``mixed`` (some of torch's threads flush, others keep), measured: the smallest float32
    subnormal (built from its bits, so no conversion flushes it first) times one, on a tensor large enough for every
    intra-op thread to take a share (at least 65,536 elements each; ATen's grain is 32,768). Under 1 ms."""
    n = 65536 * max(torch.get_num_threads(), 1)
    smallest = torch.ones(n, dtype=torch.int32).view(torch.float32)  # bits 0x00000001 = 1.4e-45
    kept = int(smallest.mul(1.0).view(torch.int32).ne(0).sum())       # integer compare: DAZ cannot touch it
    return "flushed" if kept == 0 else "kept" if kept == n else "mixed"


def configure(cfg: Mapping[str, Any], graph: bool = False) -> Dict[str, Any]:
    """Set the run's thread count and subnormal handling; returns what ``meta.json`` records of them (measured).
    Call it before the run's first parallel op (``setup.prepare`` and ``node_engine.prepare`` do)."""
    flush = bool(cfg.get("flush_subnormals", True))
    can_flush = torch.set_flush_denormal(flush)  # False where the CPU cannot flush (not x86 with SSE3)
    torch.set_num_threads(cfg["threads"] or default_threads(graph))
    state = subnormal_state()
    wanted = "flushed" if flush and can_flush else "kept"
    if state != wanted:
        why = ("this CPU cannot flush them" if flush and not can_flush else
               "torch's threads were created earlier in this process with the other setting; a fresh process applies it")
        warnings.warn(f"subnormal floats: asked to {'flush' if flush else 'keep'} them, {state} ({why})", stacklevel=2)
    return execution(state)


def execution(state: Optional[str] = None) -> Dict[str, Any]:
    """What ``meta.json`` records of this process's CPU settings now: ``threads`` and ``subnormals``."""
    return {"threads": torch.get_num_threads(), "subnormals": state or subnormal_state()}

"""How a run uses the CPU: subnormal floats and torch's thread count (execution only: neither is in a run's name).

Subnormal floats (``flush_subnormals``, default true). x86 computes subnormals (|x| < 1.18e-38 in float32) in
microcode, tens of times slower than normal numbers. They appear once a softmax saturates, and the convolutions'
backward then runs 15-20x slower (BENCHMARKS.md §2: a CNN-9 step from 60 ms to 1.2-1.3 s). Flushing them to zero
(``torch.set_flush_denormal``: FTZ and DAZ, TensorFlow's CPU default) changes only values below 1.18e-38, far below
the rounding step of a float32 weight of ordinary size: accuracies are not expected to move, a run's bits can
(docs/speed.md, numerics note). A run is repeatable, and resumes bit for bit, under either setting. CUDA kernels are
not affected. The flag is per thread, and torch's intra-op threads copy it from the main thread when they are
created (at the process's first parallel op): ``configure`` runs before the run's first parallel op, and the state
``meta.json`` records (``subnormals``) is measured over every thread, not assumed.

Threads (``threads``, default 0 = auto). A full-batch GCN on a citation graph is too small to gain from a second
thread and, on a shared machine, loses many times over to it (OpenMP threads wait for a busy core: the same Cora
runs took 128 s median on 2 threads, 9.2 s on 1, back to back at load ~12; BENCHMARKS.md §8): graph runs take 1
thread. Image and point-cloud runs keep torch's default, one per core (CNN-9 at 1/8 width: 1.8x faster on 2 quiet
cores than on 1). ``OMP_NUM_THREADS``, where set, is followed by every run; ``threads=N`` sets N for any run.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Dict, Iterator, Mapping, Optional

import torch

_DEFAULT_THREADS: Optional[int] = None  # torch's thread count before the first run of this process set it


def default_threads(graph: bool) -> int:
    """The thread count of a run with ``threads=0``: 1 for a graph run (unless ``OMP_NUM_THREADS`` is set), else the
    process's default (torch's: one per core, or ``OMP_NUM_THREADS``)."""
    global _DEFAULT_THREADS
    if _DEFAULT_THREADS is None:
        _DEFAULT_THREADS = torch.get_num_threads()
    return 1 if graph and not os.environ.get("OMP_NUM_THREADS") else _DEFAULT_THREADS


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run a block on the calling thread alone. torch creates its intra-op threads at the process's first parallel op,
    and each copies the subnormal setting of that moment: work done before a run is prepared (``config`` builds every
    model once to check its options) must not create them, or the run's setting would reach the main thread only."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
    wanted = "flushed" if flush and can_flush else "kept"  # a CPU that cannot flush (not x86) keeps them: recorded
    if state != wanted:
        warnings.warn(f"subnormal floats: asked to {'flush' if flush else 'keep'} them, {state} in this process "
                      "(torch's threads were created earlier with the other setting; a fresh process applies it)",
                      stacklevel=2)
    return execution(state)


def execution(state: Optional[str] = None) -> Dict[str, Any]:
    """What ``meta.json`` records of this process's CPU settings now: ``threads`` and ``subnormals``."""
    return {"threads": torch.get_num_threads(), "subnormals": state or subnormal_state()}

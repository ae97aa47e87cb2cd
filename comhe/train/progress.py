"""The live progress record of a run, ``<run dir>/progress.json``: how a runner sees a run it does not host.

The process training a run (rank 0 under DDP) rewrites the record atomically every ``EVERY_S`` seconds at most, at
iterations where the engine already synchronises with the device (its divergence check, every ``CHECK_EVERY``
iterations), after each evaluation, and when it stops. A local worker, a torchrun job and a SLURM job on a shared
filesystem all write the same file, so the runner (``comhe/suite/progress.py``) polls records instead of needing a
channel per launcher; ``DRY=1`` reads them too. Nothing here syncs the device or touches the training step.

Record::

    {"iteration": 1500, "iterations": 75000, "iterations_per_s": 21.3, "images_per_s": 2726.4, "eta_s": 3450.0,
     "unit": "iteration" | "epoch" (a full-batch node run: no images/s),
     "status": "running" | "finished" | "diverged" | "stopped", "updated": <unix time>, "started": <unix time>,
     "host": "node12", "pid": 4242, "latest": {"iteration": 1500, "test_error": 61.2, ...}}

``iterations_per_s`` is measured since this process started (or resumed) the run: evaluations included, so it is the
rate an ETA needs. A record whose ``updated`` is old and whose lock is free belongs to a run that stopped.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from .records import atomic_write

FILE = "progress.json"
EVERY_S = 5.0          # at most one write per this many seconds while training
LATEST_KEYS = ("iteration", "test_error", "test_acc", "hidden_energy", "train_loss", "train_acc", "lr")


class ProgressRecord:
    """Writes ``progress.json`` for one run from the process that trains it."""

    def __init__(self, run_dir: str | Path, iterations: int, batch_size: int, start_iteration: int,
                 every_s: float = EVERY_S, unit: str = "iteration"):
        """``unit``: what an iteration is, ``"epoch"`` for a full-batch node run (``batch_size`` 0: no images/s)."""
        self.path = Path(run_dir) / FILE
        self.unit = unit
        self.iterations, self.batch_size, self.every_s = iterations, batch_size, every_s
        self.start_iteration, self.start = start_iteration, time.time()
        self.last_write = float("-inf")
        self.latest: Dict[str, Any] = {}
        self.iteration = start_iteration

    def update(self, iteration: int, row: Optional[Mapping[str, Any]] = None, force: bool = False) -> None:
        """Note ``iteration`` (and an evaluation ``row``); written when ``every_s`` passed since the last write."""
        self.iteration = iteration
        if row is not None:
            self.latest = {k: row[k] for k in LATEST_KEYS if k in row}
        now = time.time()
        if force or now - self.last_write >= self.every_s:
            self.write("running", now)

    def write(self, status: str, now: Optional[float] = None) -> None:
        now = time.time() if now is None else now
        done = self.iteration - self.start_iteration
        rate = done / (now - self.start) if done > 0 and now > self.start else None
        record = {"iteration": self.iteration, "iterations": self.iterations, "iterations_per_s": rate,
                  "images_per_s": rate * self.batch_size if rate and self.batch_size else None,
                  "unit": self.unit,
                  "eta_s": (self.iterations - self.iteration) / rate if rate else None,
                  "status": status, "updated": now, "started": self.start, "host": socket.gethostname(),
                  "pid": os.getpid(), "latest": self.latest}
        try:
            atomic_write(self.path, json.dumps(record, default=float))
        except OSError:  # progress is a convenience: a full or read-only disk must not stop the training
            return
        self.last_write = now


def read(run_dir: str | Path) -> Optional[Dict[str, Any]]:
    """The run's progress record, or None (never written, or unreadable)."""
    try:
        record = json.loads((Path(run_dir) / FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None

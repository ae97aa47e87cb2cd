"""Shared by the fault, distributed and ImageNet tests: a tiny run config, run comparison, forked runs."""
from __future__ import annotations

import json
import os
import signal
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, Optional

import pytest
import torch

from comhe.train import checkpoint, config
from comhe.train.records import RunDir

REPO = Path(__file__).resolve().parent.parent
FINAL_NUMBERS = ("iterations", "final_test_error", "best_test_error", "best_iteration", "final_train_loss",
                 "final_hidden_energy", "status")


def small_cfg(tmp_path: Path, **overrides) -> Dict:
    """CNN-6 of width 1 on 32 synthetic images, batch 8 (4 steps an epoch), RP-CoMHE: ~0.5 s for 12 iterations.

    Checkpoints every 2 iterations so that the 12 iterations cross 5 checkpoint writes (and 3 deletions)."""
    base = {"dataset": "synthetic", "data": {"num_classes": 4, "train_per_class": 8, "test_per_class": 4},
            "data_root": str(tmp_path / "data"), "model": "cnn6", "model_options": {"width": 1, "bn_momentum": 0.1},
            "regularizer": "rp_comhe", "reg": {"proj_dim": 4, "num_proj": 2}, "iterations": 12, "milestones": [8],
            "lr": 0.05, "batch_size": 8, "eval_every": 4, "checkpoint_every": 2, "eval_batch_size": 16,
            "threads": 1}
    base.update(overrides)
    return config.resolve(base=base)


def final_state(run: RunDir) -> Dict:
    """The state in the run's newest intact checkpoint (the final one for a finished run)."""
    state = checkpoint.load_latest(run.checkpoint_dir)
    assert state is not None, f"no intact checkpoint in {run.checkpoint_dir}"
    return state


def assert_same_run(reference: RunDir, other: RunDir) -> None:
    """Metrics rows except ``seconds``, final.json's numbers and the final weights and optimiser state: bitwise."""
    rows_ref, rows = reference.read_metrics(), other.read_metrics()
    assert [r["iteration"] for r in rows] == [r["iteration"] for r in rows_ref]
    for a, b in zip(rows_ref, rows):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    fa, fb = json.loads(reference.final_path.read_text()), json.loads(other.final_path.read_text())
    assert {k: fa[k] for k in FINAL_NUMBERS} == {k: fb[k] for k in FINAL_NUMBERS}
    sa, sb = final_state(reference), final_state(other)
    assert sa["iteration"] == sb["iteration"]
    assert sa["model"].keys() == sb["model"].keys()
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    momenta = [(a["momentum_buffer"], b["momentum_buffer"]) for a, b in
               zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values())]
    assert momenta and all(torch.equal(a, b) for a, b in momenta)


def stale_temp_files(run: RunDir):
    """Temporary files of atomic writes (``.<name>.tmp<pid>``) left in the run directory."""
    return sorted(p.name for p in run.path.rglob(".*.tmp*"))


def run_forked(target: Callable[[], None], kill_after: Optional[float] = None, timeout: float = 120.0) -> int:
    """Run ``target()`` in a forked child and return its exit code (``-9`` when SIGKILLed).

    Forking skips the ~4 s a fresh interpreter spends importing torch. The child sets one torch thread before any
    op: an OpenMP pool inherited through fork hangs when it is used with more than one thread. ``kill_after``
    seconds after the fork the parent SIGKILLs the child (no-op if it already exited); a child still running after
    ``timeout`` seconds is killed and fails the test.
    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            torch.set_num_threads(1)
            target()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    start = time.monotonic()
    if kill_after is not None:
        time.sleep(kill_after)
        os.kill(pid, signal.SIGKILL)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() - start > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"forked run still going after {timeout} s")
        time.sleep(0.01)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)

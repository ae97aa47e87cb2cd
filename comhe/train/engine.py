"""The training engine: one run of the paper's protocol (docs/reference.md §2), resumable, leaving records for
reporting.

    setup = prepare(cfg)          # setup.py: data, model, regulariser, optimiser: all that can fail on bad input
    final = train(cfg, run_dir)   # resumes from the run's newest intact checkpoint; a finished run is not retrained

Iteration ``i`` means ``i`` SGD updates done. The LR of the update that follows is ``optim.lr_at(cfg, i)``, by
``cfg["lr_schedule"]``: ``milestones`` (the default), ``lr * lr_decay ** (number of milestones <= i)``, as the
official loop multiplies the LR when ``i`` reaches a milestone, or ``staircase`` (``optim.py``). The official code
evaluates after update 500k+1 (its test runs after the update of step ``i % 500 == 0``); we evaluate after ``500k``
updates, and also at iteration 0 (the init oracle of docs/reference.md §2 and the start of the dynamics curves).

Divergence: every ``CHECK_EVERY`` iterations (and at each evaluation and checkpoint) the host reads how many steps
since the last check had a non-finite loss (counted on the device, no per-step sync); if any, the run stops, is
recorded as diverged with the first non-finite iteration (``final.json``: ``diverged_at``) and shows as N/C.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from . import checkpoint, distributed, tracking
from .progress import ProgressRecord
from ..energy import layer_energies
from ..layers import find_layers
from .optim import lr_at  # noqa: F401  (engine.lr_at: also this module's public name)
from .interrupt import STOP, STOP_SIGNALS, StopNow, StopState  # noqa: F401  (engine.STOP_SIGNALS: the launchers')
from .records import RunDir, RunLocked, environment
from .seeding import rng_state, set_rng_state
from .setup import Setup, prepare  # noqa: F401  (engine.prepare is the public name)


def evaluate(s: Setup) -> float:
    """Test error % on the full test set, BN in eval mode; each DDP rank evaluates its share of the batches."""
    distributed.broadcast_buffers(s.model, s.ctx)  # every rank evaluates with rank 0's BN statistics
    s.model.eval()
    correct = torch.zeros((), device=s.device, dtype=torch.float64)
    count = torch.zeros((), device=s.device, dtype=torch.float64)
    with torch.no_grad(), torch.autocast(s.device.type, s.amp_dtype or torch.float32, enabled=s.amp_dtype is not None):
        for x, y in s.bundle.test_loader(s.cfg["eval_batch_size"], s.ctx.rank, s.ctx.world_size):
            x, y = _to_device(x, y, s)
            correct += (s.model(x).argmax(1) == y).sum()
            count += y.numel()
    s.model.train()
    distributed.all_reduce_sum(correct, s.ctx)
    distributed.all_reduce_sum(count, s.ctx)
    return 100.0 * (1.0 - correct.item() / count.item())


def _to_device(x, y, s: Setup):
    x = x.to(s.device, non_blocking=True)
    if s.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(s.device, non_blocking=True)


to_device = _to_device  # public: benchmarks time batches laid out as the loop feeds them


def next_batch_on_device(s: Setup) -> Tuple[torch.Tensor, torch.Tensor]:
    """The loader's next training batch, laid out on the device as the loop feeds it (benchmarks, doctor)."""
    x, y = s.loader.next_batch()
    return _to_device(x, y, s)


def _state(s: Setup, iteration: int, window: Dict[str, torch.Tensor], best: Dict[str, float], elapsed: float):
    return {"iteration": iteration, "model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
            "regularizer": s.reg.state_dict(), "loader": s.loader.state_dict(), "rng": rng_state(s.device),
            "window": {k: v.detach().cpu() for k, v in window.items()}, "best": dict(best), "elapsed": elapsed}


def _restore(s: Setup, state: Dict[str, Any]):
    s.model.load_state_dict(state["model"])
    s.optimizer.load_state_dict(state["optimizer"])
    s.reg.load_state_dict(state["regularizer"])
    s.loader.load_state_dict(state["loader"])
    set_rng_state(state["rng"], s.device)
    window = {k: v.to(s.device) for k, v in state["window"].items()}
    if s.ctx.enabled:  # a _global_window: rank 0 carries it, scaled back to the per-rank sums it is divided from
        window = {k: v * s.ctx.world_size if k in PER_STEP else v for k, v in window.items()} if s.ctx.is_main \
            else _new_window(s.device)
    return state["iteration"], window, dict(state["best"]), float(state["elapsed"])


def _new_window(device) -> Dict[str, torch.Tensor]:
    return {k: torch.zeros((), device=device, dtype=torch.float64) for k in ("loss", "correct", "reg", "seen", "steps")}


PER_STEP = ("loss", "reg", "steps")  # window sums with one term per rank and step; "correct", "seen" count images


def _global_window(window: Dict[str, torch.Tensor], ctx: distributed.DistContext) -> Dict[str, torch.Tensor]:
    """The window summed over DDP ranks (each accumulates its own shard), the same on every rank. The per-step sums
    are divided by the world size (a step's loss is the ranks' mean), so a saved window resumes at any world size."""
    if not ctx.enabled:
        return window
    keys = sorted(window)
    total = dict(zip(keys, distributed.all_reduce_sum(torch.stack([window[k] for k in keys]), ctx).unbind()))
    return {k: v / ctx.world_size if k in PER_STEP else v for k, v in total.items()}


CHECK_EVERY = 20  # iterations between host checks for a non-finite loss and, under DDP, agreements on a stop


def _agree(stop: StopState, nonfinite: torch.Tensor, s: Setup) -> Tuple[bool, int]:
    """(stop now, non-finite steps since the last check), the same on every rank: one host sync (and under DDP one
    all-reduce, MAX). A stop signal may reach one rank only, or the ranks at different iterations; they must decide
    together, else the others would wait in the next step's all-reduce forever. The flag goes to the device as a
    kernel argument (``fill_``), not as a copy from pageable host memory."""
    if not s.ctx.enabled:
        return stop.requested, int(nonfinite.item())
    box = nonfinite.new_empty(2)
    box[0].fill_(float(stop.requested))
    box[1].copy_(nonfinite)
    distributed.all_reduce_max(box, s.ctx)
    requested, bad = box.tolist()
    return bool(requested), int(bad)


def energy_rollup(model: torch.nn.Module, classifier: Optional[str] = None,
                  exclude=None) -> Tuple[Dict[str, float], float]:
    """``(layer_energies(model), hidden)``: the energy monitor of every layer (``exclude``: left out) and its sum over
    the layers whose role is not ``output`` (``classifier``: the output layer, default ``find_layers``' guess)."""
    energies = layer_energies(model, exclude=exclude)
    roles = {layer.name: layer.role for layer in find_layers(model, classifier=classifier, exclude=exclude, warn=False)}
    return energies, sum(v for k, v in energies.items() if roles[k] != "output")


def metrics_row(s: Setup, iteration: int, window: Dict[str, torch.Tensor], test_error: float,
                elapsed: float) -> Dict[str, Any]:
    sums = {k: v.item() for k, v in window.items()}
    steps = max(sums["steps"], 1.0)
    # The regulariser's classifier where the config names one, so that hidden_energy sums the layers it calls hidden
    energies, hidden = energy_rollup(s.model, classifier=s.cfg["reg"].get("classifier"),
                                     exclude=s.cfg.get("monitor_exclude"))
    row = {"iteration": iteration, "epoch": iteration * s.cfg["batch_size"] / s.bundle.num_train,
           "lr": lr_at(s.cfg, max(iteration - 1, 0)),
           "train_loss": sums["loss"] / steps if sums["steps"] else float("nan"),
           "train_acc": 100.0 * sums["correct"] / sums["seen"] if sums["seen"] else float("nan"),
           "reg_loss": sums["reg"] / steps if sums["steps"] else float("nan"),
           "test_error": test_error,
           "hidden_energy": hidden,
           "seconds": elapsed}
    row.update({f"energy/{k}": v for k, v in energies.items()})
    return row


def _StopRequest():
    """The process's stop state (``interrupt.STOP``) handling ``STOP_SIGNALS`` while a run trains: a first signal asks
    the loop to checkpoint and exit (``Preempted``; the relaunch resumes), a second Ctrl-C stops at once."""
    return STOP.handling("the run in progress checkpoints and stops")


class Preempted(RuntimeError):
    """Raised after a checkpoint was written because a stop signal arrived."""


def train(cfg: Dict[str, Any], run_dir: str | Path, setup: Optional[Setup] = None,
          report: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Train (or resume, or skip) the run in ``run_dir``. Returns ``final.json``'s content."""
    run = RunDir(run_dir)
    if run.status() == "done":
        return run.read_done()
    s = setup or prepare(cfg)
    if STOP.requested and not s.ctx.enabled:  # signalled while the data and model were prepared: write nothing
        raise Preempted(f"stopped by {STOP.signal_name()} before {run.path.name} started training")
    main = s.ctx.is_main
    held_by_other = None
    if main:
        try:
            run.lock()
        except RunLocked as err:
            held_by_other = err
    if distributed.any_rank(held_by_other is not None, s.ctx, s.device):  # all ranks stop, not only rank 0
        raise held_by_other or RunLocked(f"{run.path} is being trained by another process")
    try:
        return _train_locked(s, run, main, report)
    finally:
        if main:
            run.unlock()


def _train_locked(s: Setup, run: RunDir, main: bool, report) -> Dict[str, Any]:
    cfg = s.cfg
    if run.status() == "done":  # finished by another process while we waited for the data
        return run.read_done()
    if main:
        run.remove_temp_files()  # left by a process killed inside a write; we hold the lock, nobody owns them
        run.write_config(cfg)
    # map_location="cpu": RNG and generator states must be CPU tensors; load_state_dict copies the rest to the device
    state = checkpoint.load_latest(run.checkpoint_dir, map_location="cpu") if run.checkpoint_dir.exists() else None
    iteration, window, best, elapsed = 0, _new_window(s.device), {"test_error": math.inf, "iteration": -1}, 0.0
    if state is not None:
        iteration, window, best, elapsed = _restore(s, state)
    if main:
        run.truncate_metrics(iteration)
        meta = {**environment(s.device), "seed": cfg["seed"], "world_size": s.ctx.world_size,
                "resumed_from": iteration, **getattr(s.step, "meta", {})}  # step_mode, self-check, why it fell back
        run.write_meta({**run.read_meta(), **meta})
    start, start_iteration = time.perf_counter(), iteration
    # What a runner on another host sees (progress.py) and the optional TensorBoard log (tracking.py): rank 0 only.
    live = ProgressRecord(run.path, cfg["iterations"], cfg["batch_size"], iteration) if main else None
    tracker = tracking.open_tracker(cfg, run.path, iteration) if main else None

    def ended(final: Dict[str, Any]) -> Dict[str, Any]:
        if live is not None:
            live.write(final["status"])
        if tracker is not None:
            tracker.close()
        return final

    def clock() -> float:
        return elapsed + time.perf_counter() - start

    def log_eval(it: int) -> Dict[str, Any]:
        row = metrics_row(s, it, window, evaluate(s), clock())
        if row["test_error"] < best["test_error"]:
            best.update(test_error=row["test_error"], iteration=it)
        if live is not None:  # rank 0
            run.append_metrics(row)
            live.update(it, row, force=True)
            if tracker is not None:
                tracker.log(row)
        if report:
            report(row)
        return row

    if iteration == 0 and not run.read_metrics():
        log_eval(0)
    final_row = None
    # Non-finite steps since the last check, counted on the device (no sync per step). Once the loss is NaN the
    # weights are NaN and every later step is too, so the first non-finite iteration is the check's minus the count.
    nonfinite = torch.zeros((), device=s.device)
    with _StopRequest() as stop:
        while iteration < cfg["iterations"]:
            x, y = s.loader.next_batch()
            x, y = _to_device(x, y, s)
            if s.bn_momentum is not None:
                s.bn_momentum(iteration)
            loss, correct, reg_loss = s.step(x, y, lr_at(cfg, iteration))
            iteration += 1
            window["loss"] += loss
            window["correct"] += correct
            window["reg"] += reg_loss
            window["seen"] += y.numel()
            window["steps"] += 1
            nonfinite += ~torch.isfinite(loss + reg_loss)
            at_eval = iteration % cfg["eval_every"] == 0 or iteration == cfg["iterations"]
            at_checkpoint = iteration % cfg["checkpoint_every"] == 0
            stopping = False
            # Every rank reaches the same checks (they depend on the iteration only, or on a flag only a single
            # process has): the all-reduce inside _agree is a collective.
            if at_eval or at_checkpoint or iteration % CHECK_EVERY == 0 or (stop.requested and not s.ctx.enabled):
                stopping, bad = _agree(stop, nonfinite, s)
                if bad:
                    return ended(_finish(s, run, main, iteration, best, clock(), diverged=True, last_row=final_row,
                                         diverged_at=iteration - bad + 1))
                nonfinite.zero_()
                # Throttled to one write per few seconds (the device was just synced); at an evaluation, log_eval
                # just below writes it, forced, so it is not written twice.
                if live is not None and not at_eval:
                    live.update(iteration)
            if at_eval:
                window = _global_window(window, s.ctx)  # all ranks see the same sums: they take the same branch
                final_row = log_eval(iteration)
                window = _new_window(s.device)
            if at_checkpoint or stopping:
                saved = _global_window(window, s.ctx)  # a collective: every rank takes this branch
                if main:
                    checkpoint.save(run.checkpoint_dir, iteration, _state(s, iteration, saved, best, clock()))
            if stopping:
                ended({"status": "stopped"})
                distributed.barrier(s.ctx)
                raise Preempted(f"stopped by a signal at iteration {iteration}; rerun the same command to resume")
    images = (iteration - start_iteration) * cfg["batch_size"]
    return ended(_finish(s, run, main, iteration, best, clock(), diverged=False, last_row=final_row,
                         images_per_s=images / max(time.perf_counter() - start, 1e-9)))


def _finish(s: Setup, run: RunDir, main: bool, iteration: int, best: Dict[str, float], seconds: float,
            diverged: bool, last_row: Optional[Dict[str, Any]], images_per_s: float = float("nan"),
            diverged_at: Optional[int] = None) -> Dict[str, Any]:
    if last_row is None:
        rows = run.read_metrics() if not diverged else []
        last_row = {k: float(v) for k, v in rows[-1].items()} if rows else {}
    final = {
        "status": "diverged" if diverged else "finished",
        "iterations": iteration,
        "diverged_at": diverged_at if diverged else None,  # the first iteration whose loss was not finite
        "final_test_error": None if diverged else last_row.get("test_error"),
        "best_test_error": None if diverged else best["test_error"],
        "best_iteration": None if diverged else best["iteration"],
        "final_train_loss": None if diverged else last_row.get("train_loss"),
        "final_hidden_energy": None if diverged else last_row.get("hidden_energy"),
        "wall_time_s": seconds,
        "train_images_per_s": images_per_s,
    }
    if main:
        if not diverged:  # the final weights, for users who want them; a diverged run's weights are NaN
            # The full state, not only the weights: it replaces the older checkpoints (keep=1), so a kill before
            # final.json below must be able to resume from it (the loop is then skipped and this is redone).
            checkpoint.save(run.checkpoint_dir, iteration, _state(s, iteration, _new_window(s.device), best, seconds),
                            keep=1)
        run.write_meta({**run.read_meta(), "wall_time_s": seconds, "status": final["status"]})
        run.write_final(final)
    distributed.barrier(s.ctx)
    return final

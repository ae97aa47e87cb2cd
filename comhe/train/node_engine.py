"""Full-batch node classification (GCN on a Planetoid graph, docs/reference.md §2b): one run, resumable, with the
records, hashing, locking, seeding and divergence handling of the image engine (``engine.py``).

    setup = prepare(cfg)          # graph, model, regulariser, Adam: all that can fail on bad input
    final = train(cfg, run_dir)   # resumes from a checkpoint; a finished run is not retrained

One iteration is one epoch: a forward pass over the whole graph with dropout, the cross-entropy of the training
nodes plus the regulariser's term, one Adam step (weight decay on ``model.decayed_parameters()`` only: the GCN's
first layer, as the official L2), then a forward pass without dropout for the validation loss and the validation
and test accuracy. Early stopping (``early_stopping`` = W, ``tkipf/gcn``'s rule, ``stop_now``): after epoch e
(0-based) with e > W, stop when the validation loss exceeds the mean of the W before it. The official validation
"loss" is its training objective, cross-entropy plus the L2 term, and so is ours (``stop_loss``; ``val_loss`` in the
records is the cross-entropy alone). The result is the test accuracy of the model at the stopping epoch
(``final_test_accuracy``); ``best_test_accuracy`` is the highest over epochs, for reference only.

metrics.csv: a row at epoch 0 (the initial weights) and every ``eval_every`` epochs, the stopping epoch always;
written at checkpoints and at the end, not once per epoch (one fsync'd rewrite per epoch would cost more than the
epoch). A non-finite training loss stops the run as diverged (``final.json``: ``diverged_at``), shown as N/C.
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import data, models, regularizers
from . import checkpoint, cpu, distributed
from .engine import Preempted, _StopRequest, energy_rollup, lr_at  # noqa: F401  (Preempted: a stop signal's too)
from .config import IMAGE_ONLY
from .interrupt import STOP
from .losses import LOSSES
from .progress import ProgressRecord
from .records import RunDir, environment
from .seeding import rng_state, seed_everything, set_rng_state
from .setup import resolve_device

# The progress columns of ``python -m comhe.train`` for a node run: (key, title, width, format).
COLUMNS = [("iteration", "epoch", 6, "d"), ("lr", "lr", 8, ".4g"), ("train_loss", "loss", 8, ".4f"),
           ("train_acc", "train%", 7, ".2f"), ("reg_loss", "reg", 8, ".4f"), ("val_loss", "val_loss", 8, ".4f"),
           ("val_acc", "val%", 7, ".2f"), ("test_acc", "test%", 7, ".2f"), ("hidden_energy", "hid_E", 8, ".4f"),
           ("seconds", "time_s", 7, ".1f")]


@dataclass
class NodeSetup:
    cfg: Dict[str, Any]
    device: torch.device
    ctx: distributed.DistContext
    graph: data.GraphBundle
    model: nn.Module
    reg: regularizers.Regularizer
    optimizer: torch.optim.Optimizer
    loss_fn: Callable


def stop_now(history: Sequence[float], window: int) -> bool:
    """``tkipf/gcn``: with ``history`` the validation losses of epochs 0..e, stop when e > window and the last one is
    larger than the mean of the ``window`` before it. ``window = 0``: never."""
    if window <= 0 or len(history) <= window + 1:
        return False
    previous = history[-(window + 1):-1]
    return history[-1] > sum(previous) / window


def prepare(cfg: Dict[str, Any], ctx: Optional[distributed.DistContext] = None, download: bool = True,
            bundle: Optional[data.GraphBundle] = None) -> NodeSetup:
    """Build everything a node run needs; raises (DatasetUnavailable, ValueError) before any record is written."""
    ctx = ctx or distributed.DistContext()
    if ctx.enabled:
        raise ValueError("node classification trains the whole graph in one process: run it without torchrun")
    device = resolve_device(cfg, ctx)
    cpu.configure(cfg, graph=True)  # 1 thread unless told, subnormals flushed (train/cpu.py)
    seed_everything(cfg["seed"], cfg["deterministic"])
    graph = bundle or data.build(cfg["dataset"], root=cfg["data_root"] or None, device=device, download=download,
                                 **cfg["data"])
    if not isinstance(graph, data.GraphBundle):
        raise ValueError(f"dataset {cfg['dataset']!r} is not a graph: the node engine trains graphs only")
    graph = graph.to(device)
    options = dict(cfg["model_options"])
    if "in_features" in models.option_defaults(cfg["model"]):
        options.setdefault("in_features", graph.num_features)
    model = models.build(cfg["model"], graph.num_classes, **options).to(device)
    if len(inspect.signature(model.forward).parameters) != 2:
        raise ValueError(f"model {cfg['model']!r} is not a graph model: the node engine calls model(features, "
                         "adjacency); use model=gcn")
    reg_options = dict(cfg["reg"])
    if "seed" in regularizers.option_defaults(cfg["regularizer"]):
        reg_options.setdefault("seed", cfg["seed"])
    reg = regularizers.build(cfg["regularizer"], model, **reg_options)
    decayed = list(getattr(model, "decayed_parameters", model.parameters)())
    rest = [p for p in model.parameters() if all(p is not q for q in decayed)]
    groups = [{"params": decayed, "weight_decay": cfg["weight_decay"]}] + \
        ([{"params": rest, "weight_decay": 0.0}] if rest else [])
    optimizer = torch.optim.Adam(groups, lr=cfg["lr"])  # torch's L2 weight decay = the official loss's wd/2 |w|^2
    loss = LOSSES.get(cfg["loss"])
    return NodeSetup(cfg, device, ctx, graph, model, reg, optimizer,
                     lambda logits, labels: loss(logits, labels, label_smoothing=cfg["label_smoothing"]))


def _accuracy(logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> float:
    return 100.0 * (logits[index].argmax(1) == labels[index]).double().mean().item()


def train_epoch(s: NodeSetup, lr: float) -> Dict[str, float]:
    """One Adam step on the whole graph (dropout on); the training loss and accuracy of that forward pass."""
    g = s.graph
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    s.model.train()
    logits = s.model(g.features, g.adjacency)
    task = s.loss_fn(logits[g.train_index], g.labels[g.train_index])
    reg_loss, _ = s.reg(lr=lr, stats=False)
    s.optimizer.zero_grad(set_to_none=True)
    (task + reg_loss).backward()
    s.optimizer.step()
    return {"train_loss": task.item(), "train_acc": _accuracy(logits.detach(), g.labels, g.train_index),
            "reg_loss": float(reg_loss.detach())}


def evaluate(s: NodeSetup) -> Dict[str, float]:
    """Validation loss (cross-entropy; ``stop_loss`` adds the L2 term as the official objective) and the
    validation and test accuracy %, dropout off."""
    g = s.graph
    s.model.eval()
    with torch.no_grad():
        logits = s.model(g.features, g.adjacency)
        val_loss = F.cross_entropy(logits[g.val_index], g.labels[g.val_index]).item()
        l2 = sum(float(p.pow(2).sum()) for p in s.optimizer.param_groups[0]["params"])
    s.model.train()
    test_acc = _accuracy(logits, g.labels, g.test_index)
    return {"val_loss": val_loss, "stop_loss": val_loss + s.cfg["weight_decay"] / 2 * l2,
            "val_acc": _accuracy(logits, g.labels, g.val_index), "test_acc": test_acc, "test_error": 100.0 - test_acc}


def _energies(model: nn.Module) -> Dict[str, float]:
    """The energy monitor of every layer and ``hidden``, their sum over the layers that are not the classifier."""
    energies, hidden = energy_rollup(model)
    return {**{f"energy/{k}": v for k, v in energies.items()}, "hidden": hidden}


def metrics_row(s: NodeSetup, epoch: int, lr: float, step: Dict[str, float], ev: Dict[str, float],
                seconds: float) -> Dict[str, Any]:
    energies = _energies(s.model)
    nan = float("nan")
    row = {"iteration": epoch, "epoch": epoch, "lr": lr, "train_loss": step.get("train_loss", nan),
           "train_acc": step.get("train_acc", nan), "reg_loss": step.get("reg_loss", nan), **ev,
           "hidden_energy": energies.pop("hidden"), "seconds": seconds}
    return {**row, **energies}


def _state(s: NodeSetup, epoch: int, history: List[float], best: Dict[str, float], elapsed: float,
           finished: Optional[bool] = None):
    """``finished``: None while training; the final checkpoint records whether the run stopped early."""
    return {"iteration": epoch, "model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
            "regularizer": s.reg.state_dict(), "rng": rng_state(s.device), "history": list(history), "best": dict(best),
            "elapsed": elapsed, "finished": finished}


# Run-config keys this engine never reads: the minibatch image loop's (``config.IMAGE_ONLY``: SGD, momentum, batch
# size, augmentation, ...), AMP and channels-last (float32 on the whole graph), DataLoader workers, the evaluation
# batch, the BN momentum schedule and TensorBoard. They are left out of the run's config.yaml, which records what
# the run used; the run's name (its hash) still comes from the full config, so no run is renamed.
NOT_READ = IMAGE_ONLY + ("eval_batch_size", "workers", "amp", "channels_last", "bn_momentum_start",
                         "bn_momentum_decay", "bn_momentum_min", "tensorboard")


def recorded_config(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """The keys of ``cfg`` a node run uses; ``milestones`` and ``lr_decay`` only where a milestone falls within its
    epochs (else the learning rate is ``lr`` throughout: Adam at a constant rate, as tkipf/gcn)."""
    out = {k: v for k, v in cfg.items() if k not in NOT_READ}
    if not any(m < cfg["iterations"] for m in cfg["milestones"]):
        out.pop("milestones", None)
        out.pop("lr_decay", None)
    return out


def train(cfg: Dict[str, Any], run_dir: str | Path, setup: Optional[NodeSetup] = None,
          report: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Train (or resume, or skip) the node run in ``run_dir``. Returns ``final.json``'s content."""
    run = RunDir(run_dir)
    if run.status() == "done":
        return run.read_done()
    s = setup or prepare(cfg)
    if STOP.requested:  # signalled while the graph and model were prepared: write nothing
        raise Preempted(f"stopped by {STOP.signal_name()} before {run.path.name} started training")
    run.lock()  # raises RunLocked when another process trains it
    try:
        if run.status() == "done":  # finished by another process while we loaded the graph
            return run.read_done()
        return _train_locked(s, run, report)
    finally:
        run.unlock()


def _train_locked(s: NodeSetup, run: RunDir, report) -> Dict[str, Any]:
    cfg = s.cfg
    run.remove_temp_files()
    run.write_config(recorded_config(cfg))
    state = checkpoint.load_latest(run.checkpoint_dir, map_location=s.device) if run.checkpoint_dir.exists() else None
    epoch, history, best, elapsed = 0, [], {"test_acc": -math.inf, "iteration": -1}, 0.0
    if state is not None:
        s.model.load_state_dict(state["model"])
        s.optimizer.load_state_dict(state["optimizer"])
        s.reg.load_state_dict(state["regularizer"])
        set_rng_state(state["rng"], s.device)
        epoch, history, best, elapsed = state["iteration"], list(state["history"]), dict(state["best"]), \
            float(state["elapsed"])
    run.truncate_metrics(epoch)
    run.write_meta({**run.read_meta(), **environment(s.device), "seed": cfg["seed"], "world_size": 1,
                    "resumed_from": epoch})
    start, start_epoch, pending = time.perf_counter(), epoch, []
    live = ProgressRecord(run.path, cfg["iterations"], 0, epoch, unit="epoch")  # the runner's progress (progress.py)

    def ended(final: Dict[str, Any]) -> Dict[str, Any]:
        live.write(final["status"])
        return final

    def clock() -> float:
        return elapsed + time.perf_counter() - start

    def log(row: Dict[str, Any]) -> None:
        pending.append(row)
        if report:
            report(row)

    def save(at: int) -> None:
        run.extend_metrics(pending)
        pending.clear()
        checkpoint.save(run.checkpoint_dir, at, _state(s, at, history, best, clock()))

    last: Optional[Dict[str, float]] = None
    if state is not None and state.get("finished") is not None:  # killed after the final checkpoint
        rows = run.read_metrics()
        last = {k: float(v) for k, v in rows[-1].items()} if rows else {}
        return ended(_finish(s, run, epoch, best, elapsed, last, stopped_early=state["finished"]))
    if epoch == 0 and not run.read_metrics():
        log(metrics_row(s, 0, lr_at(cfg, 0), {}, evaluate(s), clock()))
    with _StopRequest() as stop:
        while epoch < cfg["iterations"]:
            lr = lr_at(cfg, epoch)
            step = train_epoch(s, lr)
            epoch += 1
            if not math.isfinite(step["train_loss"] + step["reg_loss"]):
                run.extend_metrics(pending)
                return ended(_finish(s, run, epoch, best, clock(), None, diverged_at=epoch))
            ev = evaluate(s)
            history.append(ev["stop_loss"])
            if ev["test_acc"] > best["test_acc"]:
                best.update(test_acc=ev["test_acc"], iteration=epoch)
            stopping = stop_now(history, cfg["early_stopping"])
            last = {**ev, **step}
            logged = epoch % cfg["eval_every"] == 0 or stopping or epoch == cfg["iterations"]
            if logged:
                log(metrics_row(s, epoch, lr, step, ev, clock()))
            live.update(epoch, pending[-1] if logged else None)  # written every few seconds at most
            if stopping:
                break
            if epoch % cfg["checkpoint_every"] == 0 or stop.requested:
                save(epoch)
                if stop.requested:
                    live.write("stopped")
                    raise Preempted(f"stopped by a signal at epoch {epoch}; relaunch to resume")
    run.extend_metrics(pending)
    if last is None:  # a checkpoint at the last epoch, then killed: the records of that epoch are on disk
        rows = run.read_metrics()
        last = {k: float(v) for k, v in rows[-1].items()} if rows else {}
    return ended(_finish(s, run, epoch, best, clock(), last, stopped_early=stop_now(history, cfg["early_stopping"]),
                         epochs_per_s=(epoch - start_epoch) / max(time.perf_counter() - start, 1e-9)))


def _finish(s: NodeSetup, run: RunDir, epoch: int, best: Dict[str, float], seconds: float,
            last: Optional[Dict[str, float]], diverged_at: Optional[int] = None, stopped_early: bool = False,
            epochs_per_s: float = float("nan")) -> Dict[str, Any]:
    ok = diverged_at is None
    last = last or {}

    def value(key: str):
        return last.get(key) if ok else None

    final = {
        "status": "finished" if ok else "diverged",
        "iterations": epoch,                       # epochs trained
        "diverged_at": diverged_at,                # the first epoch whose training loss was not finite
        "stopped_early": stopped_early if ok else None,
        "final_test_accuracy": value("test_acc"),  # the result: the test accuracy at the stopping epoch
        "final_test_error": None if not ok or "test_acc" not in last else 100.0 - last["test_acc"],
        "final_val_accuracy": value("val_acc"),
        "final_val_loss": value("val_loss"),
        "final_train_loss": value("train_loss"),
        "best_test_accuracy": best["test_acc"] if ok and best["iteration"] >= 0 else None,
        "best_test_error": 100.0 - best["test_acc"] if ok and best["iteration"] >= 0 else None,
        "best_iteration": best["iteration"] if ok else None,
        "final_hidden_energy": _energies(s.model)["hidden"] if ok else None,
        "wall_time_s": seconds,
        "epochs_per_s": epochs_per_s,
    }
    if ok:  # the final weights (and the state to finish from, should a kill come before final.json)
        checkpoint.save(run.checkpoint_dir, epoch, _state(s, epoch, [], best, seconds, stopped_early), keep=1)
    run.write_meta({**run.read_meta(), "wall_time_s": seconds, "status": final["status"]})
    run.write_final(final)
    return final


def describe(final: Dict[str, Any]) -> str:
    """One line for the command line."""
    if final["status"] == "diverged":
        return f"diverged (non-finite loss at epoch {final['diverged_at']}): N/C"
    stop = "stopped early" if final["stopped_early"] else "all epochs"
    return (f"final test accuracy {final['final_test_accuracy']:.2f}% at epoch {final['iterations']} ({stop}; "
            f"validation {final['final_val_accuracy']:.2f}%), {final['wall_time_s']:.1f} s")

"""Optimisers and schedules by name: what the engine steps with (config keys ``optimizer``, ``lr_schedule``,
``bn_schedule``). ``i`` is the number of updates already done, so the value at ``i`` is the one the next update uses.

================  =================================================================================================
``optimizer``
``sgd``           momentum ``momentum``, ``nesterov``, L2 ``weight_decay`` (the official CoMHE / MHE code)
``adam``          betas (0.9, 0.999), eps 1e-8 (TF ``AdamOptimizer``'s defaults, which are torch's), L2
                  ``weight_decay`` added to the gradient (PointNet / PointNet++: 0)
``lr_schedule``
``milestones``    ``lr * lr_decay ** (number of milestones <= i)`` (the official CIFAR loop)
``staircase``     ``max(lr_min, lr * lr_decay ** (i // lr_decay_every))``: TF ``exponential_decay(staircase=True)``
                  then ``tf.maximum`` with the floor (PointNet: 0.001 x 0.7 every 200,000 samples, floor 1e-5)
``warmup_iterations``  ``w > 0``: either schedule times ``min(1, (i + 1) / w)``, a linear ramp over the first ``w``
                  updates (not in any official code: short CPU runs that cannot afford the official runs' 2-3k
                  iterations of collapse, docs/cifar10-cpu.md); 0, the default, is the official loop
``bn_schedule``
``constant``      the model's own BN momentum, never touched
``staircase``     ``max(bn_momentum_min, bn_momentum_start * bn_momentum_decay ** (i // lr_decay_every))`` at the
                  LR's period (the official PointNet code uses one ``DECAY_STEP`` for both)
================  =================================================================================================

The BN momentum is PyTorch's (the weight of the new batch statistic). The official PointNet code's TF decay is
``min(0.99, 1 - 0.5 * 0.5 ** k)``; its PyTorch momentum is ``1 - decay = max(0.01, 0.5 * 0.5 ** k)``: start 0.5,
halving, floor 0.01. Both schedules are functions of ``i`` alone, so a resumed run needs no schedule state.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, List, Mapping, Optional

import torch
from torch import nn

from ..registry import Registry

OPTIMIZERS = Registry("optimizer")
LR_SCHEDULES = Registry("lr schedule")
BN_SCHEDULES = Registry("bn schedule")


def _fast_path(options: dict, cls: type, device: torch.device) -> dict:
    """On CUDA, the fused kernel where this torch has one (else the multi-tensor ``foreach`` path)."""
    if device.type == "cuda":
        options["fused" if "fused" in inspect.signature(cls).parameters else "foreach"] = True
    return options


@OPTIMIZERS.register("sgd")
def sgd(groups: List[dict], cfg: Mapping[str, Any], device: torch.device) -> torch.optim.Optimizer:
    options = {"lr": cfg["lr"], "momentum": cfg["momentum"], "nesterov": cfg["nesterov"]}
    return torch.optim.SGD(groups, **_fast_path(options, torch.optim.SGD, device))


@OPTIMIZERS.register("adam")
def adam(groups: List[dict], cfg: Mapping[str, Any], device: torch.device) -> torch.optim.Optimizer:
    options = {"lr": cfg["lr"], "betas": (0.9, 0.999), "eps": 1e-8}
    if device.type == "cuda" and cfg.get("cuda_graph") is True:  # setup.prepare passes the mode it chose
        options["capturable"] = True  # the step count lives on the device, so the update can be captured
    return torch.optim.Adam(groups, **_fast_path(options, torch.optim.Adam, device))


def build_optimizer(cfg: Mapping[str, Any], groups: List[dict], device: torch.device) -> torch.optim.Optimizer:
    """The optimiser ``cfg["optimizer"]`` over ``groups`` (each with its ``weight_decay``)."""
    return OPTIMIZERS.get(cfg.get("optimizer", "sgd"))(groups, cfg, torch.device(device))


@LR_SCHEDULES.register("milestones")
def milestones(cfg: Mapping[str, Any], iteration: int) -> float:
    return cfg["lr"] * cfg["lr_decay"] ** sum(iteration >= m for m in cfg["milestones"])


@LR_SCHEDULES.register("staircase")
def staircase_lr(cfg: Mapping[str, Any], iteration: int) -> float:
    return max(cfg["lr_min"], cfg["lr"] * cfg["lr_decay"] ** (iteration // cfg["lr_decay_every"]))


def lr_at(cfg: Mapping[str, Any], iteration: int) -> float:
    """The learning rate of the update that follows ``iteration`` updates."""
    lr = LR_SCHEDULES.get(cfg.get("lr_schedule", "milestones"))(cfg, iteration)
    warmup = cfg.get("warmup_iterations", 0)
    return lr * min(1.0, (iteration + 1) / warmup) if warmup else lr


@BN_SCHEDULES.register("constant")
def constant_bn(cfg: Mapping[str, Any], iteration: int) -> Optional[float]:
    return None


@BN_SCHEDULES.register("staircase")
def staircase_bn(cfg: Mapping[str, Any], iteration: int) -> Optional[float]:
    steps = iteration // cfg["lr_decay_every"]
    return max(cfg["bn_momentum_min"], cfg["bn_momentum_start"] * cfg["bn_momentum_decay"] ** steps)


def bn_momentum_at(cfg: Mapping[str, Any], iteration: int) -> Optional[float]:
    """The BN momentum of the update that follows ``iteration`` updates; ``None``: leave the model's own."""
    return BN_SCHEDULES.get(cfg.get("bn_schedule", "constant"))(cfg, iteration)


class BatchNormMomentum:
    """Sets the momentum of every BN layer of ``model`` to the schedule's value before a step (only on change)."""

    def __init__(self, model: nn.Module, cfg: Mapping[str, Any]):
        self.cfg = cfg
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.current: Optional[float] = None

    def __call__(self, iteration: int) -> Optional[float]:
        value = bn_momentum_at(self.cfg, iteration)
        if value is not None and value != self.current:
            for layer in self.layers:
                layer.momentum = value
            self.current = value
        return value


def bn_schedule_for(model: nn.Module, cfg: Mapping[str, Any]) -> Optional[Callable[[int], Optional[float]]]:
    """A ``BatchNormMomentum`` for a scheduled config, ``None`` for ``bn_schedule: constant``."""
    return None if cfg.get("bn_schedule", "constant") == "constant" else BatchNormMomentum(model, cfg)


def check(cfg: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` (one line naming the key) for a schedule or optimiser the config cannot run."""
    for key, table in (("optimizer", OPTIMIZERS), ("lr_schedule", LR_SCHEDULES), ("bn_schedule", BN_SCHEDULES)):
        if cfg[key] not in table:
            raise ValueError(f"{key} must be one of {', '.join(table.names())}, got {cfg[key]!r}")
    if cfg["lr_decay_every"] < 0:
        raise ValueError(f"lr_decay_every must be >= 0, got {cfg['lr_decay_every']}")
    staircase = [k for k in ("lr_schedule", "bn_schedule") if cfg[k] == "staircase"]
    if staircase and cfg["lr_decay_every"] < 1:
        raise ValueError(f"{staircase[0]}: staircase needs lr_decay_every >= 1 (iterations per step of the "
                         f"staircase), got {cfg['lr_decay_every']}")
    if not 0 <= cfg["lr_min"] <= cfg["lr"]:
        raise ValueError(f"lr_min must be in [0, lr = {cfg['lr']}], got {cfg['lr_min']}")
    for key in ("bn_momentum_start", "bn_momentum_decay", "bn_momentum_min"):
        if not 0 < cfg[key] <= 1:
            raise ValueError(f"{key} must be in (0, 1], got {cfg[key]}")
    if cfg.get("warmup_iterations", 0) < 0:
        raise ValueError(f"warmup_iterations must be >= 0, got {cfg['warmup_iterations']}")
    if cfg.get("warmup_iterations", 0) and cfg.get("cuda_graph") is True:
        # GraphStep captures one graph per learning rate: a ramp would capture one per warm-up update.
        raise ValueError("cuda_graph: true captures one graph per learning rate and a warm-up changes it every "
                         "update: use warmup_iterations=0 or cuda_graph=false")
    if cfg["bn_schedule"] != "constant" and cfg.get("cuda_graph") is True:
        # A captured graph bakes in the BN momentum it was captured with; graphs are keyed by the LR only.
        raise ValueError("cuda_graph: true replays one BN momentum per captured learning rate: use "
                         "bn_schedule=constant or cuda_graph=false")

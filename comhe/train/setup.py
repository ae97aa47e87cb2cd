"""Everything one run needs, built before any record is written: a bad option or missing data fails here.

    setup = prepare(cfg)   # device, data, model, regulariser, optimiser, data stream, the step (steps.py)

On CUDA: bf16 autocast (BN and the regulariser stay fp32), channels_last, fused SGD; under torchrun: DDP with
SyncBatchNorm (CUDA only) around the model, the regulariser on the unwrapped model with the run's seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
from torch import nn

from .. import data, models, regularizers
from . import cpu, devices, distributed, optim, steps
from .losses import LOSSES
from .seeding import rng_state, seed_everything, set_rng_state


@dataclass
class Setup:
    cfg: Dict[str, Any]
    device: torch.device
    ctx: distributed.DistContext
    bundle: data.DataBundle
    model: nn.Module          # the user's model (what records and the regulariser see)
    net: nn.Module            # what the step calls: the model, maybe DDP-wrapped and compiled
    reg: regularizers.Regularizer
    optimizer: torch.optim.Optimizer
    loader: Any
    loss_fn: Callable
    amp_dtype: Optional[torch.dtype]
    channels_last: bool
    step: Any = None          # steps.EagerStep or steps.GraphStep: step(x, y, lr) -> (loss, correct, reg_loss)
    aux_loss: Optional[Callable[[], torch.Tensor]] = None  # the model's own loss term of its last forward, if any
    bn_momentum: Optional[Callable[[int], Any]] = None     # sets the scheduled BN momentum (optim.bn_schedule_for)


def resolve_device(cfg: Mapping[str, Any], ctx: distributed.DistContext) -> torch.device:
    if cfg["device"] == "auto":
        if not torch.cuda.is_available():
            devices.check_auto()  # no silent CPU fallback while an NVIDIA GPU is visible
        return torch.device(f"cuda:{ctx.local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(cfg["device"])
    except RuntimeError:
        raise ValueError(f"device {cfg['device']!r} is not a torch device: use auto, cpu, cuda or cuda:<n>") from None
    if device.type == "cuda" and not torch.cuda.is_available():  # else a traceback from deep inside .to()
        raise ValueError(f"device {cfg['device']!r} but this machine has no usable CUDA device: use device=auto "
                         "or device=cpu")
    if device.type == "cuda" and ctx.enabled:
        device = torch.device(f"cuda:{ctx.local_rank}")  # pragma: cuda
    return device


def param_groups(model: nn.Module, weight_decay: float, exclude_bn: bool):
    if not exclude_bn:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay: List[nn.Parameter] = []
    no_decay: List[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def prepare(cfg: Dict[str, Any], ctx: Optional[distributed.DistContext] = None, download: bool = True,
            bundle: Optional[data.DataBundle] = None) -> Setup:
    """Build everything a run needs. Raises (DatasetUnavailable, ValueError, ...) before any record is written.

    bundle: data already loaded (benchmarks pass synthetic tensors of the real shape); default ``cfg["dataset"]``.
    """
    ctx = ctx or distributed.DistContext()
    device = resolve_device(cfg, ctx)
    cpu.configure(cfg)  # threads and subnormal floats, before the first parallel op (train/cpu.py)
    seed_everything(cfg["seed"], cfg["deterministic"])
    if bundle is None:
        data_options = dict(cfg["data"])
        if data.takes_workers(cfg["dataset"]):
            data_options["workers"] = data.loader_workers(cfg["workers"])
        bundle = data.build(cfg["dataset"], root=cfg["data_root"] or None, device=device, download=download,
                            **data_options)
    if cfg["batch_size"] % ctx.world_size:
        raise ValueError(f"batch_size {cfg['batch_size']} is not divisible by the {ctx.world_size} processes")
    options = dict(cfg["model_options"])
    if "in_channels" in models.option_defaults(cfg["model"]):
        options.setdefault("in_channels", bundle.in_channels)
    if "image_size" in models.option_defaults(cfg["model"]):
        options.setdefault("image_size", bundle.image_size)
    model = models.build(cfg["model"], bundle.num_classes, **options)
    channels_last = device.type == "cuda" if cfg["channels_last"] == "auto" else bool(cfg["channels_last"])
    channels_last = channels_last and bundle.kind != "points"  # a memory format of 4-d images; points are [B, 3, N]
    if ctx.enabled and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # pragma: cuda
    model = model.to(device)
    if channels_last:  # parameters only: Module.to's memory_format applies to 4-D tensors
        model = model.to(memory_format=torch.channels_last)
    reg_options = dict(cfg["reg"])
    if "seed" in regularizers.option_defaults(cfg["regularizer"]):
        reg_options.setdefault("seed", cfg["seed"])  # the same projections on every DDP rank
    reg = regularizers.build(cfg["regularizer"], model, **reg_options)
    net: Any = model  # the module the step calls: model, its DDP wrapper, or the compiled one
    if ctx.enabled:
        net = nn.parallel.DistributedDataParallel(model, **distributed.ddp_options(device))
    mode = steps.choose_mode(cfg, device, ctx.enabled)
    if mode == "compile":
        net = torch.compile(net)
        reg.compile()  # fuses the energy's elementwise chain
    optimizer = optim.build_optimizer({**cfg, "cuda_graph": mode == "cuda_graph"},
                                      param_groups(model, cfg["weight_decay"], cfg["wd_exclude_bn"]), device)
    loader = bundle.train_loader(cfg["batch_size"] // ctx.world_size, seed=cfg["seed"], rank=ctx.rank,
                                 world_size=ctx.world_size, augment=cfg["augment"])
    amp = cfg["amp"] if cfg["amp"] != "auto" else ("bf16" if device.type == "cuda" else "off")
    loss = LOSSES.get(cfg["loss"])

    def loss_fn(logits, labels):
        return loss(logits, labels, label_smoothing=cfg["label_smoothing"])

    setup = Setup(cfg, device, ctx, bundle, model, net, reg, optimizer, loader, loss_fn,
                  torch.bfloat16 if amp == "bf16" else None, channels_last)
    setup.aux_loss = getattr(model, "auxiliary_loss", None)  # e.g. PointNet's T-Net orthogonality term
    setup.bn_momentum = optim.bn_schedule_for(model, cfg)
    setup.step = steps.build(setup, mode, _first_batch(setup) if mode != "eager" else None)
    return setup


def _first_batch(s: Setup):
    """The run's first batch, on the device as the loop lays it out, and its LR, for a fast step's self-check; the
    stream and the RNGs it may draw from (ImageNet's crops without workers) are put back, so the run still starts with
    this batch."""
    saved, rngs = s.loader.state_dict(), rng_state(s.device)
    x, y = s.loader.next_batch()
    s.loader.load_state_dict(saved)
    set_rng_state(rngs, s.device)
    x = x.to(s.device, non_blocking=True)
    if s.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(s.device, non_blocking=True), optim.lr_at(s.cfg, 0)

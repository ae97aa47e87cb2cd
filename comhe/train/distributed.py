"""Multi-process training through ``torchrun`` (DDP). Single-process runs use the same code with world size 1.

``torchrun --standalone --nproc_per_node=N -m comhe.train cfg.yaml`` sets RANK / WORLD_SIZE / LOCAL_RANK; the
process group uses NCCL on CUDA and gloo on the CPU. Each rank trains on its shard of every batch (global batch
``batch_size``); gradients are averaged by DDP; BN statistics are synchronised on CUDA (SyncBatchNorm; it is CUDA-only,
so CPU multi-process runs keep per-rank BN statistics, documented in docs/reproducing.md). The regulariser acts on the
unwrapped model, identically on every rank: its random projections come from a generator seeded with the run's seed,
so all ranks draw the same matrices (otherwise the averaged gradient would mix different projections). Only rank 0
writes records and checkpoints; every rank reads the checkpoint to resume from, so the run directory must be on a
filesystem all ranks share (one node: always). Decisions that end the loop (divergence, a stop signal, a run locked
by another process) are taken from values reduced over the ranks, so every rank takes the same branch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device_type: str) -> DistContext:
    """Join the process group when launched by torchrun, else a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    ctx = DistContext(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":  # else every rank's NCCL collectives outside DDP (barrier, broadcast) use GPU 0
        torch.cuda.set_device(ctx.local_rank)  # pragma: cuda
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return ctx


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def any_rank(flag: bool, ctx: DistContext, device) -> bool:
    """True on every rank if ``flag`` is true on any: for decisions all ranks must take together (a stop signal
    that reached only some ranks)."""
    if not ctx.enabled:
        return flag
    box = torch.tensor(float(flag), device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item())


def broadcast_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Rank 0's buffers (BN running statistics) on every rank, in one broadcast per dtype (not one per buffer).
    Without SyncBatchNorm (CPU) every other rank holds its own update of them after a step."""
    if not ctx.enabled:
        return
    by_dtype: Dict[Tuple[torch.dtype, torch.device], List[torch.Tensor]] = {}
    for buffer in module.buffers():
        by_dtype.setdefault((buffer.dtype, buffer.device), []).append(buffer)
    for buffers in by_dtype.values():
        flat = torch._utils._flatten_dense_tensors(buffers)
        dist.broadcast(flat, src=0)
        for buffer, value in zip(buffers, torch._utils._unflatten_dense_tensors(flat, buffers)):
            buffer.copy_(value)


def ddp_options(device: torch.device) -> dict:
    """DistributedDataParallel's options: on CUDA the model has SyncBatchNorm, whose running statistics are the same
    on every rank (computed from the global batch), so DDP's broadcast of the buffers before every forward (one
    collective per step) is dropped; on the CPU (per-rank BN) it is kept."""
    if device.type == "cuda":
        return {"device_ids": [device.index], "broadcast_buffers": False}
    return {"device_ids": None}


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()

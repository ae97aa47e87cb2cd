"""Resumable, unbounded streams of training batches, and in-order evaluation batches.

* ``EpochStream``: what the on-device streams share: epochs of a permutation and per-batch draws made on a private
  CPU generator when the epoch starts and uploaded then (one copy per dtype, pinned on CUDA), so a batch costs no host
  work and no host-to-device copy; ``state_dict`` replays the generator to the current batch.
* ``TensorLoader``: a dataset held on the device as uint8 ``[N, C, H, W]`` (CIFAR, Fashion-MNIST), shuffled and
  augmented there in batches (``augment.py``), no per-image Python. ``points.PointCloudLoader`` is the same for
  point clouds.
* ``LoaderStream``: the same interface over a ``DataLoader`` (ImageNet, decoded from disk by worker processes).

Both give ``next_batch() -> (x float32 [B, C, H, W], y int64 [B])`` and ``state_dict`` / ``load_state_dict``, so a
checkpoint resumes the exact stream.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .augment import PAD, AugmentParams, augment_batch, draw_augment_params, normalize


def eval_batches(images: Tensor, labels: Tensor, batch_size: int, rank: int = 0,
                 world_size: int = 1) -> Iterator[Tuple[Tensor, Tensor]]:
    """In-order, unaugmented, normalised batches ``(x float32 [b, C, H, W], y int64 [b])``; the last may be short.

    With ``world_size > 1``, batch ``i`` of the single-process sequence goes to rank ``i % world_size``."""
    for start in range(rank * batch_size, images.shape[0], batch_size * world_size):
        yield normalize(images[start:start + batch_size]), labels[start:start + batch_size]


class EpochStream:
    """An unbounded, resumable stream of random batches of ``num`` on-device samples.

    Each epoch draws a permutation from a private CPU ``torch.Generator`` (device-independent streams), then, in
    order, the random draws of each *global* batch of ``batch_size * world_size`` samples (``draw``), all when the
    epoch starts, and uploads them (``pack``: one copy per dtype, pinned on CUDA); a batch is then slices of those and
    whatever the subclass does on the device (``make_batch``). Rank ``r`` takes rows ``r*batch_size : (r+1)*batch_size``
    of every global batch and of its draws, so the ranks of a 2-GPU run with per-rank batch ``B/2`` see together
    exactly the batches of a 1-GPU run with batch ``B``, and a state saved at one world size resumes at another with
    the same global batch. When an epoch runs out the next batch starts a new one (the engine counts iterations).
    ``drop_last=True`` drops the incomplete tail of an epoch.

    The saved generator state is the one a stream drawing batch by batch would hold at the current batch: ``_base``
    keeps the state at the epoch's first drawn step, from which the draws are replayed.
    """

    kind = "samples"

    def __init__(self, num: int, batch_size: int, seed: int, rank: int, world_size: int, drop_last: bool,
                 device: torch.device):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if not drop_last and world_size > 1:
            # A short last batch would give ranks different batch sizes (or none), breaking collective ops.
            raise ValueError("drop_last=False is only supported with world_size=1")
        self.num, self.device, self.seed = num, device, seed
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = num // self.global_batch if drop_last else -(-num // self.global_batch)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{num} {self.kind} cannot fill one global batch of {self.global_batch}"
                             f"{' with drop_last' if drop_last else ''}")
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.step = 0, 0
        self._perm = torch.randperm(num, generator=self.generator)
        self._draw_epoch(0)

    # --- what a subclass defines
    def draw(self, size: int, generator: torch.Generator):
        """The CPU draws of one global batch of ``size`` samples (any object ``pack`` understands), or None."""
        return None

    def pack(self, draws: List) -> List[Tensor]:
        """The epoch's draws as CPU tensors to upload; ``unpack`` gets them back on the device, in the same order."""
        return []

    def unpack(self, tensors: List[Tensor], draws: List) -> None:
        """Keep the device-side draws (``tensors``, as ``pack`` returned them, now on the device)."""

    def make_batch(self, idx: Tensor, step: int, rows: slice, mine: slice) -> Tuple[Tensor, Tensor]:
        """The batch of samples ``idx`` (device): ``step`` is the batch's index among this epoch's drawn steps,
        ``rows`` its global batch's rows in the per-sample draws, ``mine`` this rank's rows of that global batch."""
        raise TypeError(f"{type(self).__name__} does not define make_batch()")  # pragma: no cover

    def identity(self) -> Dict:
        """What a saved state must match to resume this stream."""
        return {"num_samples": self.num, "global_batch": self.global_batch}

    def device_tensors(self) -> List[Tensor]:
        """The tensors the stream keeps on the device between batches (benchmarks tag them)."""
        return [self._perm_device] + list(self._uploaded)

    # --- the shared machinery
    def __iter__(self) -> "EpochStream":
        return self

    def __next__(self) -> Tuple[Tensor, Tensor]:
        return self.next_batch()

    def __len__(self) -> int:
        """Batches per epoch (the stream itself never ends)."""
        return self.steps_per_epoch

    def _batch_sizes(self, first: int) -> list:
        return [min(self.global_batch, self.num - s * self.global_batch) for s in range(first, self.steps_per_epoch)]

    def _draw_epoch(self, first: int) -> None:
        """The draws of steps ``first ..`` of this epoch (the generator is at step ``first``'s draws), then the
        permutation and the draws to the device, one copy per dtype."""
        self._base = (first, self.generator.get_state())
        draws = [self.draw(size, self.generator) for size in self._batch_sizes(first)]
        tensors = [self._perm] + (self.pack(draws) if any(d is not None for d in draws) else [])
        self._uploaded = upload(tensors, self.device)
        self._perm_device = self._uploaded.pop(0)
        self.unpack(self._uploaded, draws)

    def next_batch(self) -> Tuple[Tensor, Tensor]:
        """``(x [batch_size, ...], y int64 [batch_size])`` on the samples' device."""
        if self.step == self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
            self._perm = torch.randperm(self.num, generator=self.generator)
            self._draw_epoch(0)
        start = self.step * self.global_batch
        global_idx = self._perm_device[start:start + self.global_batch]
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        first = (self.step - self._base[0]) * self.global_batch  # every step before the last is a full batch
        out = self.make_batch(global_idx[mine], self.step - self._base[0], slice(first, first + len(global_idx)),
                              mine)
        self.step += 1
        return out

    def _generator_state_now(self) -> Tensor:
        """The generator state at the current step's draws (what the stream saved when it drew batch by batch)."""
        first, state = self._base
        replay = torch.Generator().manual_seed(0)
        replay.set_state(state)
        for size in self._batch_sizes(first)[:self.step - first]:
            self.draw(size, replay)
        return replay.get_state()

    def state_dict(self) -> dict:
        """Everything needed to continue the stream: epoch, step in it, its permutation, the generator state."""
        return {"epoch": self.epoch, "step": self.step, "perm": self._perm.clone(),
                "generator": self._generator_state_now(), **self.identity(), "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        clash = {k: (state[k], v) for k, v in self.identity().items() if state[k] != v}
        if clash:
            raise ValueError(f"loader state does not fit this loader (saved, here): {clash}")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        # .cpu(): a checkpoint loaded with map_location="cuda" would otherwise hand the CPU generator a CUDA tensor.
        self._perm = state["perm"].cpu().clone()
        self.generator.set_state(state["generator"].cpu())
        if self.step < self.steps_per_epoch:
            self._draw_epoch(self.step)  # the rest of this epoch (the next epoch draws its own when it starts)
        else:
            self._base = (self.step, self.generator.get_state())


def upload(tensors: Sequence[Tensor], device: torch.device) -> List[Tensor]:
    """CPU ``tensors`` on ``device``, one copy per dtype (pinned on CUDA: asynchronous, and a fresh buffer per call is
    never overwritten while the copy runs); returned in their order and shapes."""
    out: List[Tensor] = list(tensors)  # each entry replaced by its device copy below
    by_dtype: Dict[torch.dtype, List[int]] = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    for group in by_dtype.values():
        packed = torch.cat([tensors[i].reshape(-1) for i in group])
        if device.type == "cuda":
            packed = packed.pin_memory()  # pragma: cuda
        packed = packed.to(device, non_blocking=True)
        for i, part in zip(group, packed.split([tensors[i].numel() for i in group])):
            out[i] = part.view(tensors[i].shape)
    return out


class TensorLoader(EpochStream):
    """The stream of on-device uint8 images ``[N, C, H, W]`` and labels ``[N]`` with the official CIFAR augmentation
    (``augment.py``: the crop offsets and flips of a global batch are its draws). ``drop_last=True`` (official:
    390 = 50000 // 128 iterations per epoch)."""

    kind = "images"

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, augment: bool = True, seed: int = 0,
                 drop_last: bool = True, rank: int = 0, world_size: int = 1, pad: int = PAD):
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must be [N] = [{images.shape[0]}], got {tuple(labels.shape)}")
        self.images, self.labels = images, labels.long()
        self.augment, self.pad = augment, pad
        self._params: Optional[AugmentParams] = None
        super().__init__(images.shape[0], batch_size, seed, rank, world_size, drop_last, images.device)

    def draw(self, size: int, generator: torch.Generator) -> Optional[AugmentParams]:
        # Drawn for the whole global batch on every rank, so the stream does not depend on the world size.
        return draw_augment_params(size, generator, self.pad) if self.augment else None

    def pack(self, draws: List[AugmentParams]) -> List[Tensor]:
        return [torch.cat([getattr(d, field) for d in draws]).long() for field in AugmentParams._fields]

    def unpack(self, tensors: List[Tensor], draws: List) -> None:
        self._params = AugmentParams(tensors[0], tensors[1], tensors[2].bool()) if tensors else None

    def device_tensors(self) -> List[Tensor]:
        return [self._perm_device] + (list(self._params) if self._params is not None else [])

    def make_batch(self, idx: Tensor, step: int, rows: slice, mine: slice) -> Tuple[Tensor, Tensor]:
        x, y = self.images[idx], self.labels[idx]
        if self._params is not None:
            x = augment_batch(x, self._params.select(rows).select(mine), self.pad)
        return normalize(x), y

    def identity(self) -> Dict:
        return {**super().identity(), "augment": self.augment}


def loader_workers(workers="auto", processes: int = 1, cores: Optional[int] = None) -> int:
    """DataLoader workers per process: ``workers`` as given, or for ``auto`` the cores this process may use over the
    ``processes`` training at once, less one each for the process itself (16 cores, 4 jobs: 3 workers a job)."""
    if workers != "auto":
        return int(workers)
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, cores // max(processes, 1) - 1)


class _EpochOrder:
    """The sampler of a run's one DataLoader: the indices of the current epoch from the current step, set before
    each ``iter(loader)`` (persistent workers keep running between epochs; only the order is new)."""

    def __init__(self):
        self.indices: List[int] = []

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class LoaderStream:
    """The ``TensorLoader`` interface over a ``DataLoader`` (ImageNet): unbounded and resumable mid-epoch.

    The order of epoch ``e`` is the ``DistributedSampler``'s for ``(seed, e)``; resuming at step ``k`` of an epoch
    skips its first ``k`` batches of *indices* (no image is decoded for them). With ``num_workers=0`` the random
    crops come from the global torch RNG, which checkpoints hold, so a resumed run sees bitwise the same batches;
    with workers, each worker's RNG restarts at a resume, so the crops after it differ (same distribution).
    One ``DataLoader`` per run (``persistent_workers`` with workers): its processes start once, not every epoch;
    ``pin_memory`` on CUDA, set by the dataset (``imagenet.py``).
    """

    def __init__(self, dataset, batch_size: int, sampler, seed: int, **loader_args):
        self.dataset, self.batch_size, self.sampler, self.loader_args = dataset, batch_size, sampler, loader_args
        self.seed, self.epoch, self.step = seed, 0, 0
        self.steps_per_epoch = len(sampler) // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(sampler)} images per rank cannot fill one batch of {batch_size}")
        self._iter: Any = None
        self._order, self._generator = _EpochOrder(), torch.Generator()
        self._loader: Any = None  # the run's DataLoader, made at the first batch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _start_epoch(self) -> None:
        from torch.utils.data import DataLoader
        self.sampler.set_epoch(self.epoch)
        self._order.indices = list(self.sampler)[self.step * self.batch_size:self.steps_per_epoch * self.batch_size]
        # Its own generator, reseeded per epoch: DataLoader.__iter__ draws a base seed, and from the global RNG that
        # draw would shift the random crops after a mid-epoch resume (whose loader starts at a later point).
        self._generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        if self._loader is None:  # one per run: worker processes start once, not every epoch
            workers = self.loader_args.get("num_workers", 0)
            self._loader = DataLoader(self.dataset, self.batch_size, sampler=self._order, drop_last=True,
                                      generator=self._generator, persistent_workers=workers > 0, **self.loader_args)
        self._iter = iter(self._loader)

    def next_batch(self) -> Tuple[Tensor, Tensor]:
        if self.step == self.steps_per_epoch:
            self.epoch, self.step, self._iter = self.epoch + 1, 0, None
        if self._iter is None:
            self._start_epoch()
        self.step += 1
        return next(self._iter)

    def __iter__(self) -> "LoaderStream":
        return self

    def __next__(self) -> Tuple[Tensor, Tensor]:
        return self.next_batch()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step, self._iter = int(state["epoch"]), int(state["step"]), None

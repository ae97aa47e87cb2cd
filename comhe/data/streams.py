"""Resumable, unbounded streams of training batches, and in-order evaluation batches.

* ``TensorLoader``: a dataset held on the device as uint8 ``[N, C, H, W]`` (CIFAR, Fashion-MNIST), shuffled and
  augmented there in batches (``augment.py``), no per-image Python, and no host work per batch: the epoch's
  permutation and crop/flip draws go to the device in one copy (pinned on CUDA) when the epoch starts.
* ``LoaderStream``: the same interface over a ``DataLoader`` (ImageNet, decoded from disk by worker processes).

Both give ``next_batch() -> (x float32 [B, C, H, W], y int64 [B])`` and ``state_dict`` / ``load_state_dict``, so a
checkpoint resumes the exact stream.
"""
from __future__ import annotations

from typing import Iterator, Tuple

import torch
from torch import Tensor

from .augment import PAD, AugmentParams, augment_batch, draw_augment_params, normalize


def eval_batches(images: Tensor, labels: Tensor, batch_size: int, rank: int = 0,
                 world_size: int = 1) -> Iterator[Tuple[Tensor, Tensor]]:
    """In-order, unaugmented, normalised batches ``(x float32 [b, C, H, W], y int64 [b])``; the last may be short.

    With ``world_size > 1``, batch ``i`` of the single-process sequence goes to rank ``i % world_size``."""
    for start in range(rank * batch_size, images.shape[0], batch_size * world_size):
        yield normalize(images[start:start + batch_size]), labels[start:start + batch_size]


class TensorLoader:
    """Unbounded stream of random batches from on-device uint8 images ``[N, C, H, W]`` and labels ``[N]``.

    Each epoch draws a permutation from a private CPU ``torch.Generator`` (device-independent streams), then the
    crop/flip draws of each *global* batch of ``batch_size * world_size`` images, all when the epoch starts, and
    uploads them in one copy; a batch is then slices and one gather on the device. Rank ``r`` takes rows
    ``r*batch_size : (r+1)*batch_size`` of every global batch and of its draws, so the ranks of a 2-GPU run with
    per-rank batch ``B/2`` see together exactly the batches (images and augmentations) of a 1-GPU run with batch
    ``B``, and a state saved at one world size resumes at another with the same global batch.
    When an epoch runs out the next batch starts a new one (the engine counts iterations, not epochs).
    ``drop_last=True`` (official: 390 = 50000 // 128 iterations per epoch) drops the incomplete tail.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, augment: bool = True, seed: int = 0,
                 drop_last: bool = True, rank: int = 0, world_size: int = 1, pad: int = PAD):
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must be [N] = [{images.shape[0]}], got {tuple(labels.shape)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        if not drop_last and world_size > 1:
            # A short last batch would give ranks different batch sizes (or none), breaking collective ops.
            raise ValueError("drop_last=False is only supported with world_size=1")
        self.images, self.labels = images, labels.long()
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.global_batch = batch_size * world_size
        self.augment, self.pad, self.seed = augment, pad, seed
        num = images.shape[0]
        self.steps_per_epoch = num // self.global_batch if drop_last else -(-num // self.global_batch)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{num} images cannot fill one global batch of {self.global_batch} with drop_last")
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.step = 0, 0
        self._perm = torch.randperm(num, generator=self.generator)
        self._draw_epoch(0)

    def __iter__(self) -> "TensorLoader":
        return self

    def __next__(self) -> Tuple[Tensor, Tensor]:
        return self.next_batch()

    def __len__(self) -> int:
        """Batches per epoch (the stream itself never ends)."""
        return self.steps_per_epoch

    def _batch_sizes(self, first: int) -> list:
        num = self.images.shape[0]
        return [min(self.global_batch, num - s * self.global_batch) for s in range(first, self.steps_per_epoch)]

    def _draw_epoch(self, first: int) -> None:
        """The crop/flip draws of steps ``first ..`` of this epoch (the generator is at step ``first``'s draws), in
        the order they were once drawn batch by batch, then the permutation and draws to the device in one copy.
        ``_base`` keeps the generator state at step ``first``, from which ``state_dict`` replays the state at any
        later step of the epoch."""
        self._base = (first, self.generator.get_state())
        rows = [self._perm]
        if self.augment:
            # Draw for the whole global batch on every rank, so the stream does not depend on the world size.
            draws = [draw_augment_params(size, self.generator, self.pad) for size in self._batch_sizes(first)]
            rows += [torch.cat([getattr(d, field) for d in draws]).long() for field in AugmentParams._fields]
        packed = torch.cat(rows)
        device = self.images.device
        if device.type == "cuda":  # pinned: an asynchronous copy, and a fresh buffer per epoch is never overwritten
            packed = packed.pin_memory()
        packed = packed.to(device, non_blocking=True)
        num = self._perm.numel()
        self._perm_device = packed[:num]
        draws_on_device = packed[num:].view(3, -1) if self.augment else None
        self._params = None if draws_on_device is None else AugmentParams(
            draws_on_device[0], draws_on_device[1], draws_on_device[2].bool())

    def next_batch(self) -> Tuple[Tensor, Tensor]:
        """``(x float32 [batch_size, C, H, W], y int64 [batch_size])`` on the images' device."""
        if self.step == self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
            self._perm = torch.randperm(self.images.shape[0], generator=self.generator)
            self._draw_epoch(0)
        start = self.step * self.global_batch
        global_idx = self._perm_device[start:start + self.global_batch]
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        idx = global_idx[mine]
        x, y = self.images[idx], self.labels[idx]
        if self._params is not None:
            first = (self.step - self._base[0]) * self.global_batch  # every step before the last is a full batch
            batch = self._params.select(slice(first, first + len(global_idx)))
            x = augment_batch(x, batch.select(mine), self.pad)
        self.step += 1
        return normalize(x), y

    def _generator_state_now(self) -> Tensor:
        """The generator state at the current step's draws (what the stream saved when it drew batch by batch)."""
        first, state = self._base
        replay = torch.Generator().manual_seed(0)
        replay.set_state(state)
        if self.augment:
            for size in self._batch_sizes(first)[:self.step - first]:
                draw_augment_params(size, replay, self.pad)
        return replay.get_state()

    def state_dict(self) -> dict:
        """Everything needed to continue the stream: epoch, step in it, its permutation, the generator state."""
        return {"epoch": self.epoch, "step": self.step, "perm": self._perm.clone(),
                "generator": self._generator_state_now(), "num_samples": int(self.images.shape[0]),
                "global_batch": self.global_batch, "augment": self.augment, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        mine = {"num_samples": int(self.images.shape[0]), "global_batch": self.global_batch, "augment": self.augment}
        clash = {k: (state[k], v) for k, v in mine.items() if state[k] != v}
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


class LoaderStream:
    """The ``TensorLoader`` interface over a ``DataLoader`` (ImageNet): unbounded and resumable mid-epoch.

    The order of epoch ``e`` is the ``DistributedSampler``'s for ``(seed, e)``; resuming at step ``k`` of an epoch
    skips its first ``k`` batches of *indices* (no image is decoded for them). With ``num_workers=0`` the random
    crops come from the global torch RNG, which checkpoints hold, so a resumed run sees bitwise the same batches;
    with workers, each worker's RNG restarts at a resume, so the crops after it differ (same distribution).
    """

    def __init__(self, dataset, batch_size: int, sampler, seed: int, **loader_args):
        self.dataset, self.batch_size, self.sampler, self.loader_args = dataset, batch_size, sampler, loader_args
        self.seed, self.epoch, self.step = seed, 0, 0
        self.steps_per_epoch = len(sampler) // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(sampler)} images per rank cannot fill one batch of {batch_size}")
        self._iter = None

    def __len__(self) -> int:
        return self.steps_per_epoch

    def _start_epoch(self) -> None:
        from torch.utils.data import DataLoader
        self.sampler.set_epoch(self.epoch)
        indices = list(self.sampler)[self.step * self.batch_size:self.steps_per_epoch * self.batch_size]
        # Its own generator: DataLoader.__iter__ draws a base seed, and from the global RNG that draw would shift
        # the random crops after a mid-epoch resume (whose loader is built at a later point of the stream).
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        loader = DataLoader(self.dataset, self.batch_size, sampler=indices, drop_last=True, generator=generator,
                            **self.loader_args)
        self._iter = iter(loader)

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

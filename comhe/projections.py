"""Projections for compressive MHE (CoMHE, CVPR 2020; docs/reference.md §1), a registry.

A projection turns the projected buckets of a regulariser's stack (``stacking.py``: layers of one fan-in ``d``,
``[L, N, d]``) into their projected neurons, ``[L * C, k, N]`` per bucket (``columns``: column ``n`` of copy ``c`` of
layer ``l`` is ``P_lc w_n``; G-CoMHE gives rows, ``[L * C, N, k]``). The regulariser then takes the half-space
energy of every copy and averages over ``C``. All of a call's projections of every layer are a handful of batched
ops, not a Python loop over layers and projections.

* ``random`` (RP-CoMHE): ``C`` Gaussian ``k x d`` matrices per layer, i.i.d. N(0, 1), redrawn every call, no gradient.
  All of a call's matrices come from **one** ``randn`` on the projection's own generator, seeded by ``seed``, so two
  processes with the same seed (e.g. DDP ranks) draw the same matrices, and its state travels in ``state_dict``.
  Deviation from the official code: there, TF op seeds make same-shape layers share one matrix per step; here every
  layer gets its own draw (same distribution). The draw is laid out layer by layer in order of first appearance of
  each weight shape; a weight stored channels_last is projected in its memory order (the same distribution, other
  draws than the same weight stored row-major).
* ``angle`` (AP-CoMHE): one learned ``P`` per layer (``C`` of them if ``num_proj > 1``), N(0, 1) init. Each training
  call first takes ``iters`` SGD steps on every ``P`` minimising ``||cos(W) - cos(PW)||_F`` (Frobenius norm, not
  squared, full ``N x N`` cosine matrices, eps 1e-4 inside the norms) plus the official tiny L2 (gradient
  ``5e-7 P``), at the network's current learning rate (``step_lr``); then it returns the projection by the look-ahead
  ``P~ = P - lr * grad_P``, built inside the autograd graph so that ``W`` receives the second-order gradient through
  ``P~`` (as the official code). Every layer's objective is one term of one batched sum (one gradient for all).
* ``adversarial`` (Adv-CoMHE): the same, but ``P`` takes ``iters`` gradient-**ascent** steps on the full-space s=2
  energy of ``PW`` and the look-ahead is ``P~ = P + lr * grad_P``.
* ``group`` (G-CoMHE, no official code): the ``d`` coordinates are split into contiguous groups (zero-padded to a
  multiple), group ``c`` of every neuron being its ``c``-th projection. For a conv weight ``[out, in, kh, kw]`` and a
  group count dividing ``in``, a group is a block of input channels with all their kernel taps. The group count is
  ``num_proj`` (our default 8; the paper gives none), lowered so that a group keeps ``min_group_size`` (8)
  coordinates: the half-space s=2 energy of random directions in ``m`` dimensions has an infinite mean for ``m <= 3``
  and 1.2x its large-``m`` value at ``m = 8``, so 2-coordinate groups of a fan-in-16 layer would dominate the total. A
  layer left with one group is not compressed and gets the unprojected half-space energy.

The learned projections keep their matrices as buffers, saved per group of same-shape layers (``p0``, ``p1``, ... in
order of first appearance, ``[L, C, k, d]``, coordinates in the weight's logical order), so ``state_dict`` restores
them and an optimiser built from ``model.parameters()`` never sees them. In ``eval()`` mode no inner step is taken.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .learned_projections import AdversarialProjection, AngleProjection, LearnedProjection
from .projection_base import Projection, _check_positive, project_columns, shape_major
from .registry import Registry
from .stacking import Stack

__all__ = ["PROJECTIONS", "Projection", "RandomProjection", "LearnedProjection", "AngleProjection",
           "AdversarialProjection", "GroupProjection", "build", "project_columns"]

PROJECTIONS = Registry("projection")


class RandomProjection(Projection):
    def __init__(self, proj_dim: int = 40, num_proj: int = 20, seed: Optional[int] = None, **_ignored):
        super().__init__(proj_dim, num_proj)
        self.seed = int(torch.initial_seed() if seed is None else seed)
        self._generator: Optional[torch.Generator] = None
        self._pending_state: Optional[Tuple[str, Tensor]] = None

    def setup(self, stacker, buckets, dtype, device) -> None:
        super().setup(stacker, buckets, dtype, device)
        self.dtype = dtype
        # The draw: C*k*d values per layer, layers grouped by shape in order of first appearance (the order of the
        # draws before the stack existed, so a seed gives the same matrices as then). Each bucket is a run of it.
        order = shape_major(stacker, [i for b in self.buckets for i in stacker.buckets[b].layers])
        chunk = {i: self.num_proj * self.proj_dim * stacker.layers[i].fan_in for i in order}
        start = {i: sum(chunk[j] for j in order[:n]) for n, i in enumerate(order)}
        self.draw_size = sum(chunk.values())
        self._runs: List[Tuple[int, Optional[str]]] = []  # per bucket: start, or the buffer of its gather index
        for n_bucket, b in enumerate(self.buckets):
            mine = stacker.buckets[b].layers
            first = start[mine[0]]
            if all(start[i] == first + n * chunk[mine[0]] for n, i in enumerate(mine)):
                self._runs.append((first, None))
            else:
                index = torch.cat([start[i] + torch.arange(chunk[i]) for i in mine]).to(device)
                self.register_buffer(f"draw_index{n_bucket}", index, persistent=False)
                self._runs.append((first, f"draw_index{n_bucket}"))

    def generator(self, device: torch.device) -> torch.Generator:
        gen = self._generator
        if gen is None or gen.device.type != device.type or (device.index is not None and gen.device != device):
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            if self._pending_state is not None and self._pending_state[0] == device.type:
                gen.set_state(self._pending_state[1])
            self._pending_state = None
            self._generator = gen
        return gen

    def matrices(self, stack, lr=None) -> List[Tensor]:
        device = self.stacker.zeros.device
        flat = torch.randn(self.draw_size, generator=self.generator(device), device=device, dtype=self.dtype)
        mats = []
        for b, (first, index) in zip(self.buckets, self._runs):
            layers, _, d = self.stacker.buckets[b].shape
            values = flat.narrow(0, first, layers * self.num_proj * self.proj_dim * d) if index is None else \
                flat.index_select(0, getattr(self, index))
            mats.append(values.view(layers, self.num_proj, self.proj_dim, d))
        return mats

    # The generator's state travels in state_dict, so a checkpoint resumes the exact sequence of draws.
    def get_extra_state(self):
        if self._generator is not None:
            return {"seed": self.seed, "device": self._generator.device.type, "state": self._generator.get_state()}
        pending = self._pending_state
        return {"seed": self.seed, "device": pending[0] if pending else "", "state": pending[1] if pending else None}

    def set_extra_state(self, state) -> None:
        self.seed = int(state["seed"])
        self._generator = None
        saved = state.get("state")
        # .cpu(): Generator.set_state takes a CPU byte tensor whatever the generator's device, and a checkpoint
        # loaded with map_location="cuda" hands over a CUDA one.
        self._pending_state = (state["device"], saved.cpu()) if saved is not None else None


class GroupProjection(Projection):
    columns = False
    def __init__(self, num_proj: int = 8, proj_dim: int = 1, min_group_size: int = 8, **_ignored):
        # proj_dim is unused: a group's size is ceil(d / groups)
        _check_positive(min_group_size=min_group_size)
        super().__init__(1, num_proj)
        self.min_group_size = min_group_size

    def copies(self, fan_in: int) -> int:
        return max(1, min(self.num_proj, fan_in // self.min_group_size))

    def dim(self, fan_in: int) -> int:
        return math.ceil(fan_in / self.copies(fan_in))

    def applies_to(self, fan_in: int) -> bool:
        return self.copies(fan_in) > 1

    def _index(self, stack: Stack) -> Tuple[Tensor, List[Tuple[int, ...]]]:
        groups = [self.copies(self.stacker.buckets[b].fan_in) for b in self.buckets]
        return self.stacker.group_index(self.buckets, groups, stack.orders, stack.flat.device)

    def prepare(self, stack: Stack) -> None:
        self._index(stack)

    def rows(self, stack: Stack, mats) -> List[Tensor]:
        """Every bucket's coordinate groups ``[L * groups, N, size]``, all from one gather."""
        index, shapes = self._index(stack)
        parts = torch.split(stack.gather(index), [math.prod(shape) for shape in shapes])
        return [part.view(shape) for part, shape in zip(parts, shapes)]

    def extra_repr(self) -> str:
        return f"num_proj={self.num_proj}, min_group_size={self.min_group_size}"


def build(name: str, **options) -> Projection:
    return PROJECTIONS.get(name)(**options)


for _name, _cls in {"random": RandomProjection, "angle": AngleProjection, "adversarial": AdversarialProjection,
                    "group": GroupProjection}.items():
    PROJECTIONS.register(_name)(_cls)

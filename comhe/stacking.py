"""How a regulariser lays out the neurons of many layers for one batched computation, without copying a weight.

* **Flattening.** A layer's neurons are the rows of its weight, ``[N, ...] -> [N, d]``. Each weight is read as a 1-D
  view in its *memory order* (``flat_view``): a channels_last conv weight ``[out, in, kh, kw]`` is read as
  ``[out, kh, kw, in]``. Any fixed order of a neuron's coordinates gives the same Gram matrix, so the MHE energies
  and the random projections (i.i.d. entries) do not depend on it; the learned projections (AP, Adv) and the
  coordinate groups of G-CoMHE do, and read their buckets in the logical order (``Stack.logical``, one gather when
  some weight is not row-major).
* **Buckets.** Layers of one kind (projected or not) with the same fan-in ``d`` share one zero-padded stack
  ``[L, N, d]``, ``N`` the largest neuron count among them. Zero rows give zero Gram rows and columns, which the pair
  plan (``pairs.py``) never reads. ``d`` is never padded: that would need a gather per bucket and, for a random
  projection, FLOPs in proportion to the padded ``d``.
* **One cat.** The buckets are consecutive segments of one flat tensor made by one ``torch.cat`` of the flattened
  weights and zero blocks, ending with one zero at least (the cat then always yields the compute dtype, float32 for
  half-precision weights, and that zero is the source of padded coordinates in gathers). Its backward is views only:
  each weight's gradient is a slice of one buffer with the weight's own strides, which ``AccumulateGrad`` keeps
  without a copy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .layers import Layer, group_by_shape

Order = Optional[Tuple[int, ...]]  # the dims of a weight from outermost to innermost in memory; None: row-major


def index_dtype(size: int) -> torch.dtype:
    """int32 indices (half the memory of int64) where they reach every position."""
    return torch.int32 if size < 2 ** 31 - 1 else torch.int64


def flat_view(weight: Tensor) -> Tuple[Tensor, Order]:
    """``weight`` as a 1-D tensor in memory order, neurons outermost, and that order (``None``: row-major, the
    logical order). A view whenever the weight is dense with dim 0 outermost; otherwise a row-major copy."""
    if weight.is_contiguous():
        return weight.view(-1), None
    strides = weight.stride()
    order = tuple(sorted(range(weight.dim()), key=lambda i: (-strides[i], i)))
    if order[0] == 0:
        permuted = weight.permute(order)
        if permuted.is_contiguous():
            return permuted.view(-1), order
    return weight.reshape(-1), None


def memory_positions(shape: Sequence[int], order: Order) -> Tensor:
    """Where each logical coordinate of a neuron sits in its memory-order flattening: int64 ``[d]``."""
    d = math.prod(shape[1:])
    if order is None:
        return torch.arange(d)
    logical_at = torch.arange(d).view(tuple(shape[1:])).permute([i - 1 for i in order[1:]]).reshape(-1)
    positions = torch.empty(d, dtype=torch.long)
    positions[logical_at] = torch.arange(d)
    return positions


@dataclass(frozen=True)
class Bucket:
    """Layers stacked into one zero-padded tensor ``[L, N, d]`` at ``offset`` of the flat stack."""

    layers: Tuple[int, ...]    # indices into the regulariser's layer list, in stack order
    neurons: Tuple[int, ...]   # each one's neuron count (<= num_neurons)
    num_neurons: int           # N, the padded neuron count
    fan_in: int                # d
    projected: bool
    offset: int

    @property
    def shape(self) -> Tuple[int, int, int]:
        return len(self.layers), self.num_neurons, self.fan_in

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def plan_buckets(layers: Sequence[Layer], projected: Sequence[bool]) -> List[Bucket]:
    """One bucket per (projected, fan-in), in order of first appearance. Inside a bucket, same-shape layers stay
    together, shapes in order of first appearance among the layers of their kind (``layers.group_by_shape``): the
    order in which the random projections are drawn."""
    shape_rank: Dict[tuple, int] = {}
    for kind in (False, True):
        for rank, group in enumerate(group_by_shape([l for l, p in zip(layers, projected) if p == kind])):
            shape_rank[(kind, group[0].shape)] = rank
    members: Dict[tuple, List[int]] = {}
    for i, (layer, p) in enumerate(zip(layers, projected)):
        members.setdefault((p, layer.fan_in), []).append(i)
    buckets, offset = [], 0
    for (p, d), indices in members.items():
        indices.sort(key=lambda i: (shape_rank[(p, layers[i].shape)], i))
        neurons = tuple(layers[i].num_neurons for i in indices)
        bucket = Bucket(tuple(indices), neurons, max(neurons), d, p, offset)
        buckets.append(bucket)
        offset += bucket.size
    return buckets


class Stack:
    """One call's flat stack: ``flat`` (``[total]``, the compute dtype) and its buckets as views or gathers."""

    def __init__(self, stacker: "Stacker", flat: Tensor, orders: Tuple[Order, ...]):
        self.stacker, self.flat, self.orders = stacker, flat, orders
        self._logical: Dict[tuple, List[Tensor]] = {}
        self._parts: Optional[Tuple[Tensor, ...]] = None

    def view(self, b: int) -> Tensor:
        """Bucket ``b`` as ``[L, N, d]``, coordinates in memory order (a view)."""
        if self._parts is None:  # one split for all buckets: its backward is one cat (a narrow per bucket would
            # give each bucket a zero-filled gradient the size of the whole stack, then adds)
            self._parts = torch.split(self.flat, [b.size for b in self.stacker.buckets] + [1])
        return self._parts[b].view(self.stacker.buckets[b].shape)

    def logical(self, buckets: Sequence[int]) -> List[Tensor]:
        """Buckets ``[L, N, d]`` with every neuron's coordinates in the weight's logical (row-major) order: views
        when all their weights are row-major, else one gather for all of them (computed once per call)."""
        key = tuple(buckets)
        if key not in self._logical:
            index = self.stacker.logical_index(buckets, self.orders, self.flat.device)
            if index is None:
                self._logical[key] = [self.view(b) for b in buckets]
            else:
                shapes = [self.stacker.buckets[b].shape for b in buckets]
                parts = torch.split(self.flat.index_select(0, index), [math.prod(s) for s in shapes])
                self._logical[key] = [part.view(shape) for part, shape in zip(parts, shapes)]
        return self._logical[key]

    def gather(self, index: Tensor) -> Tensor:
        """Entries of the flat stack at ``index`` (the last entry is a zero)."""
        return self.flat.index_select(0, index.view(-1)).view(index.shape)


class Stacker(nn.Module):
    """Builds the flat stack of ``layers`` as planned by ``buckets``; holds the zero blocks (a buffer)."""

    zeros: Tensor

    def __init__(self, layers: Sequence[Layer], buckets: Sequence[Bucket], dtype: torch.dtype,
                 device: torch.device):
        super().__init__()
        self.layers, self.buckets = list(layers), list(buckets)
        pads = [(b.num_neurons - n) * b.fan_in for b in buckets for n in b.neurons]
        self.register_buffer("zeros", torch.zeros(max(pads + [1]), dtype=dtype, device=device), persistent=False)
        self.total = sum(b.size for b in buckets) + 1  # the last entry is the zero padded coordinates read
        # the gather indices, per layout and device (``logical_index``, ``group_index``)
        self._logical_cache: Dict[tuple, Optional[Tensor]] = {}
        self._group_cache: Dict[tuple, Tuple[Tensor, List[Tuple[int, int, int]]]] = {}

    @property
    def zero_slot(self) -> int:
        return self.total - 1

    def forward(self) -> Stack:
        weights = [layer.weight for layer in self.layers]
        if weights[0].device != self.zeros.device:
            raise ValueError(f"the regulariser's tensors are on {self.zeros.device} but the model's weights are on "
                             f"{weights[0].device}: build it after model.to(device), or move it too (reg.to(device))")
        pieces: List[Tensor] = []
        orders: List[Order] = [None] * len(weights)
        for bucket in self.buckets:
            for i, n in zip(bucket.layers, bucket.neurons):
                flat, orders[i] = flat_view(weights[i])
                pieces.append(flat)
                pad = (bucket.num_neurons - n) * bucket.fan_in
                if pad:
                    pieces.append(self.zeros[:pad])
        pieces.append(self.zeros[:1])
        return Stack(self, torch.cat(pieces), tuple(orders))

    def slot_offsets(self, b: int) -> List[int]:
        bucket = self.buckets[b]
        step = bucket.num_neurons * bucket.fan_in
        return [bucket.offset + slot * step for slot in range(len(bucket.layers))]

    def _positions(self, b: int, orders: Tuple[Order, ...]) -> Tensor:
        """int64 ``[L, N, d]``: where logical coordinate ``j`` of neuron ``n`` of slot ``l`` is in the flat stack
        (padded neurons: the zero slot)."""
        bucket = self.buckets[b]
        L, N, d = bucket.shape
        out = torch.full((L, N, d), self.zero_slot, dtype=torch.long)
        for slot, (i, n, start) in enumerate(zip(bucket.layers, bucket.neurons, self.slot_offsets(b))):
            coords = memory_positions(self.layers[i].shape, orders[i])
            out[slot, :n] = start + torch.arange(n)[:, None] * d + coords[None, :]
        return out

    def _layout(self, buckets: Sequence[int], orders: Tuple[Order, ...]) -> tuple:
        return tuple(orders[i] for b in buckets for i in self.buckets[b].layers)

    def logical_index(self, buckets: Sequence[int], orders: Tuple[Order, ...], device: torch.device
                      ) -> Optional[Tensor]:
        """The gather index of ``Stack.logical`` for these buckets under these memory orders (``None``: all
        row-major, views suffice); built once per distinct layout and cached."""
        layout = self._layout(buckets, orders)
        key = (tuple(buckets), layout, device)
        if key not in self._logical_cache:
            self._logical_cache[key] = None if all(o is None for o in layout) else \
                torch.cat([self._positions(b, orders).view(-1) for b in buckets]).to(
                    device=device, dtype=index_dtype(self.total))
        return self._logical_cache[key]

    def group_index(self, buckets: Sequence[int], groups: Sequence[int], orders: Tuple[Order, ...],
                    device: torch.device) -> Tuple[Tensor, List[Tuple[int, int, int]]]:
        """One gather index for G-CoMHE over ``buckets``, and each bucket's shape ``[L * groups, N, size]`` in it:
        every neuron split into ``groups`` contiguous groups of ``size = ceil(d / groups)`` logical coordinates, the
        last zero-padded."""
        key = (tuple(buckets), tuple(groups), self._layout(buckets, orders), device)
        if key not in self._group_cache:
            parts, shapes = [], []
            for b, count in zip(buckets, groups):
                positions = self._positions(b, orders)  # [L, N, d]
                L, N, d = positions.shape
                size = math.ceil(d / count)
                padded = torch.full((L, N, count * size), self.zero_slot, dtype=torch.long)
                padded[..., :d] = positions
                parts.append(padded.view(L, N, count, size).transpose(1, 2).reshape(-1))
                shapes.append((L * count, N, size))
            self._group_cache[key] = (torch.cat(parts).to(device=device, dtype=index_dtype(self.total)), shapes)
        return self._group_cache[key]

    def extra_repr(self) -> str:
        return ", ".join(f"{'projected ' if b.projected else ''}[{len(b.layers)}, {b.num_neurons}, {b.fan_in}]"
                         for b in self.buckets)

    def _apply(self, fn, recurse=True):  # a move (reg.to(device)) invalidates the cached indices
        self._logical_cache, self._group_cache = {}, {}
        return super()._apply(fn, recurse)

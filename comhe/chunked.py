"""The fused pair energy on the CPU for long pair lists: a few Grams at a time, dense (docs/reference.md §1).

Why: the packed list (``pairs.py``) makes every temporary as long as the list: for RP-CoMHE on PointNet (T), 60 Grams
of 1,024 neurons and more, 84M entries, 335 MB each in float32, a dozen forward and backward. On the CPU each one is a
fresh ``mmap`` (glibc maps every allocation above its largest mmap threshold, 32 MiB, and unmaps it on free), zeroed
by the kernel on first touch and streamed from memory: the kernel's time exceeded the arithmetic's.
``PairPlan.chunked(device)`` says when this path is taken instead (on the CPU, lists above ``PACKED_CPU_ENTRIES``);
the GPU keeps the packed list, where one pass of few kernels is what counts.

How: the plan's blocks are cut into *chunks* of consecutive Grams of one bucket with one neuron count, kind and weight,
at most ``CHUNK_ENTRIES`` Gram entries each (one Gram when a Gram alone is larger). Per chunk ``[b, n, n]``: one
``bmm`` for the Grams of the real neurons (padding is never read), the cosines of the whole square (both triangles:
twice the pairs of the packed list, but contiguous and without an index), the terms, each Gram's sum and at once the
gradient ``D = dE/dG`` (symmetric) and one ``bmm`` back to the neurons, ``dR = (D + D^T) R = 2 D R`` for
``G = R R^T`` (``2 R D`` for ``G = R^T R``). Every temporary is one chunk (glibc recycles it from the heap, and it
stays in cache); the backward only scales the kept gradient of the neurons (first order only, as ``GramEnergy``).

The math, per block of ``n`` neurons and ``P = energy.num_pairs(n, half_space)`` pairs, over the ordered pairs
``i != j`` (each unordered pair twice), with the packed list's cosines ``c`` (clamped to ``[-1, 1]``, the clamp taken
as the identity in the gradient):

* full space: ``E = sum_{i != j} g(c_ij) / (2P)``;
* half space: ``E = (sum_{i != j} (g(c_ij) + g(-c_ij)) + sum_i g(-c_ii)) / P``, where ``g(c) + g(-c)`` is
  ``1 / (1 - c^2)`` for s = 2 (``energy.half_space_pair_term``).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .energy import Power, num_pairs
from .terms import term_slopes, term_values

# Gram entries per chunk: 1 MiB in float32, half a core's L2 on the benchmark machine. One thread, RP-CoMHE's buckets
# of PointNet (T): 2^18 was as fast as or faster than 2^17, 2^19 and 2^20 for n = 128 ... 512 (BENCHMARKS.md §7).
CHUNK_ENTRIES = 1 << 18


@dataclass(frozen=True)
class Chunk:
    """Consecutive blocks of one bucket that are computed together: ``count`` Grams ``[n, n]`` alike."""

    bucket: int        # which rows tensor
    first: int         # the slot of its first Gram in the bucket
    count: int
    neurons: int       # n, the real neurons of each Gram
    half_space: bool
    weight: float      # each block's loss weight
    block: int         # the plan's index of its first block


def plan_chunks(blocks, shapes: Sequence[Tuple[int, int]], limit: Optional[int] = None
                ) -> Tuple[List[Chunk], List[bool]]:
    """The chunks of the plan's ``blocks`` (in block order) over buckets of ``shapes`` (Grams ``B``, padded neuron
    count ``N``) laid out one after the other in the flat Gram buffer, at most ``limit`` (``CHUNK_ENTRIES``) Gram
    entries each unless one Gram is larger, and per bucket whether its chunks cover every entry of its neurons (every
    slot a block of ``N`` real neurons; otherwise its gradient starts from zeros)."""
    limit = CHUNK_ENTRIES if limit is None else limit
    starts, start = [], 0
    for count, stride in shapes:
        starts.append(start)
        start += count * stride * stride
    chunks: List[Chunk] = []
    covered = [0] * len(shapes)
    for k, blk in enumerate(blocks):
        b = bisect.bisect_right(starts, blk.offset) - 1
        count, stride = shapes[b]
        slot, rest = divmod(blk.offset - starts[b], stride * stride)
        if b < 0 or stride != blk.stride or rest or slot >= count:
            raise ValueError(f"block {k} ({blk}) is not a Gram of the buckets {list(shapes)}")
        covered[b] += blk.neurons == stride
        last = chunks[-1] if chunks else None
        if (last is not None and (last.bucket, last.neurons, last.half_space, last.weight) ==
                (b, blk.neurons, blk.half_space, blk.weight) and last.first + last.count == slot
                and (last.count + 1) * blk.neurons ** 2 <= limit):
            chunks[-1] = Chunk(b, last.first, last.count + 1, last.neurons, last.half_space, last.weight, last.block)
        else:
            chunks.append(Chunk(b, slot, 1, blk.neurons, blk.half_space, blk.weight, k))
    return chunks, [covered[b] == shapes[b][0] for b in range(len(shapes))]


def _pair_terms(cos: Tensor, s: Power, half_space: bool, slopes: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """Per ordered pair: the term (``g(c)`` in full space, ``g(c) + g(-c)`` in half space) and, if asked, its slope
    in ``c``. cos: ``[b, n, n]``; new tensors."""
    if half_space and s == 2:  # 1 / (1 - c^2), slope 2c / (1 - c^2)^2
        value = torch.mul(cos, cos).neg_().add_(1.0).reciprocal_()
        return value, (torch.mul(value, value).mul_(cos).mul_(2.0) if slopes else None)
    if not half_space:
        value = term_values(cos, s)
        return value, (term_slopes(cos, value, s) if slopes else None)
    neg = cos.neg()
    plus, minus = term_values(cos, s), term_values(neg, s)
    slope = term_slopes(cos, plus, s).sub_(term_slopes(neg, minus, s)) if slopes else None
    return plus.add_(minus), slope


def chunk_energy(x: Tensor, columns: bool, chunk: Chunk, s: Power, eps: float,
                 grad: Optional[Tensor] = None) -> Tensor:
    """Each Gram's energy ``[b]`` (unweighted) from the real neurons ``x`` of a chunk, ``[b, n, k]`` (rows) or
    ``[b, k, n]`` (``columns``); writes ``weight * dE/dx`` into ``grad`` (``x``'s shape) when given."""
    gram = torch.bmm(x.transpose(1, 2), x) if columns else torch.bmm(x, x.transpose(1, 2))      # [b, n, n]
    inv = gram.diagonal(dim1=1, dim2=2).add(eps).rsqrt_()                                         # [b, n]
    cos = gram.mul_(inv[:, :, None]).mul_(inv[:, None, :]).clamp_(-1.0, 1.0)                      # in place
    pairs = num_pairs(chunk.neurons, chunk.half_space)
    unit = 0.0 if pairs == 0 else 1.0 / pairs if chunk.half_space else 0.5 / pairs
    value, slope = _pair_terms(cos, s, chunk.half_space, grad is not None)
    value.diagonal(dim1=1, dim2=2).zero_()  # i = j is no pair (its term may be infinite)
    total = value.sum((1, 2))
    if chunk.half_space:  # the pairs (w_i, -w_i), at -c_ii
        antipodal_x = cos.diagonal(dim1=1, dim2=2).neg()
        antipodal = term_values(antipodal_x, s)
        total.add_(antipodal.sum(1))
    if grad is not None:
        scale = 2.0 * chunk.weight * unit  # 2: dR = (D + D^T) R = 2 D R
        dcos = slope.mul_(scale)
        dcos.diagonal(dim1=1, dim2=2).zero_()
        # dc_ij / dG_ii = -c_ij / (2 (G_ii + eps)), for c_ij and c_ji alike: -inv_i^2 times the row sum of dcos * c.
        diag = torch.mul(dcos, cos).sum(2).mul_(inv).mul_(inv).neg_()                             # [b, n]
        if chunk.half_space:  # d(-c_ii) / dG_ii = -eps / (G_ii + eps)^2
            diag.add_(term_slopes(antipodal_x, antipodal, s).mul_(inv.square().square()).mul_(-eps * scale))
        dgram = dcos.mul_(inv[:, :, None]).mul_(inv[:, None, :])
        dgram.diagonal(dim1=1, dim2=2).copy_(diag)
        a, b = (x, dgram) if columns else (dgram, x)
        if grad.is_contiguous():
            torch.bmm(a, b, out=grad)
        else:  # the real neurons of a padded bucket
            grad.copy_(torch.bmm(a, b))
    return total.mul_(unit)


def chunked_energy(plan, s: Power, eps: float, columns: Sequence[bool], rows: Sequence[Tensor],
                   needs_grad: Sequence[bool]) -> Tuple[Tensor, Tensor, List[Optional[Tensor]]]:
    """``(loss, energies, grads)``: the weighted sum of the blocks' energies, each block's energy ``[blocks]``
    (unweighted, in plan order), and per rows tensor the gradient of the loss (``None`` where not asked)."""
    shapes = tuple((r.shape[0], r.shape[2] if col else r.shape[1]) for r, col in zip(rows, columns))
    chunks, covered = plan.chunks(shapes)
    grads = [(torch.empty_like(r) if full else torch.zeros_like(r)) if need else None
             for r, full, need in zip(rows, covered, needs_grad)]
    energies = []
    for chunk in chunks:
        col, n = columns[chunk.bucket], chunk.neurons
        part = slice(chunk.first, chunk.first + chunk.count)
        x = rows[chunk.bucket][part]
        x = x[:, :, :n] if col else x[:, :n]
        g = grads[chunk.bucket]
        if g is not None:
            g = g[part][:, :, :n] if col else g[part][:, :n]
        energies.append(chunk_energy(x, col, chunk, s, eps, g))
    energies = torch.cat(energies) if len(energies) > 1 else energies[0]
    return torch.dot(energies, plan.block_weight), energies, grads

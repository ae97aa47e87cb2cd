"""The fused pair energy on the CPU for long pair lists: a few Grams at a time, dense (docs/reference.md §1).

Why: the packed list (``pairs.py``) makes every temporary as long as the list: for RP-CoMHE on PointNet (T), 60 Grams
of 1,024 neurons and more, 84M entries, 335 MB each in float32, a dozen forward and backward. On the CPU each one is a
fresh ``mmap`` (glibc maps every allocation above its largest mmap threshold, 32 MiB, and unmaps it on free), zeroed
by the kernel on first touch and streamed from memory: the kernel's time exceeded the arithmetic's.
``PairPlan.chunked(device)`` says when this path is taken instead (on the CPU, lists above ``PACKED_CPU_ENTRIES``);
the GPU keeps the packed list, where one pass of few kernels is what counts.

How: the plan's blocks are cut into *chunks*: consecutive Grams of one bucket with one neuron count, kind and weight,
at most ``CHUNK_ENTRIES`` Gram entries in all, or one Gram in panels of rows when a Gram alone is larger. The neurons
are normalised first (``y_i = w_i / sqrt(|w_i|^2 + eps)``), so one ``bmm`` per panel gives the cosines of the real
neurons (padding is never read) for whole rows ``[b, p, n]``: both triangles, twice the pairs of the packed list, but
contiguous and without an index. Then the terms, each Gram's sum, and at once the gradient: ``dE/dG`` is symmetric, so
the neurons get ``dR = 2 R D`` (``G = R^T R``; ``2 D R`` for ``G = R R^T``), one ``bmm`` per panel of the slopes with
the normalised neurons, plus the diagonal of ``D`` (through the norms) on the neurons themselves. Every temporary is
one panel (glibc recycles it from the heap, and it stays in cache); the backward only scales the kept gradient of the
neurons (first order only, as ``GramEnergy``).

The math, per block of ``n`` neurons and ``P = energy.num_pairs(n, half_space)`` pairs, over the ordered pairs
``i != j`` (each unordered pair twice), with the packed list's cosines ``c`` (clamped to ``[-1, 1]``, the clamp taken
as the identity in the gradient):

* full space: ``E = sum_{i != j} g(c_ij) / (2P)``;
* half space: ``E = (sum_{i != j} (g(c_ij) + g(-c_ij)) + sum_i g(-c_ii)) / P``, where ``g(c) + g(-c)`` is
  ``1 / (1 - c^2)`` for s = 2 (``energy.half_space_pair_term``), slope ``2 c / (1 - c^2)^2``;
* the gradient through the norms: ``dc_ij / dG_ii = -c_ij / (2 (G_ii + eps))`` (for ``c_ij`` and ``c_ji``), and
  ``d c_ii / d G_ii = eps / (G_ii + eps)^2``.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .energy import Power, num_pairs
from .terms import term_slopes, term_values

# Gram entries per chunk (or panel of rows): 512 KiB in float32, a quarter of a core's L2 on the benchmark machine.
# RP-CoMHE on PointNet (T), one thread, forward + backward: 0.33 s at 2^15, 0.30 s at 2^16 ... 2^18, 0.34 s at
# 2^19 ... 2^21 (BENCHMARKS.md section 7).
CHUNK_ENTRIES = 1 << 17


@dataclass(frozen=True)
class Chunk:
    """Consecutive blocks of one bucket that are computed together: ``count`` Grams ``[n, n]`` alike, ``panel`` rows
    of them at a time (``n``, unless one Gram is larger than the limit)."""

    bucket: int        # which rows tensor
    first: int         # the slot of its first Gram in the bucket
    count: int
    neurons: int       # n, the real neurons of each Gram
    half_space: bool
    weight: float      # each block's loss weight
    block: int         # the plan's index of its first block
    panel: int


def plan_chunks(blocks, shapes: Sequence[Tuple[int, int]], limit: Optional[int] = None
                ) -> Tuple[List[Chunk], List[bool]]:
    """The chunks of the plan's ``blocks`` (in block order) over buckets of ``shapes`` (Grams ``B``, padded neuron
    count ``N``) laid out one after the other in the flat Gram buffer, at most ``limit`` (``CHUNK_ENTRIES``) Gram
    entries each (a larger Gram: alone, in panels of ``limit // n`` rows), and per bucket whether its chunks cover
    every entry of its neurons (every slot a block of ``N`` real neurons; otherwise its gradient starts from zeros)."""
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
        n = blk.neurons
        last = chunks[-1] if chunks else None
        if (last is not None and (last.bucket, last.neurons, last.half_space, last.weight) ==
                (b, n, blk.half_space, blk.weight) and last.first + last.count == slot
                and (last.count + 1) * n * n <= limit):
            chunks[-1] = Chunk(b, last.first, last.count + 1, n, last.half_space, last.weight, last.block, n)
        else:
            panel = n if n * n <= limit else max(1, limit // max(n, 1))
            chunks.append(Chunk(b, slot, 1, n, blk.half_space, blk.weight, k, panel))
    return chunks, [covered[b] == shapes[b][0] for b in range(len(shapes))]


def _pair_terms(cos: Tensor, s: Power, half_space: bool, slopes: bool, row0: int
                ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], float]:
    """``(value, slope, slope_dot_cos, factor)`` of a panel of cosines ``[b, p, n]`` (rows ``row0 ...``, so pair
    ``(i, i)`` is at ``[:, i - row0, i]``, and is zeroed): per ordered pair the term (``g(c)`` in full space,
    ``g(c) + g(-c)`` in half space), its slope in ``c`` (``factor * slope``), and per row ``sum_j slope_ij c_ij``
    (``factor *`` that); ``slope`` may overwrite ``cos``."""
    if half_space and s == 2:  # value v = 1 / (1 - c^2); slope 2 c v^2, and sum_j slope c = 2 |c v|^2 per row
        value = torch.addcmul(cos.new_ones(()), cos, cos, value=-1.0).reciprocal_()
        value.diagonal(offset=row0, dim1=1, dim2=2).zero_()
        if not slopes:
            return value, None, None, 2.0
        cv = cos.mul_(value)
        dot = torch.linalg.vector_norm(cv, dim=2).square_()
        return value, cv.mul_(value), dot, 2.0
    if not half_space:
        value = term_values(cos, s)
        slope = term_slopes(cos, value, s) if slopes else None
    else:
        neg = cos.neg()
        plus, minus = term_values(cos, s), term_values(neg, s)
        slope = term_slopes(cos, plus, s).sub_(term_slopes(neg, minus, s)) if slopes else None
        value = plus.add_(minus)
    value.diagonal(offset=row0, dim1=1, dim2=2).zero_()  # i = j is no pair (its term may be infinite)
    if slope is None:
        return value, None, None, 1.0
    slope.diagonal(offset=row0, dim1=1, dim2=2).zero_()
    return value, slope, torch.mul(slope, cos).sum(2), 1.0


def chunk_energy(x: Tensor, columns: bool, chunk: Chunk, s: Power, eps: float,
                 grad: Optional[Tensor] = None) -> Tensor:
    """Each Gram's energy ``[b]`` (unweighted) from the real neurons ``x`` of a chunk, ``[b, n, k]`` (rows) or
    ``[b, k, n]`` (``columns``); writes ``weight * dE/dx`` into ``grad`` (``x``'s shape) when given."""
    k_dim = 1 if columns else 2
    sq = torch.linalg.vector_norm(x, dim=k_dim).square_()                                        # |w_i|^2 [b, n]
    inv = sq.add(eps).rsqrt_()
    y = x * inv.unsqueeze(k_dim)                                                                 # normalised
    b, n = sq.shape
    pairs = num_pairs(n, chunk.half_space)
    unit = 0.0 if pairs == 0 else 1.0 / pairs if chunk.half_space else 0.5 / pairs
    total = sq.new_zeros(b)
    if grad is not None:
        # per neuron j, sum_i slope_ij y_i: accumulated over the panels (columns), or written a panel of rows at a time
        # (rows; a Gram cut into panels is alone in its chunk, so each panel's rows are contiguous)
        z = torch.zeros_like(y) if columns else torch.empty_like(y)
        dot = sq.new_empty(b, n)
    for row0 in range(0, n, chunk.panel):
        rows = slice(row0, min(n, row0 + chunk.panel))
        if columns:
            part = y[:, :, rows]
            cos = torch.bmm(part.transpose(1, 2), y)                                             # [b, p, n]
        else:
            part = y[:, rows]
            cos = torch.bmm(part, y.transpose(1, 2))
        value, slope, slope_dot_cos, factor = _pair_terms(cos.clamp_(-1.0, 1.0), s, chunk.half_space,
                                                          grad is not None, row0)
        total.add_(value.sum((1, 2)))
        if grad is not None:
            if slope is None:
                raise RuntimeError("_pair_terms returned no slopes although they were asked for")
            dot[:, rows] = slope_dot_cos
            if columns:
                z.baddbmm_(part, slope)
            else:
                torch.bmm(slope, y, out=z[:, rows])
    if chunk.half_space:  # the pairs (w_i, -w_i), at -c_ii = -|w_i|^2 / (|w_i|^2 + eps)
        antipodal_x = sq.mul(inv).mul_(inv).clamp_(max=1.0).neg_()
        antipodal = term_values(antipodal_x, s)
        total.add_(antipodal.sum(1))
    if grad is not None:
        scale = 2.0 * chunk.weight * unit  # 2: dR = (D + D^T) R = 2 D R
        inv_sq = inv.square()
        diag = dot.mul_(inv_sq).mul_(-factor)                                # D_ii / scale, through the norms
        if chunk.half_space:  # and through c_ii: d(-c_ii) / dG_ii = -eps / (G_ii + eps)^2
            diag.addcmul_(term_slopes(antipodal_x, antipodal, s), inv_sq.square_(), value=-eps)
        torch.mul(z, inv.mul_(factor * scale).unsqueeze(k_dim), out=grad)    # off the diagonal: dG_ij = slope / norms
        grad.addcmul_(x, diag.unsqueeze(k_dim), value=scale)
    return total.mul_(unit)


def chunked_energy(plan, s: Power, eps: float, columns: Sequence[bool], rows: Sequence[Tensor],
                   needs_grad: Sequence[bool]) -> Tuple[Tensor, Tensor, List[Optional[Tensor]]]:
    """``(loss, energies, grads)``: the weighted sum of the blocks' energies, each block's energy ``[blocks]``
    (unweighted, in plan order), and per rows tensor the gradient of the loss (``None`` where not asked)."""
    shapes = tuple((r.shape[0], r.shape[2] if col else r.shape[1]) for r, col in zip(rows, columns))
    chunks, covered = plan.chunks(shapes)
    grads = [(torch.empty_like(r) if full else torch.zeros_like(r)) if need else None
             for r, full, need in zip(rows, covered, needs_grad)]
    chunk_energies: List[Tensor] = []
    for chunk in chunks:
        col, n = columns[chunk.bucket], chunk.neurons
        part = slice(chunk.first, chunk.first + chunk.count)
        x = rows[chunk.bucket][part]
        x = x[:, :, :n] if col else x[:, :n]
        g = grads[chunk.bucket]
        if g is not None:
            g = g[part][:, :, :n] if col else g[part][:, :n]
        chunk_energies.append(chunk_energy(x, col, chunk, s, eps, g))
    energies = torch.cat(chunk_energies) if chunk_energies else rows[0].new_zeros(0)
    return torch.dot(energies, plan.block_weight), energies, grads

"""The energy of many Gram matrices at once, as one packed list of pair terms (docs/reference.md §1).

A *block* is one Gram matrix ``[n, n]`` (a layer, or one projected copy of a layer), stored row-major with row length
``stride >= n`` at ``offset`` of one flat buffer; rows and columns past ``n`` are padding and never read. The loss is
``sum_blocks weight_b * E_b`` with ``E_b`` the block's pair-mean energy (``energy.py``). Every block adds *entries*:

* full space: each pair ``i < j`` once, at cosine ``c_ij``;
* half space (the virtual neurons ``-w``): each pair ``i < j`` at ``+c_ij`` and at ``-c_ij``, each counted twice
  (``2 g(c) + 2 g(-c)``), and the pair ``(w_i, -w_i)`` once at ``-c_ii = -|w_i|^2 / (|w_i|^2 + eps)``.

The *unique* entries (full pairs, half pairs, antipodal pairs; ``U = F + H + A``) are gathered once:
``c = G_ab / sqrt((G_aa + eps)(G_bb + eps))``, clamped to ``[-1, 1]``; the entries of the sum are
``x = [c_F, c_H, -c_H, -c_A]`` (``X = F + 2H + A``), ``loss = sum_x coef_x g_s(x)``. Only real pairs are touched, so
padding costs nothing here, and the whole loss is one chain of ~13 kernels whatever the number of layers.

Two implementations of the same math: ``pair_energy`` (differentiable torch ops: any order of derivatives, what
``torch.compile`` traces) and ``GramEnergy`` (a fused ``autograd.Function`` taking the Gram rows, with a hand-written
first-order backward: ~20 kernels for any number of layers). On the CPU a long list (``PairPlan.chunked``) makes
``GramEnergy`` take the Gram-by-Gram path of ``chunked.py`` instead, and the index buffers are only built if the packed
list is asked for. ``tests/library/test_stacking_pairs.py`` and ``test_chunked.py`` check every path against a
per-block float64 reference, values and gradients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .chunked import chunked_energy, plan_chunks
from .energy import Power, canonical_power, num_pairs, pair_term
from .stacking import index_dtype
from .terms import term_slopes, term_values

# On the CPU a plan of more entries than this takes the chunked path (``chunked.py``): its packed temporaries would be
# above glibc's largest mmap threshold (32 MiB in float32), each one freshly mapped and zeroed by the kernel. The
# op-count goals' lists (RP-CoMHE on CNN-9: 6.4M entries) stay packed: one pass of few ops.
PACKED_CPU_ENTRIES = 1 << 23


@dataclass(frozen=True)
class Block:
    """One Gram matrix in the flat buffer and how it counts."""

    offset: int        # first element of its (padded) Gram in the flat buffer
    stride: int        # row length of the padded Gram
    neurons: int       # n real neurons: rows and columns >= n are padding
    half_space: bool
    weight: float      # loss weight of its pair-mean energy (lambda / copies)
    layer: int         # which layer it belongs to (stats)


def plan_blocks(buckets: Sequence, term: Callable[[int], Tuple[int, bool, float]]) -> Tuple[List[Block], int]:
    """The Grams of ``buckets`` (``stacking`` buckets, in order) laid out one after the other in a flat buffer:
    ``term(layer)`` gives that layer's ``(copies, half_space, weight of each copy)``. Returns the blocks and the
    buffer's length."""
    blocks, offset = [], 0
    for bucket in buckets:
        for i, n in zip(bucket.layers, bucket.neurons):
            copies, half_space, weight = term(i)
            for _ in range(copies):
                blocks.append(Block(offset, bucket.num_neurons, n, half_space, weight, i))
                offset += bucket.num_neurons ** 2
    return blocks, offset


class ExactConstants(nn.Module):
    """A module whose floating constants (loss weights) are rebuilt from their exact values at every conversion: a
    regulariser built for float32 weights and then moved to float64 (``model.double()``) gets the float64 constants,
    not float32 roundings of them (``1 / 15`` in float32 is off by 1e-8)."""

    def register_constant(self, name: str, values: List[float], dtype: torch.dtype, device: torch.device) -> None:
        self.__dict__.setdefault("_exact", {})[name] = list(values)
        self.register_buffer(name, torch.tensor(values, dtype=dtype, device=device), persistent=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name, values in self.__dict__.get("_exact", {}).items():
            now = self._buffers[name]
            self._buffers[name] = torch.tensor(values, dtype=now.dtype, device=now.device)
        return self


class PairPlan(ExactConstants):
    """The packed entries of ``blocks``: index buffers on ``device`` (not in ``state_dict``), built when first needed
    (``indices``) if the plan is ``chunked`` there, else at once.

    ``diag`` ``[M]``: the diagonal position of each real neuron; ``pos`` ``[U]``: each unique entry's position;
    ``ab`` ``[2U]``: the neuron ids ``a``, then ``b``, of each unique entry; ``segment_length`` / ``segment_coef``:
    the entries of ``x`` come in segments of one block each (``[F | H | -H | -A]``), all with one coefficient, so
    ``coef`` ``[X]`` is expanded per call (``coefficients``) instead of being stored. Persistent memory: 12 bytes per
    unique pair (int32 indices), a third of the float Grams it reads. ``block_weight`` ``[blocks]``: each block's
    loss weight (the chunked path).
    """

    segment_length: Tensor
    segment_coef: Tensor
    block_weight: Tensor
    diag: Optional[Tensor]
    pos: Optional[Tensor]
    ab: Optional[Tensor]

    def __init__(self, blocks: Sequence[Block], total: int, num_layers: int, dtype: torch.dtype,
                 device: torch.device):
        super().__init__()
        self.blocks, self.total, self.num_layers = list(blocks), int(total), num_layers
        full = [k for k, blk in enumerate(self.blocks) if not blk.half_space]
        half = [k for k, blk in enumerate(self.blocks) if blk.half_space]
        self.num_full = sum(math.comb(self.blocks[k].neurons, 2) for k in full)
        self.num_half = sum(math.comb(self.blocks[k].neurons, 2) for k in half)
        self.num_antipodal = sum(self.blocks[k].neurons for k in half)
        # x order [F | H | -H | -A], one segment per block: (entries, unit = the coefficient of a block of weight 1
        # (its pair mean), block).
        segments: List[Tuple[int, float, int]] = []
        for k in full:
            n = self.blocks[k].neurons
            segments.append((math.comb(n, 2), 1.0 / num_pairs(n) if n > 1 else 0.0, k))
        for _sign in (+1, -1):
            segments += [(math.comb(self.blocks[k].neurons, 2), 2.0 / num_pairs(self.blocks[k].neurons, True), k)
                         for k in half]
        segments += [(self.blocks[k].neurons, 1.0 / num_pairs(self.blocks[k].neurons, True), k) for k in half]
        self.num_entries = sum(seg[0] for seg in segments)
        self.segment_units = [(seg[1], seg[2]) for seg in segments]
        self.copies: Dict[int, int] = {}
        for blk in self.blocks:
            self.copies[blk.layer] = self.copies.get(blk.layer, 0) + 1
        self.register_buffer("segment_length", torch.tensor([seg[0] for seg in segments], dtype=torch.long,
                                                            device=device), persistent=False)
        self.register_constant("segment_coef", [seg[1] * self.blocks[seg[2]].weight for seg in segments], dtype,
                               device)
        self.register_constant("block_weight", [blk.weight for blk in self.blocks], dtype, device)
        # (key, coef [X]): see ``coefficients``
        self._cpu_coefficients: Optional[Tuple[Tuple[torch.dtype, int], Tensor]] = None
        self._chunks: Dict[tuple, tuple] = {}
        self.cpu_chunked = self.num_entries > PACKED_CPU_ENTRIES
        for name in ("diag", "pos", "ab"):
            self.register_buffer(name, None, persistent=False)
        if not self.chunked(self.segment_coef.device):
            self.indices()

    def chunked(self, device: torch.device) -> bool:
        """Whether the fused energy takes the chunked path (``chunked.py``) on ``device``: a long list on the CPU."""
        return device.type == "cpu" and self.cpu_chunked

    def chunks(self, shapes: Tuple[Tuple[int, int], ...]) -> tuple:
        """``chunked.plan_chunks`` for buckets of these ``(Grams, padded neurons)``, computed once."""
        if shapes not in self._chunks:
            self._chunks[shapes] = plan_chunks(self.blocks, shapes)
        return self._chunks[shapes]

    def indices(self) -> Tuple[Tensor, Tensor, Tensor]:
        """``(diag, pos, ab)``, built on the plan's device the first time they are asked for (call it eagerly before
        a compiled graph reads them)."""
        if self.diag is None or self.pos is None or self.ab is None:  # built together: all None or none
            diag, pos, ab = self._build_indices(self.segment_coef.device)
            self.diag, self.pos, self.ab = diag, pos, ab
            return diag, pos, ab
        return self.diag, self.pos, self.ab

    def _build_indices(self, device: torch.device) -> Tuple[Tensor, Tensor, Tensor]:
        dtype = index_dtype(max(self.total, 1))
        first, count = [], 0
        for blk in self.blocks:
            first.append(count)
            count += blk.neurons
        full = [k for k, blk in enumerate(self.blocks) if not blk.half_space]
        half = [k for k, blk in enumerate(self.blocks) if blk.half_space]
        triu: Dict[int, Tensor] = {}

        def pair_part(k: int) -> Tuple[Tensor, Tensor, Tensor]:
            blk = self.blocks[k]
            if blk.neurons not in triu:
                triu[blk.neurons] = torch.triu_indices(blk.neurons, blk.neurons, 1, dtype=dtype,
                                                           device=device)
            i, j = triu[blk.neurons]
            return blk.offset + i * blk.stride + j, first[k] + i, first[k] + j

        def diag_part(k: int) -> Tuple[Tensor, Tensor, Tensor]:
            blk = self.blocks[k]
            i = torch.arange(blk.neurons, dtype=dtype, device=device)
            return blk.offset + i * (blk.stride + 1), first[k] + i, first[k] + i

        diag = [diag_part(k)[0] for k in range(len(self.blocks))]
        parts = [pair_part(k) for k in full + half] + [diag_part(k) for k in half]  # antipodal: a = b = i
        empty = torch.zeros(0, dtype=dtype, device=device)
        pos, a, b = (torch.cat([p[n] for p in parts]) if parts else empty for n in range(3))
        return torch.cat(diag) if diag else empty, pos, torch.cat([a, b])

    @property
    def num_unique(self) -> int:
        return self.num_full + self.num_half + self.num_antipodal

    def extra_repr(self) -> str:
        return f"{len(self.blocks)} Grams, {self.num_unique} pairs, {self.num_entries} terms"

    def coefficients(self) -> Tensor:
        """``coef`` ``[X]``: each entry's weight in the loss (its block's weight / pairs, x2 for half-space pairs).

        On the GPU it is expanded per call (one kernel; no persistent memory). On the CPU ``repeat_interleave`` is the
        slowest op of the whole regulariser (~0.3 s per 67M entries, one thread: it builds an int64 index first), so
        the expansion is kept, per device and dtype, at 4 bytes per entry."""
        coef = self.segment_coef
        if coef.device.type != "cpu":
            return torch.repeat_interleave(coef, self.segment_length, output_size=self.num_entries)
        key = (coef.dtype, coef.data_ptr())
        if self._cpu_coefficients is None or self._cpu_coefficients[0] != key:
            expanded = torch.repeat_interleave(coef, self.segment_length, output_size=self.num_entries)
            self._cpu_coefficients = (key, expanded)
        return self._cpu_coefficients[1]

    def per_layer(self, t: Tensor) -> List[float]:
        """Each layer's pair-mean energy (averaged over its copies) from the entries' terms ``t`` ``[X]`` (the packed
        list), or from each block's energy ``[blocks, 1]`` (the chunked path); stats only (one host copy)."""
        out = [0.0] * self.num_layers
        if t.dim() == 2:
            for energy, blk in zip(t.detach().view(-1).tolist(), self.blocks):
                out[blk.layer] += energy / self.copies[blk.layer]
            return out
        count = len(self.segment_units)
        segment = torch.repeat_interleave(torch.arange(count, device=t.device), self.segment_length,
                                          output_size=self.num_entries)
        sums = torch.zeros(count, dtype=t.dtype, device=t.device).index_add_(0, segment, t.detach()).tolist()
        for total, (unit, k) in zip(sums, self.segment_units):
            layer = self.blocks[k].layer
            out[layer] += total * unit / self.copies[layer]
        return out


# ---- the plain (differentiable) implementation -------------------------------------------------------------------

def pair_cosines(gram: Tensor, plan: PairPlan, eps: float) -> Tensor:
    """Cosines of the unique entries ``[U]`` (full pairs, half pairs, antipodal: ``c_ii``) from the flat Grams
    ``[total]``, clamped to ``[-1, 1]``. Differentiable to any order."""
    diag, pos, ab = plan.indices()
    inv = torch.rsqrt(gram.index_select(0, diag) + eps)               # [M]
    inv_a, inv_b = inv.index_select(0, ab).view(2, -1).unbind()        # [U] each (unbind: one op backward)
    cos = gram.index_select(0, pos) * (inv_a * inv_b)
    return cos.clamp(-1.0, 1.0)


def signed_entries(cos: Tensor, plan: PairPlan) -> Tensor:
    """``x = [c_F, c_H, -c_H, -c_A]`` ``[X]`` from the unique cosines ``[U]``."""
    if plan.num_half + plan.num_antipodal == 0:
        return cos
    return torch.cat([cos[:plan.num_full + plan.num_half], cos[plan.num_full:].neg()])


def pair_energy(gram: Tensor, plan: PairPlan, s: Power, eps: float) -> Tuple[Tensor, Tensor]:
    """``(loss, t)``: the weighted sum of every block's pair-mean energy, and each entry's ``g_s(x)`` ``[X]``.
    gram: the flat Grams ``[total]``. Differentiable to any order (the AP / Adv inner objectives need the second)."""
    t = pair_term(signed_entries(pair_cosines(gram, plan, eps), plan), s)
    return torch.dot(t, plan.coefficients()), t


# ---- the fused implementation --------------------------------------------------------------------------------------

def _gram(r: Tensor, columns: bool) -> Tensor:
    """The Grams of ``r``: ``R R^T`` for rows ``[B, n, k]``, ``R^T R`` for ``columns`` ``[B, k, n]``."""
    return torch.bmm(r.transpose(1, 2), r) if columns else torch.bmm(r, r.transpose(1, 2))


def flat_grams(rows: Sequence[Tensor], columns: Sequence[bool]) -> Tensor:
    """The Grams of every tensor of ``rows`` (``_gram``), flattened and laid end to end: the flat buffer a plan
    indexes."""
    grams = [_gram(r, col).reshape(-1) for r, col in zip(rows, columns)]
    return grams[0] if len(grams) == 1 else torch.cat(grams)


class GramEnergy(torch.autograd.Function):
    """``(loss, t)`` from the neurons of every bucket, with the Grams, the energy and the backward fused.
    ``rows[b]`` holds ``B_b`` blocks of neurons, ``[B_b, n_b, k_b]`` (neurons as rows), or ``[B_b, k_b, n_b]`` (as
    columns, ``columns[b]``: a projection's natural layout, so that no gradient needs a transposing copy); their Grams
    are the plan's blocks, in order.

    Forward: one ``bmm`` per bucket into one buffer, then the chain of ``pair_energy``. Backward (first order only):
    the gradient ``D`` of the loss at the upper triangle and diagonal of every Gram, in one buffer; each bucket's
    rows get ``dR = (D + D^T) R`` (``G = R R^T``). The clamp of the cosines is treated as the identity in the backward
    (it only catches rounding past +-1). ~20 kernels, plus one ``bmm`` per bucket forward and an add and a ``bmm``
    per bucket backward, whatever the number of layers.

    Where the plan is ``chunked`` (a long list on the CPU), the forward is ``chunked.chunked_energy`` instead: the
    gradient of the rows is computed with the loss, chunk by chunk, and the backward scales it; ``t`` is then each
    block's energy ``[blocks, 1]`` (``PairPlan.per_layer`` reads both).
    """

    @staticmethod
    def forward(ctx, plan: PairPlan, s, eps: float, columns: Tuple[bool, ...], *rows: Tensor):
        ctx.plan, ctx.s, ctx.columns = plan, s, columns
        ctx.chunked = plan.chunked(rows[0].device)
        if ctx.chunked:
            loss, energies, grads = chunked_energy(plan, s, eps, columns, rows, ctx.needs_input_grad[4:])
            ctx.save_for_backward(*grads)
            energies = energies.view(-1, 1)
            ctx.mark_non_differentiable(energies)
            return loss, energies
        diag, pos, ab = plan.indices()
        gram = rows[0].new_empty(plan.total)
        start = 0
        for r, col in zip(rows, columns):
            n = r.shape[2] if col else r.shape[1]
            size = r.shape[0] * n * n
            a, b = (r.transpose(1, 2), r) if col else (r, r.transpose(1, 2))
            torch.bmm(a, b, out=gram[start:start + size].view(r.shape[0], n, n))
            start += size
        inv = gram.index_select(0, diag).add_(eps).rsqrt_()                               # [M]
        inv_ab = inv.index_select(0, ab).view(2, -1)                                       # [2, U]
        scale = inv_ab[0] * inv_ab[1]                                                      # [U]
        cos = gram.index_select(0, pos).mul_(scale).clamp_(-1.0, 1.0)
        x = signed_entries(cos, plan)
        t = term_values(x, s)  # a new tensor: x and cos are kept for the backward
        coef = plan.coefficients()
        ctx.save_for_backward(inv, scale, cos, x if s != 2 and s != 1 else t, t, coef, *rows)
        ctx.mark_non_differentiable(t)
        return torch.dot(t, coef), t

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor, _grad_t):
        plan, s = ctx.plan, ctx.s
        if ctx.chunked:
            return (None, None, None, None, *(None if g is None else g * grad_loss for g in ctx.saved_tensors))
        diag, pos, ab = plan.indices()
        inv, scale, cos, x, t, coef, *rows = ctx.saved_tensors
        dx = term_slopes(x, t, s).mul_(coef).mul_(grad_loss)                              # dloss/dx [X]
        full, half = plan.num_full, plan.num_half
        if half + plan.num_antipodal:  # fold x = [c_F, c_H, -c_H, -c_A] back onto the unique cosines
            dcos = dx.new_empty(plan.num_unique)
            if full:
                dcos[:full].copy_(dx[:full])
            torch.neg(dx[full + half:], out=dcos[full:])
            dcos[full:full + half].add_(dx[full:full + half])
        else:
            dcos = dx
        # D: the gradient at the upper triangle and diagonal of every Gram. Through G_ab directly, and through the
        # norms: d cos / d G_aa = -cos / (2 (G_aa + eps)), the same for b.
        per_neuron = torch.zeros_like(inv).index_add_(0, ab, (dcos * cos).repeat(2))
        dsq = per_neuron.mul_(inv).mul_(inv).mul_(-0.5)
        upper = torch.zeros(plan.total, dtype=inv.dtype, device=inv.device)
        upper.index_add_(0, pos, dcos.mul_(scale)).index_add_(0, diag, dsq)
        grads, start = [], 0
        for r, col in zip(rows, ctx.columns):
            n = r.shape[2] if col else r.shape[1]
            size = r.shape[0] * n * n
            d = upper[start:start + size].view(r.shape[0], n, n)
            sym = d + d.transpose(1, 2)
            grads.append(torch.bmm(r, sym) if col else torch.bmm(sym, r))                # G = R^T R or R R^T
            start += size
        return (None, None, None, None, *grads)


def gram_energy(rows: Sequence[Tensor], plan: PairPlan, s: Power, eps: float, fused: bool = True,
                columns: Sequence[bool] = ()) -> Tuple[Tensor, Tensor]:
    """``(loss, t)`` for the Grams of ``rows`` (in the plan's block order; ``GramEnergy`` for the layouts):
    ``GramEnergy`` (eager) or ``bmm`` + ``cat`` + ``pair_energy`` (``fused=False``: any order of derivatives, and
    what ``torch.compile`` traces)."""
    s = canonical_power(s)
    columns = tuple(columns) or (False,) * len(rows)
    if fused:
        if plan.chunked(rows[0].device) and not (torch.is_grad_enabled() and any(r.requires_grad for r in rows)):
            loss, energies, _ = chunked_energy(plan, s, eps, columns, rows, (False,) * len(rows))  # no gradient
            return loss, energies.view(-1, 1)
        return GramEnergy.apply(plan, s, eps, columns, *rows)
    return pair_energy(flat_grams(rows, columns), plan, s, eps)

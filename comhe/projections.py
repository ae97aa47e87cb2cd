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
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .pairs import Block, PairPlan, pair_cosines, pair_energy
from .registry import Registry
from .stacking import Stack, Stacker

PROJECTIONS = Registry("projection")


class _ProjectTransposed(torch.autograd.Function):
    """``P W^T`` (``[L, m, d] x [L, N, d] -> [L, m, N]``), one ``bmm`` each way with both gradients in the layouts of
    ``P`` and ``W`` (autograd's ``bmm`` would hand ``W`` a transposed gradient, and the stack's views a copy of it).
    The backward is made of differentiable ops on the saved inputs: the look-ahead's second derivative goes through."""

    @staticmethod
    def forward(ctx, p: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(p, w)
        return torch.bmm(p, w.transpose(1, 2))

    @staticmethod
    def backward(ctx, dy: Tensor):
        p, w = ctx.saved_tensors
        dp = torch.bmm(dy, w) if ctx.needs_input_grad[0] else None
        dw = torch.bmm(dy.transpose(1, 2), p) if ctx.needs_input_grad[1] else None
        return dp, dw


def project_columns(p: Tensor, w: Tensor) -> Tensor:
    """Projected neurons as columns. p: ``[L, C, k, d]``, w: ``[L, N, d]`` -> ``[L * C, k, N]`` (one ``bmm``):
    column ``n`` of copy ``c`` of layer ``l`` is ``P_lc w_n``; its Gram is ``Y^T Y``."""
    layers, copies, k, d = p.shape
    return _ProjectTransposed.apply(p.reshape(layers, copies * k, d), w).view(layers * copies, k, -1)


def shape_major(stacker: Stacker, indices: Sequence[int]) -> List[int]:
    """Layer indices grouped by weight shape, shapes in order of first appearance (``layers.group_by_shape``)."""
    indices = sorted(indices)
    rank = {}
    for i in indices:
        rank.setdefault(stacker.layers[i].shape, len(rank))
    return sorted(indices, key=lambda i: (rank[stacker.layers[i].shape], i))


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {value!r}")


class Projection(nn.Module):
    """Base. ``applies_to(d)``: whether projecting a fan-in ``d`` compresses anything (layers where it does not get
    the unprojected half-space energy instead); ``copies(d)`` / ``dim(d)``: ``C`` and ``k`` for that fan-in.
    ``setup(stacker, buckets)`` once the regulariser has planned its stack (``buckets``: the projected ones);
    ``matrices(stack, lr)``: what a call projects with (eager: random draws, look-aheads); ``rows(stack, mats)``:
    per projected bucket the projected neurons (pure tensor math, what ``compile`` traces), as columns
    ``[L * C, k, N]`` if ``columns`` else as rows ``[L * C, N, k]``."""

    needs_weights = False  # matrices() reads the weights (the learned projections' inner steps)
    columns = True

    def __init__(self, proj_dim: int, num_proj: int):
        super().__init__()
        _check_positive(proj_dim=proj_dim, num_proj=num_proj)
        self.proj_dim, self.num_proj = proj_dim, num_proj
        self.buckets: List[int] = []

    def applies_to(self, fan_in: int) -> bool:
        return fan_in > self.proj_dim

    def copies(self, fan_in: int) -> int:
        return self.num_proj

    def dim(self, fan_in: int) -> int:
        return self.proj_dim

    def setup(self, stacker: Stacker, buckets: Sequence[int], dtype: torch.dtype, device: torch.device) -> None:
        self.__dict__["stacker"] = stacker  # a reference, not a submodule: the regulariser owns it
        self.buckets = list(buckets)

    def matrices(self, stack: Optional[Stack], lr: Optional[float]) -> List[Optional[Tensor]]:
        return [None] * len(self.buckets)

    def prepare(self, stack: Stack) -> None:
        """Build the gather indices ``rows`` needs for this memory layout (eagerly: not inside a compiled graph)."""
        self.stacker.logical_index(self.buckets, stack.orders, stack.flat.device)

    def rows(self, stack: Stack, mats: Sequence[Optional[Tensor]]) -> List[Tensor]:
        """p ``[L, C, k, d]`` per bucket, applied to its neurons (in the order ``_weights`` reads them)."""
        return [project_columns(p, w) for w, p in zip(self._all_weights(stack), mats)]

    def _weights(self, stack: Stack, b: int) -> Tensor:
        return stack.view(b)

    def _all_weights(self, stack: Stack) -> List[Tensor]:
        return [self._weights(stack, b) for b in self.buckets]

    def extra_repr(self) -> str:
        return f"proj_dim={self.proj_dim}, num_proj={self.num_proj}"


@PROJECTIONS.register("random")
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


class LearnedProjection(Projection):
    """A projection ``P`` per layer, updated by ``iters`` inner steps per call, then used through a look-ahead.
    Subclasses define ``objective(ps, ws) -> scalar`` (the sum over every layer and copy)."""

    direction = -1.0  # -1: descend the objective (angle); +1: ascend it (adversarial)
    needs_weights = True

    def __init__(self, proj_dim: int = 30, num_proj: int = 1, iters: int = 1, lr: float = 0.1,
                 weight_decay: float = 5e-7, eps: float = 1e-4, **_ignored):
        super().__init__(proj_dim, num_proj)
        if not isinstance(iters, int) or isinstance(iters, bool) or iters < 0:
            raise ValueError(f"proj_iters must be an integer >= 0, got {iters!r}")
        self.iters, self.lr, self.weight_decay, self.eps = iters, float(lr), float(weight_decay), eps

    def step_lr(self, lr: Optional[float]) -> float:
        """The learning rate of the inner steps and the look-ahead: the network's (``reg(lr=...)``), else ``lr``."""
        return self.lr if lr is None else float(lr)

    def setup(self, stacker, buckets, dtype, device) -> None:
        super().setup(stacker, buckets, dtype, device)
        # Initial P: one randn per group of same-shape layers, in order of first appearance (the global RNG, as
        # before the stack existed: a seed gives the same initial matrices). Each group is a slot run of a bucket.
        self._groups: List[Tuple[int, int, int]] = []  # (bucket position, first slot, layers) per saved p<i>
        order = shape_major(stacker, [i for b in self.buckets for i in stacker.buckets[b].layers])
        draws = {}
        for shape in dict.fromkeys(stacker.layers[i].shape for i in order):
            ids = [i for i in order if stacker.layers[i].shape == shape]
            draws[ids[0]] = torch.randn(len(ids), self.num_proj, self.proj_dim, stacker.layers[ids[0]].fan_in)
            pos = next(n for n, b in enumerate(self.buckets) if ids[0] in stacker.buckets[b].layers)
            self._groups.append((pos, stacker.buckets[self.buckets[pos]].layers.index(ids[0]), len(ids)))
        for pos, b in enumerate(self.buckets):
            layers_b, _, d = stacker.buckets[b].shape
            p = torch.empty(layers_b, self.num_proj, self.proj_dim, d)
            for gpos, first, count in self._groups:
                if gpos == pos:
                    p[first:first + count] = draws[stacker.buckets[b].layers[first]]
            self.register_buffer(f"bucket{pos}", p.to(device=device, dtype=dtype), persistent=False)
        self._plans(stacker, dtype, device)

    def bucket_matrices(self) -> List[Tensor]:
        return [getattr(self, f"bucket{n}") for n in range(len(self.buckets))]

    def matrices_by_group(self) -> List[Tensor]:
        """The saved form: ``[L, C, k, d]`` per group of same-shape layers (views of the buckets)."""
        mats = self.bucket_matrices()
        return [mats[pos][first:first + count] for pos, first, count in self._groups]

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for n, p in enumerate(self.matrices_by_group()):
            destination[f"{prefix}p{n}"] = p if keep_vars else p.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        for n, p in enumerate(self.matrices_by_group()):
            key = f"{prefix}p{n}"
            if key in unexpected_keys:
                unexpected_keys.remove(key)
            if key not in state_dict:
                missing_keys.append(key)
            elif tuple(state_dict[key].shape) != tuple(p.shape):
                error_msgs.append(f"size mismatch for {key}: copying a param with shape "
                                  f"{tuple(state_dict[key].shape)}, the shape in current model is {tuple(p.shape)}")
            else:
                with torch.no_grad():
                    p.copy_(state_dict[key])

    def _all_weights(self, stack: Stack) -> List[Tensor]:
        return stack.logical(self.buckets)  # P acts on logical coordinates (its state must not depend on layouts)

    def fixed_terms(self, ws: Sequence[Tensor]):
        """What the objective needs from ``W`` alone (computed once for all inner steps); ``None`` here."""
        return None

    def _gradients(self, ws: Sequence[Tensor], create_graph: bool, fixed=None) -> Tuple[List[Tensor], List[Tensor]]:
        with torch.enable_grad():
            ps = [p.detach().requires_grad_(True) for p in self.bucket_matrices()]
            fixed = self.fixed_terms(ws) if fixed is None else fixed
            return ps, list(torch.autograd.grad(self.objective(ps, ws, fixed), ps, create_graph=create_graph))

    @torch.no_grad()
    def inner_step(self, ws: Sequence[Tensor], lr: float, fixed=None) -> None:
        """One SGD step on every stored ``P`` (descent for angle, ascent for adversarial), ``W`` held fixed."""
        ws = [w.detach() for w in ws]
        _, grads = self._gradients(ws, create_graph=False, fixed=fixed)
        mats = self.bucket_matrices()
        torch._foreach_mul_(mats, 1.0 - lr * self.weight_decay)
        torch._foreach_add_(mats, grads, alpha=self.direction * lr)

    def matrices(self, stack: Stack, lr: Optional[float] = None) -> List[Tensor]:
        lr = self.step_lr(lr)
        ws = self._all_weights(stack)
        if self.training and self.iters:
            with torch.no_grad():
                fixed = self.fixed_terms([w.detach() for w in ws])
            for _ in range(self.iters):
                self.inner_step(ws, lr, fixed)
        outer_grad = torch.is_grad_enabled() and any(w.requires_grad for w in ws)
        ps, grads = self._gradients(ws, create_graph=outer_grad)
        return [torch.add(p.detach(), g, alpha=self.direction * lr) for p, g in zip(ps, grads)]

    @staticmethod
    def _grams(neurons: Sequence[Tensor], columns: bool) -> Tensor:
        grams = [(torch.bmm(y.transpose(1, 2), y) if columns else torch.bmm(y, y.transpose(1, 2))).reshape(-1)
                 for y in neurons]
        return grams[0] if len(grams) == 1 else torch.cat(grams)

    def _blocks(self, stacker: Stacker, copies: int, half_space: bool) -> Tuple[List[Block], int]:
        blocks, offset = [], 0
        for b in self.buckets:
            bucket = stacker.buckets[b]
            for i, n in zip(bucket.layers, bucket.neurons):
                for _ in range(copies):
                    blocks.append(Block(offset, bucket.num_neurons, n, half_space, 1.0, i))
                    offset += bucket.num_neurons ** 2
        return blocks, offset


@PROJECTIONS.register("angle")
class AngleProjection(LearnedProjection):
    direction = -1.0

    def _plans(self, stacker, dtype, device) -> None:
        # Unique entries of a half-space plan are the pairs i < j, then the diagonal: every entry of the
        # symmetric N x N cosine matrix once, the pairs standing for two.
        n = len(stacker.layers)
        y_blocks, y_total = self._blocks(stacker, self.num_proj, True)
        w_blocks, w_total = self._blocks(stacker, 1, True)
        self.y_plan = PairPlan(y_blocks, y_total, n, dtype, device)
        self.w_plan = PairPlan(w_blocks, w_total, n, dtype, device)
        pair_counts = [math.comb(blk.neurons, 2) for blk in w_blocks]
        pair_start = [sum(pair_counts[:k]) for k in range(len(w_blocks))]
        diag_start = [sum(pair_counts) + sum(blk.neurons for blk in w_blocks[:k]) for k in range(len(w_blocks))]
        block_of_y, w_of_y, weight = [], [], []
        for part, (start, count) in enumerate([(pair_start, pair_counts), (diag_start, [b.neurons for b in w_blocks])]):
            for k in range(len(y_blocks)):
                wk = k // self.num_proj
                block_of_y.append(torch.full((count[wk],), k))
                w_of_y.append(start[wk] + torch.arange(count[wk]))
                weight.append(torch.full((count[wk],), 2.0 if part == 0 else 1.0))
        self.register_buffer("block_of_y", torch.cat(block_of_y).to(torch.int32).to(device), persistent=False)
        self.register_buffer("w_of_y", torch.cat(w_of_y).to(torch.int32).to(device), persistent=False)
        self.register_buffer("entry_weight", torch.cat(weight).to(dtype=dtype, device=device), persistent=False)
        self.num_blocks = len(y_blocks)

    def fixed_terms(self, ws: Sequence[Tensor]) -> Tensor:
        """The cosines of ``W``, repeated for each copy: ``[U_Y]``."""
        return pair_cosines(self._grams(ws, False), self.w_plan, self.eps).index_select(0, self.w_of_y)

    def objective(self, ps: Sequence[Tensor], ws: Sequence[Tensor], cos_w: Tensor) -> Tensor:
        """Sum over every layer and copy of ``||cos(W) - cos(P W)||_F``."""
        cos_y = pair_cosines(self._grams([project_columns(p, w) for p, w in zip(ps, ws)], True), self.y_plan,
                             self.eps)
        squares = (cos_y - cos_w).square() * self.entry_weight
        per_block = torch.zeros(self.num_blocks, dtype=squares.dtype, device=squares.device)
        return per_block.index_add(0, self.block_of_y, squares).sqrt().sum()


@PROJECTIONS.register("adversarial")
class AdversarialProjection(LearnedProjection):
    direction = 1.0

    def __init__(self, proj_dim: int = 30, num_proj: int = 1, iters: int = 10, **options):
        super().__init__(proj_dim, num_proj, iters, **options)

    def _plans(self, stacker, dtype, device) -> None:
        blocks, total = self._blocks(stacker, self.num_proj, False)
        self.y_plan = PairPlan(blocks, total, len(stacker.layers), dtype, device)

    def objective(self, ps: Sequence[Tensor], ws: Sequence[Tensor], fixed=None) -> Tensor:
        """Sum over every layer and copy of the full-space s=2 pair-mean energy of ``P W``."""
        grams = self._grams([project_columns(p, w) for p, w in zip(ps, ws)], True)
        return pair_energy(grams, self.y_plan, 2, self.eps)[0]


@PROJECTIONS.register("group")
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

"""The learned CoMHE projections, AP (angle-preserving) and Adv (adversarial): one ``P`` per layer, ``iters`` inner
steps per call on every layer at once (one batched objective, one gradient), then a look-ahead ``P~`` inside the
autograd graph. The definitions are in the package docstring (docs/reference.md §1)."""
from __future__ import annotations

import math
import numbers
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..pairs import Block, PairPlan, flat_grams, pair_cosines, pair_energy, plan_blocks
from ..stacking import Stack, Stacker
from .base import Projection, project_columns, shape_major


class LearnedProjection(Projection):
    """A projection ``P`` per layer, updated by ``iters`` inner steps per call, then used through a look-ahead.
    Subclasses define ``objective(ps, ws) -> scalar`` (the sum over every layer and copy)."""

    direction = -1.0  # -1: descend the objective (angle); +1: ascend it (adversarial)

    def __init__(self, proj_dim: int = 30, num_proj: int = 1, iters: int = 1, lr: float = 0.1,
                 weight_decay: float = 5e-7, eps: float = 1e-4, fixed_lr: bool = False, **_ignored):
        super().__init__(proj_dim, num_proj)
        # fixed_lr: the inner steps and the look-ahead use ``lr`` whatever the network's rate (under Adam at 1e-3
        # the official "network's current LR" would barely move P); default: the network's, as the official code.
        self.fixed_lr = bool(fixed_lr)
        if not isinstance(iters, numbers.Integral) or isinstance(iters, bool) or iters < 0:
            raise ValueError(f"proj_iters must be an integer >= 0, got {iters!r}")
        self.iters: int = int(iters)
        self.lr: float = float(lr)
        self.weight_decay: float = float(weight_decay)
        self.eps: float = eps

    def step_lr(self, lr: Optional[float]) -> float:
        """The learning rate of the inner steps and the look-ahead: the network's (``reg(lr=...)``), else ``lr``;
        always ``lr`` with ``fixed_lr``."""
        return self.lr if lr is None or self.fixed_lr else float(lr)

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

    def _plans(self, stacker: Stacker, dtype: torch.dtype, device: torch.device) -> None:
        """Build the pair plans ``objective`` needs (subclasses)."""
        raise NotImplementedError

    def objective(self, ps: Sequence[Tensor], ws: Sequence[Tensor], fixed: Any) -> Tensor:
        """The inner objective, summed over every layer and copy (subclasses); ``fixed``: ``fixed_terms(ws)``."""
        raise NotImplementedError

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
        return flat_grams(neurons, [columns] * len(neurons))

    def _blocks(self, stacker: Stacker, copies: int, half_space: bool) -> Tuple[List[Block], int]:
        return plan_blocks([stacker.buckets[b] for b in self.buckets], lambda i: (copies, half_space, 1.0))


class AngleProjection(LearnedProjection):
    direction = -1.0
    block_of_y: Tensor
    w_of_y: Tensor
    entry_weight: Tensor

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

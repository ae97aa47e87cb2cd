"""What every CoMHE projection shares (the package docstring has the registry and the overview): the base class, the
projection of a bucket's neurons, the layer order of the draws."""
from __future__ import annotations

import numbers
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..stacking import Stack, Stacker


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
    rank: Dict[Tuple[int, ...], int] = {}
    for i in indices:
        rank.setdefault(stacker.layers[i].shape, len(rank))
    return sorted(indices, key=lambda i: (rank[stacker.layers[i].shape], i))


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {value!r}")


class Projection(nn.Module):
    """Base. ``applies_to(d)``: whether projecting a fan-in ``d`` compresses anything (layers where it does not get
    the unprojected half-space energy instead); ``copies(d)`` / ``dim(d)``: ``C`` and ``k`` for that fan-in.
    ``setup(stacker, buckets)`` once the regulariser has planned its stack (``buckets``: the projected ones);
    ``matrices(stack, lr)``: what a call projects with (eager: random draws, look-aheads); ``rows(stack, mats)``:
    per projected bucket the projected neurons (pure tensor math, what ``compile`` traces), as columns
    ``[L * C, k, N]`` if ``columns`` else as rows ``[L * C, N, k]``."""

    columns = True
    stacker: Stacker  # set by ``setup``

    def __init__(self, proj_dim: int, num_proj: int):
        super().__init__()
        _check_positive(proj_dim=proj_dim, num_proj=num_proj)
        self.proj_dim, self.num_proj = int(proj_dim), int(num_proj)  # (a NumPy integer is welcome, stored as int)
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

    def matrices(self, stack: Stack, lr: Optional[float]) -> Sequence[Optional[Tensor]]:
        return [None] * len(self.buckets)

    def prepare(self, stack: Stack) -> None:
        """Build the gather indices ``rows`` needs for this memory layout (eagerly: not inside a compiled graph)."""
        self.stacker.logical_index(self.buckets, stack.orders, stack.flat.device)

    def rows(self, stack: Stack, mats: Sequence[Optional[Tensor]]) -> List[Tensor]:
        """p ``[L, C, k, d]`` per bucket, applied to its neurons (in the order ``_weights`` reads them)."""
        out = []
        for w, p in zip(self._all_weights(stack), mats):
            if p is None:
                raise ValueError(f"{type(self).__name__} projects with matrices: pass those matrices() returns")
            out.append(project_columns(p, w))
        return out

    def _weights(self, stack: Stack, b: int) -> Tensor:
        return stack.view(b)

    def _all_weights(self, stack: Stack) -> List[Tensor]:
        return [self._weights(stack, b) for b in self.buckets]

    def extra_repr(self) -> str:
        return f"proj_dim={self.proj_dim}, num_proj={self.num_proj}"

"""G-CoMHE's "projections": contiguous groups of each neuron's coordinates, at least ``min_group_size`` of them per
group. See the package docstring."""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
from torch import Tensor

from ..stacking import Stack
from .base import Projection, _check_positive


class GroupProjection(Projection):
    columns = False
    def __init__(self, num_proj: int = 8, proj_dim: int = 1, min_group_size: int = 8, **_ignored):
        # proj_dim is unused: a group's size is ceil(d / groups)
        _check_positive(min_group_size=min_group_size)
        super().__init__(1, num_proj)
        self.min_group_size = int(min_group_size)

    def copies(self, fan_in: int) -> int:
        return max(1, min(self.num_proj, fan_in // self.min_group_size))

    def dim(self, fan_in: int) -> int:
        return math.ceil(fan_in / self.copies(fan_in))

    def applies_to(self, fan_in: int) -> bool:
        return self.copies(fan_in) > 1

    def _index(self, stack: Stack) -> Tuple[Tensor, List[Tuple[int, int, int]]]:
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

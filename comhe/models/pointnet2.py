"""PointNet++ SSG (Qi et al., NeurIPS 2017) for ModelNet-40, as the official code builds it (charlesq34/pointnet2:
``models/pointnet2_cls_ssg.py``, ``utils/pointnet_util.py``; docs/reference.md §2b), with farthest-point sampling
and ball query written in batched torch instead of the official CUDA extensions (``tf_ops``).

Input ``x [B, 3, N]`` (xyz only, 1,024 points), logits ``[B, num_classes]``. Module names (width t = 1)::

    sa1         512 centroids (FPS), ball radius 0.2, 32 neighbours, MLP 3 -> 64 -> 64 -> 128, max     [B, 512, 128]
    sa2         128 centroids, radius 0.4, 64 neighbours, MLP (3 + 128) -> 128 -> 128 -> 256, max     [B, 128, 256]
    sa3         group all: MLP (3 + 256) -> 256 -> 512 -> 1024, max                                    [B, 1024]
    fc1, fc2    1024 -> 512 -> 256, each BN, ReLU, dropout 0.5 (official keep_prob 0.5)
    classifier  256 -> num_classes

A set-abstraction MLP layer is a 1x1 ``Conv2d`` with bias, BN (eps 1e-3), ReLU (the official ``use_nchw`` conv2d),
computed channels-last on ``[B, centroids, neighbours, C]`` (``PointConv2d``); the grouped inputs are the neighbours'
xyz relative to their centroid concatenated (xyz first) with their features; group-all uses absolute xyz (its
centroid is the origin); the max over a group is ``max``, not ``amax`` (``pointnet.py`` says why). Xavier
initialisation as ``pointnet.py``. ``centroids`` (512; the second layer takes a quarter) and ``width`` shrink the
network for CPU tests and smoke runs; the radii and neighbour counts are the official ones.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .factory import MODELS
from .pointnet import BN_EPS, BN_MOMENTUM, XYZ, Dense, channels, reset_tf_, xavier_uniform_tf_


def farthest_point_sample(xyz: Tensor, m: int) -> Tensor:
    """Indices ``[B, m]`` of ``m`` points of ``xyz [B, N, 3]`` chosen greedily: the first is point 0 (as the
    official kernel), each next one the point farthest (squared Euclidean) from those chosen so far; ties go to the
    lowest index.

    The choice is sequential (each point depends on all before it): ``m - 1`` steps, each a fixed chain of 6 batched
    ops on preallocated buffers for the whole batch (gather the last choice, subtract, square, sum the 3 coordinates,
    running minimum, argmax written straight into the result): no allocation, no host sync, no Python per cloud, so
    the loop can be captured in a CUDA graph as it is. The points are read as coordinate planes ``[B, 3, N]``, where
    the sum of 3 coordinates is two plane additions instead of a reduction over a stride-3 innermost dimension: 3.5x
    faster on the CPU than the loop it replaces (8 ops and 4 fresh tensors per step), with the same indices
    (``tests/models/test_pointnet.py`` keeps that loop as the reference)."""
    batch, n, dims = xyz.shape
    if not 1 <= m <= n:
        raise ValueError(f"cannot sample {m} of {n} points")
    planes = xyz.transpose(1, 2).contiguous()                                 # [B, 3, N]
    chosen = torch.zeros(m, batch, dtype=torch.long, device=xyz.device)       # row i: every cloud's i-th choice
    nearest = torch.full((batch, n), float("inf"), device=xyz.device, dtype=xyz.dtype)
    diff, d = torch.empty_like(planes), torch.empty_like(nearest)
    for i in range(m - 1):
        centre = planes.gather(2, chosen[i].view(batch, 1, 1).expand(batch, dims, 1))  # [B, 3, 1]
        torch.sub(planes, centre, out=diff).square_()
        torch.sum(diff, 1, out=d)                                             # [B, N] squared distances
        torch.minimum(nearest, d, out=nearest)
        torch.argmax(nearest, -1, out=chosen[i + 1])                          # the first maximum: lowest index
    return chosen.t().contiguous()


def ball_query(xyz: Tensor, centres: Tensor, radius: float, k: int) -> Tensor:
    """For each centre the first ``k`` points, in index order, strictly within ``radius``: ``[B, M, k]`` indices
    into ``xyz [B, N, 3]`` (``centres [B, M, 3]``). Missing slots repeat the first point found (the official
    ``query_ball_point``); a centre with no point in range (not one of ``xyz``) gets point 0."""
    n = xyz.shape[1]
    # The exact difference-based distance (cdist's matmul form would move points across the radius by rounding).
    inside = torch.cdist(centres, xyz, compute_mode="donot_use_mm_for_euclid_dist") < radius   # [B, M, N]
    # Inside points keep their index, the others sort last: the k smallest keys are the first k inside, in order.
    key = torch.where(inside, torch.arange(n, device=xyz.device), n)
    first = key.topk(min(k, n), dim=-1, largest=False, sorted=True).values    # [B, M, min(k, N)]
    if k > n:
        first = torch.cat([first, first.new_full((*first.shape[:2], k - n), n)], -1)
    fill = torch.where(first[..., :1] < n, first[..., :1], 0)
    return torch.where(first < n, first, fill)


def gather(points: Tensor, index: Tensor) -> Tensor:
    """``points [B, N, C]`` at ``index [B, ...]`` -> ``[B, ..., C]``."""
    batch, _, c = points.shape
    flat = index.reshape(batch, -1, 1).expand(-1, -1, c)
    return points.gather(1, flat).view(*index.shape, c)


class PointConv2d(nn.Conv2d):
    """1x1 conv, then BN and ReLU (``tf_util.conv2d``, bn=True), on channels-last ``[..., C] -> [..., C']``.

    A ``Conv2d`` for its parameters (the regularisers read 1x1 conv weights ``[out, in, 1, 1]``; state dicts keep
    their keys), applied as what it is: one matrix product over every (centroid, neighbour) position, and BN over all
    of them, on the grouped points as they are laid out (``[B, M, k, C]``, channels innermost). The official
    ``[B, C, M, k]`` layout needed a permute that made every conv and BN run on a non-contiguous tensor (up to 1.5x
    the step), or a copy. Same math: BN statistics over ``(B, M, k)``, as ``BatchNorm2d`` on ``[B, C, M, k]``."""

    def __init__(self, in_channels: int, out_channels: int, bn_momentum: float):
        super().__init__(in_channels, out_channels, 1)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=bn_momentum)

    def reset_tf(self) -> None:
        xavier_uniform_tf_(self.weight, self.in_channels, self.out_channels)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x ``[..., C]`` -> ``[..., C']``."""
        rows = F.linear(x.reshape(-1, self.in_channels), self.weight.flatten(1), self.bias)     # [P, C']
        # BatchNorm2d on [P, C', 1, 1]: per-channel statistics over the P positions, the module's own state
        return F.relu(self.bn(rows.view(-1, self.out_channels, 1, 1))).view(*x.shape[:-1], self.out_channels)


class SetAbstraction(nn.Module):
    """Sample ``centroids`` by FPS, group ``neighbours`` within ``radius`` of each, shared MLP, max over the group.
    ``centroids=None``: group all points around the origin (the last layer)."""

    def __init__(self, centroids: Optional[int], radius: Optional[float], neighbours: Optional[int],
                 in_channels: int, mlp: Sequence[int], bn_momentum: float):
        super().__init__()
        self.centroids, self.radius, self.neighbours = centroids, radius, neighbours
        sizes = [in_channels + XYZ] + list(mlp)
        self.mlp = nn.Sequential(*[PointConv2d(a, b, bn_momentum) for a, b in zip(sizes, sizes[1:])])

    def forward(self, xyz: Tensor, features: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """xyz ``[B, N, 3]``, features ``[B, N, C]`` or None -> centroids ``[B, M, 3]``, features ``[B, M, C']``."""
        if self.centroids is None:
            centres = xyz.new_zeros(xyz.shape[0], 1, XYZ)
            grouped = xyz[:, None]                                            # [B, 1, N, 3]
            grouped_features = None if features is None else features[:, None]
        else:
            if self.radius is None or self.neighbours is None:
                raise ValueError("a set abstraction that samples centroids needs a radius and a neighbour count")
            with torch.no_grad():
                centres_idx = farthest_point_sample(xyz.detach(), min(self.centroids, xyz.shape[1]))
            centres = gather(xyz, centres_idx)                                # [B, M, 3]
            with torch.no_grad():
                idx = ball_query(xyz.detach(), centres.detach(), self.radius, self.neighbours)  # [B, M, k]
            grouped = gather(xyz, idx) - centres[:, :, None, :]              # [B, M, k, 3]: translation-normalised
            grouped_features = None if features is None else gather(features, idx)
        if grouped_features is not None:
            grouped = torch.cat([grouped, grouped_features], -1)             # xyz first, as use_xyz=True
        out = self.mlp(grouped)                                               # [B, M, k, C']
        # max, not amax: amax's backward builds an equality mask of the whole input and splits a tied maximum's
        # gradient evenly; max's sends it to the one index it returns. The ball query's repeated neighbours are such
        # ties, and both give the parameters the same gradient (tests/models/test_pointnet.py).
        return centres, out.max(2).values                                     # [B, M, C']


class PointNet2SSG(nn.Module):
    def __init__(self, num_classes: int, *, width: float = 1.0, centroids: int = 512, dropout: float = 0.5,
                 bn_momentum: float = BN_MOMENTUM):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if centroids < 4:
            raise ValueError(f"centroids must be >= 4 (the second layer samples a quarter), got {centroids}")
        c = [channels(v, width) for v in (64, 128, 256, 512, 1024)]
        self.sa1 = SetAbstraction(centroids, 0.2, 32, 0, [c[0], c[0], c[1]], bn_momentum)
        self.sa2 = SetAbstraction(centroids // 4, 0.4, 64, c[1], [c[1], c[1], c[2]], bn_momentum)
        self.sa3 = SetAbstraction(None, None, None, c[2], [c[2], c[3], c[4]], bn_momentum)
        self.fc1 = Dense(c[4], c[3], bn_momentum, dropout)
        self.fc2 = Dense(c[3], c[2], bn_momentum, dropout)
        self.classifier = nn.Linear(c[2], num_classes)
        reset_tf_(self)

    def forward(self, x: Tensor) -> Tensor:
        """x: ``[B, 3, N]`` -> logits ``[B, num_classes]``."""
        if x.dim() != 3 or x.shape[1] != XYZ:
            raise ValueError(f"PointNet++ takes xyz clouds [B, 3, N], got {tuple(x.shape)}")
        xyz = x.transpose(1, 2).contiguous()                                  # [B, N, 3]
        xyz, features = self.sa1(xyz, None)
        xyz, features = self.sa2(xyz, features)
        _, features = self.sa3(xyz, features)                                  # [B, 1, 1024 t]
        return self.classifier(self.fc2(self.fc1(features.flatten(1))))


@MODELS.register("pointnet2_ssg")
def pointnet2_ssg(num_classes: int, *, width: float = 1.0, centroids: int = 512, dropout: float = 0.5,
                  bn_momentum: float = BN_MOMENTUM) -> PointNet2SSG:
    """PointNet++ with single-scale grouping (the table's PN++)."""
    return PointNet2SSG(num_classes, width=width, centroids=centroids, dropout=dropout, bn_momentum=bn_momentum)

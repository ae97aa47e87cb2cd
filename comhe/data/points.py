"""Point clouds on the device: the official PointNet / PointNet++ training augmentations, batched, and a resumable
stream of batches (docs/reference.md §2b).

Clouds are held channels first, ``[S, 3, P]`` float32 (xyz, like a Conv1d input), and batches come out in the same
layout, ``x [B, 3, P]``. A point is a row vector ``p`` and every map is ``p @ R`` as in the official ``provider.py``
(``np.dot(shape_pc, rotation_matrix)``); ``y`` (index 1) is the up axis of ModelNet-40.

Augmentations by name (``AUGMENTATIONS``), each a batch of draws applied in one ``bmm``:

==============  ==============================================================================================
``none``        the clouds as stored
``pointnet``    rotation about the up axis by an angle uniform in [0, 2 pi), then Gaussian jitter sigma 0.01
                clipped to +-0.05 per coordinate (charlesq34/pointnet ``train.py``)
``pointnet2``   rotation about the up axis, a small rotation perturbation (angles about x, y, z: N(0, 0.06^2)
                clipped to +-0.18, ``R = Rz Ry Rx``), scale uniform in [0.8, 1.25], shift uniform in [-0.1, 0.1]^3,
                the jitter, then one point order shuffle for the whole batch (charlesq34/pointnet2
                ``modelnet_h5_dataset.py``, in that order)
==============  ==============================================================================================

Determinism as ``streams.TensorLoader``: the epoch permutation and every per-shape draw (angles, scales, shifts, the
shuffle) come from a private CPU generator, for the whole *global* batch, drawn when the epoch starts and uploaded
then (``streams.EpochStream``), so the stream does not depend on the world size, a batch copies nothing from the
host, and ``state_dict`` resumes it exactly. The per-point jitter ``[G, 3, P]`` is drawn on the device, from a
device generator seeded per batch from the CPU one: no host-to-device copy of the noise, and still resumable; but
it is the device's RNG, so a CPU and a CUDA run of the same seed see different jitter (same distribution).
Deviations from the official loops (the distributions are the same): one permutation over all training shapes per
epoch (official: the files in a random order, each shuffled), and the last incomplete batch of an epoch dropped.
"""
from __future__ import annotations

import math
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from ..registry import Registry
from .streams import EpochStream

AUGMENTATIONS = Registry("point-cloud augmentation")
JITTER_SIGMA, JITTER_CLIP = 0.01, 0.05
PERTURB_SIGMA, PERTURB_CLIP = 0.06, 0.18
SCALE_RANGE, SHIFT_RANGE = (0.8, 1.25), 0.1


def up_axis_rotation(angle: Tensor) -> Tensor:
    """Row-vector rotations about y: ``angle [G]`` -> ``[G, 3, 3]`` with ``p @ R = (x c - z s, y, x s + z c)``."""
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack([c, zero, s, zero, one, zero, -s, zero, c], -1).view(-1, 3, 3)


def perturbation_rotation(angles: Tensor) -> Tensor:
    """``angles [G, 3]`` about x, y, z -> ``Rz @ Ry @ Rx`` ``[G, 3, 3]`` (official ``rotate_perturbation_point_cloud``,
    whose matrices are written for column vectors and applied to row vectors, as here)."""
    c, s = torch.cos(angles), torch.sin(angles)
    zero, one = torch.zeros_like(c[:, 0]), torch.ones_like(c[:, 0])
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], -1).view(-1, 3, 3)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], -1).view(-1, 3, 3)
    rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], -1).view(-1, 3, 3)
    return rz @ ry @ rx


class PointAugmentParams(NamedTuple):
    """The draws for a global batch of ``G`` shapes (CPU tensors, except as noted)."""
    matrix: Tensor                  # [G, 3, 3]: p -> p @ matrix (rotations and scale composed)
    shift: Tensor                   # [G, 3]
    jitter_seed: int                # seeds the device generator of the per-point jitter
    order: Optional[Tensor] = None  # [P] one point order for the whole batch, or None

    def select(self, rows: slice) -> "PointAugmentParams":
        return PointAugmentParams(self.matrix[rows], self.shift[rows], self.jitter_seed, self.order)


def _uniform(shape, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def _jitter_seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2 ** 62, (1,), generator=generator))


@AUGMENTATIONS.register("none")
def _none(batch: int, num_points: int, generator: torch.Generator) -> Optional[PointAugmentParams]:
    return None  # nothing drawn: the stream's random sequence is then the shuffle alone


@AUGMENTATIONS.register("pointnet")
def _pointnet(batch: int, num_points: int, generator: torch.Generator) -> PointAugmentParams:
    angle = _uniform(batch, 0.0, 2 * math.pi, generator)
    return PointAugmentParams(up_axis_rotation(angle), torch.zeros(batch, 3), _jitter_seed(generator))


@AUGMENTATIONS.register("pointnet2")
def _pointnet2(batch: int, num_points: int, generator: torch.Generator) -> PointAugmentParams:
    angle = _uniform(batch, 0.0, 2 * math.pi, generator)
    perturb = (PERTURB_SIGMA * torch.randn(batch, 3, generator=generator)).clamp(-PERTURB_CLIP, PERTURB_CLIP)
    scale = _uniform(batch, *SCALE_RANGE, generator)
    shift = _uniform((batch, 3), -SHIFT_RANGE, SHIFT_RANGE, generator)
    matrix = up_axis_rotation(angle) @ perturbation_rotation(perturb) * scale[:, None, None]
    seed = _jitter_seed(generator)
    return PointAugmentParams(matrix, shift, seed, torch.randperm(num_points, generator=generator))


def jitter(shape: Tuple[int, ...], seed: int, device: torch.device, global_rows: int, rows: slice,
           generator: Optional[torch.Generator] = None) -> Tensor:
    """Clipped Gaussian jitter ``clip(sigma * N(0, 1), -clip, clip)`` for ``rows`` of a global batch: the noise of
    all ``global_rows`` shapes is drawn (on ``device``, from ``seed``) and sliced, so every rank sees its share.
    ``generator``: a generator on ``device`` to reseed and draw from (a loader keeps one); default a new one."""
    generator = (torch.Generator(device=device) if generator is None else generator).manual_seed(seed)
    noise = torch.randn((global_rows, *shape[1:]), generator=generator, device=device)[rows]
    return noise.mul_(JITTER_SIGMA).clamp_(-JITTER_CLIP, JITTER_CLIP)


def augment_points(points: Tensor, params: PointAugmentParams, noise: Optional[Tensor] = None) -> Tensor:
    """``points [B, 3, P]`` -> ``(p @ matrix + shift + noise)`` per point, then the batch's point order; same shape.

    Channels first, ``p @ M`` is ``M^T @ x``: one ``bmm`` for the rotations and the scale."""
    device = points.device
    matrix = params.matrix.to(device, non_blocking=True)
    out = torch.bmm(matrix.transpose(1, 2), points) + params.shift.to(device, non_blocking=True)[:, :, None]
    if noise is not None:
        out = out + noise
    if params.order is not None:
        out = out[:, :, params.order.to(device, non_blocking=True)]
    return out


def eval_point_batches(points: Tensor, labels: Tensor, batch_size: int, rank: int = 0,
                       world_size: int = 1) -> Iterator[Tuple[Tensor, Tensor]]:
    """In-order, unaugmented batches ``(x float32 [b, 3, P], y int64 [b])``; batch ``i`` goes to rank ``i % world``."""
    for start in range(rank * batch_size, points.shape[0], batch_size * world_size):
        yield points[start:start + batch_size], labels[start:start + batch_size]


class PointCloudLoader(EpochStream):
    """Unbounded stream of augmented batches from on-device clouds ``[S, 3, P]`` and labels ``[S]``.

    Epochs, global batches, rank slices, ``drop_last`` and ``state_dict`` work as in ``streams.TensorLoader``
    (``streams.EpochStream``): the epoch's permutation and every global batch's draws (matrices, shifts, point orders)
    go to the device when the epoch starts, so a batch costs no host-to-device copy; with ``world_size`` ranks of
    batch ``B / world_size`` the ranks together see exactly the batches of one process with batch ``B``."""

    kind = "shapes"

    def __init__(self, points: Tensor, labels: Tensor, batch_size: int, augmentation: str = "pointnet", seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if points.dim() != 3 or points.shape[1] != 3 or not points.is_floating_point():
            raise ValueError(f"points must be float [S, 3, P], got {points.dtype} {tuple(points.shape)}")
        if labels.shape != points.shape[:1]:
            raise ValueError(f"labels must be [S] = [{points.shape[0]}], got {tuple(labels.shape)}")
        self.draw_params = AUGMENTATIONS.get(augmentation)
        self.points, self.labels, self.augmentation = points, labels.long(), augmentation
        self._matrix: Optional[Tensor] = None
        self._shift: Optional[Tensor] = None
        self._order: Optional[Tensor] = None
        self._seeds: List[int] = []
        self._jitter_generator: Optional[torch.Generator] = None  # on the clouds' device, made at the first batch
        super().__init__(points.shape[0], batch_size, seed, rank, world_size, True, points.device)

    def draw(self, size: int, generator: torch.Generator) -> Optional[PointAugmentParams]:
        return self.draw_params(size, self.points.shape[2], generator)

    def pack(self, draws: List[PointAugmentParams]) -> List[Tensor]:
        out = [torch.cat([d.matrix for d in draws]), torch.cat([d.shift for d in draws])]
        orders = [d.order for d in draws if d.order is not None]
        return out + ([torch.stack(orders)] if orders else [])

    def unpack(self, tensors: List[Tensor], draws: List) -> None:
        self._matrix, self._shift = (tensors[0], tensors[1]) if tensors else (None, None)
        self._order = tensors[2] if len(tensors) > 2 else None      # [steps, P]: one point order per batch
        self._seeds = [d.jitter_seed for d in draws] if tensors else []

    def make_batch(self, idx: Tensor, step: int, rows: slice, mine: slice) -> Tuple[Tensor, Tensor]:
        x, y = self.points[idx], self.labels[idx]
        if self._matrix is None or self._shift is None:
            return x, y
        seed = self._seeds[step]
        params = PointAugmentParams(self._matrix[rows], self._shift[rows], seed,
                                    None if self._order is None else self._order[step]).select(mine)
        if self._jitter_generator is None or self._jitter_generator.device != x.device:
            self._jitter_generator = torch.Generator(device=x.device)
        noise = jitter(tuple(x.shape), seed, x.device, rows.stop - rows.start, mine, self._jitter_generator)
        return augment_points(x, params, noise), y

    def identity(self) -> Dict:
        return {**super().identity(), "augmentation": self.augmentation}

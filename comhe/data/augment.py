"""GPU-resident batches with the official CIFAR augmentation (docs/reference.md §2), airbench style.

The official code (``rmlin/CoMHE``, ``cifar100_input_python.py``) augments each image in a numpy loop:
``np.pad(img, [[4, 4], [4, 4], [0, 0]], "symmetric")`` (mirror *including* the edge pixel; torch's ``"reflect"``
excludes it), a random 32x32 crop with row and column offsets ``np.random.randint(9)``, then ``np.fliplr`` with
p = 0.5, and feeds ``(x - 127.5) / 128``. Here the whole batch is augmented on the device in one gather: pad, crop and
flip are all index maps, so they compose into one index per output pixel and no padded copy is ever made.

Deviations from the official code, all in the random stream only (the distributions are the same):
the per-epoch shuffle is ``torch.randperm`` on a seeded CPU generator (official: ``np.random.shuffle`` of the
already-shuffled array), and the crop offsets and flips of a batch are drawn as tensors, not image by image.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

PAD = 4  # pixels of symmetric padding per side; offsets are uniform in 0..2*PAD (official: randint(9))


class AugmentParams(NamedTuple):
    """Random draws for a batch of ``B`` images, all int64/bool ``[B]`` on the CPU."""
    row_offset: Tensor   # crop offset into the padded image, 0..2*pad (official ``h``)
    col_offset: Tensor   # 0..2*pad (official ``v``)
    flip: Tensor         # bool, horizontal flip after the crop

    def select(self, rows: slice) -> "AugmentParams":
        return AugmentParams(self.row_offset[rows], self.col_offset[rows], self.flip[rows])


def draw_augment_params(batch: int, generator: torch.Generator, pad: int = PAD) -> AugmentParams:
    """Draw crop offsets (uniform 0..2*pad) and flips (p = 0.5) for ``batch`` images from ``generator`` (CPU)."""
    offsets = torch.randint(0, 2 * pad + 1, (2, batch), generator=generator)
    flip = torch.randint(0, 2, (batch,), generator=generator).bool()
    return AugmentParams(offsets[0], offsets[1], flip)


def _symmetric(pos: Tensor, size: int) -> Tensor:
    """Map positions in ``[-pad, size + pad)`` of a symmetric-padded axis back to ``[0, size)``.

    numpy 'symmetric': index -1 -> 0, -2 -> 1, ...; size -> size - 1, size + 1 -> size - 2 (edge repeated).
    """
    pos = torch.where(pos < 0, -pos - 1, pos)
    return torch.where(pos >= size, 2 * size - 1 - pos, pos)


def augment_batch(images: Tensor, params: AugmentParams, pad: int = PAD) -> Tensor:
    """Symmetric pad, crop back to ``H x W`` at the given offsets, flip: ``[B, C, H, W]`` -> same shape and dtype.

    Output pixel ``(i, j)`` of image ``b`` is padded pixel ``(row_offset[b] + i, col_offset[b] + j')`` with
    ``j' = W - 1 - j`` when flipped, i.e. the official pad -> crop -> fliplr, as one gather on ``images.device``.
    """
    batch, channels, height, width = images.shape
    if pad > min(height, width):
        raise ValueError(f"symmetric padding of {pad} needs images of at least {pad}x{pad}, got {height}x{width}")
    device = images.device
    row_off, col_off, flip = (t.to(device, non_blocking=True) for t in params)
    rows = _symmetric(row_off[:, None] + torch.arange(height, device=device) - pad, height)         # [B, H]
    cols = _symmetric(col_off[:, None] + torch.arange(width, device=device) - pad, width)          # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    flat = (rows[:, :, None] * width + cols[:, None, :]).view(batch, 1, height * width)            # [B, 1, H*W]
    out = images.reshape(batch, channels, height * width).gather(2, flat.expand(-1, channels, -1))
    return out.view(batch, channels, height, width)


def normalize(images: Tensor) -> Tensor:
    """uint8 ``[B, C, H, W]`` -> float32 ``(x - 127.5) / 128`` (official; no per-channel mean/std)."""
    return images.float().sub_(127.5).div_(128.0)  # in place on the fresh float copy: one allocation

"""Layer stacks with the weight shapes of the paper's networks, for benchmarking the regularisers alone."""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
from torch import nn


def cnn9_shapes(classes: int = 100, width: int = 64) -> List[Tuple[int, ...]]:
    """CNN-9 (docs/reference.md §2): 3 stages x 3 convs (64/128/256), fc6 4x4 conv, 1x1 classifier."""
    shapes: List[Tuple[int, ...]] = []
    cin = 3
    for c in (width, 2 * width, 4 * width):
        for _ in range(3):
            shapes.append((c, cin, 3, 3))
            cin = c
    return shapes + [(cin, cin, 4, 4), (classes, cin, 1, 1)]


def resnet_cifar_shapes(depth: int = 56, classes: int = 100) -> List[Tuple[int, ...]]:
    """He et al. CIFAR ResNet (option-A shortcuts): 16-channel stem, 3 stages of (depth-2)/6 basic blocks, fc."""
    blocks = (depth - 2) // 6
    shapes, cin = [(16, 3, 3, 3)], 16
    for c in (16, 32, 64):
        for _ in range(2 * blocks):
            shapes.append((c, cin, 3, 3))
            cin = c
    return shapes + [(classes, 64)]


class LayerStack(nn.Module):
    """Just the weights, He-normal initialised, registered in network order (no forward pass needed)."""

    def __init__(self, shapes: List[Tuple[int, ...]]):
        super().__init__()
        for i, shape in enumerate(shapes):
            layer = nn.Linear(shape[1], shape[0], bias=False) if len(shape) == 2 else \
                nn.Conv2d(shape[1], shape[0], (shape[2], shape[3]), bias=False)
            nn.init.normal_(layer.weight, std=math.sqrt(2.0 / layer.weight[0].numel()))
            self.add_module(f"layer{i}", layer)


STACKS = {"cnn9": lambda: LayerStack(cnn9_shapes()), "resnet56": lambda: LayerStack(resnet_cifar_shapes(56))}


def synthetic_bundle(device, classes: int = 100, train: int = 50000, test: int = 10000):
    """CIFAR-shaped random uint8 data already on ``device`` (for timing; CIFAR is not on benchmark machines)."""
    from ..data import tensor_bundle

    gen = torch.Generator(device="cpu").manual_seed(0)

    def split(n):
        return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen),
                torch.randint(0, classes, (n,), generator=gen))
    return tensor_bundle("synthetic-cifar-shape", split(train), split(test), classes, torch.device(device))

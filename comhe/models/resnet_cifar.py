"""CIFAR ResNets of He et al. 2016 ("Deep Residual Learning", §4.2): ResNet-20 / 32 / 56 / 110 (depth 6n + 2).

Layout (shapes ``[B, C, H, W]`` for a 32x32 input, width w = 1):

    conv1, bn1      3x3 conv 3 -> 16, BN, ReLU                          [B, 16, 32, 32]
    layer1          n basic blocks, 16 channels                         [B, 16, 32, 32]
    layer2          n basic blocks, 32 channels, the first at stride 2  [B, 32, 16, 16]
    layer3          n basic blocks, 64 channels, the first at stride 2  [B, 64,  8,  8]
    avgpool, fc     global average pool, linear 64 -> classes with bias [B, num_classes]

A basic block is ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``. Shortcuts are the paper's option A
(parameter-free): where the shape changes, ``x[:, :, ::2, ::2]`` with zero channels appended. This is what gives
the paper's parameter counts (0.27M / 0.46M / 0.85M / 1.7M for 10 classes).

What the hyperspherical-energy regularisers see (``comhe.layers.find_layers``, registration order):
``conv1`` is the *input* layer (3 input channels); every block convolution ``layerS.B.conv1/conv2`` is a *hidden*
layer; ``fc`` (registered last) is the *classifier*. With option A there are no 1x1 shortcut convolutions, so every
hidden layer is a 3x3 conv and the last linear / 1x1 layer is unambiguously ``fc``.

Not fixed by the paper and chosen here: the zero channels are appended after the identity ones (akamaster's
popular PyTorch port pads both sides; the two differ by a channel permutation of a parameter-free map), convs are
He-normal with fan_in as in He et al. 2015 (the init the paper cites; torchvision uses fan_out), and ``fc`` keeps
PyTorch's default init. BN uses PyTorch defaults (eps 1e-5, momentum 0.1), not the CNN-9 settings.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from .factory import MODELS

STAGE_CHANNELS = (16, 32, 64)  # multiplied by the width option


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: ``[B, C_in, H, W] -> [B, C_out, ceil(H/s), ceil(W/s)]``, subsample by ``stride`` and
    append ``C_out - C_in`` zero channels. No parameters, so no layer for a regulariser."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option-A shortcut cannot shrink channels ({in_channels} -> {out_channels})")
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))  # pads (W, H, C) from the last dim backwards


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN pairs and an option-A shortcut: ``[B, C_in, H, W] -> [B, C_out, H/stride, W/stride]``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ZeroPadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: ``[B, in_channels, H, W] -> [B, num_classes]``, any H, W >= 1."""

    layer1: nn.Sequential  # the three stages, registered by name (add_module) in __init__
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(self, blocks_per_stage: int, num_classes: int, *, in_channels: int = 3, width: int = 1):
        super().__init__()
        for key, value in dict(blocks_per_stage=blocks_per_stage, num_classes=num_classes,
                               in_channels=in_channels, width=width).items():
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        channels = [width * c for c in STAGE_CHANNELS]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        previous = channels[0]
        for stage, out in enumerate(channels, start=1):
            blocks: List[nn.Module] = []
            for i in range(blocks_per_stage):
                stride = 2 if stage > 1 and i == 0 else 1
                blocks.append(BasicBlock(previous, out, stride))
                previous = out
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(previous, num_classes)  # registered last: the regularisers' classifier
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, in_channels, H, W]`` -> logits ``[B, num_classes]``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


@MODELS.register("resnet20")
def resnet20(num_classes: int, *, in_channels: int = 3, width: int = 1) -> CifarResNet:
    """ResNet-20 (n = 3), 0.27M parameters at 10 classes."""
    return CifarResNet(3, num_classes, in_channels=in_channels, width=width)


@MODELS.register("resnet32")
def resnet32(num_classes: int, *, in_channels: int = 3, width: int = 1) -> CifarResNet:
    """ResNet-32 (n = 5), 0.46M parameters at 10 classes."""
    return CifarResNet(5, num_classes, in_channels=in_channels, width=width)


@MODELS.register("resnet56")
def resnet56(num_classes: int, *, in_channels: int = 3, width: int = 1) -> CifarResNet:
    """ResNet-56 (n = 9), 0.85M parameters at 10 classes."""
    return CifarResNet(9, num_classes, in_channels=in_channels, width=width)


@MODELS.register("resnet110")
def resnet110(num_classes: int, *, in_channels: int = 3, width: int = 1) -> CifarResNet:
    """ResNet-110 (n = 18), 1.7M parameters at 10 classes."""
    return CifarResNet(18, num_classes, in_channels=in_channels, width=width)

"""The plain CNNs of the official MHE / CoMHE code: CNN-6, CNN-9, CNN-15 (docs/reference.md §2; rmlin/CoMHE
``architecture.py``).

The name counts the 3x3 convolutions (2 / 3 / 5 per stage); fc6 and the classifier come on top, so CNN-9 has
10 hidden layers for the regulariser. ``cnn9`` at width t = 4 on a 32x32 image (shapes ``[B, C, H, W]``):

    features.conv1_1 .. conv1_3   3x3 SAME conv, 3 -> 64 -> 64 -> 64, each conv -> BN -> ReLU   [B,  64, 32, 32]
    features.pool1                2x2 max-pool, stride 2                                        [B,  64, 16, 16]
    features.conv2_1 .. conv2_3   64 -> 128 -> 128 -> 128                                       [B, 128, 16, 16]
    features.pool2                                                                              [B, 128,  8,  8]
    features.conv3_1 .. conv3_3   128 -> 256 -> 256 -> 256                                      [B, 256,  8,  8]
    features.pool3                                                                              [B, 256,  4,  4]
    fc6                           4x4 VALID conv 256 -> 256, no BN, no ReLU                     [B, 256,  1,  1]
    classifier                    1x1 conv 256 -> num_classes, flattened                        [B, num_classes]

Channels are ``t * (16, 32, 64)`` (the MHE paper's width table, t in {1, 2, 4, 8, 16}); fc6 keeps the last stage's
width. No convolution has a bias: BN's beta plays that role, and fc6 and the classifier have none in the official
code either. Module names are 1-based (``conv1_1``); the official TF scopes are 0-based (``conv1_0``) and call the
classifier ``score``.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from .factory import MODELS

STAGE_CHANNELS = (16, 32, 64)  # multiplied by the width t
NUM_POOLS = len(STAGE_CHANNELS)
BN_EPS = 1e-3  # tf.nn.batch_normalization(..., 1e-3) in the official code
# TF's ExponentialMovingAverage(decay=0.999) of the batch moments == PyTorch momentum 1 - 0.999. Deviation: TF starts
# the moving mean/variance at 0 (no zero-debias) and averages the biased batch variance; PyTorch starts the variance
# at 1 and averages the unbiased one. Both are forgotten after a few thousand iterations (0.999^5000 < 0.01), but
# evaluations in the first ~3k iterations see different running statistics than the official runs did.
BN_MOMENTUM = 1e-3  # the `bn_momentum` option: short runs (smoke profile, tests) need ~0.1 to evaluate sensibly


def pooled_size(image_size: int, num_pools: int = NUM_POOLS) -> int:
    """Side after ``num_pools`` 2x2 stride-2 max-pools with TF 'SAME' padding: ceil(s / 2) each (32 -> 4, 28 -> 4)."""
    for _ in range(num_pools):
        image_size = -(-image_size // 2)
    return image_size


def he_normal_(weight: torch.Tensor) -> torch.Tensor:
    """In place ``N(0, 2 / fan_in)``, fan_in = in_channels * kh * kw (TF random_normal, not truncated, as the code)."""
    return nn.init.normal_(weight, 0.0, math.sqrt(2.0 / weight[0].numel()))


class PlainCNN(nn.Module):
    """Three stages of ``convs_per_stage`` (3x3 conv -> BN -> ReLU), each closed by a 2x2 max-pool; fc6; classifier.

    Maps ``[B, in_channels, image_size, image_size]`` to ``[B, num_classes]`` logits. ``image_size`` only sets fc6's
    kernel (the side left after the three pools), which must reduce the map to 1x1.
    """

    def __init__(self, convs_per_stage: int, num_classes: int, *, width: float = 4.0, in_channels: int = 3,
                 image_size: int = 32, bn_momentum: float = BN_MOMENTUM):
        super().__init__()
        for key, value in dict(convs_per_stage=convs_per_stage, num_classes=num_classes, in_channels=in_channels,
                               image_size=image_size).items():
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        # Fractional t is allowed where every stage stays whole (t = 0.5: 8/16/32 channels, for CPU runs).
        if width <= 0 or any(width * base != int(width * base) for base in STAGE_CHANNELS):
            raise ValueError(f"width t must make t * {STAGE_CHANNELS} whole channel counts, got {width}")
        self.image_size = image_size
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        channels = in_channels
        for stage, base in enumerate(STAGE_CHANNELS, start=1):
            out = int(width * base)
            for i in range(1, convs_per_stage + 1):
                # padding=1 is TF 'SAME' for a 3x3 kernel at stride 1 (one pixel on every side).
                layers[f"conv{stage}_{i}"] = nn.Conv2d(channels, out, 3, padding=1, bias=False)
                layers[f"bn{stage}_{i}"] = nn.BatchNorm2d(out, eps=BN_EPS, momentum=bn_momentum)
                layers[f"relu{stage}_{i}"] = nn.ReLU(inplace=True)
                channels = out
            # ceil_mode reproduces TF 'SAME' pooling on odd sides (7 -> 4, as for 28x28 Fashion-MNIST); even sides
            # are unaffected. The window may overhang only by padding, which max-pooling ignores in both.
            layers[f"pool{stage}"] = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.features = nn.Sequential(layers)
        # fc6 is linear on purpose (official code: bn=False, relu=False): the classifier sees its raw output.
        self.fc6 = nn.Conv2d(channels, channels, pooled_size(image_size), bias=False)
        self.classifier = nn.Conv2d(channels, num_classes, 1, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal on every conv (fc6 and classifier included); BN gamma = 1, beta = 0, fresh running stats."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                he_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, in_channels, H, W]`` -> logits ``[B, num_classes]``."""
        scores = self.classifier(self.fc6(self.features(x)))
        if scores.shape[-2:] != (1, 1):
            raise ValueError(f"input {tuple(x.shape[-2:])} leaves a {tuple(scores.shape[-2:])} score map: the model "
                             f"was built for image_size={self.image_size} (fc6 kernel {self.fc6.kernel_size})")
        return scores.flatten(1)


@MODELS.register("cnn6")
def cnn6(num_classes: int, *, width: float = 4.0, in_channels: int = 3, image_size: int = 32,
         bn_momentum: float = BN_MOMENTUM) -> PlainCNN:
    """CNN-6: 2 convs per stage (the MHE paper's depth ablation)."""
    return PlainCNN(2, num_classes, width=width, in_channels=in_channels, image_size=image_size,
                    bn_momentum=bn_momentum)


@MODELS.register("cnn9")
def cnn9(num_classes: int, *, width: float = 4.0, in_channels: int = 3, image_size: int = 32,
         bn_momentum: float = BN_MOMENTUM) -> PlainCNN:
    """CNN-9: 3 convs per stage, the network of every official MHE / CoMHE CIFAR experiment."""
    return PlainCNN(3, num_classes, width=width, in_channels=in_channels, image_size=image_size,
                    bn_momentum=bn_momentum)


@MODELS.register("cnn15")
def cnn15(num_classes: int, *, width: float = 4.0, in_channels: int = 3, image_size: int = 32,
          bn_momentum: float = BN_MOMENTUM) -> PlainCNN:
    """CNN-15: 5 convs per stage (the MHE paper's depth ablation)."""
    return PlainCNN(5, num_classes, width=width, in_channels=in_channels, image_size=image_size,
                    bn_momentum=bn_momentum)

"""PointNet (Qi et al., CVPR 2017) for ModelNet-40, as the official TF code builds it (charlesq34/pointnet:
``models/pointnet_cls.py``, ``models/transform_nets.py``, ``utils/tf_util.py``; docs/reference.md §2b).

Input ``x [B, 3, N]`` (xyz, channels first), output logits ``[B, num_classes]``. Every per-point layer is a shared
linear map, a kernel-1 ``Conv1d`` (the official ``[1, 1]`` conv2d on ``[B, N, 1, C]``), with bias, then BN, ReLU.
``pointnet_tnet`` (the table's PN (T)), with the module names ``exclude=`` patterns match (width t = 1)::

    input_transform       T-Net 3x3: conv1..conv3 (3 -> 64 -> 128 -> 1024), max over points,
      .transform            fc1 (1024 -> 512), fc2 (512 -> 256), transform (256 -> 9: zero weights, identity bias)
    conv1, conv2          3 -> 64 -> 64, on the transformed points
    feature_transform     T-Net 64x64 on the features: conv1..conv3 (64 -> 64 -> 128 -> 1024), max, fc1, fc2,
      .transform            transform (256 -> 4,096)
    conv3, conv4, conv5   64 -> 64 -> 128 -> 1024, then the max over points                [B, 1024]
    fc1, fc2              1024 -> 512 -> 256, each BN, ReLU, dropout 0.3 (official keep_prob 0.7)
    classifier            256 -> num_classes

The auxiliary loss (``auxiliary_loss()``, added by the train step beside the regulariser's) is the official
``0.001 * tf.nn.l2_loss(T T^T - I)`` of the feature transform of the last forward: half the squared Frobenius norm,
**summed** over the batch (not averaged). The 3x3 input transform gets none, as in the official code.

``pointnet`` (the table's PN) is the same network without the two T-Nets, i.e. ``pointnet_cls`` with the transforms
removed, not ``pointnet_cls_basic``: PN and PN (T) then differ only in the T-Nets, the comparison the table's two
columns make. ``pointnet_cls_basic`` has the same convolutions but one dropout only, after fc2: ``dropouts=1``.

The max over points is ``max(-1).values``, not ``amax(-1)``: the values are the same, and amax's backward builds an
equality mask over the whole ``[B, 1024, N]`` input (~4x the time of max's backward on the CPU, which scatters into
the one index per channel it returned). They differ only in where a tied maximum's gradient goes: amax splits it
evenly between the tied points, max gives it all to the one whose index it returned. Ties between different
points have probability zero, except at a ReLU's 0, where no gradient passes either way; a duplicated point ties
with its copy, and then the parameters get the same gradient either way (the copies have the same inputs all the
way down, and BN's backward depends only on sums over points); only the gradient with respect to the input cloud
itself differs. ``tests/models/test_pointnet.py`` checks both.

Initialisation (``tf_util``): Xavier-uniform weights with TF's fans, zero biases, BN gamma 1 / beta 0, eps 1e-3.
TF counts the kernel in both fans: the layers that read xyz are ``[1, 3]`` convs on ``[B, N, 3, 1]``, so their fans
are (3, 3 x out) where a ``Conv1d(3, out, 1)`` would give (3, out): ``xavier_uniform_tf_`` takes the fans.
``width`` t scales every hidden channel count (t = 1 is the paper's; smaller t for CPU tests and smoke runs).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .factory import MODELS

BN_EPS = 1e-3
BN_MOMENTUM = 0.5   # PyTorch momentum = 1 - TF decay; the official start (train/optim.py schedules it down to 0.01)
XYZ = 3


def xavier_uniform_tf_(weight: Tensor, fan_in: int, fan_out: int) -> Tensor:
    """In place ``U(-a, a)``, ``a = sqrt(6 / (fan_in + fan_out))`` (TF's ``xavier_initializer``, uniform)."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return nn.init.uniform_(weight, -bound, bound)


class PointConv(nn.Conv1d):
    """Shared per-point linear layer ``[B, C, N] -> [B, out, N]``, then BN and ReLU (``tf_util.conv2d``, bn=True).

    ``kernel_fan``: the width TF's kernel had (3 for the xyz-reading ``[1, 3]`` convs), counted in both fans."""

    def __init__(self, in_channels: int, out_channels: int, bn_momentum: float, kernel_fan: int = 1):
        super().__init__(in_channels, out_channels, 1)
        self.bn = nn.BatchNorm1d(out_channels, eps=BN_EPS, momentum=bn_momentum)
        self.kernel_fan = kernel_fan

    def reset_tf(self) -> None:
        xavier_uniform_tf_(self.weight, self.in_channels, self.out_channels * self.kernel_fan)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(super().forward(x)))


class Dense(nn.Linear):
    """Fully connected ``[B, in] -> [B, out]``, then BN, ReLU and dropout (``tf_util.fully_connected``, bn=True)."""

    def __init__(self, in_features: int, out_features: int, bn_momentum: float, dropout: float = 0.0):
        super().__init__(in_features, out_features)
        self.bn = nn.BatchNorm1d(out_features, eps=BN_EPS, momentum=bn_momentum)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()

    def reset_tf(self) -> None:
        xavier_uniform_tf_(self.weight, self.in_features, self.out_features)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(F.relu(self.bn(super().forward(x))))


def channels(base: int, width: float) -> int:
    out = base * width
    if out != int(out) or out < 1:
        raise ValueError(f"width t must make t * {base} a whole channel count >= 1, got {width}")
    return int(out)


def reset_tf_(module: nn.Module) -> None:
    """The official initialisation of every layer of ``module`` (its ``reset_tf``, or Xavier for a plain linear)."""
    for m in module.modules():
        reset_tf = getattr(m, "reset_tf", None)
        if callable(reset_tf):
            reset_tf()
        elif isinstance(m, nn.Linear):
            xavier_uniform_tf_(m.weight, m.in_features, m.out_features)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()


class TNet(nn.Module):
    """A transform net: ``[B, C, N] -> [B, k, k]``, the identity at initialisation (zero last layer, identity bias)."""

    def __init__(self, in_channels: int, k: int, width: float, bn_momentum: float):
        super().__init__()
        self.k = k
        self.conv1 = PointConv(in_channels, channels(64, width), bn_momentum, XYZ if in_channels == XYZ else 1)
        self.conv2 = PointConv(channels(64, width), channels(128, width), bn_momentum)
        self.conv3 = PointConv(channels(128, width), channels(1024, width), bn_momentum)
        self.fc1 = Dense(channels(1024, width), channels(512, width), bn_momentum)
        self.fc2 = Dense(channels(512, width), channels(256, width), bn_momentum)
        self.transform = nn.Linear(channels(256, width), k * k)

    def reset_identity(self) -> None:
        nn.init.zeros_(self.transform.weight)
        with torch.no_grad():
            self.transform.bias.copy_(torch.eye(self.k).flatten())

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.conv3(self.conv2(self.conv1(x))).max(-1).values       # [B, 1024 t]
        return self.transform(self.fc2(self.fc1(pooled))).view(-1, self.k, self.k)


class PointNet(nn.Module):
    """PointNet classifier; ``tnets=True`` adds the input 3x3 and feature 64x64 transform nets (module docstring)."""

    def __init__(self, num_classes: int, *, tnets: bool, width: float = 1.0, dropout: float = 0.3, dropouts: int = 2,
                 bn_momentum: float = BN_MOMENTUM):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if dropouts not in (1, 2):
            raise ValueError(f"dropouts must be 2 (pointnet_cls: after fc1 and fc2) or 1 (pointnet_cls_basic: after "
                             f"fc2), got {dropouts}")
        c64 = channels(64, width)
        # Registration order = forward order: comhe.layers reads the first layer and the classifier from it.
        self.input_transform = TNet(XYZ, XYZ, width, bn_momentum) if tnets else None
        self.conv1 = PointConv(XYZ, c64, bn_momentum, kernel_fan=XYZ)
        self.conv2 = PointConv(c64, c64, bn_momentum)
        self.feature_transform = TNet(c64, c64, width, bn_momentum) if tnets else None
        self.conv3 = PointConv(c64, c64, bn_momentum)
        self.conv4 = PointConv(c64, channels(128, width), bn_momentum)
        self.conv5 = PointConv(channels(128, width), channels(1024, width), bn_momentum)
        self.fc1 = Dense(channels(1024, width), channels(512, width), bn_momentum, dropout if dropouts == 2 else 0.0)
        self.fc2 = Dense(channels(512, width), channels(256, width), bn_momentum, dropout)
        self.classifier = nn.Linear(channels(256, width), num_classes)
        reset_tf_(self)
        for tnet in (self.input_transform, self.feature_transform):
            if tnet is not None:
                tnet.reset_identity()
        # [B, 64, 64] of the last forward (the auxiliary loss reads it)
        self.last_feature_transform: Optional[Tensor] = None

    def forward(self, x: Tensor) -> Tensor:
        """x: ``[B, 3, N]`` -> logits ``[B, num_classes]``. A point is a row vector: ``p @ T`` is ``T^T x``."""
        if x.dim() != 3 or x.shape[1] != XYZ:
            raise ValueError(f"PointNet takes xyz clouds [B, 3, N], got {tuple(x.shape)}")
        if self.input_transform is not None:
            x = torch.bmm(self.input_transform(x).transpose(1, 2), x)
        features = self.conv2(self.conv1(x))                                 # [B, 64 t, N]
        if self.feature_transform is not None:
            transform = self.feature_transform(features)
            self.last_feature_transform = transform
            features = torch.bmm(transform.transpose(1, 2), features)
        pooled = self.conv5(self.conv4(self.conv3(features))).max(-1).values  # [B, 1024 t]: symmetric in the points
        return self.classifier(self.fc2(self.fc1(pooled)))


class PointNetWithTNets(PointNet):
    """PointNet with both T-Nets and the official orthogonality loss on the feature transform."""

    def __init__(self, num_classes: int, *, transform_loss_weight: float = 1e-3, **options):
        super().__init__(num_classes, tnets=True, **options)
        if transform_loss_weight < 0:
            raise ValueError(f"transform_loss_weight must be >= 0, got {transform_loss_weight}")
        self.transform_loss_weight = transform_loss_weight

    def auxiliary_loss(self) -> Tensor:
        """``weight * sum_b ||T_b T_b^T - I||_F^2 / 2`` of the last forward's feature transform, in float32."""
        if self.last_feature_transform is None:
            raise RuntimeError("auxiliary_loss reads the feature transform of the last forward: run one first")
        t = self.last_feature_transform.float()
        gram = torch.bmm(t, t.transpose(1, 2))
        eye = torch.eye(t.shape[-1], device=t.device, dtype=t.dtype)
        return self.transform_loss_weight * 0.5 * (gram - eye).pow(2).sum()


@MODELS.register("pointnet")
def pointnet(num_classes: int, *, width: float = 1.0, dropout: float = 0.3, dropouts: int = 2,
             bn_momentum: float = BN_MOMENTUM) -> PointNet:
    """PointNet without T-Nets (the table's PN)."""
    return PointNet(num_classes, tnets=False, width=width, dropout=dropout, dropouts=dropouts,
                    bn_momentum=bn_momentum)


@MODELS.register("pointnet_tnet")
def pointnet_tnet(num_classes: int, *, width: float = 1.0, dropout: float = 0.3, dropouts: int = 2,
                  bn_momentum: float = BN_MOMENTUM, transform_loss_weight: float = 1e-3) -> PointNetWithTNets:
    """PointNet with the input 3x3 and feature 64x64 T-Nets (the table's PN (T))."""
    return PointNetWithTNets(num_classes, width=width, dropout=dropout, dropouts=dropouts, bn_momentum=bn_momentum,
                             transform_loss_weight=transform_loss_weight)

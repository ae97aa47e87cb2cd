"""ImageNet ResNet-18 / 34 / 50 (He et al. 2016), taken unchanged from torchvision, randomly initialised.

Never pretrained and never downloaded: ``weights=None`` always. torchvision is imported when a model is built, so
the rest of the zoo works without it.

What the regularisers see (registration order): ``conv1`` (7x7, 3 input channels) is the *input* layer; every
block convolution and every ``downsample.0`` 1x1 projection shortcut is a *hidden* layer (torchvision registers
a block's ``downsample`` after its convs); ``fc`` is registered last and is the *classifier*.
Parameter counts at 1000 classes: ResNet-18 11,689,512; ResNet-34 21,797,672; ResNet-50 25,557,032.
"""
from __future__ import annotations

from torch import nn

from .factory import MODELS


def _torchvision_resnet(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    """torchvision's ``arch`` with ``num_classes`` outputs; ``[B, in_channels, H, W] -> [B, num_classes]``."""
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    try:
        import torchvision
    except ImportError as error:  # torchvision is a suite dependency, not a library one (pyproject.toml)
        raise ImportError(f"model {arch!r} needs torchvision: pip install 'comhe[suite]'") from error
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if in_channels != 3:
        # Replacing the attribute keeps conv1's place in registration order, so it stays the regularisers' input
        # layer. Same shape and init as torchvision's own conv1 (kaiming normal, fan_out).
        conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")
        model.conv1 = conv1
    return model


@MODELS.register("resnet18")
def resnet18(num_classes: int, *, in_channels: int = 3) -> nn.Module:
    """ResNet-18 (basic blocks 2-2-2-2)."""
    return _torchvision_resnet("resnet18", num_classes, in_channels)


@MODELS.register("resnet34")
def resnet34(num_classes: int, *, in_channels: int = 3) -> nn.Module:
    """ResNet-34 (basic blocks 3-4-6-3)."""
    return _torchvision_resnet("resnet34", num_classes, in_channels)


@MODELS.register("resnet50")
def resnet50(num_classes: int, *, in_channels: int = 3) -> nn.Module:
    """ResNet-50 (bottleneck blocks 3-4-6-3)."""
    return _torchvision_resnet("resnet50", num_classes, in_channels)

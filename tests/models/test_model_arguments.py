"""The model constructors' argument errors, each with its message, and the missing-torchvision hint of the ImageNet
ResNets (torchvision is a suite dependency, not a library one)."""
import sys

import pytest

from comhe import models
from comhe.models.resnet_cifar import ZeroPadShortcut


@pytest.mark.parametrize("name, num_classes, options, message", [
    ("cnn9", 0, {}, "num_classes must be a positive integer, got 0"),
    ("cnn9", 10, {"image_size": 0}, "image_size must be >= 1, got 0"),
    ("resnet20", 10, {"width": 0}, "width must be >= 1, got 0"),
    ("resnet20", 10, {"in_channels": 0}, "in_channels must be >= 1, got 0"),
    ("resnet18", 10, {"in_channels": 0}, "in_channels must be >= 1, got 0"),
])
def test_out_of_range_options_are_refused(name, num_classes, options, message):
    with pytest.raises(ValueError) as err:
        models.build(name, num_classes, **options)
    assert str(err.value) == message


def test_an_option_a_shortcut_cannot_shrink_channels():
    with pytest.raises(ValueError) as err:
        ZeroPadShortcut(32, 16, stride=2)
    assert str(err.value) == "option-A shortcut cannot shrink channels (32 -> 16)"


def test_an_imagenet_resnet_without_torchvision_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)   # `import torchvision` raises ImportError
    with pytest.raises(ImportError) as err:
        models.build("resnet18", 10)
    assert str(err.value) == "model 'resnet18' needs torchvision: pip install 'comhe[suite]'"


def test_an_option_whose_default_is_none_takes_any_value():
    assert models.factory._same_kind("anything", None) and models.factory._same_kind(3, None)
    assert not models.factory._same_kind("3", 3) and not models.factory._same_kind(True, 3)

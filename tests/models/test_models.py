"""Model zoo: shapes, parameter counts against the papers, the CNN-9 spec of docs/reference.md §2, and the layer roles
the regularisers rely on. CPU only; every model is built at most a few times."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from comhe import models
from comhe.layers import find_layers
from comhe.models.plain_cnn import pooled_size
from comhe.models.resnet_cifar import ZeroPadShortcut

NUM_CLASSES = 7  # no layer of any model has 7 outputs except the classifier
PLAIN_CNNS = {"cnn6": 2, "cnn9": 3, "cnn15": 5}  # 3x3 convs per stage


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


POINT_MODELS = {"pointnet", "pointnet_tnet", "pointnet2_ssg"}  # clouds [B, 3, N]: tests/models/test_pointnet.py
IMAGE_MODELS = [n for n in models.names() if n not in POINT_MODELS | {"gcn"}]  # the GCN: tests/models/test_gcn.py


@pytest.fixture(scope="module", params=IMAGE_MODELS)
def built(request):
    torch.manual_seed(0)
    return request.param, models.build(request.param, NUM_CLASSES)


def test_registry_lists_every_family():
    assert set(IMAGE_MODELS) == {"cnn6", "cnn9", "cnn15", "resnet20", "resnet32", "resnet56", "resnet110",
                                   "resnet18", "resnet34", "resnet50"}


def test_output_shape(built):
    name, model = built
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, NUM_CLASSES)


def test_input_layer_first_and_classifier_last(built):
    """comhe.layers.find_layers walks registration order: conv on the image first, classifier last."""
    name, model = built
    layers = find_layers(model)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 3
    assert layers[0].role == "input" and layers[0].weight is first_conv.weight
    assert [layer.role for layer in layers].count("output") == 1
    assert layers[-1].role == "output" and layers[-1].weight.shape[0] == NUM_CLASSES


def test_the_point_cloud_models_are_registered():
    assert POINT_MODELS <= set(models.names())


def test_option_defaults():
    assert models.option_defaults("cnn9") == {"width": 4, "in_channels": 3, "image_size": 32, "bn_momentum": 1e-3}
    assert models.option_defaults("resnet110") == {"in_channels": 3, "width": 1}
    assert models.option_defaults("resnet50") == {"in_channels": 3}


def test_unknown_model_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown model 'cnn10'.*valid: cnn6, cnn9, cnn15, resnet20"):
        models.build("cnn10", 10)


@pytest.mark.parametrize("options, message", [
    ({"widht": 2}, r"no option 'widht'; valid: width, in_channels, image_size"),
    ({"width": "2"}, r"'width' = '2' should be of type float"),
    ({"width": True}, r"'width' = True should be of type float"),
    ({"image_size": "32"}, r"'image_size' = '32' should be of type int"),
])
def test_bad_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        models.build("cnn9", 10, **options)


def test_bad_values_raise():
    with pytest.raises(ValueError, match="num_classes"):
        models.build("resnet20", 0)
    with pytest.raises(ValueError, match="width t must make"):
        models.build("cnn9", 10, width=0)
    with pytest.raises(ValueError, match=r"whole channel counts, got 0.3"):
        models.build("cnn9", 10, width=0.3)
    half = models.build("cnn9", 10, width=0.5)  # 1/8 of the paper's width: 8/16/32 channels, for CPU runs
    convs = [m.out_channels for m in half.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[:9] == [8] * 3 + [16] * 3 + [32] * 3
    with pytest.raises(ValueError, match="no option 'width'; valid: in_channels"):
        models.build("resnet18", 10, width=2)


# --- plain CNNs (docs/reference.md §2) --------------------------------------------------------------------------------

def test_cnn9_parameter_count_from_the_spec():
    k = 3 * 3
    convs = (3 * 64 * k + 2 * 64 * 64 * k) + (64 * 128 * k + 2 * 128 * 128 * k) + (128 * 256 * k + 2 * 256 * 256 * k)
    fc6 = 256 * 256 * 4 * 4
    classifier = 256 * 100
    bn = 2 * (3 * 64 + 3 * 128 + 3 * 256)  # gamma and beta
    assert count_params(models.build("cnn9", 100)) == convs + fc6 + classifier + bn == 2_995_520


@pytest.mark.parametrize("name", PLAIN_CNNS)
def test_plain_cnn_layout(name):
    model = models.build(name, 100)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(c.kernel_size == (3, 3) for c in convs) == 3 * PLAIN_CNNS[name]
    assert len(convs) == 3 * PLAIN_CNNS[name] + 2  # + fc6 + classifier
    assert all(c.bias is None for c in convs)
    assert all(c.padding == (1, 1) and c.stride == (1, 1) for c in convs if c.kernel_size == (3, 3))
    assert model.fc6.kernel_size == (4, 4) and model.fc6.padding == (0, 0) and model.fc6.out_channels == 256
    assert model.classifier.kernel_size == (1, 1) and model.classifier.out_channels == 100
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 3 * PLAIN_CNNS[name]  # one per 3x3 conv, none for fc6 or the classifier
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert names[0] == "features.conv1_1" and names[-2:] == ["fc6", "classifier"]


def test_cnn9_fc6_output_reaches_classifier_raw():
    """No BN and no ReLU after fc6: the classifier's input is the plain fc6 convolution, negatives included."""
    torch.manual_seed(0)
    model = models.build("cnn9", 10, width=1)
    seen = {}
    model.classifier.register_forward_hook(lambda m, inputs, out: seen.update(x=inputs[0]))
    x = torch.randn(4, 3, 32, 32)
    model(x)
    expected = F.conv2d(model.features(x), model.fc6.weight)
    torch.testing.assert_close(seen["x"], expected)
    assert (seen["x"] < 0).any()


def test_cnn9_batchnorm_matches_tf():
    model = models.build("cnn9", 100)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        assert bn.eps == 1e-3 and bn.momentum == pytest.approx(1 - 0.999)
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))


def test_cnn9_he_normal_init():
    """std = sqrt(2 / fan_in) for every conv, fc6 and classifier included (PyTorch's default would be ~0.41x)."""
    torch.manual_seed(0)
    model = models.build("cnn9", 100)
    for name, conv in model.named_modules():
        if not isinstance(conv, nn.Conv2d):
            continue
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        w = conv.weight.detach()
        # sampling error of a std estimate is ~1/sqrt(2n): 1.7% for conv1_1 (1,728 weights), 0.07% for fc6.
        tolerance = 5 / math.sqrt(2 * w.numel())
        assert w.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=tolerance), name
        assert abs(w.mean().item()) < 5 * math.sqrt(2 / fan_in) / math.sqrt(w.numel()), name
    assert model.fc6.weight.std().item() == pytest.approx(math.sqrt(2 / (256 * 16)), rel=0.01)


@pytest.mark.parametrize("width", [1, 2, 4, 8, 16])
def test_cnn9_width_multiplier(width):
    model = models.build("cnn9", 10, width=width)
    channels = [m.out_channels for m in model.features if isinstance(m, nn.Conv2d)]
    assert channels == [16 * width] * 3 + [32 * width] * 3 + [64 * width] * 3
    assert model.fc6.in_channels == model.fc6.out_channels == model.classifier.in_channels == 64 * width


def test_cnn9_fashion_mnist_28x28_grey():
    model = models.build("cnn9", 10, width=1, in_channels=1, image_size=28)
    assert model.features.conv1_1.in_channels == 1
    assert model.fc6.kernel_size == (4, 4)  # 28 -> 14 -> 7 -> 4 with TF 'SAME' pooling
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_tf_same_pooling_on_odd_sides():
    assert [pooled_size(s) for s in (32, 28, 64, 1)] == [4, 4, 8, 1]
    pool = models.build("cnn9", 10, width=1).features.pool1
    x = torch.arange(49.0).reshape(1, 1, 7, 7)
    # TF 'SAME' pads one row / column at the bottom / right: windows {0,1}, {2,3}, {4,5}, {6}.
    last = [1, 3, 5, 6]
    expected = torch.tensor([[7.0 * r + c for c in last] for r in last])
    torch.testing.assert_close(pool(x)[0, 0], expected)


def test_cnn9_rejects_input_of_the_wrong_size():
    with pytest.raises(ValueError, match="image_size=32"):
        models.build("cnn9", 10, width=1)(torch.randn(1, 3, 64, 64))


# --- CIFAR ResNets (He et al. 2016, option A) ---------------------------------------------------------------------

def cifar_resnet_params(n: int, classes: int) -> int:
    stem = 3 * 16 * 9 + 2 * 16

    def block(c_in, c_out):  # two 3x3 convs, two BNs, no shortcut parameters
        return c_in * c_out * 9 + c_out * c_out * 9 + 2 * 2 * c_out

    stages = n * block(16, 16) + block(16, 32) + (n - 1) * block(32, 32) + block(32, 64) + (n - 1) * block(64, 64)
    return stem + stages + 64 * classes + classes


@pytest.mark.parametrize("name, n, paper_millions, digits", [
    ("resnet20", 3, 0.27, 2), ("resnet32", 5, 0.46, 2), ("resnet56", 9, 0.85, 2), ("resnet110", 18, 1.7, 1),
])
def test_cifar_resnet_parameter_counts(name, n, paper_millions, digits):
    count = count_params(models.build(name, 10))
    assert count == cifar_resnet_params(n, 10)
    assert round(count / 1e6, digits) == paper_millions  # He et al. 2016, Table 6


def test_cifar_resnet_structure():
    model = models.build("resnet20", 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and all(c.kernel_size == (3, 3) and c.bias is None for c in convs)
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [3, 3, 3]
    assert [model.layer2[0].conv1.stride, model.layer2[1].conv1.stride, model.layer3[0].conv1.stride] == [
        (2, 2), (1, 1), (2, 2)]
    assert isinstance(model.layer2[0].shortcut, ZeroPadShortcut) and isinstance(model.layer2[1].shortcut, nn.Identity)
    assert list(dict(model.named_children()))[-1] == "fc" and model.fc.bias is not None
    w = model.layer3[0].conv1.weight.detach()  # 64 x 32 x 3 x 3: kaiming normal on fan_in (32 * 9), not fan_out
    assert w.std().item() == pytest.approx(math.sqrt(2 / (32 * 9)), rel=0.03)
    wide = models.build("resnet20", 10, width=2)
    channels = [wide.layer1[0].conv1.out_channels, wide.layer2[0].conv1.out_channels, wide.fc.in_features]
    assert channels == [32, 64, 128]


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.randn(2, 16, 8, 8)
    y = ZeroPadShortcut(16, 32, stride=2)(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 16:]) == 0


# --- ImageNet ResNets (torchvision, random init) ------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032),
])
def test_imagenet_resnet_parameter_counts(name, expected):
    assert count_params(models.build(name, 1000)) == expected  # torchvision's documented counts


def test_imagenet_resnet_forward_64px():
    # One architecture only: every registered model already runs a 32x32 forward in test_output_shape, and a
    # ResNet-50 forward costs seconds on a 2-core CPU.
    with torch.no_grad():
        assert models.build("resnet18", 1000).eval()(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_imagenet_resnet_other_input_channels_keep_conv1_first():
    model = models.build("resnet18", 10, in_channels=1)
    layers = find_layers(model)
    assert layers[0].weight is model.conv1.weight and layers[0].weight.shape == (64, 1, 7, 7)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)

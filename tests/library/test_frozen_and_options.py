"""Frozen layers are left out (and said so) unless ``include_frozen=True``; every ``build`` option is type- and
range-checked with its name in the one error."""
import math
import warnings

import numpy as np
import pytest
import torch

from comhe import regularizers
from comhe.layers import find_layers

from test_regularizers import small_cnn


def frozen_cnn():
    model = small_cnn()
    model.conv1.weight.requires_grad_(False)
    model.conv6.requires_grad_(False)  # the classifier
    return model


@pytest.mark.parametrize("name, opts", [("hs_mhe", {}), ("rp_comhe", {"proj_dim": 6, "seed": 3}),
                                        ("orthonormal", {})])
def test_frozen_layers_are_left_out_and_listed(name, opts):
    model = frozen_cnn()
    reg = regularizers.build(name, model, **opts)
    assert "conv1" not in [layer.name for layer in reg.layers] and "conv6" not in [layer.name for layer in reg.layers]
    left = dict(reg.left_out)
    assert left["conv1.weight"] == "frozen (requires_grad=False): include_frozen=True keeps it"
    assert left["conv6.weight"] == ("not in layers='hidden'" if name == "orthonormal" else left["conv1.weight"])
    assert "conv1.weight  frozen (requires_grad=False)" in repr(reg)  # print(reg) says it
    # the same loss as leaving those layers out by hand (roles kept: the frozen classifier stays the classifier)
    by_hand = regularizers.build(name, small_cnn(), layers="hidden", exclude=["conv1"], **opts)
    assert [(l.name, l.role) for l in by_hand.layers] == [(l.name, l.role) for l in reg.layers]
    assert reg()[0].item() == by_hand()[0].item()


def test_include_frozen_keeps_them_and_they_get_no_gradient():
    model = frozen_cnn()
    reg = regularizers.build("hs_mhe", model, include_frozen=True)
    assert [layer.name for layer in reg.layers] == [f"conv{i}" for i in range(7)] and not dict(reg.left_out).get(
        "conv1.weight")
    assert reg()[0].item() == pytest.approx(regularizers.build("hs_mhe", small_cnn())()[0].item(), rel=1e-6)
    loss, _ = reg()
    loss.backward()
    assert model.conv1.weight.grad is None and model.conv2.weight.grad is not None


def test_every_layer_frozen_is_an_error_saying_what_to_do():
    model = small_cnn().requires_grad_(False)
    with pytest.raises(ValueError, match="is frozen .*pass include_frozen=True"):
        regularizers.build("mhe", model)
    assert len(regularizers.build("mhe", model, include_frozen=True).layers) == 7


def test_freezing_after_build_warns_once():
    model = small_cnn()
    reg = regularizers.build("mhe", model)
    model.conv2.weight.requires_grad_(False)
    with pytest.warns(UserWarning, match="conv2: requires_grad changed since the regulariser was built"):
        reg()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg()
    kept = regularizers.build("mhe", small_cnn(), include_frozen=True)
    kept.layers[2].weight.requires_grad_(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept()


BAD = [  # (regulariser, option, value, error)
    ("mhe", "lambda_hidden", "1", TypeError), ("mhe", "lambda_hidden", -1.0, ValueError),
    ("mhe", "lambda_hidden", math.nan, ValueError), ("mhe", "lambda_output", math.inf, ValueError),
    ("mhe", "lambda_output", True, TypeError), ("mhe", "eps", "1e-4", TypeError), ("mhe", "eps", math.nan, ValueError),
    ("mhe", "eps", 0.0, ValueError), ("orthogonal", "eps", -1e-4, ValueError),
    ("mhe", "layers", 3, ValueError), ("mhe", "classifier", 5, TypeError), ("mhe", "s", [2], ValueError),
    ("mhe", "example_input", [1.0], TypeError), ("mhe", "exclude", 3, ValueError),
    ("mhe", "include_frozen", 1, TypeError),
    ("rp_comhe", "seed", "a", TypeError), ("rp_comhe", "seed", 1.5, TypeError),
    ("rp_comhe", "seed", 2 ** 70, ValueError),
    ("rp_comhe", "proj_dim", 2.5, TypeError), ("rp_comhe", "proj_dim", True, TypeError),
    ("rp_comhe", "proj_dim", 0, ValueError), ("rp_comhe", "num_proj", "20", TypeError),
    ("rp_comhe", "num_proj", -1, ValueError), ("ap_comhe", "proj_iters", -1, ValueError),
    ("ap_comhe", "proj_lr", -0.1, ValueError), ("ap_comhe", "proj_lr", math.nan, ValueError),
    ("ap_comhe", "proj_weight_decay", -1.0, ValueError), ("ap_comhe", "proj_lr_fixed", "yes", TypeError),
    ("adv_comhe", "proj_iters", 2.0, TypeError), ("g_comhe", "min_group_size", 0, ValueError),
    ("g_comhe", "num_proj", None, TypeError), ("srip", "power_iters", True, TypeError),
    ("srip", "power_iters", 0, ValueError), ("srip", "lambda_hidden", None, TypeError),
]


@pytest.mark.parametrize("name, option, value, error", BAD)
def test_bad_option_values_name_the_option(name, option, value, error):
    with pytest.raises(error) as caught:
        regularizers.build(name, small_cnn(width=4), **{option: value})
    message = str(caught.value)
    assert option in message and len(message.splitlines()) == 1


def test_good_values_of_every_kind_pass():
    model = small_cnn(width=4)
    regularizers.build("rp_comhe", model, proj_dim=np.int64(6), num_proj=np.int32(2), seed=np.int64(-3),
                       lambda_hidden=0, lambda_output=np.float32(2.5), eps=1)
    regularizers.build("ap_comhe", model, proj_iters=0, proj_lr=0.0, proj_weight_decay=0, proj_lr_fixed=True,
                       example_input=torch.randn(1, 3, 16, 16))
    regularizers.build("orthogonal", model, eps=0.0, classifier="conv6", layers="both")
    with pytest.raises(TypeError, match="model must be an nn.Module, got str"):
        regularizers.build("mhe", "cnn9")
    assert find_layers(model)  # the model is untouched by the failed builds

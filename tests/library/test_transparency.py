"""The library says what it did: every layer acted on and every parameter left out, the classifier from the forward
order (or a warning), SRIP's monitor reports the exact spectral norm."""
import warnings

import pytest
import torch
from torch import nn

from comhe import models, regularizers
from comhe.layers import find_layers

from test_regularizers import small_cnn


class Mixed(nn.Module):
    """Layers of every kind a regulariser must leave out, and a layer excluded by name."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.attn = nn.MultiheadAttention(8, 2)
        self.norm = nn.LayerNorm(8)
        self.up = nn.ConvTranspose1d(8, 8, 3)
        self.conv = nn.Conv1d(8, 16, 3)
        self.bn = nn.BatchNorm1d(16)
        self.tnet = nn.Linear(16, 16)
        self.fc = nn.Linear(16, 5)


def test_describe_lists_every_layer_and_every_parameter_left_out():
    reg = regularizers.build("rp_comhe", Mixed(), proj_dim=10, num_proj=2, exclude=["tnet"])
    text = reg.describe()
    rows = {line.split()[0]: line for line in text.splitlines()[1:] if not line.startswith(("left", " "))}
    assert set(rows) == {"attn.out_proj", "conv", "fc"}
    assert "output" in rows["fc"] and "full-space" in rows["fc"] and rows["fc"].rstrip().endswith("10")
    assert "projections to 10" in rows["conv"] and "hidden" in rows["conv"]  # fan-in 24 > 10
    left = dict(line.split(None, 1) for line in text.split("left out:\n")[1].splitlines())
    assert left["embed.weight"] == "nn.Embedding: its rows are token vectors, not neurons"
    assert "MultiheadAttention" in left["attn.in_proj_weight"] and "bias" in left["attn.in_proj_bias"]
    assert "transposed convolution" in left["up.weight"] and "normalisation" in left["norm.weight"]
    assert "normalisation" in left["bn.weight"] and left["tnet.weight"] == "excluded (exclude=)"
    assert "bias" in left["fc.bias"] and "bias" in left["conv.bias"]
    every = {name for name, _ in Mixed().named_parameters()}
    assert set(left) | {"attn.out_proj.weight", "conv.weight", "fc.weight"} == every
    assert all(line.strip() in repr(reg) for line in text.splitlines())  # print(reg) shows it
    hidden_only = regularizers.build("hs_mhe", Mixed(), layers="hidden")
    assert "not in layers='hidden'" in dict(hidden_only.left_out)["fc.weight"]


def test_describe_says_why_a_comhe_layer_is_unprojected():
    text = regularizers.build("rp_comhe", small_cnn(), proj_dim=100).describe()
    assert "unprojected: 3 input channels" in text and "unprojected: fan-in 72 not compressed" in text


class HeadFirst(nn.Module):
    """A model whose head is registered before its body: registration order names the wrong classifier."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(32, 10)
        self.body = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())

    def forward(self, x):
        return self.head(self.body(x))


def test_head_defined_before_body_warns_or_follows_the_forward_order():
    with pytest.warns(UserWarning, match=r"classifier was taken to be 'body.2'.*head could read its output"):
        layers = find_layers(HeadFirst())
    assert [(l.name, l.role) for l in layers] == [("head", "input"), ("body.0", "hidden"), ("body.2", "output")]
    model = HeadFirst()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg = regularizers.build("hs_mhe", model, example_input=torch.randn(2, 12))
        assert [(l.name, l.role) for l in reg.layers] == [("body.0", "input"), ("body.2", "hidden"), ("head", "output")]
        assert [l.name for l in find_layers(model, classifier="head")] == ["head", "body.0", "body.2"]
    assert model.training  # the example forward ran in eval mode and restored the mode


@pytest.mark.parametrize("name", ["cnn6", "cnn9", "cnn15", "resnet20", "resnet32", "resnet18", "resnet50"])
def test_suite_models_need_no_example_input(name):
    """For every network of the tables the registration order is the forward order: no warning, the same plan."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = models.build(name, 10)
        plain = find_layers(model)
        ordered = find_layers(model, example_input=torch.randn(1, 3, 32, 32))
    assert [(l.name, l.role) for l in plain] == [(l.name, l.role) for l in ordered]


def test_srip_monitor_reports_the_exact_spectral_norm():
    """The power-iteration estimate of the loss is a lower bound that moves with the iteration; the stats give the
    exact value (largest |eigenvalue| of W W^T - I, or W^T W - I for a wide layer) and the estimate beside it."""
    model = small_cnn()
    reg = regularizers.build("srip", model, lambda_hidden=1.0, power_iters=1)
    loss, stats = reg()
    exact = {}
    for layer in find_layers(model):
        if layer.role == "output":
            continue
        w = layer.weight.detach().reshape(layer.num_neurons, -1)
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        exact[layer.name] = torch.linalg.matrix_norm(gram - torch.eye(gram.shape[0]), ord=2).item()
        assert stats[f"penalty/{layer.name}"] == pytest.approx(exact[layer.name], rel=1e-5)
        assert stats[f"estimate/{layer.name}"] <= exact[layer.name] * (1 + 1e-6)
    assert stats["total"] == pytest.approx(sum(exact.values()), rel=1e-5)
    assert loss.item() == pytest.approx(sum(stats[f"estimate/{n}"] for n in exact), rel=1e-6)
    assert loss.item() < stats["total"]  # one power iteration is not converged

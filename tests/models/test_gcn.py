"""The GCN (Kipf & Welling): its forward pass against a dense float64 reference, sparse dropout that keeps the
sparsity pattern, Glorot init, and the layer plan each regulariser gives it (the official rule projects its first
layer; the classifier stays full-space)."""
import math

import pytest
import torch
import torch.nn.functional as F

from comhe import data, models, regularizers
from comhe.models.gcn import sparse_dropout


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    return data.build("synthetic_planetoid", tmp_path_factory.mktemp("graph"), num_classes=5)


def test_forward_matches_a_dense_float64_reference(graph):
    torch.manual_seed(0)
    net = models.build("gcn", graph.num_classes, in_features=graph.num_features).eval()
    out = net(graph.features, graph.adjacency)
    x, a = graph.features.to_dense().double(), graph.adjacency.to_dense().double()
    w1, w2 = net.conv1.weight.double(), net.conv2.weight.double()
    reference = a @ torch.relu(a @ x @ w1.t()) @ w2.t()                  # Z = A relu(A X W1) W2 (eq. 9)
    assert out.shape == (graph.num_nodes, graph.num_classes)
    assert torch.allclose(out.double(), reference, atol=1e-5, rtol=1e-4)
    dense_out = net(graph.features.to_dense(), graph.adjacency.to_dense())   # dense inputs are accepted too
    assert torch.allclose(dense_out, out, atol=1e-5)


def test_sparse_dropout_keeps_the_pattern_and_rescales(graph):
    torch.manual_seed(1)
    x = graph.features
    dropped = sparse_dropout(x, 0.5, training=True)
    assert dropped.is_sparse and torch.equal(dropped.indices(), x.indices())   # never densified
    kept = dropped.values() != 0
    assert torch.allclose(dropped.values()[kept], 2 * x.values()[kept])      # inverted dropout: 1 / (1 - p)
    n = x._nnz()
    assert abs(kept.sum().item() - n / 2) < 4 * math.sqrt(n / 4)            # ~ half kept (4 sigma)
    assert sparse_dropout(x, 0.5, training=False) is x


def test_training_mode_drops_out_and_eval_mode_does_not(graph):
    torch.manual_seed(2)
    net = models.build("gcn", graph.num_classes, in_features=graph.num_features)
    train_a, train_b = net(graph.features, graph.adjacency), net(graph.features, graph.adjacency)
    net.eval()
    assert not torch.allclose(train_a, train_b) and torch.equal(net(graph.features, graph.adjacency),
                                                                net(graph.features, graph.adjacency))


def test_glorot_uniform_init_and_no_bias():
    torch.manual_seed(3)
    net = models.build("gcn", 7)
    assert [name for name, _ in net.named_parameters()] == ["conv1.weight", "conv2.weight"]
    for w, (fan_out, fan_in) in ((net.conv1.weight, (16, 1433)), (net.conv2.weight, (7, 16))):
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert w.shape == (fan_out, fan_in) and w.abs().max() <= bound
        assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)   # U(-a, a): std a / sqrt(3)
    assert net.decayed_parameters() == [net.conv1.weight]                     # the official L2: first layer only


def test_options_and_their_checks():
    assert models.option_defaults("gcn") == {"in_features": 1433, "hidden": 16, "dropout": 0.5}
    assert models.build("gcn", 3, hidden=8, in_features=20).conv1.weight.shape == (8, 20)
    with pytest.raises(ValueError, match="0 <= dropout < 1"):
        models.build("gcn", 3, dropout=1.0)


def plan(reg):
    """layer -> (half-space, projected, weight) as the regulariser will compute it."""
    return {layer.name: (t.kind != "full", t.kind == "projected", t.weight) for layer, t in zip(reg.layers, reg.terms)}


@pytest.mark.parametrize("name, conv1", [
    ("mhe", (False, False, 1.0)),          # full-space MHE on both layers
    ("hs_mhe", (True, False, 1.0)),        # half-space on the hidden layer
    ("rp_comhe", (True, True, 1.0)),       # the first layer is projected: fan-in 1,433 > k = 40 (not an RGB conv)
    ("ap_comhe", (True, True, 1.0)),
    ("adv_comhe", (True, True, 1.0)),
    ("g_comhe", (True, True, 1.0)),
])
def test_gcn_layer_plan_per_regulariser(name, conv1):
    torch.manual_seed(4)
    net = models.build("gcn", 7)
    reg = regularizers.build(name, net)
    assert plan(reg) == {"conv1": conv1, "conv2": (False, False, 10.0)}   # classifier: full space, unprojected
    assert [layer.role for layer in reg.layers] == ["input", "output"]


def test_projected_gcn_terms_differ_from_hs_mhe_and_follow_the_fan_in_rule():
    torch.manual_seed(5)
    net = models.build("gcn", 7)
    hs = regularizers.build("hs_mhe", net)()[0].item()
    for name in ("rp_comhe", "ap_comhe"):
        assert regularizers.build(name, net)()[0].item() != pytest.approx(hs, rel=1e-3)
    narrow = models.build("gcn", 7, in_features=30)                            # fan-in 30 <= k = 40: not compressed
    assert plan(regularizers.build("rp_comhe", narrow))["conv1"] == (True, False, 1.0)
    assert regularizers.build("rp_comhe", narrow)()[0].item() == pytest.approx(
        regularizers.build("hs_mhe", narrow)()[0].item(), rel=1e-6)


def test_the_energy_sees_rows_as_neurons():
    """conv1's 16 neurons of dimension 1,433: HS-MHE's conv1 term equals the pure energy of that [16, 1433] matrix."""
    from comhe.energy import hyperspherical_energy
    torch.manual_seed(6)
    net = models.build("gcn", 7)
    _, stats = regularizers.build("hs_mhe", net)()
    assert stats["energy/conv1"] == pytest.approx(hyperspherical_energy(net.conv1.weight, s=2, half_space=True)
                                                  .item(), rel=1e-5)
    assert F.linear(torch.eye(1433)[:2], net.conv1.weight).shape == (2, 16)

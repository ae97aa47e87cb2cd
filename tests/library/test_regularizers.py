"""The batched regularisers against a plain per-layer loop, the official layer policy, and bad input."""
import math

import pytest
import torch
from torch import nn

from comhe import projections, regularizers
from comhe.energy import hyperspherical_energy, neurons
from comhe.layers import find_layers

ENERGY_NAMES = ["mhe", "hs_mhe", "rp_comhe", "ap_comhe", "adv_comhe", "g_comhe"]


def small_cnn(classes=10, width=8):
    """CNN-9 in miniature: same-shape layers, two fan-ins per neuron count, a 4x4 'fc6', a 1x1 classifier."""
    torch.manual_seed(0)
    c1, c2 = width, 2 * width
    model = nn.Sequential()
    for i, (cin, cout, k) in enumerate([(3, c1, 3), (c1, c1, 3), (c1, c1, 3), (c1, c2, 3), (c2, c2, 3),
                                        (c2, c2, 4), (c2, classes, 1)]):
        conv = nn.Conv2d(cin, cout, k, bias=False)
        nn.init.normal_(conv.weight, std=math.sqrt(2 / conv.weight[0].numel()))
        model.add_module(f"conv{i}", conv)
    return model


def mlp(classes=5):
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 48),
                         nn.ReLU(), nn.Linear(48, classes))


class Recorder:
    """Captures every (P, W) pair the projection multiplies, to rebuild the same projections in the reference."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = projections.project

        def record(p, w):
            self.calls.append((p.detach().clone(), w.detach().clone()))
            return original(p, w)
        monkeypatch.setattr(projections, "project", record)

    def matrices_for(self, weight):
        target = neurons(weight.detach())
        for p, w in reversed(self.calls):  # the last call is the one the loss used (AP/Adv step first)
            for i in range(w.shape[0]):
                if w[i].shape == target.shape and torch.equal(w[i], target):
                    return p[i]  # [C, k, d]
        return None


def reference_loss(name, model, recorder=None, s=2, **options):
    """The official computation, one layer and one projection at a time (docs/reference.md §1)."""
    angular = s in ("a1", "a2")  # docs/reference.md §1: a0 keeps the weights of s = 0, 1, 2
    lam_h = options.get("lambda_hidden", 0.1 if angular else 1.0)
    lam_o = options.get("lambda_output", 1.0 if angular else 10.0)
    comhe = name.endswith("comhe")
    total = 0.0
    for layer in find_layers(model):
        w = neurons(layer.weight)
        if layer.role == "output":
            total = total + lam_o * hyperspherical_energy(w, s=s)
            continue
        p = recorder.matrices_for(layer.weight) if (comhe and recorder is not None) else None
        rgb_conv = layer.weight.dim() > 2 and layer.weight.shape[1] == 3  # the official n_input == 3: unprojected
        if name == "g_comhe" and not rgb_conv and layer.fan_in > options.get("num_proj", 8):
            groups = options.get("num_proj", 8)
            size = math.ceil(w.shape[1] / groups)
            padded = torch.nn.functional.pad(w, (0, size * groups - w.shape[1]))
            term = sum(hyperspherical_energy(padded[:, c * size:(c + 1) * size], s=s, half_space=True)
                       for c in range(groups)) / groups
        elif p is not None:
            term = sum(hyperspherical_energy(w @ p[c].T, s=s, half_space=True) for c in range(p.shape[0])) / p.shape[0]
        else:
            term = hyperspherical_energy(w, s=s, half_space=comhe or name == "hs_mhe")
        total = total + lam_h * term
    return total


@pytest.mark.parametrize("name", ["mhe", "hs_mhe", "rp_comhe", "g_comhe", "ap_comhe", "adv_comhe"])
@pytest.mark.parametrize("make_model", [small_cnn, mlp])
def test_fast_equals_per_layer_reference(name, make_model, monkeypatch):
    model = make_model().double()
    recorder = Recorder(monkeypatch)
    options = {"proj_dim": 6, "num_proj": 3} if name in ("rp_comhe", "ap_comhe", "adv_comhe") else {}
    reg = regularizers.build(name, model, **options)
    loss, stats = reg(lr=0.1)
    grads = torch.autograd.grad(loss, [l.weight for l in find_layers(model)])
    ref = reference_loss(name, model, recorder, **options)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    assert stats["total"] == pytest.approx(loss.item(), rel=1e-10)
    if name in ("mhe", "hs_mhe", "rp_comhe", "g_comhe"):  # AP/Adv add the look-ahead's 2nd-order gradient
        ref_grads = torch.autograd.grad(ref, [l.weight for l in find_layers(model)])
        for g, r in zip(grads, ref_grads):
            assert torch.allclose(g, r, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("s", [0, 1, "a0", "a1", "a2"])
def test_every_power_matches_reference(s):
    model = small_cnn()
    for name in ("mhe", "hs_mhe"):
        loss, _ = regularizers.build(name, model, s=s)()
        assert loss.item() == pytest.approx(reference_loss(name, model, s=s).item(), rel=1e-5)


def test_official_layer_policy_for_comhe():
    model = small_cnn()
    reg = regularizers.build("rp_comhe", model, proj_dim=6, num_proj=2)
    policy = {layer.name: (g.half_space, g.projected, g.weight) for g in reg.groups for layer in g.layers}
    assert policy == {
        "conv0": (True, False, 1.0),  # first conv, 3 input channels: unprojected half-space
        "conv1": (True, True, 1.0), "conv2": (True, True, 1.0), "conv3": (True, True, 1.0),
        "conv4": (True, True, 1.0), "conv5": (True, True, 1.0),  # every other hidden layer, fc6 included
        "conv6": (False, False, 10.0),  # classifier: full space, unprojected, lambda 10
    }
    # A hidden layer whose fan-in is not above proj_dim is not compressed by projecting: unprojected half-space.
    wide = regularizers.build("rp_comhe", model, proj_dim=100)
    assert {layer.name for g in wide.groups if g.projected for layer in g.layers} == {"conv4", "conv5"}


def projected_layers(reg):
    return {layer.name for g in reg.groups if g.projected for layer in g.layers}


@pytest.mark.parametrize("model_name", ["cnn6", "cnn9", "cnn15", "resnet20", "resnet32", "resnet18", "resnet50"])
@pytest.mark.parametrize("name,options", [("rp_comhe", {}), ("ap_comhe", {}), ("g_comhe", {}),
                                          ("rp_comhe", {"proj_dim": 300})])
def test_image_model_plans_match_the_first_layer_rule(model_name, name, options):
    """The official rule (unprojected: a conv with 3 input channels, or a fan-in the projection does not compress)
    gives every CIFAR / ImageNet network of the tables exactly the plan of the earlier rule (unprojected: the first
    layer, or such a fan-in): the image tables are unchanged."""
    from comhe import models
    with torch.device("meta"):  # shapes only: no weight init for ResNet-50
        model = models.build(model_name, 10)
    reg = regularizers.build(name, model, **options)
    probe = reg.proj
    earlier = {layer.name for layer in find_layers(model) if layer.role == "hidden" and probe.applies_to(layer.fan_in)}
    assert projected_layers(reg) == earlier
    assert find_layers(model)[0].is_rgb_conv and find_layers(model)[0].name not in projected_layers(reg)


def gcn_like(features=1433, hidden=16, classes=7):
    """The two weight matrices of a 2-layer GCN (Kipf & Welling): rows are the output units."""
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(features, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, classes, bias=False))


@pytest.mark.parametrize("name", ["rp_comhe", "ap_comhe"])
def test_a_first_layer_that_is_not_an_rgb_conv_is_projected(name):
    """A rule "first layer = unprojected" would make RP- and AP-CoMHE equal to HS-MHE on a 2-layer GCN; the official
    rule projects its first layer (fan-in 1,433 > proj_dim) and leaves the classifier full-space."""
    model = gcn_like()
    reg = regularizers.build(name, model)
    assert projected_layers(reg) == {"0"}
    hs = regularizers.build("hs_mhe", model)
    assert reg()[0].item() != pytest.approx(hs()[0].item(), rel=1e-3)


def test_exclude_leaves_layers_out_and_rejects_patterns_that_match_nothing():
    model = small_cnn()
    reg = regularizers.build("rp_comhe", model, proj_dim=6, num_proj=2, exclude=["conv1", "conv[45]"])
    assert [layer.name for layer in reg.layers] == ["conv0", "conv2", "conv3", "conv6"]
    alone = regularizers.build("hs_mhe", model, exclude="conv*[!6]")  # one string is one pattern
    assert [layer.name for layer in alone.layers] == ["conv6"]
    with pytest.raises(ValueError, match=r"exclude pattern 'tnet\*' matches no regularisable layer.*conv0, conv1"):
        regularizers.build("rp_comhe", model, exclude=["tnet*"])
    with pytest.raises(ValueError, match="classifier 'conv6' is also excluded"):
        regularizers.build("mhe", model, classifier="conv6", exclude=["conv6"])
    with pytest.raises(ValueError, match="must be module-name patterns"):
        regularizers.build("srip", model, exclude=[3])
    for name in regularizers.names():
        if name != "none":
            assert "exclude" in regularizers.option_defaults(name)


def test_mhe_policy_and_angular_weights():
    model = small_cnn()
    mhe = regularizers.build("mhe", model)
    assert all(not g.half_space and not g.projected for g in mhe.groups)
    hs = regularizers.build("hs_mhe", model)
    assert {l.name: g.half_space for g in hs.groups for l in g.layers}["conv6"] is False
    assert all(g.half_space for g in hs.groups if g.layers[0].role != "output")
    # docs/reference.md §1 (official code): 0.1 / 1 for a1 and a2; every other power, a0 included, 1 / 10
    weights = {s: (r.lambda_hidden, r.lambda_output)
               for s in (0, 1, 2, "a0", "a1", "a2") for r in [regularizers.build("mhe", model, s=s)]}
    assert weights == {0: (1.0, 10.0), 1: (1.0, 10.0), 2: (1.0, 10.0), "a0": (1.0, 10.0), "a1": (0.1, 1.0),
                       "a2": (0.1, 1.0)}


@pytest.mark.parametrize("which, expected", [("hidden", {"conv0", "conv1", "conv2", "conv3", "conv4", "conv5"}),
                                             ("output", {"conv6"}), ("both", {f"conv{i}" for i in range(7)})])
def test_layer_selection(which, expected):
    _, stats = regularizers.build("hs_mhe", small_cnn(), layers=which)()
    assert {k.split("/", 1)[1] for k in stats if k.startswith("energy/")} == expected
    assert (stats["output"] == 0.0) == (which == "hidden")


@pytest.mark.parametrize("name", regularizers.names())
@pytest.mark.parametrize("make_model", [small_cnn, mlp])
def test_every_entry_gives_finite_loss_and_gradients(name, make_model):
    model = make_model()
    reg = regularizers.build(name, model)
    for _ in range(2):
        loss, stats = reg(lr=0.05)
        assert loss.dim() == 0 and torch.isfinite(loss)
        assert all(math.isfinite(v) for v in stats.values())
        if name == "none":
            assert loss.item() == 0.0 and not loss.requires_grad
            continue
        grads = torch.autograd.grad(loss, [l.weight for l in find_layers(model)], allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
        assert all(torch.isfinite(g).all() for g in grads if g is not None)


def test_orthogonality_forms():
    model = small_cnn()
    layers = [l for l in find_layers(model) if l.role != "output"]
    loss, _ = regularizers.build("orthonormal", model, lambda_hidden=1.0)()
    ref = sum(((neurons(l.weight) @ neurons(l.weight).T - torch.eye(l.num_neurons)) ** 2).sum() for l in layers)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    loss, _ = regularizers.build("orthogonal", model, lambda_hidden=1.0, eps=0.0)()
    unit = [torch.nn.functional.normalize(neurons(l.weight), dim=1) for l in layers]
    ref = sum(((u @ u.T - torch.eye(u.shape[0])) ** 2).sum() for u in unit)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
    srip = regularizers.build("srip", model, lambda_hidden=1.0, power_iters=50)
    loss, _ = srip()
    ref = 0.0
    for l in layers:
        w = neurons(l.weight).detach()
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        ref += torch.linalg.matrix_norm(gram - torch.eye(gram.shape[0]), ord=2)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-3)


def test_state_dict_restores_the_projection_state():
    model = small_cnn()
    rp = regularizers.build("rp_comhe", model, proj_dim=6, seed=5)
    rp()
    state = rp.state_dict()
    expected, _ = rp()
    other = regularizers.build("rp_comhe", model, proj_dim=6, seed=6)
    other.load_state_dict(state)
    assert other()[0].item() == expected.item()

    ap = regularizers.build("ap_comhe", model, proj_dim=6)
    ap(lr=0.1)
    copy = regularizers.build("ap_comhe", model, proj_dim=6)
    copy.load_state_dict(ap.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ap.proj.matrices(), copy.proj.matrices()))
    assert copy(lr=0.1)[0].item() == pytest.approx(ap(lr=0.1)[0].item(), rel=1e-6)


def test_runs_in_float32_inside_bf16_autocast():
    model = small_cnn()
    reg = regularizers.build("rp_comhe", model, proj_dim=6, seed=1)
    plain, _ = reg()
    reg.load_state_dict(regularizers.build("rp_comhe", model, proj_dim=6, seed=1).state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside, _ = reg()
    assert inside.dtype == torch.float32 and inside.item() == plain.item()


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="valid: none, mhe, hs_mhe"):
        regularizers.build("hs-mhe", small_cnn())
    with pytest.raises(ValueError, match="no option 'proj_dimension'.*valid: .*proj_dim"):
        regularizers.build("rp_comhe", small_cnn(), proj_dimension=3)
    with pytest.raises(ValueError, match="no regularisable layer"):
        regularizers.build("mhe", nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))
    with pytest.raises(ValueError, match="classifier 'head' is not a regularisable layer"):
        regularizers.build("mhe", small_cnn(), classifier="head")
    with pytest.raises(ValueError, match="unknown power"):
        regularizers.build("mhe", small_cnn(), s=4)
    with pytest.raises(ValueError, match="unknown layer set"):
        regularizers.build("mhe", small_cnn(), layers="all")
    with pytest.raises(ValueError, match="proj_dim must be an integer >= 1"):
        regularizers.build("rp_comhe", small_cnn(), proj_dim=0)


def test_explicit_classifier_and_option_defaults():
    model = mlp()
    reg = regularizers.build("mhe", model, classifier="4")
    assert [l.name for l in reg.layers if l.role == "output"] == ["4"]
    defaults = regularizers.option_defaults("rp_comhe")
    assert defaults["proj_dim"] == 40 and defaults["num_proj"] == 20
    assert regularizers.option_defaults("ap_comhe")["proj_dim"] == 30
    assert regularizers.option_defaults("adv_comhe")["proj_iters"] == 10

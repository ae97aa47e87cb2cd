"""The batched regularisers against a plain per-layer loop, the official layer policy, and bad input."""
import math

import pytest
import torch
from torch import nn

from comhe import regularizers
from comhe.projections import base as projection_base
from comhe.energy import hyperspherical_energy, neurons
from comhe.layers import find_layers
from comhe.stacking import flat_view, memory_positions

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
    """Captures every (P, W) pair a projection multiplies, to rebuild the same projections in the reference."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = projection_base.project_columns

        def record(p, w):
            self.calls.append((p.detach().clone(), w.detach().clone()))
            return original(p, w)
        monkeypatch.setattr(projection_base, "project_columns", record)  # what Projection.rows calls

    def matrices_for(self, weight):
        """The ``[C, k, d]`` matrices of the last call that projected this weight's neurons (zero-padded rows),
        columns in the logical order of the weight's coordinates (a channels_last weight is projected in memory
        order: ``stacking.flat_view``)."""
        flat, order = flat_view(weight.detach())
        target = flat.view(weight.shape[0], -1)
        positions = memory_positions(weight.shape, order)
        for p, w in reversed(self.calls):
            for i in range(w.shape[0]):
                n = target.shape[0]
                if w[i].shape[1] == target.shape[1] and torch.equal(w[i][:n], target) and not w[i][n:].any():
                    return p[i][..., positions]
        return None


def angle_objective(w, p):
    """Sum over copies of ||cos(W) - cos(W P_c^T)||_F, docs/reference.md §1 (the full N x N cosine matrices)."""
    def cos(x):
        norm = torch.sqrt((x * x).sum(1, keepdim=True) + 1e-4)
        return (x @ x.T) / (norm @ norm.T)
    return sum(torch.linalg.matrix_norm(cos(w @ p[c].T) - cos(w)) for c in range(p.shape[0]))


def adversarial_objective(w, p):
    return sum(hyperspherical_energy(w @ p[c].T, s=2) for c in range(p.shape[0]))


def learned_lookahead(name, w, p, lr, iters, weight_decay=5e-7, training=True):
    """One layer's inner steps and look-ahead, written out (docs/reference.md §1): P <- P (1 - lr wd) -/+ lr grad_P
    (W fixed) ``iters`` times, then P~ = P -/+ lr grad_P inside the graph (W gets the second-order gradient).
    Returns (P~, the stepped P)."""
    objective, sign = (angle_objective, -1.0) if name == "ap_comhe" else (adversarial_objective, 1.0)
    p = p.clone()
    for _ in range(iters if training else 0):
        q = p.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(objective(w.detach(), q), q)
        p = p * (1.0 - lr * weight_decay) + sign * lr * g
    q = p.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(objective(w, q), q, create_graph=True)
    return q.detach() + sign * lr * g, p


def learned_state(reg):
    """The learned projections' current P per layer name (``[C, k, d]``), from the saved per-shape groups."""
    mats, out = reg.proj.matrices_by_group(), {}
    projected = [layer for layer, t in zip(reg.layers, reg.terms) if t.kind == "projected"]
    shapes = list(dict.fromkeys(layer.shape for layer in projected))
    for layer in projected:
        group = [l.name for l in projected if l.shape == layer.shape]
        out[layer.name] = mats[shapes.index(layer.shape)][group.index(layer.name)].detach().clone()
    return out


def reference_loss(name, model, recorder=None, s=2, lr=0.1, learned=None, training=True, **options):
    """The official computation, one layer and one projection at a time (docs/reference.md §1)."""
    angular = s in ("a1", "a2")  # docs/reference.md §1: a0 keeps the weights of s = 0, 1, 2
    lam_h = options.get("lambda_hidden", 0.1 if angular else 1.0)
    lam_o = options.get("lambda_output", 1.0 if angular else 10.0)
    comhe = name.endswith("comhe")
    proj_dim = options.get("proj_dim", 30 if name in ("ap_comhe", "adv_comhe") else 40)
    total = 0.0
    for layer in find_layers(model):
        w = neurons(layer.weight)
        if layer.role == "output":
            total = total + lam_o * hyperspherical_energy(w, s=s)
            continue
        rgb_conv = layer.weight.dim() > 2 and layer.weight.shape[1] == 3  # the official n_input == 3: unprojected
        groups = min(options.get("num_proj", 8), layer.fan_in // options.get("min_group_size", 8))
        if name == "g_comhe" and not rgb_conv and groups > 1:
            size = math.ceil(w.shape[1] / groups)
            padded = torch.nn.functional.pad(w, (0, size * groups - w.shape[1]))
            term = sum(hyperspherical_energy(padded[:, c * size:(c + 1) * size], s=s, half_space=True)
                       for c in range(groups)) / groups
        elif name in ("ap_comhe", "adv_comhe") and not rgb_conv and layer.fan_in > proj_dim:
            iters = options.get("proj_iters", 1 if name == "ap_comhe" else 10)
            p, _ = learned_lookahead(name, w, learned[layer.name], lr, iters, training=training)
            term = sum(hyperspherical_energy(w @ p[c].T, s=s, half_space=True) for c in range(p.shape[0])) / p.shape[0]
        elif name == "rp_comhe" and not rgb_conv and layer.fan_in > proj_dim:
            p = recorder.matrices_for(layer.weight)
            term = sum(hyperspherical_energy(w @ p[c].T, s=s, half_space=True) for c in range(p.shape[0])) / p.shape[0]
        else:
            term = hyperspherical_energy(w, s=s, half_space=comhe or name == "hs_mhe")
        total = total + lam_h * term
    return total


PROJECTED_OPTIONS = {"rp_comhe": {"proj_dim": 6, "num_proj": 3}, "ap_comhe": {"proj_dim": 6, "num_proj": 3},
                     "adv_comhe": {"proj_dim": 6, "num_proj": 2, "proj_iters": 3},
                     "g_comhe": {"num_proj": 4, "min_group_size": 4}}


def check_against_reference(name, model, monkeypatch, s=2, training=True, **options):
    """The regulariser's loss, stats and gradients equal the per-layer reference in float64; AP/Adv's stored P
    took the reference's inner steps."""
    recorder = Recorder(monkeypatch)
    reg = regularizers.build(name, model, s=s, **options)
    reg.train(training)
    learned = learned_state(reg) if name in ("ap_comhe", "adv_comhe") else None
    loss, stats = reg(lr=0.1)
    weights = [l.weight for l in find_layers(model)]
    grads = torch.autograd.grad(loss, weights)
    ref = reference_loss(name, model, recorder, s=s, learned=learned, training=training, **options)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    assert stats["total"] == pytest.approx(loss.item(), rel=1e-10)
    ref_grads = torch.autograd.grad(ref, weights)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-8, atol=1e-12)
    if learned is not None:
        after = learned_state(reg)
        for layer in find_layers(model):
            if layer.name in learned:
                iters = options.get("proj_iters", 1 if name == "ap_comhe" else 10)
                _, stepped = learned_lookahead(name, neurons(layer.weight), learned[layer.name], 0.1, iters,
                                               training=training)
                assert torch.allclose(after[layer.name], stepped, rtol=1e-10, atol=1e-12)
    return reg


@pytest.mark.parametrize("name", ENERGY_NAMES)
@pytest.mark.parametrize("make_model", [small_cnn, mlp])
def test_fast_equals_per_layer_reference(name, make_model, monkeypatch):
    check_against_reference(name, make_model().double(), monkeypatch, **PROJECTED_OPTIONS.get(name, {}))


@pytest.mark.parametrize("s", [0, 1, 2, "a0", "a1", "a2"])
@pytest.mark.parametrize("name", ENERGY_NAMES)
def test_every_power_matches_reference_with_gradients(name, s, monkeypatch):
    """Every regulariser and power, half- and full-space, projected or not, AP/Adv inner steps included: float64."""
    check_against_reference(name, small_cnn(width=4).double(), monkeypatch, s=s, **PROJECTED_OPTIONS.get(name, {}))


@pytest.mark.parametrize("name", ["ap_comhe", "adv_comhe"])
def test_learned_projections_in_eval_mode_take_no_inner_step(name, monkeypatch):
    check_against_reference(name, mlp().double(), monkeypatch, training=False, **PROJECTED_OPTIONS[name])


def test_official_layer_policy_for_comhe():
    model = small_cnn()
    reg = regularizers.build("rp_comhe", model, proj_dim=6, num_proj=2)
    policy = {layer.name: (t.kind != "full", t.kind == "projected", t.weight)
              for layer, t in zip(reg.layers, reg.terms)}
    assert policy == {
        "conv0": (True, False, 1.0),  # first conv, 3 input channels: unprojected half-space
        "conv1": (True, True, 1.0), "conv2": (True, True, 1.0), "conv3": (True, True, 1.0),
        "conv4": (True, True, 1.0), "conv5": (True, True, 1.0),  # every other hidden layer, fc6 included
        "conv6": (False, False, 10.0),  # classifier: full space, unprojected, lambda 10
    }
    # A hidden layer whose fan-in is not above proj_dim is not compressed by projecting: unprojected half-space.
    wide = regularizers.build("rp_comhe", model, proj_dim=100)
    assert projected_layers(wide) == {"conv4", "conv5"}


def projected_layers(reg):
    return {layer.name for layer, t in zip(reg.layers, reg.terms) if t.kind == "projected"}


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
    assert all(t.kind == "full" for t in mhe.terms)
    hs = regularizers.build("hs_mhe", model)
    kinds = {layer.name: t.kind for layer, t in zip(hs.layers, hs.terms)}
    assert kinds.pop("conv6") == "full" and set(kinds.values()) == {"half"}
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
    assert all(torch.equal(a, b) for a, b in zip(ap.proj.matrices_by_group(), copy.proj.matrices_by_group()))
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

"""PointNet, PointNet with T-Nets and PointNet++ SSG: the official layer shapes, invariance to point order, T-Nets
at the identity, the orthogonality loss, TF's Xavier fans, farthest-point sampling and ball query against brute
force, the layer plan of every model x regulariser of table 10, and a few steps that learn a separable set."""
import csv
import math

import pytest
import torch

from comhe import models, regularizers
from comhe.layers import find_layers
from comhe.models.pointnet2 import ball_query, farthest_point_sample, gather

POINT_MODELS = ("pointnet", "pointnet_tnet", "pointnet2_ssg")
TRANSFORMS = ["*_transform.transform"]


def cloud(batch=3, n=128, seed=0):
    x = torch.randn(batch, 3, n, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1).amax(1)[:, None, None]


def shapes(model):
    return [(layer.name, layer.shape) for layer in find_layers(model)]


def test_pointnet_tnet_has_the_official_layers():
    """transform_nets.py + pointnet_cls.py at width 1: weights as [out, in, 1] (convs) and [out, in] (fcs)."""
    def tnet(prefix, c, k):
        return [(f"{prefix}.conv1", (64, c, 1)), (f"{prefix}.conv2", (128, 64, 1)), (f"{prefix}.conv3", (1024, 128, 1)),
                (f"{prefix}.fc1", (512, 1024)), (f"{prefix}.fc2", (256, 512)), (f"{prefix}.transform", (k * k, 256))]
    main = [("conv3", (64, 64, 1)), ("conv4", (128, 64, 1)), ("conv5", (1024, 128, 1)), ("fc1", (512, 1024)),
            ("fc2", (256, 512)), ("classifier", (40, 256))]
    expected = tnet("input_transform", 3, 3) + [("conv1", (64, 3, 1)), ("conv2", (64, 64, 1))] + \
        tnet("feature_transform", 64, 64) + main
    assert shapes(models.build("pointnet_tnet", 40)) == expected
    assert shapes(models.build("pointnet", 40)) == [("conv1", (64, 3, 1)), ("conv2", (64, 64, 1))] + main
    assert sum(p.numel() for p in models.build("pointnet_tnet", 40).parameters()) == 3_480_049   # "3.5M"


def test_pointnet2_ssg_has_the_official_layers():
    expected = [("sa1.mlp.0", (64, 3, 1, 1)), ("sa1.mlp.1", (64, 64, 1, 1)), ("sa1.mlp.2", (128, 64, 1, 1)),
                ("sa2.mlp.0", (128, 131, 1, 1)), ("sa2.mlp.1", (128, 128, 1, 1)), ("sa2.mlp.2", (256, 128, 1, 1)),
                ("sa3.mlp.0", (256, 259, 1, 1)), ("sa3.mlp.1", (512, 256, 1, 1)), ("sa3.mlp.2", (1024, 512, 1, 1)),
                ("fc1", (512, 1024)), ("fc2", (256, 512)), ("classifier", (40, 256))]
    model = models.build("pointnet2_ssg", 40)
    assert shapes(model) == expected
    assert (model.sa1.centroids, model.sa1.radius, model.sa1.neighbours) == (512, 0.2, 32)
    assert (model.sa2.centroids, model.sa2.radius, model.sa2.neighbours) == (128, 0.4, 64)
    assert model.sa3.centroids is None


@pytest.mark.parametrize("name, options", [("pointnet", {}), ("pointnet_tnet", {}),
                                           ("pointnet2_ssg", {"centroids": 32})])
def test_invariant_to_the_order_of_the_points(name, options):
    """Max pooling is symmetric. PointNet++ samples its first centroid at point 0 (as the official FPS), so its
    logits are invariant to any order that keeps point 0 first (the official shuffle changes that point too)."""
    torch.manual_seed(0)
    model = models.build(name, 10, width=0.25, **options).eval()
    x = cloud(n=96)
    order = torch.randperm(96)
    if name == "pointnet2_ssg":
        order = torch.cat([torch.zeros(1, dtype=torch.long), order[order != 0]])
    with torch.no_grad():
        assert torch.allclose(model(x), model(x[:, :, order]), atol=1e-5)


def test_t_nets_are_the_identity_at_initialisation():
    torch.manual_seed(0)
    with_t = models.build("pointnet_tnet", 10, width=0.25).eval()
    x = cloud()
    with torch.no_grad():
        eye = torch.eye(3).expand(3, 3, 3)
        assert torch.equal(with_t.input_transform(x), eye)
        features = with_t.conv2(with_t.conv1(x))
        assert torch.equal(with_t.feature_transform(features), torch.eye(16).expand(3, 16, 16))
        plain = models.build("pointnet", 10, width=0.25).eval()
        plain.load_state_dict({k: v for k, v in with_t.state_dict().items() if "_transform." not in k})
        assert torch.allclose(with_t(x), plain(x), atol=1e-6)           # T = I: the same network as PN
    assert with_t.auxiliary_loss().item() == 0.0
    assert not hasattr(plain, "auxiliary_loss")


def test_the_orthogonality_loss_is_the_official_l2_loss_summed_over_the_batch():
    torch.manual_seed(0)
    model = models.build("pointnet_tnet", 10, width=0.25)
    with torch.no_grad():
        model.feature_transform.transform.weight.normal_(0, 0.2)
    model(cloud(batch=5))
    t = model.last_feature_transform.detach().double()
    reference = sum(0.5 * ((tb @ tb.T - torch.eye(16, dtype=torch.float64)) ** 2).sum() for tb in t)  # tf.nn.l2_loss
    assert model.auxiliary_loss().item() == pytest.approx(1e-3 * reference.item(), rel=1e-5)
    assert model.auxiliary_loss().requires_grad


def test_xavier_uniform_with_tf_fans():
    """The xyz-reading convs are TF [1, 3] kernels: fans (3, 3 x 64); a 1x1 conv (64, 128); a linear (1024, 512)."""
    torch.manual_seed(0)
    model = models.build("pointnet_tnet", 40)
    for weight, fan_in, fan_out in ((model.conv1.weight, 3, 192), (model.input_transform.conv1.weight, 3, 192),
                                    (model.conv4.weight, 64, 128), (model.fc1.weight, 1024, 512)):
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert weight.abs().max() <= bound and weight.abs().max() > 0.95 * bound
    assert torch.equal(model.conv1.bias, torch.zeros(64))
    assert all(m.eps == 1e-3 and m.momentum == 0.5 for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d))


def brute_force_fps(xyz, m):
    """float64, one cloud at a time: start at point 0, then the point with the largest distance to the chosen."""
    out = []
    for cloud_ in xyz.double():
        chosen = [0]
        for _ in range(m - 1):
            d = torch.stack([((cloud_ - cloud_[c]) ** 2).sum(-1) for c in chosen]).amin(0)
            chosen.append(int(d.argmax()))
        out.append(chosen)
    return torch.tensor(out)


def test_farthest_point_sampling_matches_brute_force():
    xyz = cloud(batch=3, n=200, seed=1).transpose(1, 2).contiguous()
    idx = farthest_point_sample(xyz, 40)
    assert torch.equal(idx, brute_force_fps(xyz, 40))
    assert all(len(set(row.tolist())) == 40 for row in idx)
    with pytest.raises(ValueError, match="cannot sample 201 of 200 points"):
        farthest_point_sample(xyz, 201)


@pytest.mark.parametrize("radius, k", [(0.3, 8), (0.6, 32), (0.05, 4), (2.5, 300)])
def test_ball_query_radius_count_and_order(radius, k):
    xyz = cloud(batch=2, n=150, seed=2).transpose(1, 2).contiguous()
    centres_idx = farthest_point_sample(xyz, 16)
    centres = gather(xyz, centres_idx)
    idx = ball_query(xyz, centres, radius, k)
    assert idx.shape == (2, 16, k)
    for b in range(2):
        for m in range(16):
            d = (xyz[b].double() - centres[b, m].double()).norm(dim=-1)
            inside = torch.nonzero(d < radius).flatten().tolist()        # index order
            expected = inside[:k] + [inside[0]] * (k - min(k, len(inside)))
            assert idx[b, m].tolist() == expected
            assert centres_idx[b, m].item() in inside                     # a centre is its own neighbour


def conv_mlp(sa, h):
    """A set abstraction's MLP as the official NCHW 1x1 conv2d, BN, ReLU on ``h [B, C, M, k]``."""
    for layer in sa.mlp:
        h = torch.relu(layer.bn(torch.nn.functional.conv2d(h, layer.weight, layer.bias)))
    return h


def test_set_abstraction_matches_a_per_centroid_loop():
    """Group (relative xyz first, then features), shared MLP, max: against a loop over clouds and centroids."""
    torch.manual_seed(0)
    model = models.build("pointnet2_ssg", 10, width=0.125, centroids=16).eval()
    xyz = cloud(batch=2, n=64, seed=3).transpose(1, 2).contiguous()
    with torch.no_grad():
        c1, f1 = model.sa1(xyz, None)
        c2, f2 = model.sa2(c1, f1)
        _, f3 = model.sa3(c2, f2)
        for sa, pts, feats, centres, out in ((model.sa2, c1, f1, c2, f2), (model.sa3, c2, f2, None, f3)):
            for b in range(2):
                for m in range(out.shape[1]):
                    if centres is None:                                   # group all: absolute xyz, every point
                        grouped = torch.cat([pts[b], feats[b]], -1)
                    else:
                        d = (pts[b] - centres[b, m]).norm(dim=-1)
                        near = torch.nonzero(d < sa.radius).flatten()[:sa.neighbours]
                        grouped = torch.cat([pts[b, near] - centres[b, m], feats[b, near]], -1)
                    # grouped [k, C]: the MLP on each neighbour alone, as a 1x1 conv2d on [1, C, 1, 1] (eval BN is
                    # per element), then the max
                    h = torch.stack([conv_mlp(sa, v[None, :, None, None])[0, :, 0, 0] for v in grouped])
                    assert torch.allclose(h.amax(0), out[b, m], atol=1e-5)
    assert torch.equal(c2, gather(c1, farthest_point_sample(c1, 4)))


LAYER_PLAN_CASES = [(model, reg) for model in POINT_MODELS for reg in ("mhe", "hs_mhe", "rp_comhe", "ap_comhe")]


@pytest.mark.parametrize("model_name, reg_name", LAYER_PLAN_CASES)
def test_layer_plan_of_every_model_and_regulariser(model_name, reg_name):
    """Table 10's options: the classifier named, the T-Nets' transform layers excluded. Full-space for MHE; half-space
    hidden layers otherwise; CoMHE projects every hidden layer but the xyz-reading ones (3 input channels)."""
    torch.manual_seed(0)
    model = models.build(model_name, 40)
    options = {"classifier": "classifier"}
    if model_name == "pointnet_tnet":
        options["exclude"] = TRANSFORMS
    reg = regularizers.build(reg_name, model, **options)
    plan = {layer.name: (t.kind == "projected", t.kind != "full", layer.role)
            for layer, t in zip(reg.layers, reg.terms)}
    every = [layer.name for layer in find_layers(model)]
    kept = [n for n in every if not n.endswith("_transform.transform")]
    assert list(plan) != [] and sorted(plan) == sorted(kept)
    assert plan["classifier"] == (False, False, "output")
    xyz_layers = {n for n in kept if n in ("conv1", "input_transform.conv1", "sa1.mlp.0")}
    assert len(xyz_layers) == {"pointnet": 1, "pointnet_tnet": 2, "pointnet2_ssg": 1}[model_name]
    for name in kept:
        if name == "classifier":
            continue
        projected, half_space, role = plan[name]
        assert half_space == (reg_name != "mhe"), name
        assert projected == (reg_name in ("rp_comhe", "ap_comhe") and name not in xyz_layers), name
    if model_name == "pointnet_tnet":
        assert max(layer.num_neurons for layer in reg.layers) == 1024       # no 4,096-neuron transform left
        with pytest.raises(ValueError, match="matches no regularisable layer"):
            regularizers.build(reg_name, models.build("pointnet", 40), exclude=TRANSFORMS)  # PN has no T-Nets


@pytest.mark.parametrize("model_name", POINT_MODELS)
def test_every_registered_regulariser_builds_on_the_point_models_without_the_transforms(model_name):
    torch.manual_seed(0)
    model = models.build(model_name, 40, width=0.25)   # the layout of width 1 at a CPU-friendly size
    kept = {layer.name for layer in find_layers(model)} - {"input_transform.transform", "feature_transform.transform"}
    options = {"classifier": "classifier", **({"exclude": TRANSFORMS} if model_name == "pointnet_tnet" else {})}
    for name in regularizers.names():
        if name == "none":
            continue
        reg = regularizers.build(name, model, **options)
        names = {layer.name for layer in reg.layers}
        assert names and names <= kept, name
        assert all(layer.role == "output" for layer in reg.layers if layer.name == "classifier"), name
        loss, _ = reg(lr=0.001, stats=False)
        assert torch.isfinite(loss), name


@pytest.mark.parametrize("name, options, points, augment", [
    ("pointnet", {}, 64, True), ("pointnet_tnet", {}, 64, True), ("pointnet2_ssg", {"centroids": 32}, 128, False)])
def test_a_few_steps_lower_the_loss_on_a_separable_set(tmp_path, name, options, points, augment):
    """Adam on four well-separated synthetic classes, 40 steps of 16 shapes. The PointNets also leave chance (25 %) on
    the test shapes; PointNet++ at this size (32 then 8 centroids) needs more points and steps to learn through the
    random rotations, so it trains unaugmented here and only its loss is checked."""
    pytest.importorskip("h5py")
    from comhe.train import config, engine
    cfg = config.resolve(base={
        "dataset": "synthetic_modelnet40", "data_root": str(tmp_path / "data"),
        "data": {"num_classes": 4, "train_per_class": 16, "test_per_class": 8, "num_points": points},
        "model": name, "model_options": {"width": 0.25, **options}, "regularizer": "none", "augment": augment,
        "optimizer": "adam", "lr": 0.002, "lr_schedule": "staircase", "lr_decay": 0.7, "lr_decay_every": 20,
        "lr_min": 1e-5, "bn_schedule": "staircase", "weight_decay": 0.0, "milestones": [], "loss": "cross_entropy",
        "label_smoothing": 0.0, "iterations": 40, "batch_size": 16, "eval_every": 10, "checkpoint_every": 1000,
        "eval_batch_size": 32, "threads": 1})
    final = engine.train(cfg, tmp_path / "run")
    losses = [float(r["train_loss"]) for r in csv.DictReader(open(tmp_path / "run" / "metrics.csv"))][1:]
    assert losses[-1] < 0.75 * losses[0] and losses[-1] < math.log(4), losses      # windows of 10 steps
    if name != "pointnet2_ssg":
        assert final["final_test_error"] < 50.0, final

"""The fast paths of the point models against what they replaced, kept here as references: farthest-point sampling
against the earlier loop (the same indices), PointNet's ``max`` pooling against ``amax`` and PointNet++'s
channels-last MLP against the NCHW 1x1 conv2d on the permuted groups (the same outputs and parameter gradients,
with tied maxima too)."""
import pytest
import torch
import torch.nn.functional as F

from comhe import models
from comhe.models.pointnet2 import ball_query, farthest_point_sample, gather

from test_pointnet import cloud, conv_mlp


def earlier_farthest_point_sample(xyz, m):
    """The loop farthest_point_sample replaced (8 ops and 4 fresh tensors per chosen point, [B, N, 3] read as is)."""
    batch, n, _ = xyz.shape
    rows = torch.arange(batch, device=xyz.device)
    chosen = torch.zeros(batch, m, dtype=torch.long, device=xyz.device)
    nearest = torch.full((batch, n), float("inf"), device=xyz.device, dtype=xyz.dtype)
    farthest = torch.zeros(batch, dtype=torch.long, device=xyz.device)
    for i in range(m):
        chosen[:, i] = farthest
        d = (xyz - xyz[rows, farthest][:, None, :]).pow(2).sum(-1)
        nearest = torch.minimum(nearest, d)
        farthest = nearest.argmax(-1)
    return chosen


def clouds(seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1024, 3, generator=g), 256),                             # the table's cloud size
            (torch.randn(4, 200, 3, generator=g).double(), 50),                      # float64
            (torch.randint(0, 4, (4, 300, 3), generator=g).float(), 60),             # a lattice: ties everywhere
            (torch.rand(4, 500, 3, generator=g) * 1e-3 + 5.0, 100),                  # a tiny cluster far out
            (torch.randn(3, 10, 3, generator=g), 10), (torch.randn(2, 7, 3, generator=g), 1)]


@pytest.mark.parametrize("seed", [0, 1])
def test_farthest_point_sampling_gives_the_earlier_loops_indices(seed):
    for xyz, m in clouds(seed):
        assert torch.equal(farthest_point_sample(xyz, m), earlier_farthest_point_sample(xyz, m))
    strided = torch.randn(2, 3, 64).transpose(1, 2)                                 # not contiguous
    assert torch.equal(farthest_point_sample(strided, 20), earlier_farthest_point_sample(strided, 20))


def amax_pointnet_forward(model, x):
    """PointNet's forward as it was, with ``amax`` pooling."""
    def tnet(t, h):
        pooled = t.conv3(t.conv2(t.conv1(h))).amax(-1)
        return t.transform(t.fc2(t.fc1(pooled))).view(-1, t.k, t.k)
    if model.input_transform is not None:
        x = torch.bmm(tnet(model.input_transform, x).transpose(1, 2), x)
    features = model.conv2(model.conv1(x))
    if model.feature_transform is not None:
        features = torch.bmm(tnet(model.feature_transform, features).transpose(1, 2), features)
    pooled = model.conv5(model.conv4(model.conv3(features))).amax(-1)
    return model.classifier(model.fc2(model.fc1(pooled)))


def nchw_pointnet2_forward(model, x):
    """PointNet++'s forward as it was: the groups permuted to [B, C, M, k], NCHW 1x1 convs, ``amax``."""
    def sa_forward(sa, xyz, features):
        if sa.centroids is None:
            centres, grouped = xyz.new_zeros(xyz.shape[0], 1, 3), xyz[:, None]
            grouped_features = None if features is None else features[:, None]
        else:
            centres = gather(xyz, farthest_point_sample(xyz.detach(), min(sa.centroids, xyz.shape[1])))
            idx = ball_query(xyz.detach(), centres.detach(), sa.radius, sa.neighbours)
            grouped = gather(xyz, idx) - centres[:, :, None, :]
            grouped_features = None if features is None else gather(features, idx)
        if grouped_features is not None:
            grouped = torch.cat([grouped, grouped_features], -1)
        return centres, conv_mlp(sa, grouped.permute(0, 3, 1, 2)).amax(-1).transpose(1, 2)
    xyz = x.transpose(1, 2).contiguous()
    xyz, features = sa_forward(model.sa1, xyz, None)
    xyz, features = sa_forward(model.sa2, xyz, features)
    _, features = sa_forward(model.sa3, xyz, features)
    return model.classifier(model.fc2(model.fc1(features.flatten(1))))


def gradients(model, forward, x):
    logits = forward(x)
    loss = (logits * torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).view_as(logits)).sum()
    before_bn = {f"{name}.bias" for name, m in model.named_modules() if hasattr(m, "bn")}
    # (a bias right before BN has a zero gradient: only rounding noise to compare there)
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if n not in before_bn])
    return logits.detach(), dict(zip(names, torch.autograd.grad(loss, params)))


CASES = [("pointnet", {}), ("pointnet_tnet", {}), ("pointnet2_ssg", {"centroids": 16})]


@pytest.mark.parametrize("duplicated", [False, True])
@pytest.mark.parametrize("name, options", CASES)
def test_pooling_and_layout_give_the_earlier_outputs_and_parameter_gradients(name, options, duplicated):
    """Training mode (batch statistics), no dropout. ``duplicated``: every point twice, so every maximum is tied
    (amax splits its gradient, max gives it to one copy; the parameters' gradients agree). PointNet++'s ball query
    repeats neighbours in either case."""
    torch.manual_seed(0)
    # float64: in float32 the two layouts' sums round differently, and BN's backward amplifies that to ~1e-3
    model = models.build(name, 10, width=0.125, dropout=0.0, **options).train().double()
    x = cloud(batch=4, n=64, seed=5).double()
    if duplicated:
        x = x.repeat_interleave(2, dim=2)
    earlier = amax_pointnet_forward if name != "pointnet2_ssg" else nchw_pointnet2_forward
    out, grads = gradients(model, model, x)
    ref_out, ref_grads = gradients(model, lambda v: earlier(model, v), x)
    assert torch.allclose(out, ref_out, rtol=1e-9, atol=1e-12)
    for key, ref in ref_grads.items():
        assert torch.allclose(grads[key], ref, rtol=1e-7, atol=1e-9 * ref.abs().max().item()), key


def test_point_conv2d_keeps_batchnorm2d_state_and_takes_any_leading_shape():
    """The channels-last layer updates the BN running statistics as BatchNorm2d on [B, C, M, k] would."""
    torch.manual_seed(0)
    model = models.build("pointnet2_ssg", 10, width=0.125, centroids=16).train()
    layer = model.sa1.mlp[0]
    reference = torch.nn.BatchNorm2d(layer.out_channels, eps=layer.bn.eps, momentum=layer.bn.momentum)
    x = torch.randn(2, 5, 7, layer.in_channels)
    y = layer(x)
    z = F.relu(reference(F.conv2d(x.permute(0, 3, 1, 2), layer.weight, layer.bias))).permute(0, 2, 3, 1)
    assert y.shape == (2, 5, 7, layer.out_channels) and torch.allclose(y, z, atol=1e-5)
    assert torch.allclose(layer.bn.running_mean, reference.running_mean, atol=1e-6)
    assert torch.allclose(layer.bn.running_var, reference.running_var, atol=1e-5)
    assert layer.bn.num_batches_tracked.item() == 1
    assert layer(torch.randn(11, layer.in_channels)).shape == (11, layer.out_channels)


def autograd_ops(output):
    seen, todo = set(), [output.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        todo += [next_fn for next_fn, _ in fn.next_functions]
    return {type(fn).__name__ for fn in seen}


@pytest.mark.parametrize("name, options", CASES)
def test_no_amax_backward_and_no_permuted_layout_in_the_step(name, options):
    """What made the step slow: amax's backward (an equality mask over the whole [B, C, N] input) and, in PointNet++,
    the MLP on permuted groups (every conv and BN on a non-contiguous tensor)."""
    model = models.build(name, 10, width=0.125, **options).train()
    ops = autograd_ops(model(cloud(batch=2, n=64)))
    assert "MaxBackward0" in ops and "AmaxBackward0" not in ops
    assert "PermuteBackward0" not in ops and "ConvolutionBackward0" not in ops or name != "pointnet2_ssg"

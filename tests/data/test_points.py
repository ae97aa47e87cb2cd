"""The point-cloud augmentations (properties of each map, the official order) and the batch stream (determinism,
resume, world-size independence, epochs), on the CPU."""
import math

import pytest
import torch

from comhe.data import points
from comhe.data.points import (AUGMENTATIONS, PointCloudLoader, augment_points, perturbation_rotation,
                               up_axis_rotation)


def clouds(n=24, p=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, p, generator=gen)
    return x / x.norm(dim=1).amax(1)[:, None, None], torch.arange(n) % 4


def test_up_axis_rotation_keeps_norms_and_the_up_coordinate():
    x, _ = clouds()
    angle = torch.rand(len(x), dtype=torch.float64) * 2 * math.pi
    r = up_axis_rotation(angle)
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand_as(r), atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(len(x), dtype=torch.float64))
    out = torch.bmm(r.transpose(1, 2), x.double())                        # p @ R, channels first
    assert torch.allclose(out.norm(dim=1), x.double().norm(dim=1), atol=1e-12)
    assert torch.equal(out[:, 1], x.double()[:, 1])                       # y is the up axis
    # the official row-vector matrix: p @ R = (x cos - z sin, y, x sin + z cos)
    c, s = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
    assert torch.allclose(out[:, 0], x.double()[:, 0] * c - x.double()[:, 2] * s, atol=1e-12)


def test_perturbation_is_rz_ry_rx():
    a = torch.tensor([[0.1, -0.05, 0.17]], dtype=torch.float64)
    r = perturbation_rotation(a)[0]

    def rot(axis, t):
        c, s = math.cos(t), math.sin(t)
        i, j = [(1, 2), (2, 0), (0, 1)][axis]          # x: (y, z), y: (z, x), z: (x, y)
        m = torch.eye(3, dtype=torch.float64)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        return m
    assert torch.allclose(r, rot(2, 0.17) @ rot(1, -0.05) @ rot(0, 0.1), atol=1e-12)


def test_pointnet_augmentation_rotates_about_up_and_jitters_within_the_clip():
    x, _ = clouds()
    params = AUGMENTATIONS.get("pointnet")(len(x), x.shape[2], torch.Generator().manual_seed(1))
    noise = points.jitter(tuple(x.shape), params.jitter_seed, x.device, len(x), slice(None))
    out = augment_points(x, params, noise)
    rotated = augment_points(x, params)
    assert torch.allclose(rotated.norm(dim=1), x.norm(dim=1), atol=1e-6)
    assert torch.allclose(rotated[:, 1], x[:, 1], atol=1e-6)
    assert torch.allclose(out - rotated, noise, atol=1e-6)
    assert noise.abs().max() <= points.JITTER_CLIP and 0.005 < noise.std() < 0.015   # sigma 0.01
    assert params.order is None and torch.equal(params.shift, torch.zeros(len(x), 3))


def test_jitter_is_clipped(monkeypatch):
    monkeypatch.setattr(points, "JITTER_SIGMA", 0.05)    # one sigma = the clip: a third of the values clip
    noise = points.jitter((64, 3, 256), 7, torch.device("cpu"), 64, slice(None))
    assert noise.abs().max() == pytest.approx(points.JITTER_CLIP)
    clipped = (noise.abs() == points.JITTER_CLIP).float().mean()
    assert 0.25 < clipped < 0.4                             # P(|N(0, 1)| > 1) = 0.317


def test_pointnet2_augmentation_scales_shifts_perturbs_and_shuffles_the_whole_batch():
    x, _ = clouds(n=400)
    params = AUGMENTATIONS.get("pointnet2")(len(x), x.shape[2], torch.Generator().manual_seed(2))
    gram = params.matrix @ params.matrix.transpose(1, 2)   # (R_up R_pert s)(...)^T = s^2 I
    scale = gram.diagonal(dim1=1, dim2=2).mean(1).sqrt()
    assert torch.allclose(gram, scale[:, None, None] ** 2 * torch.eye(3), atol=1e-5)
    assert scale.min() >= 0.8 - 1e-6 and scale.max() <= 1.25 + 1e-6 and scale.max() - scale.min() > 0.4
    assert params.shift.abs().max() <= 0.1 and params.shift.abs().max() > 0.09
    unscaled = params.matrix / scale[:, None, None]
    # (R_up R_pert)[1, 1] = R_pert[1, 1] = cos(az) cos(ax) + sin(az) sin(ay) sin(ax), angles clipped to 0.18
    up = unscaled[:, 1, 1]
    assert up.min() >= math.cos(0.18) ** 2 - math.sin(0.18) ** 3 - 1e-6 and up.min() < 0.999
    out = augment_points(x, params)
    assert sorted(params.order.tolist()) == list(range(x.shape[2])) and not torch.equal(params.order,
                                                                                         torch.arange(x.shape[2]))
    expected = torch.bmm(params.matrix.transpose(1, 2), x) + params.shift[:, :, None]
    assert torch.allclose(out, expected[:, :, params.order], atol=1e-6)   # one point order for every shape


def batches(loader, n):
    return [loader.next_batch() for _ in range(n)]


@pytest.mark.parametrize("augmentation", ["pointnet", "pointnet2", "none"])
def test_stream_is_deterministic_resumes_and_does_not_depend_on_the_world_size(augmentation):
    x, y = clouds()
    one = batches(PointCloudLoader(x, y, 8, augmentation, seed=3), 7)          # 3 batches an epoch: crosses two
    assert all(torch.equal(a[0], b[0]) for a, b in zip(one, batches(PointCloudLoader(x, y, 8, augmentation, 3), 7)))
    assert not torch.equal(one[0][0], batches(PointCloudLoader(x, y, 8, augmentation, seed=4), 1)[0][0])
    first = PointCloudLoader(x, y, 8, augmentation, seed=3)
    batches(first, 4)
    resumed = PointCloudLoader(x, y, 8, augmentation, seed=3)
    resumed.load_state_dict(first.state_dict())
    for (xa, ya), (xb, yb) in zip(one[4:], batches(resumed, 3)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    ranks = [batches(PointCloudLoader(x, y, 4, augmentation, seed=3, rank=r, world_size=2), 7) for r in (0, 1)]
    for (xa, ya), (x0, y0), (x1, y1) in zip(one, *ranks):
        assert torch.equal(torch.cat([x0, x1]), xa) and torch.equal(torch.cat([y0, y1]), ya)


def test_an_epoch_visits_each_shape_once_and_drops_the_tail():
    x, y = clouds(n=26)
    loader = PointCloudLoader(x, torch.arange(26), 8, "none", seed=0)
    assert len(loader) == 3
    seen = torch.cat([yb for _, yb in batches(loader, 3)])
    assert len(set(seen.tolist())) == 24                                       # 2 of 26 dropped, none repeated
    x_batch, labels = loader.next_batch()                                      # a new epoch, a new order
    assert torch.equal(x_batch, x[labels])


def test_bad_inputs():
    x, y = clouds()
    with pytest.raises(ValueError, match=r"points must be float \[S, 3, P\]"):
        PointCloudLoader(x.transpose(1, 2), y, 4)
    with pytest.raises(ValueError, match="unknown point-cloud augmentation 'pointnet3'"):
        PointCloudLoader(x, y, 4, "pointnet3")
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        PointCloudLoader(x, y, 32)
    state = PointCloudLoader(x, y, 4, "pointnet").state_dict()
    with pytest.raises(ValueError, match="loader state does not fit"):
        PointCloudLoader(x, y, 4, "pointnet2").load_state_dict(state)

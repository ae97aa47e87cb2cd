"""Projections: exactness under orthogonal maps, the inner P-steps move their objectives the right way, seeding,
the draws' layout, the look-ahead's second-order gradient, G-CoMHE's groups."""
import math

import pytest
import torch
from torch import nn

from comhe import projections, regularizers
from comhe.energy import hyperspherical_energy
from comhe.layers import find_layers
from comhe.projections import project_columns
from comhe.stacking import Stacker, plan_buckets


class Weights(nn.Module):
    """Linear layers of the given (neurons, fan-in) shapes, registered in order (no forward needed)."""

    def __init__(self, shapes, dtype=torch.float32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        for i, (n, d) in enumerate(shapes):
            self.add_module(f"fc{i}", nn.Linear(d, n, bias=False).to(dtype))


def attached(name, shapes, dtype=torch.float32, **options):
    """A projection set up on the buckets of ``shapes`` (every layer projected), with its stacker."""
    layers = find_layers(Weights(shapes, dtype), classifier=None)
    stacker = Stacker(layers, plan_buckets(layers, [True] * len(layers)), dtype, torch.device("cpu"))
    proj = projections.build(name, **options)
    proj.setup(stacker, list(range(len(stacker.buckets))), dtype, torch.device("cpu"))
    return proj, stacker


def test_orthogonal_full_rank_projection_preserves_the_energy():
    torch.manual_seed(0)
    w = torch.randn(1, 12, 6, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    y = project_columns(q.view(1, 1, 6, 6), w)[0].T  # [N, k]
    for s in (0, 1, 2, "a2"):
        for hs in (False, True):
            assert hyperspherical_energy(y, s=s, half_space=hs).item() == pytest.approx(
                hyperspherical_energy(w[0], s=s, half_space=hs).item(), rel=1e-10)


def test_project_columns_layout_and_both_derivatives():
    torch.manual_seed(1)
    p = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    y = project_columns(p, w)
    assert y.shape == (6, 4, 7) and torch.allclose(y[5], p[1, 2] @ w[1].T)
    (gw,) = torch.autograd.grad(y.square().sum(), w)
    assert gw.is_contiguous()  # the stack's views take it without a copy
    assert torch.autograd.gradcheck(project_columns, (p, w))
    assert torch.autograd.gradgradcheck(project_columns, (p, w))  # the look-ahead differentiates its backward


def test_random_projection_seeding_and_distribution():
    shapes = [(8, 50), (8, 50)]
    a, stacker = attached("random", shapes, proj_dim=10, num_proj=3, seed=7)
    b, _ = attached("random", shapes, proj_dim=10, num_proj=3, seed=7)
    c, _ = attached("random", shapes, proj_dim=10, num_proj=3, seed=8)
    pa, pb, pc = a.matrices(None)[0], b.matrices(None)[0], c.matrices(None)[0]
    assert pa.shape == (2, 3, 10, 50) and torch.equal(pa, pb) and not torch.allclose(pa, pc)
    assert not torch.allclose(a.matrices(None)[0], pa)  # redrawn every call
    big, _ = attached("random", [(4, 400)], proj_dim=40, num_proj=20, seed=0)
    draws = big.matrices(None)[0]
    assert draws.mean().item() == pytest.approx(0.0, abs=0.01) and draws.std().item() == pytest.approx(1.0, abs=0.01)


def test_random_draws_keep_their_per_shape_layout_whatever_the_buckets():
    """One randn of C*k*d values per layer, layers grouped by shape in order of first appearance: the layout of the
    draws before the buckets existed, so a seed gives the same matrices. The (16, 12) layer shares a bucket with
    the (8, 12) ones but comes after the (8, 20) group in the draw: its bucket is gathered, not a view."""
    shapes = [(8, 12), (8, 20), (16, 12), (8, 12)]
    proj, stacker = attached("random", shapes, proj_dim=4, num_proj=2, seed=3)
    flat = torch.randn(sum(2 * 4 * d for _, d in shapes), generator=torch.Generator().manual_seed(3))
    order = [0, 3, 1, 2]  # shapes (8, 12) x2, (8, 20), (16, 12)
    start = {i: sum(2 * 4 * shapes[j][1] for j in order[:order.index(i)]) for i in order}
    expected = {i: flat[start[i]:start[i] + 2 * 4 * shapes[i][1]].view(2, 4, shapes[i][1]) for i in order}
    for b, mats in zip(proj.buckets, proj.matrices(None)):
        for slot, i in enumerate(stacker.buckets[b].layers):
            assert torch.equal(mats[slot], expected[i])
    assert [index is None for _, index in proj._runs] == [False, True]


def test_random_projection_state_resumes_the_sequence():
    a, _ = attached("random", [(6, 30)], proj_dim=5, num_proj=2, seed=3)
    a.matrices(None)
    state = a.state_dict()
    expected = a.matrices(None)[0]
    b, _ = attached("random", [(6, 30)], proj_dim=5, num_proj=2, seed=99)
    b.load_state_dict(state)
    assert torch.equal(b.matrices(None)[0], expected)


def test_angle_steps_lower_their_objective():
    proj, stacker = attached("angle", [(16, 64), (16, 64)], proj_dim=8, num_proj=1, iters=1)
    stack = stacker()
    ws = proj._all_weights(stack)
    fixed = proj.fixed_terms(ws)
    before = proj.objective(proj.bucket_matrices(), ws, fixed).item()
    for _ in range(30):
        proj.inner_step(ws, lr=0.1, fixed=fixed)
    assert proj.objective(proj.bucket_matrices(), ws, fixed).item() < 0.9 * before


def test_adversarial_steps_raise_the_projected_energy():
    proj, stacker = attached("adversarial", [(16, 64)], proj_dim=8, num_proj=2, iters=10)
    ws = proj._all_weights(stacker())
    before = proj.objective(proj.bucket_matrices(), ws).item()
    for _ in range(10):
        proj.inner_step(ws, lr=0.1)
    assert proj.objective(proj.bucket_matrices(), ws).item() > before


@pytest.mark.parametrize("name", ["ap_comhe", "adv_comhe"])
def test_lookahead_gradient_is_second_order_and_correct(name):
    """The loss through P~ = P -/+ lr grad_P(W) depends on W through P~ too: the gradient equals central finite
    differences, and the dependence through P~ is not negligible."""
    model = Weights([(5, 6), (4, 3)], torch.float64, seed=4)
    reg = regularizers.build(name, model, proj_dim=3, num_proj=1, proj_iters=0, classifier="fc1").eval()
    weight = model.fc0.weight
    (full,) = torch.autograd.grad(reg(lr=0.5)[0], weight)
    numeric, eps = torch.zeros_like(weight), 1e-6
    with torch.no_grad():
        for index in range(weight.numel()):
            for sign in (1, -1):
                weight.view(-1)[index] += sign * eps
                numeric.view(-1)[index] += sign * reg(lr=0.5)[0].item() / (2 * eps)
                weight.view(-1)[index] -= sign * eps
    assert torch.allclose(full, numeric, rtol=1e-4, atol=1e-7 * full.abs().max().item())
    mats = [m.detach() for m in reg.proj.matrices(reg.stacker(), 0.5)]  # P~ frozen: first order only
    (frozen,) = torch.autograd.grad(reg._loss(reg.stacker(), mats, fused=True)[0], weight)
    assert not torch.allclose(full, frozen, rtol=1e-3)


def test_learned_projection_state_and_eval_mode():
    proj, stacker = attached("angle", [(6, 20)], proj_dim=4, iters=2)
    start = proj.bucket_matrices()[0].clone()
    proj.eval()
    proj.matrices(stacker(), lr=0.1)
    assert torch.equal(proj.bucket_matrices()[0], start)  # no inner step in eval mode
    proj.train()
    proj.matrices(stacker(), lr=0.1)
    assert not torch.equal(proj.bucket_matrices()[0], start)
    restored, _ = attached("angle", [(6, 20)], proj_dim=4, iters=2)
    restored.load_state_dict(proj.state_dict())
    assert list(proj.state_dict()) == ["p0"] and torch.equal(restored.bucket_matrices()[0], proj.bucket_matrices()[0])


def test_learned_state_is_saved_per_shape_group_as_before_the_buckets():
    """Same-shape groups in order of first appearance, ``p<i>`` ``[L, C, k, d]``: checkpoints written before the
    buckets existed load, and the initial matrices are the same draws of the global RNG."""
    shapes = [(8, 12), (8, 20), (16, 12), (8, 12)]
    torch.manual_seed(5)
    proj, _ = attached("angle", shapes, proj_dim=4, num_proj=2)
    state = proj.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {"p0": (2, 2, 4, 12), "p1": (1, 2, 4, 20),
                                                              "p2": (1, 2, 4, 12)}
    # the global RNG after Weights(seed=0) in attached(): the draws per group, in that order
    torch.manual_seed(0)
    Weights(shapes)
    expected = [torch.randn(2, 2, 4, 12), torch.randn(1, 2, 4, 20), torch.randn(1, 2, 4, 12)]
    assert all(torch.equal(state[f"p{i}"], e) for i, e in enumerate(expected))


def test_group_projection_splits_coordinates_with_a_size_floor():
    model = Weights([(3, 10), (3, 16), (3, 12), (2, 5)])
    reg = regularizers.build("g_comhe", model, num_proj=4, min_group_size=4, classifier="fc3")
    terms = {layer.name: (t.kind, t.copies, t.dim) for layer, t in zip(reg.layers, reg.terms)}
    # fan-in 10: min(4, 10 // 4) = 2 groups of 5; 16: 4 groups of 4; 12: 3 groups of 4
    assert terms == {"fc0": ("projected", 2, 5), "fc1": ("projected", 4, 4), "fc2": ("projected", 3, 4),
                     "fc3": ("full", 1, 0)}
    stack = reg.stacker()
    rows = {reg.stacker.buckets[b].fan_in: r for b, r in zip(reg.proj.buckets, reg.proj.rows(stack, []))}
    w0 = model.fc0.weight.detach()
    assert rows[10].shape == (2, 3, 5) and torch.equal(rows[10][1], w0[:, 5:10])
    floor = regularizers.build("g_comhe", Weights([(3, 12), (2, 5)]), classifier="fc1")  # 12 // 8 = 1 group
    assert [t.kind for t in floor.terms] == ["half", "full"]


def test_group_projection_pads_the_last_group():
    model = Weights([(3, 10), (2, 4)])
    reg = regularizers.build("g_comhe", model, num_proj=3, min_group_size=3, classifier="fc1")
    (rows,) = reg.proj.rows(reg.stacker(), [])  # 3 groups of ceil(10 / 3) = 4, the last padded with 2 zeros
    w = model.fc0.weight.detach()
    assert rows.shape == (3, 3, 4) and torch.equal(rows[2], torch.cat([w[:, 8:], torch.zeros(3, 2)], 1))
    assert math.isfinite(reg()[0].item())


@pytest.mark.parametrize("name", projections.PROJECTIONS.names())
def test_invalid_sizes(name):
    with pytest.raises(ValueError, match=r"(proj_dim|num_proj).*>= 1"):
        projections.build(name, proj_dim=0, num_proj=0)


def test_unknown_projection():
    with pytest.raises(ValueError, match="valid: random, angle, adversarial, group"):
        projections.build("randm")

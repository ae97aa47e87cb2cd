"""Projections: exactness under orthogonal maps, the inner P-steps move their objectives the right way, seeding."""
import pytest
import torch

from comhe import projections
from comhe.energy import energy_from_gram, hyperspherical_energy
from comhe.projections import (AdversarialProjection, AngleProjection, GroupProjection, RandomProjection,
                               angle_preservation_loss, project, projected_energy)


def test_orthogonal_full_rank_projection_preserves_the_energy():
    torch.manual_seed(0)
    w = torch.randn(1, 12, 6, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    y = project(q.view(1, 1, 6, 6), w)[0, 0]  # [N, k]
    for s in (0, 1, 2, "a2"):
        for hs in (False, True):
            assert hyperspherical_energy(y, s=s, half_space=hs).item() == pytest.approx(
                hyperspherical_energy(w[0], s=s, half_space=hs).item(), rel=1e-10)


def test_project_layout():
    torch.manual_seed(1)
    p = torch.randn(2, 3, 4, 5)
    w = torch.randn(2, 7, 5)
    y = project(p, w)
    assert y.shape == (2, 3, 7, 4)
    assert torch.allclose(y[1, 2], w[1] @ p[1, 2].T, atol=1e-6)


def test_random_projection_seeding_and_distribution():
    shapes = [(2, 8, 50)]
    w = [torch.randn(2, 8, 50)]
    a = RandomProjection(shapes, proj_dim=10, num_proj=3, seed=7)
    b = RandomProjection(shapes, proj_dim=10, num_proj=3, seed=7)
    c = RandomProjection(shapes, proj_dim=10, num_proj=3, seed=8)
    ya, yb, yc = a(w)[0], b(w)[0], c(w)[0]
    assert torch.equal(ya, yb) and not torch.allclose(ya, yc)
    assert not torch.allclose(a(w)[0], ya)  # redrawn every call
    # Projecting the identity returns P^T: i.i.d. N(0, 1) entries.
    eye = [torch.eye(400).unsqueeze(0)]
    draws = RandomProjection([(1, 400, 400)], proj_dim=40, num_proj=20, seed=0)(eye)[0]
    assert draws.mean().item() == pytest.approx(0.0, abs=0.01)
    assert draws.std().item() == pytest.approx(1.0, abs=0.01)


def test_random_projection_state_resumes_the_sequence():
    shapes = [(1, 6, 30)]
    w = [torch.randn(1, 6, 30)]
    a = RandomProjection(shapes, proj_dim=5, num_proj=2, seed=3)
    a(w)
    state = a.state_dict()
    expected = a(w)[0]
    b = RandomProjection(shapes, proj_dim=5, num_proj=2, seed=99)
    b.load_state_dict(state)
    assert torch.equal(b(w)[0], expected)


def test_angle_steps_lower_their_objective():
    torch.manual_seed(2)
    w = [torch.randn(2, 16, 64)]
    proj = AngleProjection([(2, 16, 64)], proj_dim=8, num_proj=1, iters=1)
    before = angle_preservation_loss(proj.p0, w[0]).sum().item()
    for _ in range(30):
        proj.inner_step(w, lr=0.1)
    after = angle_preservation_loss(proj.p0, w[0]).sum().item()
    assert after < 0.9 * before


def test_adversarial_steps_raise_the_projected_energy():
    torch.manual_seed(3)
    w = [torch.randn(1, 16, 64)]
    proj = AdversarialProjection([(1, 16, 64)], proj_dim=8, num_proj=2, iters=10)
    before = projected_energy(proj.p0, w[0]).sum().item()
    for _ in range(10):
        proj.inner_step(w, lr=0.1)
    assert projected_energy(proj.p0, w[0]).sum().item() > before


@pytest.mark.parametrize("cls", [AngleProjection, AdversarialProjection])
def test_lookahead_gradient_is_second_order_and_correct(cls):
    """The projection of P~ = P -/+ lr grad_P(W) depends on W through P~: gradcheck against finite differences."""
    torch.manual_seed(4)
    proj = cls([(1, 5, 6)], proj_dim=3, num_proj=1, iters=0).double().eval()
    w = torch.randn(1, 5, 6, dtype=torch.float64, requires_grad=True)

    def energy(x):
        y = proj([x], lr=0.5)[0]
        return energy_from_gram(y @ y.transpose(-1, -2), s=2, half_space=True).sum()

    assert torch.autograd.gradcheck(energy, (w,))
    # and the dependence through P~ is not negligible: freezing P~ changes the gradient
    (full,) = torch.autograd.grad(energy(w), w)
    ps, grads = proj._gradients([w.detach()], create_graph=False)
    p_tilde = (ps[0].detach() + proj.direction * 0.5 * grads[0]).detach()
    y = project(p_tilde, w)
    (first_order,) = torch.autograd.grad(energy_from_gram(y @ y.transpose(-1, -2), s=2, half_space=True).sum(), w)
    assert not torch.allclose(full, first_order, rtol=1e-3)


def test_learned_projection_state_and_eval_mode():
    w = [torch.randn(1, 6, 20)]
    proj = AngleProjection([(1, 6, 20)], proj_dim=4, iters=2)
    start = proj.p0.clone()
    proj.eval()
    proj(w, lr=0.1)
    assert torch.equal(proj.p0, start)  # no inner step in eval mode
    proj.train()
    proj(w, lr=0.1)
    assert not torch.equal(proj.p0, start)
    restored = AngleProjection([(1, 6, 20)], proj_dim=4, iters=2)
    restored.load_state_dict(proj.state_dict())
    assert torch.equal(restored.p0, proj.p0)


def test_group_projection_splits_coordinates():
    w = torch.arange(2 * 3 * 10, dtype=torch.float64).view(2, 3, 10)
    y = GroupProjection([(2, 3, 10)], num_proj=4)([w])[0]  # groups of ceil(10/4) = 3, zero-padded to 12
    assert y.shape == (2, 4, 3, 3)
    assert torch.equal(y[1, 0, 2], w[1, 2, 0:3]) and torch.equal(y[0, 3, 1], torch.cat([w[0, 1, 9:], torch.zeros(2)]))
    flat = y.transpose(1, 2).reshape(2, 3, 12)
    assert torch.equal(flat[..., :10], w)


@pytest.mark.parametrize("name", projections.PROJECTIONS.names())
def test_invalid_sizes(name):
    with pytest.raises(ValueError, match=r"(proj_dim|num_proj).*>= 1"):
        projections.build(name, [], proj_dim=0, num_proj=0)


def test_unknown_projection():
    with pytest.raises(ValueError, match="valid: random, angle, adversarial, group"):
        projections.build("randm", [])

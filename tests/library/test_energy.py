"""The energy against a float64 brute-force double loop, known minima, and its invariances."""
import itertools
import math

import pytest
import torch
from torch import nn

from comhe.energy import POWERS, hyperspherical_energy, layer_energies, neurons, num_pairs


def brute_force(w, s, half_space=False, eps=1e-4, reduction="mean"):
    """docs/reference.md §1 literally: append -w, loop over i < j in plain Python floats."""
    rows = [list(map(float, r)) for r in w.tolist()]
    if half_space:
        rows = rows + [[-x for x in r] for r in rows]
    total, count = 0.0, 0
    for a, b in itertools.combinations(rows, 2):
        dot = sum(x * y for x, y in zip(a, b))
        c = dot / (math.sqrt(sum(x * x for x in a) + eps) * math.sqrt(sum(y * y for y in b) + eps))
        c = max(-1.0, min(1.0, c))
        if s == 0:
            g = -math.log(2 - 2 * c)
        elif s == 1:
            g = (2 - 2 * c) ** -0.5
        elif s == 2:
            g = (2 - 2 * c) ** -1
        else:
            theta = math.acos(c) / math.pi + 1e-4
            g = {"a0": -math.log(theta), "a1": 1 / theta, "a2": theta ** -2}[s]
        total += g
        count += 1
    return total / count if reduction == "mean" else total


@pytest.mark.parametrize("s", POWERS)
@pytest.mark.parametrize("half_space", [False, True])
@pytest.mark.parametrize("eps", [1e-4, 0.0])
def test_matches_brute_force(s, half_space, eps):
    torch.manual_seed(0)
    w = torch.randn(7, 5, dtype=torch.float64) * torch.rand(7, 1, dtype=torch.float64).add(0.2)
    # acos is infinitely steep at c = -1: with eps = 0 the brute force's rounded cosine of (w, -w) moves the angular
    # terms by ~1e-8 relative, where ours uses the exact -1.
    rel = 1e-7 if (eps == 0 and half_space and isinstance(s, str)) else 1e-10
    for reduction in ("mean", "sum"):
        got = hyperspherical_energy(w, s=s, half_space=half_space, eps=eps, reduction=reduction)
        assert got.item() == pytest.approx(brute_force(w, s, half_space, eps, reduction), rel=rel)


@pytest.mark.parametrize("s", POWERS)
@pytest.mark.parametrize("half_space", [False, True])
def test_gradcheck(s, half_space):
    torch.manual_seed(1)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: hyperspherical_energy(x, s=s, half_space=half_space), (w,))


def test_batched_equals_one_by_one():
    torch.manual_seed(2)
    w = torch.randn(2, 3, 6, 4, dtype=torch.float64)
    batched = hyperspherical_energy(w, s=1, half_space=True)
    assert batched.shape == (2, 3)
    for i, j in itertools.product(range(2), range(3)):
        assert batched[i, j].item() == pytest.approx(hyperspherical_energy(w[i, j], s=1, half_space=True).item())


@pytest.mark.parametrize("s", POWERS)
def test_invariant_to_neuron_order_and_positive_scale(s):
    torch.manual_seed(3)
    w = torch.randn(8, 6, dtype=torch.float64)
    ref = hyperspherical_energy(w, s=s, eps=0.0)
    permuted = w[torch.randperm(8)]
    scaled = w * torch.rand(8, 1, dtype=torch.float64).mul(10).add(0.1)
    assert hyperspherical_energy(permuted, s=s, eps=0.0).item() == pytest.approx(ref.item(), rel=1e-12)
    assert hyperspherical_energy(scaled, s=s, eps=0.0).item() == pytest.approx(ref.item(), rel=1e-12)


def test_orthonormal_neurons():
    n = 5
    w = torch.eye(8, dtype=torch.float64)[:n]
    # full space: every pair has c = 0, g_2(0) = 1/2
    assert hyperspherical_energy(w, s=2, eps=0.0).item() == pytest.approx(0.5)
    # half space: n(n-1)/2 real pairs, each 4 times at |c| = 0 (1/2), and n antipodal pairs at c = -1 (1/4)
    expected = (n * (n - 1) / 2 * 4 * 0.5 + n * 0.25) / num_pairs(n, half_space=True)
    assert hyperspherical_energy(w, s=2, half_space=True, eps=0.0).item() == pytest.approx(expected)


def test_antipodal_pair():
    w = torch.tensor([[3.0, 4.0], [-3.0, -4.0]], dtype=torch.float64)
    assert hyperspherical_energy(w, s=1, eps=0.0).item() == pytest.approx(0.5)  # 1/|u - (-u)| = 1/2
    assert hyperspherical_energy(w, s="a1", eps=0.0).item() == pytest.approx(1 / (1 + 1e-4))  # theta = pi


def _icosahedron():
    phi = (1 + 5 ** 0.5) / 2
    pts = []
    for a, b in itertools.product((-1, 1), repeat=2):
        pts += [(0, a, b * phi), (a, b * phi, 0), (b * phi, 0, a)]
    return pts


THOMSON = {  # s = 1, sum over pairs, unit sphere: the known Thomson-problem minima
    "tetrahedron": ([(1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)], 3.674234614),
    "octahedron": ([(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)], 9.985281374),
    "icosahedron": (_icosahedron(), 49.165253058),
}


@pytest.mark.parametrize("shape", list(THOMSON))
def test_thomson_minima(shape):
    points, energy = THOMSON[shape]
    w = torch.tensor(points, dtype=torch.float64)
    assert hyperspherical_energy(w, s=1, eps=0.0, reduction="sum").item() == pytest.approx(energy, abs=1e-8)


def test_thomson_minimum_is_stationary_and_descent_finds_it():
    # Gradient descent on 4 random points of S^2 reaches the tetrahedron's energy.
    torch.manual_seed(4)
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.05)
    energies = []
    for _ in range(300):
        opt.zero_grad()
        e = hyperspherical_energy(w, s=1, eps=0.0, reduction="sum")
        e.backward()
        opt.step()
        with torch.no_grad():
            w /= w.norm(dim=1, keepdim=True)
        energies.append(e.item())
    assert energies[-1] < energies[0]
    assert energies[-1] == pytest.approx(THOMSON["tetrahedron"][1], abs=1e-6)


@pytest.mark.parametrize("s", POWERS)
@pytest.mark.parametrize("half_space", [False, True])
def test_gradient_steps_lower_the_energy(s, half_space):
    torch.manual_seed(5)
    w = torch.randn(16, 8, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.01)
    first = None
    for _ in range(20):
        opt.zero_grad()
        e = hyperspherical_energy(w, s=s, half_space=half_space)
        e.backward()
        opt.step()
        first = e.item() if first is None else first
    assert hyperspherical_energy(w, s=s, half_space=half_space).item() < first


def test_single_neuron_and_zero_neuron():
    one = torch.randn(1, 5)
    assert hyperspherical_energy(one).item() == 0.0
    # half space: the neuron and its virtual -w form one pair, c = -|w|^2/(|w|^2+eps) ~ -1, g_2 ~ 1/4
    assert hyperspherical_energy(one, half_space=True).item() == pytest.approx(0.25, rel=1e-3)
    w = torch.randn(4, 5)
    w[2] = 0.0
    w.requires_grad_(True)
    for s in POWERS:
        e = hyperspherical_energy(w, s=s, half_space=True)
        (grad,) = torch.autograd.grad(e, w)
        assert torch.isfinite(e) and torch.isfinite(grad).all()


@pytest.mark.parametrize("bad, message", [
    (torch.randn(5), "rows as neurons"),
    (torch.randn(0, 3), "empty"),
    (torch.randn(3, 0), "empty"),
])
def test_bad_shapes(bad, message):
    with pytest.raises(ValueError, match=message):
        hyperspherical_energy(bad)


def test_unknown_power_lists_valid_ones():
    with pytest.raises(ValueError, match="valid: 0, 1, 2, a0, a1, a2"):
        hyperspherical_energy(torch.randn(3, 3), s=3)
    assert hyperspherical_energy(torch.randn(3, 3), s="2").shape == ()  # YAML/CLI strings are accepted


def test_layer_energies_monitor():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3), nn.Flatten(),
                          nn.Linear(8, 4))
    got = layer_energies(model)
    assert list(got) == ["0", "2", "3", "5"]
    for name, value in got.items():
        expected = hyperspherical_energy(neurons(model.get_submodule(name).weight.detach()), s=2).item()
        assert value == pytest.approx(expected, rel=1e-5)

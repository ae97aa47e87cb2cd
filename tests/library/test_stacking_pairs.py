"""The stack and the packed pair plan: the fused energy against the plain one and a per-block brute force, its
gradient, weights read in place whatever their memory format, half-precision weights, gradients without copies."""
import math

import pytest
import torch

from comhe import regularizers
from comhe.bench.regularizers import OpCounter
from comhe.bench.shapes import STACKS
from comhe.energy import POWERS, hyperspherical_energy
from comhe.layers import find_layers
from comhe.pairs import Block, GramEnergy, PairPlan, gram_energy
from comhe.stacking import flat_view, memory_positions

from test_regularizers import ENERGY_NAMES, PROJECTED_OPTIONS, check_against_reference, small_cnn


def two_buckets(dtype=torch.float64, seed=0):
    """Bucket A: 3 blocks of neurons as rows, padded to 5 (real 5, 3, 4), full / half / half space; bucket B: 2
    blocks as columns [k=6, n=7] (real 7 and 5). Padded rows and columns are zero, as in a stack."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(3, 5, 4, generator=g, dtype=dtype)
    a[1, 3:] = 0
    a[2, 4:] = 0
    b = torch.randn(2, 6, 7, generator=g, dtype=dtype)
    b[1, :, 5:] = 0
    specs = [(5, False, 10.0, 0), (3, True, 1.0, 1), (4, True, 0.5, 2), (7, True, 0.25, 3), (5, True, 0.25, 3)]
    blocks, offset = [], 0
    for k, (n, half, weight, layer) in enumerate(specs):
        stride = 5 if k < 3 else 7
        blocks.append(Block(offset, stride, n, half, weight, layer))
        offset += stride * stride
    return [a, b], (False, True), blocks, offset


def brute(rows, columns, blocks, s, eps):
    """Each block's pair-mean energy from its real neurons (energy.py), weighted and summed."""
    neurons = [x for r, col in zip(rows, columns) for x in (r.transpose(1, 2) if col else r)]
    return sum(blk.weight * hyperspherical_energy(x[:blk.neurons], s=s, half_space=blk.half_space, eps=eps)
               for x, blk in zip(neurons, blocks))


@pytest.mark.parametrize("s", POWERS)
def test_fused_and_plain_equal_the_per_block_energies_with_gradients(s):
    rows, columns, blocks, total = two_buckets()
    plan = PairPlan(blocks, total, 4, torch.float64, torch.device("cpu"))
    leaves = [r.clone().requires_grad_(True) for r in rows]
    expected = brute(leaves, columns, blocks, s, 1e-4)
    ref_grads = torch.autograd.grad(expected, leaves)
    for fused in (True, False):
        loss, t = gram_energy(leaves, plan, s, 1e-4, fused, columns)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
        grads = torch.autograd.grad(loss, leaves)
        for g, r in zip(grads, ref_grads):
            assert torch.allclose(g, r, rtol=1e-10, atol=1e-13)
        per_layer = plan.per_layer(t)
        assert per_layer[3] == pytest.approx(sum(hyperspherical_energy(x[:, :n].T, s=s, half_space=True).item()
                                                 for x, n in zip(rows[1], (7, 5))) / 2, rel=1e-12)


@pytest.mark.parametrize("s", [2, 0, "a1"])
def test_fused_energy_passes_gradcheck(s):
    rows, columns, blocks, total = two_buckets()
    plan = PairPlan(blocks, total, 4, torch.float64, torch.device("cpu"))
    leaves = [r.clone().requires_grad_(True) for r in rows]
    assert torch.autograd.gradcheck(lambda *r: GramEnergy.apply(plan, s, 1e-4, columns, *r)[0], leaves)


def test_fused_energy_refuses_a_second_derivative():
    rows, columns, blocks, total = two_buckets()
    plan = PairPlan(blocks, total, 4, torch.float64, torch.device("cpu"))
    leaf = rows[0].clone().requires_grad_(True)
    loss, _ = GramEnergy.apply(plan, 2, 1e-4, columns, leaf, rows[1])
    (g,) = torch.autograd.grad(loss, leaf, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        torch.autograd.grad(g.sum(), leaf)


def test_flat_view_reads_channels_last_in_place():
    w = torch.randn(8, 5, 3, 2).to(memory_format=torch.channels_last)
    flat, order = flat_view(w)
    assert order == (0, 2, 3, 1) and flat.data_ptr() == w.data_ptr()
    positions = memory_positions(w.shape, order)
    assert torch.equal(flat.view(8, -1)[:, positions], w.reshape(8, -1))  # logical coordinate j sits at positions[j]
    odd = torch.randn(6, 4).t()  # neurons not outermost in memory: a row-major copy
    flat, order = flat_view(odd)
    assert order is None and torch.equal(flat, odd.reshape(-1))


def channels_last_copy(model):
    other = small_cnn(width=4).double()
    other.load_state_dict(model.state_dict())
    return other.to(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", ENERGY_NAMES)
def test_channels_last_weights_give_the_reference_loss_and_gradients(name, monkeypatch):
    """Weights stored channels_last (the CUDA default of the engine) are read in their memory order without a copy;
    AP / Adv / G read their buckets in logical order; RP projects the memory-order coordinates, checked against
    the reference with its recorded matrices mapped back to logical coordinates."""
    model = channels_last_copy(small_cnn(width=4).double())
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    check_against_reference(name, model, monkeypatch, **PROJECTED_OPTIONS.get(name, {}))


@pytest.mark.parametrize("name", ["mhe", "hs_mhe", "rp_comhe"])
def test_channels_last_costs_no_copy(name):
    """The same ATen ops for channels_last weights as for row-major ones: no per-layer copy, no gradient copy."""
    counts = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        model = STACKS["cnn9"]().to(memory_format=memory_format)
        reg = regularizers.build(name, model)
        reg(stats=False)[0].backward()
        model.zero_grad(set_to_none=True)
        counter = OpCounter()
        with counter:
            reg(stats=False)[0].backward()
        counts.append(counter.ops)
        for layer in find_layers(model):  # the gradient has the weight's strides (size-1 dims aside): no copy
            w, g = layer.weight, layer.weight.grad
            assert [st for st, n in zip(g.stride(), w.shape) if n > 1] == \
                [st for st, n in zip(w.stride(), w.shape) if n > 1]
    assert counts[0] == counts[1] and "clone" not in counts[1]


@pytest.mark.parametrize("name", ["mhe", "hs_mhe", "rp_comhe", "g_comhe", "ap_comhe", "orthogonal", "srip"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_give_the_float32_loss(name, dtype):
    """CNN-9 shapes (256-neuron layers: in float16, 1 / (1 - c^2) summed over 32,640 pairs overflowed to inf): the
    loss is float32, finite, equal to the float32 regulariser on the same (rounded) weights; gradients reach the
    half-precision weights finite."""
    half = STACKS["cnn9"]().to(dtype)
    full = STACKS["cnn9"]()
    full.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
    options = {"seed": 3} if name == "rp_comhe" else {}
    torch.manual_seed(1)  # AP's initial P and SRIP's power-iteration start come from the global RNG
    loss, stats = regularizers.build(name, half, **options)(lr=0.1)
    torch.manual_seed(1)
    expected, _ = regularizers.build(name, full, **options)(lr=0.1)
    assert loss.dtype == torch.float32 and math.isfinite(loss.item()) and math.isfinite(stats["total"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    grads = [layer.weight.grad for layer in find_layers(half)]
    assert all(g is not None and g.dtype == dtype and torch.isfinite(g).all() for g in grads if g is not None)


def test_every_gradient_is_a_slice_of_one_buffer():
    """The cat's backward is views: each weight's gradient is a slice of one buffer, kept by AccumulateGrad as is."""
    model = STACKS["cnn9"]()
    regularizers.build("rp_comhe", model)(stats=False)[0].backward()
    storages = {layer.weight.grad.untyped_storage().data_ptr() for layer in find_layers(model)}
    assert len(storages) == 1

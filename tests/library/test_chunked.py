"""The chunked path of the fused energy (long pair lists on the CPU, ``comhe/chunked.py``): how the blocks are cut, its
values, gradients and stats against the per-block float64 brute force and the packed list, every regulariser through
it against the per-layer reference, no gradient work without a gradient, the packed list's indices built only when
asked for, and which plans take it."""
import pytest
import torch

from comhe import chunked, pairs, regularizers
from comhe.bench.regularizers import GOALS, OpCounter
from comhe.bench.shapes import STACKS
from comhe.chunked import Chunk, plan_chunks
from comhe.energy import POWERS, hyperspherical_energy
from comhe.pairs import Block, GramEnergy, PairPlan, gram_energy

from test_regularizers import ENERGY_NAMES, PROJECTED_OPTIONS, check_against_reference, mlp, small_cnn
from test_stacking_pairs import brute


def copies_buckets(dtype=torch.float64, seed=0):
    """Bucket A, neurons as columns ``[6, k=4, 6]``: 3 copies of a 6-neuron layer, then 3 of a 4-neuron one (padded),
    half space, weight 1/3; bucket B, rows ``[3, 5, 7]``: a full-space block of 5 neurons (weight 10), two half-space
    blocks of 2 (weight 0.5). Padded neurons are zero, as in a stack."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(6, 4, 6, generator=g, dtype=dtype)
    a[3:, :, 4:] = 0
    b = torch.randn(3, 5, 7, generator=g, dtype=dtype)
    b[1:, 2:] = 0
    specs = [(6, 6, True, 1 / 3, 0)] * 3 + [(6, 4, True, 1 / 3, 1)] * 3 + \
        [(5, 5, False, 10.0, 2), (5, 2, True, 0.5, 3), (5, 2, True, 0.5, 3)]
    blocks, offset = [], 0
    for stride, n, half, weight, layer in specs:
        blocks.append(Block(offset, stride, n, half, weight, layer))
        offset += stride * stride
    return [a, b], (True, False), blocks, offset


def chunked_plan(blocks, total, layers=4, dtype=torch.float64):
    plan = PairPlan(blocks, total, layers, dtype, torch.device("cpu"))
    plan.cpu_chunked = True
    return plan


def test_chunks_merge_equal_neighbours_of_one_bucket_up_to_the_limit():
    specs = [(5, 5, True, 1.0)] * 3 + [(5, 3, True, 1.0)] + [(5, 5, True, 1.0)] * 2 + [(5, 5, True, 2.0)]
    blocks = [Block(25 * k, stride, n, half, w, 0) for k, (stride, n, half, w) in enumerate(specs)]
    chunks, covered = plan_chunks(blocks, [(4, 5), (3, 5)], limit=50)
    assert chunks == [Chunk(0, 0, 2, 5, True, 1.0, 0, 5), Chunk(0, 2, 1, 5, True, 1.0, 2, 5),  # 2 x 25 entries
                      Chunk(0, 3, 1, 3, True, 1.0, 3, 3),                                        # another n
                      Chunk(1, 0, 2, 5, True, 1.0, 4, 5),                                        # not across buckets
                      Chunk(1, 2, 1, 5, True, 2.0, 6, 5)]                                        # another weight
    assert covered == [False, True]  # bucket 0 has a padded Gram: its gradient starts from zeros
    alone = plan_chunks(blocks, [(4, 5), (3, 5)], limit=12)[0]  # a Gram larger than the limit: alone, in panels
    assert [(c.count, c.panel) for c in alone] == [(1, 2)] * 3 + [(1, 3)] + [(1, 2)] * 3
    with pytest.raises(ValueError, match="is not a Gram of the buckets"):
        plan_chunks(blocks, [(4, 5), (3, 6)])


@pytest.mark.parametrize("limit", [1, 40, 10 ** 6])
@pytest.mark.parametrize("s", POWERS)
def test_chunked_energy_equals_the_per_block_energies_and_the_packed_list(s, limit, monkeypatch):
    monkeypatch.setattr(chunked, "CHUNK_ENTRIES", limit)
    rows, columns, blocks, total = copies_buckets()
    packed = PairPlan(blocks, total, 4, torch.float64, torch.device("cpu"))
    plan = chunked_plan(blocks, total)
    leaves = [r.clone().requires_grad_(True) for r in rows]
    expected = brute(leaves, columns, blocks, s, 1e-4)
    ref_grads = torch.autograd.grad(expected, leaves)
    loss, energies = gram_energy(leaves, plan, s, 1e-4, True, columns)
    packed_loss, t = gram_energy(leaves, packed, s, 1e-4, True, columns)
    assert energies.shape == (len(blocks), 1) and t.shape == (packed.num_entries,)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert loss.item() == pytest.approx(packed_loss.item(), rel=1e-12)
    for g, r in zip(torch.autograd.grad(loss, leaves, retain_graph=True), ref_grads):
        assert torch.allclose(g, r, rtol=1e-10, atol=1e-13)
    twice = torch.autograd.grad(loss, leaves[1], torch.tensor(2.0, dtype=torch.float64))[0]
    assert torch.allclose(twice, 2 * ref_grads[1], rtol=1e-10, atol=1e-13)  # the backward scales the kept gradient
    per_block = [hyperspherical_energy(x[:blk.neurons], s=s, half_space=blk.half_space).item()
                 for x, blk in zip([x for r, col in zip(rows, columns) for x in (r.transpose(1, 2) if col else r)],
                                   blocks)]
    assert energies.view(-1).tolist() == pytest.approx(per_block, rel=1e-12)
    assert plan.per_layer(energies) == pytest.approx(packed.per_layer(t), rel=1e-12)
    assert plan.per_layer(energies)[1] == pytest.approx(sum(per_block[3:6]) / 3, rel=1e-12)  # the mean of its copies


@pytest.mark.parametrize("s", [2, 0, "a1"])
def test_chunked_energy_passes_gradcheck(s, monkeypatch):
    monkeypatch.setattr(chunked, "CHUNK_ENTRIES", 40)
    rows, columns, blocks, total = copies_buckets()
    plan = chunked_plan(blocks, total)
    leaves = [r.clone().requires_grad_(True) for r in rows]
    assert torch.autograd.gradcheck(lambda *r: GramEnergy.apply(plan, s, 1e-4, columns, *r)[0], leaves)


def force_chunked(monkeypatch, limit=150):
    """Every plan built from here on is chunked on the CPU, its chunks at most ``limit`` Gram entries."""
    monkeypatch.setattr(pairs, "PACKED_CPU_ENTRIES", 0)
    monkeypatch.setattr(chunked, "CHUNK_ENTRIES", limit)


@pytest.mark.parametrize("name", ENERGY_NAMES)
@pytest.mark.parametrize("make_model", [small_cnn, mlp])
def test_every_regulariser_through_the_chunked_path_equals_the_reference(name, make_model, monkeypatch):
    force_chunked(monkeypatch)
    reg = check_against_reference(name, make_model().double(), monkeypatch, **PROJECTED_OPTIONS.get(name, {}))
    assert reg.pairs.chunked(torch.device("cpu")) and reg.pairs.pos is None  # no packed index was built
    counts = [c.count for c in reg.pairs.chunks(tuple(reg.pairs._chunks)[0])[0]]
    assert len(counts) > len(reg.stacker.buckets)  # buckets cut into chunks
    if make_model is small_cnn:  # 8-neuron Grams (64 entries), two a chunk
        assert max(counts) == 2


@pytest.mark.parametrize("s", ["a0", 1, "a2"])
@pytest.mark.parametrize("name", ["mhe", "hs_mhe", "rp_comhe"])
def test_every_power_through_the_chunked_path_equals_the_reference(name, s, monkeypatch):
    force_chunked(monkeypatch)
    check_against_reference(name, small_cnn(width=4).double(), monkeypatch, s=s, **PROJECTED_OPTIONS.get(name, {}))


def test_the_chunked_path_does_no_gradient_work_without_a_gradient(monkeypatch):
    force_chunked(monkeypatch)
    model = small_cnn().double()
    reg = regularizers.build("hs_mhe", model)
    expected, stats = reg()
    counter = OpCounter()
    with torch.no_grad(), counter:
        loss, no_grad_stats = reg()
    chunks = reg.pairs.chunks(tuple(reg.pairs._chunks)[0])[0]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-14) and no_grad_stats == pytest.approx(stats)
    assert counter.ops["bmm"] == sum(-(-c.neurons // c.panel) for c in chunks)  # a bmm per panel, none back


def test_a_chunked_plan_builds_the_packed_indices_only_when_asked(monkeypatch):
    model = small_cnn().double()
    packed = regularizers.build("rp_comhe", model, seed=1).pairs
    force_chunked(monkeypatch)
    reg = regularizers.build("rp_comhe", model, seed=1)
    reg()[0].backward()
    assert reg.pairs.pos is None and reg.pairs.diag is None and reg.pairs.ab is None
    assert all(torch.equal(a, b) for a, b in zip(reg.pairs.indices(), packed.indices()))
    assert reg.state_dict().keys() == regularizers.build("rp_comhe", model, seed=1).state_dict().keys()


def test_a_compiled_regulariser_with_a_chunked_plan_gets_the_packed_indices_outside_the_graph(monkeypatch):
    force_chunked(monkeypatch)
    model = small_cnn().double()
    eager, _ = regularizers.build("rp_comhe", model, seed=2)(stats=False)
    graphs = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    reg = regularizers.build("rp_comhe", model, seed=2).compile(backend=backend)
    loss, _ = reg(stats=False)
    assert graphs and reg.pairs.pos is not None
    assert loss.item() == pytest.approx(eager.item(), rel=1e-10)


def test_the_op_count_goals_lists_stay_packed_and_the_gpu_keeps_the_packed_list():
    """On the CPU the op-count goals' lists stay one pass of few ops; the GPU never takes the chunked path."""
    for name, stack in GOALS:
        plan = regularizers.build(name, STACKS[stack]()).pairs
        assert not plan.cpu_chunked and plan.pos is not None, (name, stack)
    plan.cpu_chunked = True
    assert plan.chunked(torch.device("cpu")) and not plan.chunked(torch.device("cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_chunked_plan_moved_to_the_gpu_takes_the_packed_list_there(monkeypatch):
    force_chunked(monkeypatch)
    model = small_cnn()
    reg = regularizers.build("rp_comhe", model, seed=4)
    assert reg.pairs.pos is None
    model.cuda()
    reg.cuda()
    loss, stats = reg()
    assert reg.pairs.pos.is_cuda  # built on the GPU at the first call
    expected, _ = regularizers.build("rp_comhe", model, seed=4)(stats=False)  # built there: the same CUDA draws
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert stats["total"] == pytest.approx(loss.item(), rel=1e-5)

"""The fast step paths: torch.compile (exercised on the CPU, the one compile test of the suite) and CUDA graphs."""
import pytest
import torch

from comhe.train import config, engine


def cfg_for(tmp_path, **overrides):
    base = {"dataset": "synthetic", "data": {"num_classes": 10}, "data_root": str(tmp_path / "data"),
            "model": "cnn9", "model_options": {"width": 1, "bn_momentum": 0.1}, "batch_size": 8, "lr": 0.02,
            "regularizer": "rp_comhe", "reg": {"proj_dim": 8, "num_proj": 4}, "threads": 1}
    base.update(overrides)
    return config.resolve(base=base)


def run_steps(cfg, n=3):
    """Losses of ``n`` steps, and each parameter's total update."""
    s = engine.prepare(cfg)
    start = {k: v.detach().clone() for k, v in s.model.named_parameters()}
    batches = [s.loader.next_batch() for _ in range(n)]
    outs = [tuple(t.item() for t in s.step(x, y, 0.02)) for x, y in batches]
    return outs, {k: v.detach() - start[k] for k, v in s.model.named_parameters()}


def assert_same_updates(a, b, tolerance):
    for key in a:
        assert (a[key] - b[key]).norm() <= tolerance * a[key].norm() + 1e-12, key


def test_compiled_step_matches_eager_on_cpu(tmp_path):
    eager, w_eager = run_steps(cfg_for(tmp_path))
    compiled, w_compiled = run_steps(cfg_for(tmp_path, compile=True))
    for (l1, c1, r1), (l2, c2, r2) in zip(eager, compiled):
        assert l2 == pytest.approx(l1, rel=1e-4) and r2 == pytest.approx(r1, rel=1e-4) and c1 == c2
    # compiled kernels reorder float sums: the updates agree to ~1e-4 of their size, not bitwise
    assert_same_updates(w_eager, w_compiled, 1e-2)


def test_cuda_graph_needs_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="cuda_graph: true needs a CUDA device"):
        engine.prepare(cfg_for(tmp_path, cuda_graph=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("regularizer", ["none", "rp_comhe", "ap_comhe"])
def test_cuda_graph_step_matches_eager(tmp_path, regularizer):
    common = dict(device="cuda", amp="off", regularizer=regularizer, deterministic=True)
    eager, w_eager = run_steps(cfg_for(tmp_path, **common), n=8)
    graphed, w_graphed = run_steps(cfg_for(tmp_path, cuda_graph=True, **common), n=8)
    for (l1, c1, r1), (l2, c2, r2) in zip(eager, graphed):
        assert l2 == pytest.approx(l1, rel=1e-5) and r2 == pytest.approx(r1, rel=1e-5)
    assert_same_updates(w_eager, w_graphed, 1e-5)

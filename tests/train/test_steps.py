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
    eager, w_eager = run_steps(cfg_for(tmp_path, cuda_graph=False, **common), n=8)
    graphed, w_graphed = run_steps(cfg_for(tmp_path, cuda_graph=True, **common), n=8)
    for (l1, _c1, r1), (l2, _c2, r2) in zip(eager, graphed):
        assert l2 == pytest.approx(l1, rel=1e-5) and r2 == pytest.approx(r1, rel=1e-5)
    assert_same_updates(w_eager, w_graphed, 1e-5)


class _FailsToCompile(torch.nn.Module):
    """What torch.compile returns, failing in its first call as a backend that cannot compile would."""

    def __init__(self, net):
        super().__init__()
        self._orig_mod = net

    def forward(self, *args):
        raise RuntimeError("BackendCompilerFailed: simulated")


def test_a_failing_compile_falls_back_to_eager_with_a_warning(tmp_path, monkeypatch):
    """A mode that cannot run on this torch / card falls back to the eager step (same numbers), not a failed run."""
    eager, w_eager = run_steps(cfg_for(tmp_path))
    monkeypatch.setattr(torch, "compile", lambda fn, **options: _FailsToCompile(fn) if isinstance(
        fn, torch.nn.Module) else (lambda *a, **k: (_ for _ in ()).throw(RuntimeError("simulated"))))
    with pytest.warns(RuntimeWarning, match="step mode 'compile' failed.*falling back to the eager step"):
        fallen, w_fallen = run_steps(cfg_for(tmp_path, compile=True))
    assert fallen == eager
    assert all(torch.equal(w_eager[k], w_fallen[k]) for k in w_eager)


def test_every_compiled_regulariser_has_its_own_cache():
    """Dynamo keeps at most 8 graphs per code object and then runs eagerly without a word: each regulariser
    compiles its own copy of the loss function, so 10 of them (10 shapes) compile 10 graphs."""
    from comhe import regularizers
    compiled = []

    def backend(graph_module, example_inputs):
        compiled.append(graph_module)
        return graph_module.forward

    for width in range(1, 11):
        model = torch.nn.Sequential(torch.nn.Linear(6, 4 + width, bias=False), torch.nn.Linear(4 + width, 3))
        reg = regularizers.build("hs_mhe", model).compile(backend=backend)
        loss, _ = reg(stats=False)
        expected, _ = regularizers.build("hs_mhe", model)(stats=False)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert len(compiled) >= 10


def test_channels_last_takes_true_false_auto():
    assert config.resolve(["channels_last=true"])["channels_last"] is True
    assert config.resolve(["channels_last=false"])["channels_last"] is False
    assert config.resolve()["channels_last"] == "auto"
    with pytest.raises(config.ConfigError, match="channels_last must be one of auto, True, False, got 1"):
        config.resolve(["channels_last=1"])


def test_ddp_drops_the_buffer_broadcast_beside_sync_batchnorm():
    from comhe.train import distributed
    assert distributed.ddp_options(torch.device("cuda", 1)) == {"device_ids": [1], "broadcast_buffers": False}
    assert distributed.ddp_options(torch.device("cpu")) == {"device_ids": None}  # per-rank BN: DDP broadcasts


def test_capture_runs_in_thread_local_error_mode(tmp_path, monkeypatch):
    """A capture in the default (global) mode is invalidated by CUDA calls from other threads, e.g. the
    DataLoader's pin-memory thread; the step captures thread-locally. The CUDA graph API is faked: no GPU here."""
    import contextlib
    from types import SimpleNamespace
    from comhe.train import steps
    s = engine.prepare(cfg_for(tmp_path, regularizer="none", reg={}))
    seen = {}

    class FakeGraph:
        def register_generator_state(self, gen):
            pass

        def pool(self):
            return "pool"

    class FakeCapture:
        def __init__(self, graph, pool=None, stream=None, **kwargs):
            seen.update(kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", FakeCapture)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: None)
    fake = SimpleNamespace(**{**vars(s), "device": torch.device("cuda")})
    step = steps.GraphStep(fake)
    fake.device = s.device  # the captured body runs on the CPU tensors
    step.static_x, step.static_y = s.loader.next_batch()
    step._capture(0.02)
    assert seen == {"capture_error_mode": "thread_local"} and 0.02 in step.graphs

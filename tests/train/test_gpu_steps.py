"""The fast step's CPU-testable parts: the self-check's comparison, its orchestration (a fake fast mode: state put
back exactly, a wrong mode falls back with the reason in the meta), the mode a run takes, the capture on the run's
own device (CUDA API mocked), and bench-gpu's bookkeeping of a mode that fell back."""
from types import SimpleNamespace

import pytest
import torch

from comhe.bench import gpu
from comhe.train import config, engine, setup as setup_lib, steps


def cfg_for(tmp_path, **overrides):
    base = {"dataset": "synthetic", "data": {"num_classes": 10}, "data_root": str(tmp_path / "data"),
            "model": "cnn6", "model_options": {"width": 1, "bn_momentum": 0.1}, "batch_size": 8, "lr": 0.02,
            "regularizer": "rp_comhe", "reg": {"proj_dim": 8, "num_proj": 4}, "threads": 1}
    base.update(overrides)
    return config.resolve(base=base)


FP32 = steps.TOLERANCE["fp32"]


def test_compare_accepts_rounding_and_names_what_differs():
    update = {"a": torch.tensor([1.0, -2.0]), "b": torch.tensor([0.5])}
    near = {"a": torch.tensor([1.0001, -2.0]), "b": torch.tensor([0.5])}
    assert steps.compare((2.0, 0.1), (2.0001, 0.1), update, near, FP32) is None
    assert steps.compare((2.0, 0.1), (2.1, 0.1), update, update, FP32).startswith("loss 2.1 vs eager 2")
    assert steps.compare((2.0, 0.1), (2.0, 0.2), update, update, FP32).startswith(
        "regulariser loss 0.2 vs eager 0.1")
    assert steps.compare((2.0, 0.1), (float("nan"), 0.1), update, update, FP32).startswith("loss nan")
    # an empty graph (a capture on another card) updates nothing: off by the whole update
    nothing = {k: torch.zeros_like(v) for k, v in update.items()}
    assert steps.compare((2.0, 0.1), (2.0, 0.1), update, nothing, FP32) == \
        "parameter update differs from the eager one by 1 of its norm (tolerance 0.01)"
    off = steps.compare((2.0, 0.1), (2.0, 0.1), update, {"a": update["a"], "b": torch.tensor([0.7])},
                        steps.TOLERANCE["bf16"])
    assert off.startswith("parameter update differs from the eager one by 0.0873")  # 0.2 / sqrt(1 + 4 + 0.25)


@pytest.mark.parametrize("device, distributed, keys, mode", [
    ("cuda", False, {}, "cuda_graph"), ("cuda", True, {}, "eager"), ("cpu", False, {}, "eager"),
    ("cuda", False, {"cuda_graph": False}, "eager"), ("cuda", False, {"compile": True}, "compile"),
    ("cuda", True, {"compile": True}, "compile"), ("cpu", False, {"cuda_graph": True}, "cuda_graph"),
    ("cuda", False, {"bn_schedule": "staircase", "lr_decay_every": 10}, "compile")])
def test_the_mode_a_run_takes(device, distributed, keys, mode):
    cfg = config.resolve(base=keys)
    assert cfg["cuda_graph"] == keys.get("cuda_graph", "auto")
    assert steps.choose_mode(cfg, torch.device(device), distributed) == mode


class Fake(steps.EagerStep):
    """A fast mode with a warm-up, as a graph step has: the eager step (right), or one that forgets the update."""
    warmup = 2
    forget_update = False

    def run(self, x, y, lr):
        if not self.forget_update:
            return super().run(x, y, lr)
        saved = [p.detach().clone() for p in self.s.model.parameters()]
        out = super().run(x, y, lr)
        with torch.no_grad():
            for p, v in zip(self.s.model.parameters(), saved):
                p.copy_(v)
        return out

    __call__ = run


class Forgets(Fake):
    forget_update = True


def trajectory(s, n=4):
    out = []
    for _ in range(n):
        x, y = s.loader.next_batch()
        out.append(tuple(t.item() for t in s.step(x, y, 0.02)))
    return out, {k: v.detach().clone() for k, v in s.model.state_dict().items()}


@pytest.mark.parametrize("regularizer, reg", [("rp_comhe", {"proj_dim": 8, "num_proj": 4}), ("ap_comhe", {})])
def test_a_verified_mode_leaves_the_run_as_if_unchecked(tmp_path, monkeypatch, regularizer, reg):
    """The check's warm-up, eager and fast steps all run on the real model; everything is put back (weights, BN
    statistics, momentum, the RP generator, the RNGs, the data stream): the run is bitwise the unchecked one."""
    monkeypatch.setitem(steps.STEPS._entries, "fake", Fake)
    reference, w_reference = trajectory(engine.prepare(cfg_for(tmp_path, regularizer=regularizer, reg=reg)))
    s = engine.prepare(cfg_for(tmp_path, regularizer=regularizer, reg=reg))
    s.step = steps.build(s, "fake", setup_lib._first_batch(s))
    assert s.step.mode == "fake" and s.step.meta["step_self_check"].startswith("passed: losses ")
    assert "step_fallback" not in s.step.meta
    got, w_got = trajectory(s)
    assert got == reference and all(torch.equal(w_reference[k], w_got[k]) for k in w_reference)


def test_a_mode_that_fails_its_check_falls_back_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setitem(steps.STEPS._entries, "forgets", Forgets)
    reference, w_reference = trajectory(engine.prepare(cfg_for(tmp_path)))
    s = engine.prepare(cfg_for(tmp_path))
    with pytest.warns(RuntimeWarning, match=r"step mode 'forgets' failed \(self-check failed: parameter update "
                                            r"differs from the eager one by 1 of its norm.*falling back to the eager"):
        s.step = steps.build(s, "forgets", setup_lib._first_batch(s))
    assert s.step.mode == "eager" and s.step.meta["step_mode"] == "eager"
    assert s.step.meta["step_requested"] == "forgets" and "self-check failed" in s.step.meta["step_fallback"]
    got, w_got = trajectory(s)
    assert got == reference and all(torch.equal(w_reference[k], w_got[k]) for k in w_reference)


def test_a_mode_that_raises_in_its_check_falls_back(tmp_path, monkeypatch):
    class Raises(Fake):
        def run(self, x, y, lr):
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        __call__ = run
    monkeypatch.setitem(steps.STEPS._entries, "raises", Raises)
    s = engine.prepare(cfg_for(tmp_path))
    with pytest.warns(RuntimeWarning, match="RuntimeError: CUDA error: operation not permitted"):
        s.step = steps.build(s, "raises", setup_lib._first_batch(s))
    assert s.step.meta["step_fallback"].startswith("self-check failed: RuntimeError: CUDA error")


class Recorder:
    """The CUDA calls a graph step makes, with the device current at each (the CUDA API faked: no GPU here)."""

    def __init__(self):
        self.current, self.calls = [0], []

    def device(self, device):
        rec = self

        class Current:
            def __enter__(self):
                rec.current.append(torch.device(device).index)

            def __exit__(self, *exc):
                rec.current.pop()
        return Current()

    def stream_on(self, device=None):
        return SimpleNamespace(device=None if device is None else torch.device(device).index,
                               wait_stream=lambda other: None)

    def current_stream(self, device=None):
        return self.stream_on(self.current[-1] if device is None else device)

    def stream(self, side):
        rec = self

        class Enter:
            def __enter__(self):
                rec.calls.append(("side stream", side.device, rec.current[-1]))

            def __exit__(self, *exc):
                return False
        return Enter()

    def graph(self, graph, pool=None, stream=None, **kwargs):
        rec = self

        class Capture:
            def __enter__(self):
                stream_device = stream.device if stream is not None else rec.current[-1]
                rec.calls.append(("capture", stream_device, rec.current[-1]))

            def __exit__(self, *exc):
                return False
        return Capture()

    def cuda_graph(self):
        rec = self
        return SimpleNamespace(register_generator_state=lambda gen: None, pool=lambda: "pool",
                               replay=lambda: rec.calls.append(("replay", rec.current[-1], rec.current[-1])))


def test_capture_side_stream_and_replay_run_on_the_runs_own_device(tmp_path, monkeypatch):
    """A single-process run on cuda:1 while cuda:0 is current: every stream, the capture and each replay are on
    device 1 (before: the current device's streams, so the graph captured nothing of the run)."""
    s = engine.prepare(cfg_for(tmp_path, regularizer="none", reg={}))
    rec = Recorder()
    monkeypatch.setattr(torch.cuda, "device", rec.device)
    monkeypatch.setattr(torch.cuda, "Stream", rec.stream_on)
    monkeypatch.setattr(torch.cuda, "current_stream", rec.current_stream)
    monkeypatch.setattr(torch.cuda, "stream", rec.stream)
    monkeypatch.setattr(torch.cuda, "graph", rec.graph)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", rec.cuda_graph)
    fake = SimpleNamespace(**{**vars(s), "device": torch.device("cuda", 1)})
    step = steps.GraphStep(fake)
    fake.device = s.device  # the step's body runs on the CPU tensors
    x, y = s.loader.next_batch()
    for _ in range(step.warmup + 2):
        step(x, y, 0.02)
    kinds = [c[0] for c in rec.calls]
    assert kinds == ["side stream"] * 3 + ["capture", "replay", "replay"]
    assert all(c[1:] == (1, 1) for c in rec.calls), rec.calls


def test_bench_gpu_records_a_mode_that_fell_back_as_failed(monkeypatch):
    """A mode whose self-check or capture failed trains as eager: timed under its own label it would look like the
    mode (and could be picked as fastest); it is recorded as failed and never chosen."""
    real = gpu.make_setup

    def make_setup(model_key, reg, mode, bundle, batch=128, self_test=False):
        s = real(model_key, reg, "eager", bundle, batch, self_test)
        if mode == "cuda_graph":
            s.step.meta.update(step_mode="eager", step_requested=mode, step_fallback="self-check failed: loss")
        return s
    monkeypatch.setattr(gpu, "make_setup", make_setup)
    bundle = gpu.synthetic_bundle(torch.device("cpu"), train=64, test=32)
    rows = gpu.step_table(bundle, ["cnn9"], ["none"], ["eager", "cuda_graph"], 1, 1, 16, self_test=True)
    failed = [r for r in rows if r["error"]]
    assert [(r["mode"], r["error"]) for r in failed] == [("cuda_graph", "fell back to eager: self-check failed: loss")]
    assert [r["mode"] for r in rows if not r["error"]] == ["eager"]
    assert gpu.best_modes(rows) == {"cnn9": {"none": "eager"}}
    live = SimpleNamespace(step=SimpleNamespace(mode="cuda_graph", meta={"step_mode": "cuda_graph"}))
    assert gpu.fell_back(live, "cuda_graph") == ""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_run_verifies_and_takes_the_captured_step_by_default(tmp_path):
    s = engine.prepare(cfg_for(tmp_path, device="cuda", model="cnn9"))
    assert s.step.mode == "cuda_graph", s.step.meta
    assert s.step.meta["step_self_check"].startswith("passed")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_graph_on_the_second_card_trains(tmp_path):
    s = engine.prepare(cfg_for(tmp_path, device="cuda:1", cuda_graph=True, amp="off"))
    before = {k: v.detach().clone() for k, v in s.model.named_parameters()}
    for _ in range(6):
        s.step(*engine.next_batch_on_device(s), 0.02)
    assert s.step.mode == "cuda_graph" and s.step.inner.graphs
    assert all(not torch.equal(before[k], v) for k, v in s.model.named_parameters() if v.dim() > 1)


def test_the_check_batch_leaves_the_stream_and_the_rngs_as_they_were(tmp_path):
    """ImageNet without workers draws its crops from the global RNG: taking the check's batch must not shift the run's
    first batch (nor anything drawn after it)."""
    cfg = config.resolve(base={"dataset": "synthetic_imagenet", "data_root": str(tmp_path / "data"), "workers": 0,
                               "data": {"image_size": 32, "num_classes": 3, "per_class": 4, "size": 40},
                               "model": "resnet18", "batch_size": 4, "threads": 1})
    s = engine.prepare(cfg)
    before = torch.get_rng_state()
    x, y, lr = setup_lib._first_batch(s)
    assert torch.equal(torch.get_rng_state(), before) and lr == cfg["lr"]
    rx, ry = s.loader.next_batch()
    assert torch.equal(rx, x) and torch.equal(ry, y)

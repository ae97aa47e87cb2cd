"""CUDA paths the CPU suite cannot exercise (skipped without a GPU; the first GPU session runs them): bf16 +
channels_last under CUDA graphs, re-capture at an LR milestone, resume on CUDA, one short table run."""
import json
import os
import signal

import pytest
import torch

from comhe import run
from comhe.train import config, engine, steps
from comhe.train.records import RunDir
from run_helpers import small_cfg

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def cfg_for(tmp_path, **overrides):
    base = {"dataset": "synthetic", "data": {"num_classes": 10}, "data_root": str(tmp_path / "data"),
            "model": "cnn9", "model_options": {"width": 1, "bn_momentum": 0.1}, "batch_size": 16, "lr": 0.02,
            "regularizer": "rp_comhe", "reg": {"proj_dim": 8, "num_proj": 4}, "device": "cuda",
            "cuda_graph": False}  # the eager reference; cuda_graph: auto would capture it too
    base.update(overrides)
    return config.resolve(base=base)


def run_steps(cfg, lrs):
    """The setup, each step's (loss, reg loss) and each parameter's total update, for the learning rates ``lrs``."""
    s = engine.prepare(cfg)
    start = {k: v.detach().clone() for k, v in s.model.named_parameters()}
    batches = [engine.to_device(*s.loader.next_batch(), s) for _ in lrs]
    outs = [(loss.item(), reg.item()) for (x, y), lr in zip(batches, lrs)
            for loss, _, reg in [s.step(x, y, lr)]]
    return s, outs, {k: v.detach() - start[k] for k, v in s.model.named_parameters()}


def close_updates(a, b, tolerance):
    return all((a[k] - b[k]).norm() <= tolerance * a[k].norm() + 1e-8 for k in a)


def test_bf16_channels_last_step_is_captured_and_matches_eager(tmp_path):
    common = dict(amp="bf16", channels_last=True)
    lrs = [0.02] * 8
    _, eager, w_eager = run_steps(cfg_for(tmp_path, **common), lrs)
    s, graphed, w_graphed = run_steps(cfg_for(tmp_path, cuda_graph=True, **common), lrs)
    assert s.step.mode == "cuda_graph" and isinstance(s.step.inner, steps.GraphStep) and s.step.inner.graphs
    assert s.model.classifier.weight.is_contiguous(memory_format=torch.channels_last) and s.channels_last
    for (l1, r1), (l2, r2) in zip(eager, graphed):  # bf16 kernels differ between runs: loose, but same path
        assert l2 == pytest.approx(l1, rel=5e-2) and r2 == pytest.approx(r1, rel=5e-2)
    assert close_updates(w_eager, w_graphed, 0.1)


def test_an_lr_milestone_captures_a_second_graph(tmp_path):
    common = dict(amp="off", deterministic=True)
    lrs = [0.02] * 6 + [0.002] * 4  # warm-up (3 eager), a graph at 0.02, another at 0.002
    _, eager, w_eager = run_steps(cfg_for(tmp_path, **common), lrs)
    s, graphed, w_graphed = run_steps(cfg_for(tmp_path, cuda_graph=True, **common), lrs)
    assert s.step.mode == "cuda_graph" and sorted(s.step.inner.graphs) == [0.002, 0.02]
    for (l1, r1), (l2, r2) in zip(eager, graphed):
        assert l2 == pytest.approx(l1, rel=1e-4) and r2 == pytest.approx(r1, rel=1e-4)
    assert close_updates(w_eager, w_graphed, 1e-3)


@pytest.mark.parametrize("regularizer, reg", [("rp_comhe", {"proj_dim": 4, "num_proj": 2}),
                                              ("ap_comhe", {"proj_dim": 4})])
def test_resume_on_cuda_equals_uninterrupted(tmp_path, regularizer, reg):
    """A stop signal checkpoints at iteration 4; the relaunch (RNG states of the CPU, CUDA and the RP generator,
    the loader's device-side draws) continues as if never stopped."""
    cfg = small_cfg(tmp_path, regularizer=regularizer, reg=reg, device="cuda", deterministic=True, amp="off")
    reference = RunDir(tmp_path / "reference")
    engine.train(cfg, reference.path)
    resumed = RunDir(tmp_path / "resumed")

    def stop_at_4(row):
        if row["iteration"] == 4:
            os.kill(os.getpid(), signal.SIGUSR1)

    with pytest.raises(engine.Preempted):
        engine.train(cfg, resumed.path, report=stop_at_4)
    engine.train(cfg, resumed.path)
    a, b = reference.read_metrics(), resumed.read_metrics()
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "reg_loss", "test_error", "hidden_energy"):
            assert float(rb[key]) == pytest.approx(float(ra[key]), rel=1e-5, abs=1e-6), key


def test_a_short_table_runs_on_cuda(tmp_path, monkeypatch):
    monkeypatch.setenv("COMHE_DATA", str(tmp_path / "data"))
    results = tmp_path / "results"
    assert run.main(["table1", "--profile", "smoke", "--seeds", "1", "--results", str(results), "--no-figures"]) == 0
    runs = list((results / "runs").iterdir())
    assert runs
    for path in runs:
        if path.name.startswith("."):
            continue
        meta = json.loads((path / "meta.json").read_text())
        assert meta["device"] == torch.cuda.get_device_name(0)  # the runs trained on the card
        assert json.loads((path / "final.json").read_text())["status"] in ("finished", "diverged")

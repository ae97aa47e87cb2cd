"""Benchmarks are scripts, not tests; what is tested here is deterministic: the op-count goals of the library issue
(ATen ops of one forward+backward, counted by dispatch, not timed) and the plumbing of ``make bench-gpu``."""
import csv
import json
import time

import pytest
import torch

from comhe import regularizers, run
from comhe.suite import estimate, runner
from comhe.bench import gpu
from comhe.bench.regularizers import GOALS, LAYERS, OpCounter, official_style_loss
from comhe.layers import find_layers
from comhe.bench.shapes import STACKS


def count_ops(step, model):
    for p in model.parameters():
        p.grad = None
    step().backward()  # warm-up: lazily created state
    for p in model.parameters():
        p.grad = None
    counter = OpCounter()
    with counter:
        step().backward()
    return counter.total


def test_op_count_goals_are_the_issues():
    """At most 3 kernel-launching ops per regularised layer + 40, eager: CNN-9 <= 73, ResNet-56 <= 208."""
    assert {stack: len(find_layers(STACKS[stack]())) for stack in LAYERS} == LAYERS
    assert GOALS[("rp_comhe", "cnn9")] == 73 and GOALS[("rp_comhe", "resnet56")] == 208
    assert {name for name, _ in GOALS} == {"mhe", "hs_mhe", "rp_comhe", "g_comhe"}


@pytest.mark.parametrize("name, stack", sorted(GOALS))
def test_op_count_goals(name, stack):
    model = STACKS[stack]()
    reg = regularizers.build(name, model)
    ops = count_ops(lambda: reg(lr=0.1, stats=False)[0], model)
    assert ops <= GOALS[(name, stack)]
    if name in ("hs_mhe", "rp_comhe"):  # and the batching is what buys it: the official loop dispatches far more
        assert count_ops(lambda: official_style_loss(name, model), model) > 3 * ops


def test_bench_gpu_plumbing_on_cpu(tmp_path):
    gpu.main(["--self-test", "--skip-concurrency", "--out", str(tmp_path)])
    with open(tmp_path / "gpu_steps.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["model"], r["regularizer"]) for r in rows if not r["error"]} == {
        ("cnn9", "none"), ("cnn9", "rp_comhe"), ("resnet32", "none"), ("resnet32", "rp_comhe")}
    for r in rows:
        assert float(r["step_ms"]) > 0 and float(r["images_per_s"]) > 0
        if r["regularizer"] == "none":
            assert float(r["ratio_to_baseline"]) == 1.0
    assert (tmp_path / "gpu_protocol.csv").exists() and not (tmp_path / "best_jobs.json").exists()
    measured = json.loads((tmp_path / "best_jobs.self_test.json").read_text())
    assert measured["modes"] == {"cnn9": {"none": "eager", "rp_comhe": "eager"},
                                 "resnet32": {"none": "eager", "rp_comhe": "eager"}} and "best_jobs" not in measured


def test_bench_gpu_concurrency_workers_start_together():
    rows = gpu.concurrency([1, 2], 0.5, "eager", self_test=True)
    assert [(r["jobs"], r["workers_ready"], r["workers_ok"]) for r in rows] == [(1, 1, 1), (2, 2, 2)]
    assert all(r["aggregate_images_per_s"] > 0 for r in rows) and rows[0]["speedup_vs_1"] == 1.0
    assert gpu.concurrency([1], 0.5, "eager", self_test=True, until=time.time() - 1) == []  # over budget: skipped


def test_bench_gpu_budget_skips_what_it_cannot_start_and_picks_modes():
    bundle = gpu.synthetic_bundle(torch.device("cpu"), train=64, test=32)
    rows = gpu.step_table(bundle, ["cnn9"], ["none"], ["eager", "compile"], 1, 1, 16, self_test=True,
                          setup_until=time.time() - 1)
    assert [(r["mode"], r["error"]) for r in rows] == [("eager", "skipped: over the time budget (--budget-s)"),
                                                      ("compile", "skipped: over the time budget (--budget-s)")]
    timed = [{"model": m, "regularizer": r, "mode": mode, "step_ms": ms, "error": ""}
             for m, r, mode, ms in [("cnn9", "none", "eager", 3.0), ("cnn9", "rp_comhe", "eager", 4.0),
                                    ("cnn9", "none", "cuda_graph", 1.0), ("cnn9", "rp_comhe", "cuda_graph", 1.2),
                                    ("cnn9", "none", "compile", 0.5), ("cnn9", "ap_comhe", "eager", 9.0),
                                    ("cnn9", "ap_comhe", "cuda_graph", 11.0),  # slower captured: stays eager
                                    ("resnet32", "none", "eager", 2.0), ("resnet32", "rp_comhe", "eager", 2.5)]]
    timed.append({"model": "cnn9", "regularizer": "rp_comhe", "mode": "compile", "error": "BackendCompilerFailed"})
    assert gpu.best_modes(timed) == {"cnn9": {"none": "compile", "rp_comhe": "cuda_graph", "ap_comhe": "eager"},
                                     "resnet32": {"none": "eager", "rp_comhe": "eager"}}


def test_runner_takes_jobs_and_step_modes_measured_on_this_card(tmp_path, monkeypatch):
    """best_jobs.json of this card sets JOBS and each model's step mode; neither changes a run's name; another
    card's file, or compile/cuda_graph given on the command line, leaves the defaults alone."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H100 80GB HBM3")
    bench = tmp_path / "results" / "bench"
    bench.mkdir(parents=True)
    modes = {"cnn9": {"none": "cuda_graph", "rp_comhe": "compile", "hs_mhe": "eager"}}
    measured = {"device": "NVIDIA H100 80GB HBM3", "best_jobs": 6, "modes": modes}
    (bench / "best_jobs.json").write_text(json.dumps(measured))
    assert runner.measured_defaults(tmp_path / "results") == measured
    assert runner.default_jobs(tmp_path / "results") == 6
    plan = runner.make_plan(["table1"], "paper")
    names = [r.name for r in plan.runs]
    assert runner.apply_step_modes(plan, measured["modes"]) == ["cnn9/none: cuda_graph", "cnn9/rp_comhe: compile"]
    assert [r.name for r in plan.runs] == names
    assert {(r.cfg["model"], r.cfg["regularizer"], r.cfg["cuda_graph"], r.cfg["compile"]) for r in plan.runs
            if r.cfg["cuda_graph"] is True or r.cfg["compile"]} == {("cnn9", "none", True, False),
                                                            ("cnn9", "rp_comhe", False, True)}
    # an older best_jobs.json (one mode per model) was measured on the baseline and RP-CoMHE only
    old = runner.make_plan(["table1"], "paper")
    assert runner.apply_step_modes(old, {"cnn9": "cuda_graph"}) == ["cnn9/none: cuda_graph",
                                                                    "cnn9/rp_comhe: cuda_graph"]

    seen = {}
    monkeypatch.setattr(runner, "train", lambda plan, root, jobs, *a, **k: seen.update(
        jobs=jobs, modes={r.cfg["model"]: r.cfg["cuda_graph"] for r in plan.runs if r.cfg["regularizer"] == "none"})
        or {})
    monkeypatch.setattr(runner, "render", lambda *a, **k: None)
    monkeypatch.setattr(estimate, "start_lines", lambda *a, **k: [])  # no card here to describe
    args = ["table2", "--results", str(tmp_path / "results"), "--no-figures"]
    assert run.main(args) == 0 and seen == {"jobs": 6, "modes": {"cnn9": True}}
    assert run.main(args + ["cuda_graph=false"]) == 0 and seen == {"jobs": 6, "modes": {"cnn9": False}}
    assert run.main(args + ["--nproc", "2"]) == 0 and seen == {"jobs": 1, "modes": {"cnn9": False}}  # DDP: no graphs
    (bench / "best_jobs.json").write_text(json.dumps({**measured, "device": "NVIDIA A100-SXM4-40GB"}))
    assert run.main(args) == 0 and seen == {"jobs": 4, "modes": {"cnn9": "auto"}}  # not measured: the run decides


def test_gcn_bench_plumbing(tmp_path):
    """``python -m comhe.bench.gcn --self-test``: one small run per method and the dropout timings, into the CSV."""
    from comhe.bench import gcn
    rows, drop = gcn.main(["--self-test", "--runs", "1", "--out", str(tmp_path / "gcn.csv")])
    assert [r["regularizer"] for r in rows] == ["none", "hs_mhe", "rp_comhe", "ap_comhe"]
    assert all(r["run_s"] > 0 and r["epochs"] >= 12 for r in rows) and len(drop) == 3
    assert (tmp_path / "gcn.csv").read_text().count("\n") == 8


def test_bench_gpu_times_batches_as_the_engine_feeds_them():
    """channels_last batches where the engine uses them (bench-gpu timed NCHW batches the engine never saw)."""
    bundle = gpu.synthetic_bundle(torch.device("cpu"), train=64, test=32)
    s = gpu.make_setup("cnn9", "none", "eager", bundle, batch=16, self_test=True)
    s.channels_last = True
    layouts = []
    s.step = lambda x, y, lr: layouts.append(x.is_contiguous(memory_format=torch.channels_last))
    gpu.time_steps(s, 3)
    assert layouts == [True, True, True]


def test_bench_gpu_gives_up_on_a_worker_that_never_gets_ready():
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        start = time.time()
        assert gpu._ready(proc, time.time() + 0.5) is False and time.time() - start < 5
    finally:
        proc.kill()
        proc.wait()

"""A run's CPU settings (``comhe/train/cpu.py``): subnormal floats flushed unless ``flush_subnormals=false``, in every
intra-op thread, and recorded in ``meta.json`` as measured; graph runs on 1 thread unless told; seeding does not
import ``torch._inductor``. Each case runs in a child process: the flush flag and the thread pool are process-wide."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from comhe.train import config, cpu
from comhe.train.records import config_hash
from run_helpers import REPO

# Trains a small run (a graph or an image run) through its engine, then computes in the same process.
CHILD = textwrap.dedent("""
    import json, sys, torch
    from comhe.train import config, trainers
    from comhe.train.records import RunDir
    cfg = config.resolve(base=json.loads(sys.argv[1]))
    trainer = trainers.for_config(cfg)
    trainer.train(cfg, sys.argv[2], trainer.prepare(cfg))
    meta = RunDir(sys.argv[2]).read_meta()
    product = float(torch.tensor([1e-30]) * torch.tensor([1e-10]))   # 1e-40: subnormal in float32
    many = torch.full((1 << 20,), 1e-20).mul(1e-20)                   # every intra-op thread takes a share
    print(json.dumps({"subnormals": meta["subnormals"], "threads": meta["threads"], "product": product,
                      "many_zero": int(many.eq(0).sum()) == many.numel(), "torch_threads": torch.get_num_threads()}))
""")

GRAPH = {"dataset": "synthetic_planetoid", "data": {"num_classes": 4}, "model": "gcn", "iterations": 3,
         "milestones": [], "lr": 0.01, "loss": "cross_entropy", "label_smoothing": 0.0, "eval_every": 1,
         "regularizer": "rp_comhe"}
IMAGE = {"dataset": "synthetic", "model": "cnn9", "model_options": {"width": 0.125}, "regularizer": "none",
         "iterations": 2, "milestones": [1], "batch_size": 8, "eval_every": 2, "eval_batch_size": 50,
         "checkpoint_every": 1000}

can_flush = pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU cannot flush subnormals (not x86)")


def run_child(tmp_path, cfg):
    cfg = {**cfg, "data_root": str(tmp_path / "data")}
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the thread rule follows it where set
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg), str(tmp_path / "run")], capture_output=True,
                         text=True, cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@can_flush
@pytest.mark.parametrize("base", [GRAPH, IMAGE], ids=["graph", "image"])
def test_subnormals_are_flushed_by_default_and_recorded(tmp_path, base):
    got = run_child(tmp_path, base)
    assert got["subnormals"] == "flushed"
    assert got["product"] == 0.0 and got["many_zero"]
    if base is GRAPH:  # a graph run takes 1 thread unless told; an image run torch's default
        assert got["threads"] == got["torch_threads"] == 1


@can_flush
def test_flush_subnormals_false_keeps_them_in_every_thread(tmp_path):
    got = run_child(tmp_path, {**GRAPH, "flush_subnormals": False, "threads": 2})
    assert got["subnormals"] == "kept"
    assert got["threads"] == 2  # threads=N wins over the graph rule
    assert got["product"] == pytest.approx(1e-40, rel=1e-3) and not got["many_zero"]


@can_flush
def test_the_cli_reaches_every_thread_although_it_checks_the_config_first(tmp_path):
    """``python -m comhe.train`` reads the config first, and reading builds the model once (``config._check_buildable``)
    before the run sets its mode: that build must not create torch's threads, or they would keep subnormals."""
    # width 1 and RP-CoMHE: building its projections is a parallel op (checked: it starts torch's threads)
    cfg = {**IMAGE, "model_options": {"width": 1}, "regularizer": "rp_comhe", "data_root": str(tmp_path / "data"),
           "threads": 2}
    (tmp_path / "run.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-m", "comhe.train", str(tmp_path / "run.yaml"), "--run-dir",
                          str(tmp_path / "run"), "--progress", "none"], capture_output=True, text=True, cwd=REPO,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert (meta["subnormals"], meta["threads"]) == ("flushed", 2), out.stderr[-2000:]


def test_the_flag_is_no_part_of_a_runs_identity():
    cfg = config.resolve(["regularizer=rp_comhe"])
    assert config_hash({**cfg, "flush_subnormals": False}) == config_hash(cfg)


@can_flush
def test_subnormal_state_is_measured_not_assumed():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the main thread only: this process's pool may hold either setting
    try:
        torch.set_flush_denormal(True)
        assert cpu.subnormal_state() == "flushed"
        torch.set_flush_denormal(False)
        assert cpu.subnormal_state() == "kept"
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def test_seeding_imports_no_compiler():
    """``torch.use_deterministic_algorithms`` imports ``torch._inductor`` (~1 s of CPU; python -m comhe.bench.startup
    measures it): seeding a non-deterministic run must not call it in a fresh process."""
    code = ("import sys; from comhe.train.seeding import seed_everything; seed_everything(0); "
            "print('torch._inductor' in sys.modules, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["False", "False"], out


def test_deterministic_seeding_still_switches_torch():
    try:
        from comhe.train.seeding import seed_everything
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        seed_everything(0, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)

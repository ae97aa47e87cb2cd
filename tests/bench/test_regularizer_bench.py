"""``python -m comhe.bench.regularizers`` (``make bench``, BENCHMARKS.md section 1) end to end on the CNN-9 stack:
one row per regulariser and per official-style loop, op counts equal to a separate count, goals judged, the CSV
written; timings are only checked to be times."""
import csv
import math

import pytest
import torch

from comhe import regularizers
from comhe.bench import regularizers as bench
from comhe.bench.shapes import STACKS


@pytest.fixture(scope="module")
def cnn9_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "regularizers.csv"
    threads = torch.get_num_threads()   # main sets the process's thread count: the next tests get theirs back
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(bench, "STACKS", {"cnn9": STACKS["cnn9"]})   # ResNet-56's stack: the same code, 3x longer
            rows = bench.main(["--repeats", "1", "--out", str(out), "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    return rows, out


def test_every_regulariser_and_both_official_loops_get_a_row(cnn9_rows):
    rows, out = cnn9_rows
    names = [n for n in regularizers.names() if n != "none"]
    assert [(r["regularizer"], r["impl"]) for r in rows] == [(n, "comhe") for n in names] + [
        ("hs_mhe", "official-style loop"), ("rp_comhe", "official-style loop")]
    with open(out, newline="") as f:
        written = list(csv.DictReader(f))
    assert [(r["regularizer"], r["impl"], int(r["ops"])) for r in written] == [
        (r["regularizer"], r["impl"], r["ops"]) for r in rows]


def test_op_counts_and_goals(cnn9_rows):
    rows, _ = cnn9_rows
    by = {(r["regularizer"], r["impl"]): r for r in rows}
    model = STACKS["cnn9"]()
    for name in ("hs_mhe", "rp_comhe"):
        reg = regularizers.build(name, model)
        assert by[(name, "comhe")]["ops"] == bench.measure(bench.loss_of(reg), model, 0)["ops"]
        # the point of the fused path: far fewer launches than a loop over layers
        assert by[(name, "comhe")]["ops"] * 3 < by[(name, "official-style loop")]["ops"]
    for (name, impl), r in by.items():
        goal = bench.GOALS.get((name, "cnn9")) if impl == "comhe" else None
        assert r["goal_ops"] == (goal or "")
        assert r["meets_goal"] == ("" if goal is None else "yes"), (name, impl, r["ops"], goal)
        assert r["all_ops"] >= r["ops"] > 0 and r["cpu_ms"] > 0 and math.isfinite(r["cpu_ms"])


def test_no_repeats_measures_ops_and_no_time():
    model = STACKS["cnn9"]()
    result = bench.measure(bench.loss_of(regularizers.build("mhe", model)), model, 0)
    assert result["ops"] > 0 and math.isnan(result["cpu_ms"])

"""`make bench`'s PointNet step times: the plumbing, at 1/8 width and a few points (the timings themselves are in
BENCHMARKS.md, not asserted)."""
import csv

import torch

from comhe import models, regularizers
from comhe.bench import points


def test_points_bench_rows_and_the_transform_layers(tmp_path):
    out = tmp_path / "points.csv"
    regs = ("none", "hs_mhe", "rp_comhe", "ap_comhe")
    assert points.configurations(["pointnet", "pointnet_tnet"]) == [("pointnet", r, "-") for r in regs] + [
        ("pointnet_tnet", r, "excluded") for r in regs] + [("pointnet_tnet", "rp_comhe", "regularised"),
                                                           ("pointnet_tnet", "rp_comhe", "T-Nets excluded")]
    threads = torch.get_num_threads()
    try:  # one thread: tiny ops on a shared 2-core machine wait for OpenMP workers otherwise
        points.main(["--batch", "4", "--points", "32", "--width", "0.125", "--steps", "1", "--rounds", "1",
                     "--models", "pointnet_tnet", "--regularizers", "rp_comhe", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["regularizer"], r["transforms"]) for r in rows] == [
        ("pointnet_tnet", reg, "excluded") for reg in ("none", "rp_comhe")] + [
        ("pointnet_tnet", "rp_comhe", "regularised"), ("pointnet_tnet", "rp_comhe", "T-Nets excluded")]
    assert all(float(r["step_ms"]) > 0 for r in rows)
    assert [float(r["x_baseline"]) for r in rows if r["regularizer"] == "none"] == [1.0]


def test_pointnet_tnet_rp_comhe_takes_the_chunked_path_on_the_cpu():
    """The benchmark's RP-CoMHE list (table 10: T-Net transforms excluded) is 84M entries: on the CPU the fused energy
    goes Gram by Gram (``comhe/chunked.py``) and the packed list's 0.5 GB of indices are never built."""
    model = models.build("pointnet_tnet", 40)
    plan = regularizers.build("rp_comhe", model, classifier="classifier", exclude=points.TRANSFORMS).pairs
    assert plan.num_entries > 8 * 10 ** 7 and plan.chunked(torch.device("cpu")) and plan.pos is None

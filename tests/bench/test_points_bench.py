"""`make bench`'s PointNet step times: the plumbing, at 1/8 width and a few points (the timings themselves are in
BENCHMARKS.md, not asserted)."""
import csv

import torch

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

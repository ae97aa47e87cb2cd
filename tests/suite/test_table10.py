"""Table 10 (PointNet, PointNet (T), PointNet++ on ModelNet-40): the paper protocol's configs (samples converted to
iterations), the layer options per column, and `make table10 PROFILE=smoke` rendering the table end to end."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from comhe.suite import experiments, runner

REPO = Path(__file__).resolve().parents[2]
TRAIN, TEST = 9840, 2468


def cells(profile="paper"):
    return {(c.row, c.column, c.seed): c.cfg for c in runner.make_plan(["table10"], profile).cells["table10"]}


def test_the_paper_protocol_in_iterations():
    plan = cells()
    assert len(plan) == 5 * 3 * 3
    pn, pnt, pn2 = (plan[("RP-CoMHE", col, 0)] for col in ("PN", "PN (T)", "PN++"))
    for cfg, batch, epochs in ((pn, 32, 250), (pnt, 32, 250), (pn2, 16, 251)):
        assert cfg["batch_size"] == batch
        assert cfg["iterations"] == epochs * (TRAIN // batch)                 # epochs of full batches
        assert cfg["lr_decay_every"] * batch == 200_000                       # the official DECAY_STEP in samples
        assert cfg["eval_every"] == TRAIN // batch                            # once an epoch
        assert (cfg["optimizer"], cfg["lr"], cfg["lr_decay"], cfg["lr_min"]) == ("adam", 0.001, 0.7, 1e-5)
        assert (cfg["lr_schedule"], cfg["bn_schedule"], cfg["weight_decay"]) == ("staircase", "staircase", 0.0)
        assert (cfg["loss"], cfg["label_smoothing"], cfg["dataset"]) == ("cross_entropy", 0.0, "modelnet40")
    assert (pn["model"], pnt["model"], pn2["model"]) == ("pointnet", "pointnet_tnet", "pointnet2_ssg")
    assert pn["data"] == {} and pn2["data"] == {"augmentation": "pointnet2"}   # 1,024 points, pointnet: defaults
    quick = cells("quick")
    assert quick[("MHE", "PN", 0)]["iterations"] * 5 == pn["iterations"]
    assert quick[("MHE", "PN++", 0)]["lr_decay_every"] * 5 == pn2["lr_decay_every"]


def test_layer_options_per_row_and_column():
    plan = cells()
    assert plan[("Original", "PN (T)", 0)]["regularizer"] == "none" and plan[("Original", "PN (T)", 0)]["reg"] == {}
    assert plan[("HS-MHE", "PN", 1)]["reg"] == {"classifier": "classifier"}
    assert plan[("HS-MHE", "PN (T)", 1)]["reg"] == {"classifier": "classifier", "exclude": ["*_transform.transform"]}
    assert all(plan[(row, "PN (T)", 2)]["monitor_exclude"] == ["*_transform.transform"]
               for row in ("Original", "MHE", "AP-CoMHE"))                   # every row monitors the same layers
    assert plan[("AP-CoMHE", "PN++", 0)]["reg"] == {"classifier": "classifier", "proj_lr_fixed": True}
    exp = experiments.load("table10")
    assert exp.metric == "final_test_accuracy" and experiments.METRICS[exp.metric].higher_is_better


def test_make_table10_smoke_renders_the_table(tmp_path):
    pytest.importorskip("h5py")
    stamp = subprocess.run("cat requirements/ci.txt pyproject.toml | cksum | cut -d' ' -f1", shell=True, cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    env = {**os.environ, "COMHE_DATA": str(tmp_path / "data")}
    cmd = ["make", "--no-print-directory", "-o", f".venv/.installed-{stamp}", f"PYTHON={sys.executable}",
           f"RESULTS={tmp_path / 'results'}", f"FIGURES={tmp_path / 'figures'}", "table10", "PROFILE=smoke",
           "SEEDS=1"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = pd.read_csv(tmp_path / "results" / "table10.csv")
    assert len(table) == 15 and set(table["status"]) == {"done"}
    assert set(table["dataset"]) == {"synthetic_modelnet40"}
    assert (table["final_test_accuracy"] == 100 - table["final_test_error"]).all()
    md = (tmp_path / "results" / "table10.md").read_text()
    for row in ("Original", "MHE", "HS-MHE", "RP-CoMHE", "AP-CoMHE"):
        assert f"| {row} |" in md
    assert "| Method | PN | PN (T) | PN++ |" in md and "original papers 90.70" in md  # compact: 16 columns
    assert "- PN++, Original: paper 90.07 vs original papers 90.70 (+0.63)" in md
    assert "RP-CoMHE > HS-MHE > MHE > Original" in md and "final test accuracy %" in md
    assert (tmp_path / "figures" / "table10.png").stat().st_size > 0

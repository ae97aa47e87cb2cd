"""Rendering from run records: golden Markdown and LaTeX for a fixture whose records are written by hand (every kind
of cell: numbers, one seed, "—", "N/C", partly diverged, "N/A", blank, reference-only rows, empty paper cells, two
disagreeing references), the tidy CSV, the claims' permutation test, and the figures."""
import math
import os
from pathlib import Path

import pandas as pd
import pytest

from comhe.suite import claims, experiments, figures, report
from comhe.train.records import RunDir

GOLDEN = Path(__file__).resolve().parent / "golden"
FIXTURE = GOLDEN / "fixture.yaml"
# (row, column) -> per seed: a final test error, "diverged", "partial" (config only) or None (never started)
OUTCOMES = {
    ("Baseline", "A"): [30.1, 30.3, 30.5],
    ("Baseline", "B"): ["diverged", "diverged", "diverged"],
    ("MHE", "A"): [28.0, 28.2, 28.4],
    ("MHE", "B"): [27.0, 27.5, "diverged"],
    ("HS-MHE", "B"): [26.0, "partial", None],
    ("RP-CoMHE", "A"): [29.0, 28.0, 27.0],
}


def write_records(runs_root: Path):
    exp = experiments.load(FIXTURE)
    cells = experiments.plan(exp)
    for cell in cells:
        outcome = OUTCOMES[(cell.row, cell.column)][cell.seed]
        if outcome is None:
            continue
        run = RunDir(runs_root / cell.name)
        run.path.mkdir(parents=True)
        run.write_config(cell.cfg)
        run.write_meta({"git_sha": "abc1234", "device": "cpu-test", "torch": "0.0", "host": "fixture"})
        if outcome == "partial":
            continue
        diverged = outcome == "diverged"
        for it in (0, 5, 10):
            if not diverged:
                run.append_metrics({"iteration": it, "test_error": 90.0 - it * (90.0 - outcome) / 10,
                                    "hidden_energy": 5.0 + 0.01 * it + 0.001 * cell.seed})
        run.write_final({"status": "diverged" if diverged else "finished", "iterations": 5 if diverged else 10,
                         "diverged_at": 5 if diverged else None, "final_test_error": None if diverged else outcome,
                         "best_test_error": None if diverged else outcome - 0.5, "best_iteration": 10,
                         "final_hidden_energy": None if diverged else 5.1, "wall_time_s": 1.5,
                         "train_images_per_s": 100.0})
    return exp, cells


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    exp, cells = write_records(root / "runs")
    df = report.collect(exp, cells, root / "runs")
    return exp, cells, df, root


@pytest.mark.parametrize("ext, render", [("md", report.render_md), ("tex", report.render_tex)])
def test_golden_rendering(rendered, ext, render):
    exp, _, df, _ = rendered
    text = render(exp, df)
    golden = GOLDEN / f"fixture.{ext}"
    if os.environ.get("COMHE_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"rendering changed: diff against {golden} (COMHE_UPDATE_GOLDEN=1 rewrites it)"


def test_golden_cells_say_what_they_should(rendered):
    """The golden file itself is checked: a regenerated golden with a wrong cell still fails here."""
    exp, _, df, _ = rendered
    lines = [line for line in report.render_md(exp, df).splitlines() if line.startswith("| ") and "Method" not in line]
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip().strip("|").split("|")] for line in lines)}
    assert rows["Baseline"][1:7] == ["30.30 ± 0.20 (3)", "30.00", "+0.30", "31.00", "-0.70", "N/C (3)"]
    assert rows["Baseline"][7] == "N/C"                                    # the paper's own N/C, no delta
    assert rows["MHE"][6:9] == ["27.25 ± 0.35 (2; 1 N/C)", "", ""]          # empty paper cell, no delta
    assert rows["HS-MHE"][1:3] == ["N/A", "N/A"] and rows["HS-MHE"][6] == "26.00 (1)"
    assert rows["RP-CoMHE"][6] == ""                                       # blank layout cell
    assert rows["Quoted"][1:3] == ["", "5.50"]                             # reference-only row
    assert "- B, Baseline" not in report.render_md(exp, df)
    assert "- A, Baseline: paper 30.00 vs other 31.00 (+1.00)" in report.render_md(exp, df)


def test_missing_runs_render_as_dash(tmp_path):
    exp = experiments.load(FIXTURE)
    cells = experiments.plan(exp)
    df = report.collect(exp, cells, tmp_path / "nothing")
    assert set(df["status"]) == {"todo"}
    md = report.render_md(exp, df)
    assert md.count("| — |") == 6 and "Runs: 18 todo." in md
    assert "**too few runs**: MHE < Baseline on A" in md


def test_csv_one_row_per_run_and_cell(rendered, tmp_path):
    exp, cells, df, _ = rendered
    paths = report.write(exp, df, tmp_path)
    table = pd.read_csv(paths[0])
    assert len(table) == len(cells) == 18          # 6 trained cells x 3 seeds (N/A, blank, quoted: no run)
    for key in ("row", "column", "seed", "status", "final_test_error", "best_test_error", "iterations",
                "wall_time_s", "git_sha", "device", "device_requested", "lr", "milestones", "model", "regularizer",
                "model_options.width"):
        assert key in table.columns, key
    done = table[(table["row"] == "MHE") & (table["column"] == "A")].sort_values("seed")
    assert list(done["final_test_error"]) == [28.0, 28.2, 28.4] and set(done["git_sha"]) == {"abc1234"}
    assert set(done["device"]) == {"cpu-test"} and set(done["device_requested"]) == {"auto"}
    assert table["status"].value_counts().to_dict() == {"done": 12, "diverged": 4, "todo": 1, "partial": 1}


def test_permutation_test_exact_values():
    assert claims.permutation_p([1, 2, 3], [4, 5, 6]) == pytest.approx(1 / 20)
    assert claims.permutation_p([1, 2, 4], [3, 5, 6]) == pytest.approx(2 / 20)
    assert claims.permutation_p([4, 5, 6], [1, 2, 3]) == pytest.approx(1.0)
    assert claims.permutation_p([1, 2, 3, 4], [5, 6, 7, 8]) == pytest.approx(1 / 70)
    assert claims.smallest_p(2, 2) == pytest.approx(1 / 6) and claims.smallest_p(0, 3) == 1.0


def test_claim_verdicts():
    values = {("A", "c"): [1.0, 2.0, 3.0], ("B", "c"): [4.0, 5.0, 6.0], ("C", "c"): [7.0, 8.0]}
    held = claims.check({"text": "A < B", "order": ["A", "B"]}, values, ["c"])
    assert held.verdict == claims.HELD and held.comparisons[0].p == pytest.approx(0.05)
    assert claims.check({"text": "B < A", "order": ["B", "A"]}, values, ["c"]).verdict == claims.NOT_HELD
    few = claims.check({"text": "A < B < C", "order": ["A", "B", "C"]}, values, ["c"])
    assert few.verdict == claims.TOO_FEW and [c.verdict for c in few.comparisons] == [claims.HELD, claims.TOO_FEW]
    mixed = claims.check({"text": "x", "better": ["B", "C"], "than": "A"}, values, ["c"])
    assert mixed.verdict == claims.NOT_HELD                        # a refuted comparison outweighs a too-few one


def test_cell_text_formats():
    st = report.CellStats([24.0, 24.5, 25.0], diverged=0)
    assert report.ours_text(st, 2) == "24.50 ± 0.50 (3)" and math.isclose(st.std, 0.5)
    assert report.ours_text(report.CellStats([], 2), 2) == "N/C (2)"
    assert report.ours_text(report.CellStats([], 0), 2) == "—"
    assert report.ours_text(report.CellStats([5.0], 1), 3) == "5.000 (1; 1 N/C)"
    assert report.tex_escape("24.50 ± 0.20 (3) — Δ 5%") == r"24.50 $\pm$ 0.20 (3) --- $\Delta$ 5\%"


@pytest.mark.parametrize("kind, spec", [("bars", {}), ("dynamics", {"column": "A"}),
                                        ("sweep", {"flat": ["Baseline"]})])
def test_figures_render(rendered, tmp_path, kind, spec):
    exp, cells, df, root = rendered
    if kind == "sweep":
        for x, column in zip((0.1, 1.0), exp.columns):
            column.x = x
    exp.figures = [{"kind": kind, **spec}]
    paths = figures.render(exp, df, cells, root / "runs", tmp_path)
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert all(p.stat().st_size > 5000 for p in paths)


def test_accuracy_claims_test_the_other_direction():
    """For an accuracy (higher is better) "A better than B" holds when A's runs are all above B's, and the same
    numbers read as an error do not hold: the direction is carried into the permutation test."""
    high, low = [82.0, 82.4, 82.2], [81.0, 81.2, 81.1]
    assert claims.compare("A", "B", "Cora", high, low, higher_is_better=True).verdict == claims.HELD
    assert claims.compare("A", "B", "Cora", high, low, higher_is_better=False).verdict == claims.NOT_HELD
    assert claims.compare("A", "B", "Cora", low, high, higher_is_better=False).verdict == claims.HELD
    claim = {"text": "A > B", "better": ["A"], "than": "B"}
    values = {("A", "Cora"): high, ("B", "Cora"): low}
    assert claims.check(claim, values, ["Cora"], {"Cora": True}).verdict == claims.HELD
    assert claims.check(claim, values, ["Cora"]).verdict == claims.NOT_HELD  # default: lower is better


def test_accuracy_is_derived_from_the_error_where_final_json_lacks_it():
    out = report.results({"final_test_error": 12.5, "best_test_error": 10.0})
    assert out["final_test_accuracy"] == 87.5 and out["best_test_accuracy"] == 90.0
    assert report.results({"final_test_accuracy": 81.3, "final_test_error": 18.7})["final_test_accuracy"] == 81.3
    assert report.results({"status": "diverged", "final_test_error": None})["final_test_accuracy"] is None


def test_a_claim_may_not_chain_an_error_and_an_accuracy(tmp_path):
    mixed = FIXTURE.read_text().replace("columns:\n", "columns:\n  - {name: Acc, metric: final_test_accuracy}\n", 1)
    (tmp_path / "mixed.yaml").write_text(mixed)
    exp = experiments.load(tmp_path / "mixed.yaml")
    assert experiments.METRICS[exp.column("Acc").metric].higher_is_better
    bad = tmp_path / "bad.yaml"
    bad.write_text(mixed.replace("claims:\n", "claims:\n  - {text: mixed, cells: [[MHE, Acc], [MHE, A]]}\n", 1))
    with pytest.raises(experiments.ExperimentError, match="disagree on which way is better"):
        experiments.load(bad)

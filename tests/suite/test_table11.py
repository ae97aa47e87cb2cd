"""Table 11 (GCN) and its lambda sweep fig3 through the suite: the paper layout, COLUMNS= (only some columns run,
the others shown as not run with the reason), claims restricted to what ran, lambdas selected on validation (never
test) and checked from the table, the smoke profile end to end, and the Makefile's COLUMNS variable."""
import json
import os
import shlex
import subprocess

import pandas as pd
import pytest

from comhe.suite import cli, experiments, report, runner, selection
from comhe.train.records import RunDir
from run_helpers import REPO


def test_table11_plans_the_tkipf_recipe_on_three_graphs_with_10_seeds():
    plan = runner.make_plan(["table11"])
    cells = plan.cells["table11"]
    assert len(cells) == 4 * 3 * 10 and len(plan.runs) == 120
    assert {c.cfg["dataset"] for c in cells} == {"citeseer", "cora", "pubmed"}
    recipe = {(c.cfg["model"], c.cfg["iterations"], c.cfg["lr"], c.cfg["weight_decay"], c.cfg["early_stopping"],
               c.cfg["loss"], c.cfg["label_smoothing"], tuple(c.cfg["milestones"])) for c in cells}
    assert recipe == {("gcn", 200, 0.01, 5e-4, 10, "cross_entropy", 0.0, ())}
    exp = plan.experiments[0]
    assert exp.metric == "final_test_accuracy" and experiments.METRICS[exp.metric].higher_is_better
    assert exp.references[1].get("GCN", "Cora") == 81.5 and exp.references[0].get("RP-CoMHE", "Citeseer") == 72.1


def test_table11_lambdas_are_on_the_sweep_grid_and_the_sweep_is_named():
    table = experiments.load("table11")
    assert table.selected_by == "fig3"
    sweep = experiments.plan(experiments.load("fig3"))
    for cell in experiments.plan(table):
        if cell.cfg["regularizer"] != "none":
            grid = [c.cfg["reg"] for c in sweep if c.row == cell.row]
            assert cell.cfg["reg"] in grid, (cell.row, cell.cfg["reg"])


def test_columns_run_only_some_and_the_table_says_why_the_others_did_not(tmp_path):
    empty = tmp_path / "data"
    plan = runner.make_plan(["table11"], overrides=[f"data_root={empty}"], columns=["cora"])
    exp, cells = plan.experiments[0], plan.cells["table11"]
    assert {c.column for c in cells} == {"Cora"} and len(cells) == 40
    assert list(exp.not_run) == ["Citeseer", "Pubmed"]
    assert exp.not_run["Citeseer"].startswith("not selected (COLUMNS=cora); data missing: 8 of the 8 ind.citeseer.* "
                                              f"files are not in {empty / 'planetoid'}")
    md = report.render_md(exp, report.collect(exp, cells, tmp_path / "runs"))
    # 16 columns: the compact layout, the references under each cell (report.WIDE_COLUMNS)
    assert md.count("| not run<br>paper ") == 4 * 2
    assert "Not run:\n- Citeseer: not selected (COLUMNS=cora); data missing" in md
    assert "Pubmed (where" not in md                     # the Pubmed-only claim is not checked
    assert "Citeseer: RP-CoMHE" not in md and "Cora: RP-CoMHE" in md
    with pytest.raises(experiments.ExperimentError, match=r"COLUMNS=Texas names none of its columns \(Citeseer, "
                       r"Cora, Pubmed\)"):
        runner.make_plan(["table11"], columns=["Texas"])


def test_missing_graphs_stop_before_training_and_suggest_columns(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COMHE_OFFLINE", "1")
    code = cli.main(["table11", f"data_root={tmp_path / 'data'}", "--results", str(tmp_path / "results"),
                     "--no-figures"])
    err = capsys.readouterr().err
    assert code == 2 and "ind.citeseer.x is missing from" in err and "downloads are off" in err
    assert "run only the columns whose data you have: COLUMNS=<names>" in err
    assert not list((tmp_path / "results" / "runs").glob("*/final.json"))


def test_table11_and_fig3_smoke_end_to_end(tmp_path):
    """COLUMNS=Cora on synthetic graphs: 8 runs, the table (Citeseer and Pubmed not run), then the sweep and its
    figure, and the table's check of its lambdas against the sweep's records."""
    args = ["--profile", "smoke", "--results", str(tmp_path / "results"), "--figures", str(tmp_path / "figures"),
            f"data_root={tmp_path / 'data'}"]
    assert cli.main(["table11", "--columns", "Cora", *args]) == 0
    table = pd.read_csv(tmp_path / "results" / "table11.csv")
    assert len(table) == 8 and set(table["status"]) == {"done"} and set(table["column"]) == {"Cora"}
    assert table["final_test_accuracy"].between(0, 100).all() and table["final_val_accuracy"].notna().all()
    md = (tmp_path / "results" / "table11.md").read_text()
    assert "| not run<br>paper " in md and "- Pubmed: not selected (COLUMNS=Cora)" in md
    assert "- HS-MHE: `fig3` has no finished runs yet (`make fig3` to check)" in md
    assert cli.main(["fig3", *args]) == 0
    assert (tmp_path / "figures" / "fig3.png").stat().st_size > 10000
    assert (tmp_path / "figures" / "fig3-sweep.png").stat().st_size > 10000
    sweep_md = (tmp_path / "results" / "fig3.md").read_text()
    assert "Selected per method on the final validation accuracy %" in sweep_md
    assert cli.main(["table11", "--columns", "Cora", *args]) == 0               # trains nothing, checks the lambdas
    md = (tmp_path / "results" / "table11.md").read_text()
    assert md.count("`fig3` selects λ=") == 3 and "GCN: `fig3`" not in md


def write_sweep_records(runs_root, val, test):
    """fig3's smoke cells with hand-written results: val[row][column] and test[row][column]."""
    sweep = experiments.load("fig3", "smoke")
    cells = experiments.plan(sweep)
    for cell in cells:
        run = RunDir(runs_root / cell.name)
        if run.status() == "done":
            continue
        run.path.mkdir(parents=True)
        run.write_config(cell.cfg)
        run.write_final({"status": "finished", "final_val_accuracy": val[cell.row][cell.column] + cell.seed,
                         "final_test_accuracy": test[cell.row][cell.column] - cell.seed})
    return sweep, cells


def test_the_sweep_selects_on_validation_never_test_and_the_table_checks_it(tmp_path):
    columns = [c.name for c in experiments.load("fig3").columns]
    val = {row: {c: 70.0 for c in columns} for row in ("HS-MHE", "RP-CoMHE", "AP-CoMHE", "GCN")}
    test = {row: {c: 80.0 for c in columns} for row in val}
    val["HS-MHE"]["λ=0.1"] = val["RP-CoMHE"]["λ=0.3"] = val["AP-CoMHE"]["λ=0.1"] = 75.0
    test["HS-MHE"]["λ=1"] = test["RP-CoMHE"]["λ=0.1"] = test["AP-CoMHE"]["λ=0.01"] = 99.0   # must not matter
    val["AP-CoMHE"]["λ=0.003"] = 75.0                          # a tie: the first column listed wins
    sweep, cells = write_sweep_records(tmp_path / "runs", val, test)
    df = report.collect(sweep, cells, tmp_path / "runs")
    choices = selection.choose(sweep, df)
    assert {row: c.column for row, c in choices.items()} == {"HS-MHE": "λ=0.1", "RP-CoMHE": "λ=0.3",
                                                             "AP-CoMHE": "λ=0.003"}
    assert choices["HS-MHE"].mean == 75.5 and choices["HS-MHE"].n == 2 and "GCN" not in choices   # flat row
    assert "- HS-MHE: **λ=0.1** (75.50 ± 0.71, n=2; final test accuracy % 79.50)" in selection.sweep_lines(sweep, df)
    table = experiments.load("table11", "smoke")
    lines = selection.table_lines(table, experiments.plan(table), tmp_path / "runs")
    assert any(line.startswith("- HS-MHE: `fig3` selects λ=0.1") and line.endswith("this table uses it")
               for line in lines)
    assert any(line.startswith("- RP-CoMHE: `fig3` selects λ=0.3") and "**differs**" in line for line in lines)


def test_make_passes_columns_to_the_runner_not_as_a_config_override():
    out = subprocess.run(["make", "-n", "-s", "table11", "COLUMNS=Cora,Pubmed", "VENV=.venv", "STAMP=Makefile"],
                         cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    words = shlex.split(next(line for line in out.splitlines() if "comhe.run table11" in line))
    assert words[words.index("--columns") + 1] == "Cora,Pubmed" and not any(w.startswith("COLUMNS") for w in words)
    terminal = subprocess.run(["make", "-n", "-s", "table11", "VENV=.venv", "STAMP=Makefile"], cwd=REPO,
                              capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "80"}).stdout
    assert "--columns" not in terminal                  # the terminal width in the environment is not a column


def test_node_results_reach_the_tidy_csv(tmp_path):
    exp = experiments.load("table11", "smoke")
    cell = experiments.plan(exp)[0]
    run = RunDir(tmp_path / cell.name)
    run.path.mkdir()
    run.write_config(cell.cfg)
    run.write_final({"status": "finished", "final_test_accuracy": 81.5, "final_val_accuracy": 79.0,
                     "final_val_loss": 0.7, "stopped_early": True, "final_test_error": 18.5})
    row = report.collect(exp, [cell], tmp_path).iloc[0]
    assert (row["final_test_accuracy"], row["final_val_accuracy"], row["stopped_early"]) == (81.5, 79.0, True)
    assert json.loads(run.final_path.read_text())["final_test_error"] == 18.5

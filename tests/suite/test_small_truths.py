"""The suite tells the truth in small things (issue 20, Deliver 3): where smoke writes, the regenerate commands,
DRY=1's cost / GPU / missing-data lines, no empty folders after a failure, a data-root typo, COMHE_DATA as a make
variable, labels a profile changed, and a smoke run that checks the file as the paper run would."""
import io
import os
import subprocess

import pytest

from comhe import run
from comhe.suite import experiments, labels, report, runner, scorecard
from comhe.train.config import ConfigError
from comhe.train.records import RunDir
from run_helpers import REPO


@pytest.fixture()
def offline(tmp_path, monkeypatch):
    """Downloads off and an empty data root: every real dataset is missing."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("COMHE_OFFLINE", "1")
    monkeypatch.setenv("COMHE_DATA", str(root))
    return root


def test_the_footer_command_names_the_columns_and_results_it_ran_with():
    exp = experiments.load("table11", "smoke")
    experiments.restrict(exp, ["cora"])
    exp.results_given = "/tmp/elsewhere"
    # run as printed before, it planned Citeseer and Pubmed too (and tried to download them)
    assert report.command(exp) == "python -m comhe.run table11 --profile smoke --columns Cora --results /tmp/elsewhere"
    assert report.command(exp, target="all").startswith("python -m comhe.run all --profile smoke --columns Cora")


def test_the_scorecard_says_the_command_that_made_it(tmp_path):
    plan = runner.make_plan(["all"], "smoke")
    paths = scorecard.write(plan.experiments, plan.cells, tmp_path / "runs", tmp_path, None)
    text = paths[0].read_text()
    assert "Generated from the run records by `python -m comhe.run all --profile smoke`" in text
    assert "make report" not in text  # it claimed `make report` made it when make smoke did


def test_smoke_writes_beside_the_real_tables_and_says_where(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "table1.md").write_text("the real table")
    assert run.main(["table1", "--profile", "smoke", "--collect-only"]) == 0
    out = capsys.readouterr().out
    assert "profile smoke: tables, runs and figures go to results/smoke/" in out
    assert (tmp_path / "results" / "table1.md").read_text() == "the real table"
    assert (tmp_path / "results" / "smoke" / "table1.md").is_file()
    assert (tmp_path / "results" / "smoke" / "figures" / "table1.png").is_file()
    assert not (tmp_path / "figures").exists()
    footer = (tmp_path / "results" / "smoke" / "table1.md").read_text()
    assert "`python -m comhe.run table1 --profile smoke`" in footer  # which, run again, writes here again


def test_dry_run_gives_missing_data_offline_the_cost_and_whether_a_gpu_is_needed(offline, capsys, tmp_path):
    assert run.main(["table2", "table10", "--dry-run", "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "no data for 21 run(s): cifar-100-python missing" in out and "downloads are off" in out
    assert "modelnet40_ply_hdf5_2048" in out.split("no data for 45 run(s): ")[1]
    assert "cost: 66 minibatch run(s)" in out and "GPU-hours at an ASSUMED 10,000 samples/s (not measured)" in out
    assert "needs a GPU: yes, for 66 of 66 runs" in out
    assert run.main(["table11", "--dry-run", "--columns", "Cora", "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "cost: 40 full-batch graph run(s)" in out and "needs a GPU: no" in out and "no data for 40 run(s)" in out
    assert not (tmp_path / "r").exists()


def test_a_failed_command_leaves_no_empty_results_folders(offline, capsys, tmp_path):
    code = run.main(["table11", "--columns", "Cora", "--results", str(tmp_path / "r" / "deep")])
    err = capsys.readouterr().err
    assert code == 2 and "ind.cora.x is missing" in err
    assert not (tmp_path / "r").exists()


def test_a_data_root_typo_is_an_error_even_when_every_run_is_finished(tmp_path, monkeypatch):
    monkeypatch.delenv("COMHE_DATA", raising=False)
    typo = tmp_path / "planetiod"
    plan = runner.make_plan(["table11"], "smoke", overrides=[f"data_root={typo}"], columns=["Cora"])
    runs_root = tmp_path / "runs"
    for p in plan.runs:  # every run finished: nothing would read the data root
        RunDir(runs_root / p.name).path.mkdir(parents=True)
        RunDir(runs_root / p.name).write_final({"status": "finished", "iterations": 1})
    with pytest.raises(ConfigError, match="data root .*planetiod does not exist \\(from data_root"):
        runner.train(plan, runs_root)
    monkeypatch.setenv("COMHE_DATA", str(typo))
    plan = runner.make_plan(["table11"], "smoke", columns=["Cora"])
    for p in plan.runs:
        RunDir(runs_root / p.name).path.mkdir(parents=True, exist_ok=True)
        RunDir(runs_root / p.name).write_final({"status": "finished", "iterations": 1})
    with pytest.raises(ConfigError, match="planetiod does not exist \\(from \\$COMHE_DATA"):
        runner.train(plan, runs_root)
    listing = io.StringIO()
    runner.dry_run(plan, runs_root, out=listing)
    assert "no data root: data root " in listing.getvalue() and "planetiod does not exist" in listing.getvalue()
    monkeypatch.setenv("COMHE_DATA", str(tmp_path))  # one that exists: the finished runs are simply counted
    assert runner.train(plan, runs_root) == {"skipped": len(plan.runs)}


def test_comhe_data_is_a_make_variable_not_a_config_override(tmp_path):
    base = ["make", "--no-print-directory", "-s", "table11", "STAMP=", "COLUMNS=Cora", f"RESULTS={tmp_path}"]
    dry = subprocess.run([*base, "-n", "COMHE_DATA=/x", "COMHE_OFFLINE=1"], cwd=REPO, capture_output=True, text=True)
    assert dry.returncode == 0 and "COMHE_DATA" not in dry.stdout and "COMHE_OFFLINE" not in dry.stdout
    shown = subprocess.run([*base, "COMHE_DATA=/x/y", "PYTHON=printenv COMHE_DATA; true"], cwd=REPO,
                           capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                 if k != "COMHE_DATA"})
    assert shown.stdout.strip() == "/x/y", shown.stderr  # the runs see it as their environment


def test_a_profile_that_changes_what_a_label_names_gets_a_note():
    notes = labels.notes(experiments.load("table8", "smoke"))
    assert "Profile smoke: column 64/128/256 ran with model_options.width=1 (the paper's 4), not the setting its " \
           "label names." in notes
    assert not any("16/32/64" in n for n in notes)          # width 1 is the paper's t = 1: nothing to say
    assert labels.notes(experiments.load("table8", "paper")) == []
    assert labels.notes(experiments.load("table11", "smoke")) == []   # synthetic data: the profile's premise
    plan = runner.make_plan(["table8"], "smoke")
    exp = plan.experiments[0]
    md = report.render_md(exp, report.collect(exp, plan.cells["table8"], "/nonexistent"))
    assert "column 128/256/512 ran with model_options.width=2 (the paper's 8)" in md


def test_smoke_checks_the_file_as_the_paper_profile_would(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nbase: {dataset: synthetic, model: cnn6, iterations: 10, lr: fast}\n"
                    "rows: [{name: A, config: {regularizer: none}}]\ncolumns: [{name: C}]\n"
                    "profiles:\n  smoke: {seeds: 1, config: {lr: 0.1}}\n")
    assert run.main([str(path), "--profile", "smoke", "--dry-run"]) == 2  # smoke's lr hid the paper's mistake
    err = capsys.readouterr().err
    assert "mine.yaml, row A, column C: lr must be float, got 'fast' (under the paper profile" in err
    path.write_text(path.read_text().replace("profiles:\n", "seeds: three\nprofiles:\n").replace("lr: fast", "lr: 1"))
    assert run.main([str(path), "--profile", "smoke", "--dry-run"]) == 2
    assert "seeds must be a count" in capsys.readouterr().err


def test_jobs_and_nproc_words_get_one_line(capsys):
    assert run.main(["table1", "--jobs", "two"]) == 2
    assert capsys.readouterr().err.strip() == "error: JOBS (--jobs) must be a whole number >= 1, got 'two'"


def test_reference_section_7_documents_every_key_the_checker_accepts():
    from comhe.suite.figures import FIGURES
    section = (REPO / "docs" / "reference.md").read_text().split("## §7.")[1]
    missing = [k for k in sorted(experiments.TOP_KEYS | experiments.PROFILE_KEYS | set(experiments.METRICS)
                                  | set(FIGURES.names()) | set(experiments.PROFILES)) if f"`{k}`" not in section]
    assert missing == []

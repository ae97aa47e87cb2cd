"""The scorecard (issue 14, item 11): every claim of every table and figure with its verdict, n per side, profile
and command, from the run records; written whenever every table and figure is rendered (make report)."""
import pytest

from comhe.suite import claims, experiments, runner, scorecard
from test_report import write_records


@pytest.fixture
def fixture_runs(tmp_path):
    exp, cells = write_records(tmp_path / "runs")
    return exp, cells, tmp_path / "runs"


def test_entries_carry_the_verdicts_n_and_command(fixture_runs):
    exp, cells, runs_root = fixture_runs
    found = scorecard.entries(exp, cells, runs_root)
    assert [e.verdict for e in found] == [claims.HELD, claims.TOO_FEW, claims.NOT_HELD, claims.TOO_FEW]
    assert [e.n_sides for e in found] == ["3 vs 3", "1 vs 2", "3 vs 3", "3 vs 2"]
    assert found[0].p_range == "0.050" and found[1].p_range == ""
    assert found[0].command == "python -m comhe.run tests/suite/golden/fixture.yaml" and found[0].profile == "paper"


def test_a_claim_without_any_run_is_not_run(tmp_path):
    exp = experiments.load("table1", "smoke")
    found = scorecard.entries(exp, experiments.plan(exp), tmp_path / "empty")
    assert {e.verdict for e in found} == {scorecard.NOT_RUN} and len(found) == len(exp.claims)
    assert found[0].command == "python -m comhe.run table1 --profile smoke" and found[0].n_sides == "0 vs 0"


def test_markdown_and_figure(fixture_runs, tmp_path):
    exp, cells, runs_root = fixture_runs
    exp.overrides = ["lr=0.05"]
    paths = scorecard.write([exp], {exp.name: cells}, runs_root, tmp_path / "results", tmp_path / "figures")
    md = (tmp_path / "results" / "SCORECARD.md").read_text()
    assert "4 claims of 1 tables and figures" in md and "**1 held**, **1 not held**, **2 too few runs**, " \
        "**0 not run**" in md
    assert "| ✅ | fixture | MHE < Baseline on A | held | 3 vs 3 | 0.050 | `python -m comhe.run " \
           "tests/suite/golden/fixture.yaml lr=0.05` |" in md
    assert "**Not the paper protocol**: fixture: profile paper, overrides lr=0.05" in md and "Code: abc1234" in md
    assert [p.name for p in paths] == ["SCORECARD.md", "scorecard.png", "scorecard.pdf"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_the_runner_writes_it_when_it_renders_every_experiment(fixture_runs, tmp_path, monkeypatch):
    exp, cells, runs_root = fixture_runs
    plan = runner.Plan([exp], {exp.name: cells}, [], {})
    runner.render(plan, runs_root, tmp_path / "one", None)
    assert not (tmp_path / "one" / "SCORECARD.md").exists()            # one table is not "every claim"
    monkeypatch.setattr(runner, "targets", lambda names: ["fixture"])  # as if the fixture were every experiment
    runner.render(plan, runs_root, tmp_path / "all", None)
    assert "MHE < Baseline on A" in (tmp_path / "all" / "SCORECARD.md").read_text()

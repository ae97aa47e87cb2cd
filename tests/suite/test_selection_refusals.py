"""``selection``: a sweep with no finished runs says so instead of choosing; an experiment that is not a sweep (no
``select:``) is never chosen from, and one no sweep configures (no ``selected_by:``) has no selection to check."""
import pandas as pd
import pytest

from comhe.suite import experiments, selection


def test_a_sweep_without_finished_runs_chooses_nothing_and_says_so():
    sweep = experiments.load("fig3")
    assert selection.choose(sweep, pd.DataFrame()) == {}
    assert selection.sweep_lines(sweep, pd.DataFrame()) == [
        "Selected per method on the final validation accuracy % (best mean over seeds; ties to the first column), "
        "never on test:", "- nothing yet: no finished runs"]


def test_a_table_that_is_not_a_sweep_is_refused(tmp_path):
    table1 = experiments.load("table1")
    with pytest.raises(ValueError) as err:
        selection.choose(table1, pd.DataFrame())
    assert str(err.value) == "table1 has no select: block, so it is not a sweep"
    with pytest.raises(ValueError) as err:
        selection.table_lines(table1, [], tmp_path)
    assert str(err.value) == "table1 has no selected_by: no sweep chooses its settings"

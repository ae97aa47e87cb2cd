"""Settings chosen on a validation metric, never on test: a sweep experiment (``select: {metric: ...}``) picks, per
row, the column with the best mean over seeds; a table that takes its settings from it (``selected_by: <sweep>``)
is checked against that choice whenever it is rendered.

    choices = choose(sweep_exp, sweep_df)           # row -> Choice (the column, its mean ± std, n)
    lines = sweep_lines(sweep_exp, sweep_df)        # under the sweep's own table
    lines = table_lines(table_exp, cells, runs_root)  # under the table: does it use the sweep's choice?

Ties go to the column listed first (the sweeps list their weights from small to large: the weaker setting wins).
A row whose every column is the same run (the baseline of a sweep, drawn flat) chooses nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pandas as pd

from .experiments import METRICS, CellRun, Experiment


@dataclass
class Choice:
    row: str
    column: str
    mean: float
    std: float
    n: int
    test_mean: Optional[float] = None    # the same runs' column metric (test), shown, never used to choose


def _select(exp: Experiment) -> Dict[str, Any]:
    """The sweep's ``select:`` block; only sweeps (experiments with one) are chosen from."""
    if exp.select is None:
        raise ValueError(f"{exp.name} has no select: block, so it is not a sweep")
    return exp.select


def _stats(values: pd.Series):
    values = values.dropna().astype(float)
    n = len(values)
    return (values.mean() if n else math.nan), (values.std() if n > 1 else math.nan), n


def choose(exp: Experiment, df: pd.DataFrame) -> Dict[str, Choice]:
    """Per trained row (not flat), the column whose finished runs have the best mean of ``exp.select["metric"]``."""
    metric = _select(exp)["metric"]
    sign = 1.0 if METRICS[metric].higher_is_better else -1.0
    done = df[df["status"] == "done"] if len(df) else df
    out: Dict[str, Choice] = {}
    for row in exp.rows:
        mine = done[done["row"] == row.name] if len(done) else done
        if not len(mine) or mine["run"].nunique() == mine["seed"].nunique():  # nothing, or one run per seed: flat
            continue
        best = None
        for column in exp.columns:
            cell = mine[mine["column"] == column.name]
            mean, std, n = _stats(cell[metric])
            if n and (best is None or sign * mean > sign * best.mean):
                test = _stats(cell[column.metric])[:2] if column.metric in cell else (None, None)
                best = Choice(row.name, column.name, mean, std, n, test[0])
        if best is not None:
            out[row.name] = best
    return out


def sweep_lines(exp: Experiment, df: pd.DataFrame) -> List[str]:
    metric = _select(exp)["metric"]
    label = METRICS[metric].label
    choices = choose(exp, df)
    head = f"Selected per method on the {label} (best mean over seeds; ties to the first column), never on test:"
    if not choices:
        return [head, "- nothing yet: no finished runs"]
    digits = METRICS[metric].digits
    lines = [head]
    for c in choices.values():
        test = f"; {METRICS[exp.column(c.column).metric].label} {c.test_mean:.{digits}f}" if c.test_mean is not None \
            else ""
        lines.append(f"- {c.row}: **{c.column}** ({c.mean:.{digits}f} ± {c.std:.{digits}f}, n={c.n}{test})")
    return lines


def table_lines(exp: Experiment, cells: Sequence[CellRun], runs_root: Path) -> List[str]:
    """Whether each row of ``exp`` uses the settings its sweep (``exp.selected_by``) selects from its run records."""
    from . import experiments, report
    if exp.selected_by is None:
        raise ValueError(f"{exp.name} has no selected_by: no sweep chooses its settings")
    sweep = experiments.load(exp.selected_by, exp.profile)
    sweep_cells = experiments.plan(sweep)
    choices = choose(sweep, report.collect(sweep, sweep_cells, runs_root))
    head = (f"Settings of the regularised rows: chosen by `{sweep.name}` ({sweep.title}) on the "
            f"{METRICS[_select(sweep)['metric']].label}, never on test:")
    lines = [head]
    for row in exp.rows:
        mine = [c for c in cells if c.row == row.name]
        swept = {c.name for c in sweep_cells if c.row == row.name}
        if not mine or len(swept) <= len(sweep.seeds):  # not in the sweep, or its flat row (one run per seed)
            continue
        choice = choices.get(row.name)
        if choice is None:
            lines.append(f"- {row.name}: `{sweep.name}` has no finished runs yet (`make {sweep.name}` to check)")
            continue
        chosen = next(c.cfg["reg"] for c in sweep_cells if c.row == row.name and c.column == choice.column)
        used = {repr(c.cfg["reg"]) for c in mine}
        verdict = "uses it" if used == {repr(chosen)} else f"**differs**: this table has reg {', '.join(sorted(used))}"
        lines.append(f"- {row.name}: `{sweep.name}` selects {choice.column} (reg {chosen}; mean "
                     f"{choice.mean:.2f}, n={choice.n}); this table {verdict}")
    return lines

"""What a table says beyond its cells: the claims sentence fits the seed count, wide tables get a layout that fits,
runs still training can be shown (marked, never tested), and the figures are readable (issue 14, items 4 and 9)."""
import itertools

import matplotlib.pyplot as plt
import pytest

from comhe.suite import claims, experiments, figures, report
from comhe.train.records import RunDir
from test_report import FIXTURE, write_records


@pytest.mark.parametrize("seeds, needle", [
    (1, "1 seed a side cannot be tested, so every claim is \"too few runs\""),
    (2, "with 2 seeds a side the smallest reachable p is 1/6 > 0.05, so every claim is \"too few runs\""),
    (3, "with 3 seeds a side, \"held\" needs every run of A to beat every run of B (p = 1/20)."),
    (5, "with 5 seeds a side the smallest reachable p is 1/252."),
])
def test_the_claims_sentence_fits_the_seed_count(seeds, needle):
    text = claims.test_sentence(seeds)
    assert needle in text and text.count("(") == text.count(")") <= 1       # no doubled parenthesis
    if seeds < 3:
        assert "every run of A" not in text


def test_a_two_seed_table_does_not_print_the_three_seed_sentence(tmp_path):
    exp = experiments.load(FIXTURE, seeds=2)
    md = report.render_md(exp, report.collect(exp, experiments.plan(exp), tmp_path))
    line = next(x for x in md.splitlines() if x.startswith("Claims of the paper"))
    assert "2 seeds a side" in line and "3 seeds a side, " not in line and "((" not in line and "))" not in line


def _empty_stats(exp):
    return {(r.name, c.name): report.CellStats([], 0) for r in exp.rows for c in exp.columns}


def test_a_wide_table_gets_one_markdown_column_per_paper_column(tmp_path):
    exp = experiments.load("table8")
    groups, _ = report.layout(exp, _empty_stats(exp))
    assert 1 + sum(len(s) for _, s in groups) == 16 > report.WIDE_COLUMNS         # the full layout
    md = report.render_md(exp, report.collect(exp, [], tmp_path))
    header = next(x for x in md.splitlines() if x.startswith("| Method"))
    assert header == "| Method | 16/32/64 | 32/64/128 | 64/128/256 | 128/256/512 | 256/512/1024 |"
    baseline = next(x for x in md.splitlines() if x.startswith("| Baseline"))
    assert baseline.split(" | ")[1] == "—<br>paper 47.72"                             # no run yet: no delta
    assert "below it the reference value" in md
    narrow = experiments.load("table1")
    assert "| Method | CNN-6: ours | paper | Δ |" in report.render_md(narrow, report.collect(narrow, [], tmp_path))


def test_compact_cells_carry_the_delta():
    head, rows = report.compact([("A", ["ours", "paper", "Δ", "other", "Δ"])],
                                [["MHE", "28.20 ± 0.20 (3)", "28.00", "+0.20", "", ""]])
    assert head == ["Method", "A"] and rows == [["MHE", "28.20 ± 0.20 (3)<br>paper 28.00 (Δ +0.20)"]]


@pytest.fixture
def with_a_running_run(tmp_path):
    """The fixture's records, plus a partial RP-CoMHE run on A (seed 1 made partial) with two evaluations."""
    exp, cells = write_records(tmp_path / "runs")
    cell = next(c for c in cells if c.row == "HS-MHE" and c.column == "B" and c.seed == 1)   # "partial" already
    run = RunDir(tmp_path / "runs" / cell.name)
    for it, err in ((0, 90.0), (5, 40.0), (10, 24.0)):
        run.append_metrics({"iteration": it, "test_error": err, "hidden_energy": 5.0})
    return exp, cells, tmp_path / "runs", cell


def test_running_runs_are_shown_marked_and_never_tested(with_a_running_run):
    exp, cells, runs_root, cell = with_a_running_run
    final_only = report.render_md(exp, report.collect(exp, cells, runs_root))
    df = report.collect(exp, cells, runs_root, running=True)
    md = report.render_md(exp, df)
    hs = next(x for x in md.splitlines() if x.startswith("| HS-MHE"))
    assert "25.00 ± 1.41 (1 + 1 running)" in hs                  # mean of 26.0 (finished) and 24.0 (latest)
    assert "| 26.50 | -0.50 |" in hs                               # delta over the finished run only
    assert f"{cell.name} at iteration 10 of 10" in md and "not results" in md
    claims_part = lambda text: text.split("Claims of the paper")[1].split("Notes:")[0]  # noqa: E731
    assert claims_part(md) == claims_part(final_only)             # the claims ignore the running run
    tex = report.render_tex(exp, df)
    assert "(1 + 1 running)" in tex and "+ k running: runs still training" in tex
    assert "running" not in final_only.split("References:")[0]
    fig = plt.figure()
    figures.stamp(fig, exp, df)
    assert "includes 1 run(s) still training" in fig.texts[0].get_text()
    plt.close(fig)


def test_every_experiment_gives_its_methods_distinct_colours():
    """Baseline vs Orthogonal and MHE(H) vs HS-MHE(H) were near-identical; now every pair a figure shows differs."""
    for name in experiments.names():
        exp = experiments.load(name)
        rows = [r.name for r in exp.rows if r.config is not None]
        colours = [figures.colour(r, j) for j, r in enumerate(rows)]
        for (a, ca), (b, cb) in itertools.combinations(zip(rows, colours), 2):
            distance = sum((x - y) ** 2 for x, y in zip(ca, cb)) ** 0.5
            assert distance > 0.25, (name, a, b, distance)


def test_bars_have_an_x_label_legend_with_n_and_labels_that_do_not_overlap(tmp_path, monkeypatch):
    exp, cells = write_records(tmp_path / "runs")
    df = report.collect(exp, cells, tmp_path / "runs")
    exp.columns[1].metric = "final_hidden_energy"                 # two panels, as the demo's bar chart
    kept = []

    def keep(fig, out, *args, **kwargs):
        kept.append(fig)
        return []
    monkeypatch.setattr(figures, "_save", keep)
    figures.bars(exp, df, cells, tmp_path / "runs", tmp_path / "x")
    fig = kept[0]
    fig.canvas.draw()
    left, right = fig.axes[0], fig.axes[1]
    assert left.get_xlabel() == "Fixture table" and right.get_xlabel()
    renderer = fig.canvas.get_renderer()
    label = right.yaxis.label.get_window_extent(renderer)
    assert label.x0 > left.get_window_extent(renderer).x1          # the right panel's y label clears the left one
    labels = right.get_legend().get_texts()
    assert any(t.get_text() == "MHE (n=2/3)" for t in labels) and "± std" in right.get_legend().get_title().get_text()
    plt.close(fig)


def test_dynamics_and_sweep_legends_give_n_and_say_std(tmp_path, monkeypatch):
    exp, cells = write_records(tmp_path / "runs")
    df = report.collect(exp, cells, tmp_path / "runs")
    kept = []
    monkeypatch.setattr(figures, "_save", lambda fig, out, *a, **k: kept.append(fig) or [])
    figures.dynamics(exp, df, cells, tmp_path / "runs", tmp_path / "d", column="A")
    for x, column in zip((0.1, 1.0), exp.columns):
        column.x = x
    figures.sweep(exp, df, cells, tmp_path / "runs", tmp_path / "s", flat=["Baseline"])
    for fig in kept:
        legend = next(ax.get_legend() for ax in fig.axes if ax.get_legend())
        assert "± std" in legend.get_title().get_text()
        assert all("(n=" in t.get_text() for t in legend.get_texts() if "read-off" not in t.get_text())
        plt.close(fig)

"""Figures from the run records, one style for all: ``figures/<experiment>.{png,pdf}``.

An experiment lists its figures (``figures: [{kind: ...}]``; a table gets ``bars`` by default). Kinds, a registry:

* ``bars``     every cell of a table: our mean ± std over seeds per method (dodged points with error bars), the
               reference value as a hollow black marker (a second source as a cross). Points, not bars: the
               differences are 1-2 % of error. The x axis is the table's columns (``xlabel``, default: the part of
               the title that names them).
* ``dynamics`` the CoMHE training-dynamics figure: per method, the mean over seeds of the hidden-layer energy
               (``hidden_energy``) and the test error against the iteration, with a ±std band; reference end values
               (docs/reference.md §4 read-offs) as hollow markers at our last iteration.
* ``sweep``    the MHE hyperparameter figure: error against the columns' ``x`` (lambda, log axis), ±std bands,
               ``flat`` rows (the baseline) as a horizontal line, the paper's read-offs as hollow markers.
* ``selection`` a sweep that chooses a setting (``select:``): one panel per metric (validation, test) against
               ``x``, ±std bands over seeds, ``flat`` rows as lines, and each row's choice (best mean of the
               ``select`` metric) starred in every panel.

Every figure carries a footer (``stamp``): the profile, the seeds, the commit(s) of the runs, the protocol
overrides (``lr=0.05``: "not the paper protocol") and the command that regenerates it. Bands and error bars are
± one sample std over the finished seeds; the legend gives n.
"""
from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .experiments import METRICS, CellRun, Experiment  # noqa: E402
from ..train.records import RunDir, atomic_write  # noqa: E402
from ..registry import Registry  # noqa: E402
from .report import _num, running_rows, shas  # noqa: E402

FIGURES = Registry("figure kind")
# One colour per method everywhere: the baseline near-black, MHE blue, HS-MHE green, RP-CoMHE vermillion, AP-CoMHE
# purple, the orthogonality baselines brown / pink / yellow. Methods that share a colour never appear in the same
# experiment (tests/suite/test_report_views.py checks every shipped one).
_CB = sns.color_palette("colorblind", 10)
METHOD_COLOURS = {"Baseline": (0.15, 0.15, 0.15), "Original": (0.15, 0.15, 0.15), "GCN baseline": (0.15, 0.15, 0.15),
                  "GCN": (0.15, 0.15, 0.15),
                  "Orthogonal": _CB[5], "Orthonormal": _CB[6], "SRIP": _CB[8],
                  "MHE": _CB[0], "HS-MHE": _CB[2], "A-MHE": _CB[9], "HS-A-MHE": _CB[8],
                  "RP-CoMHE": _CB[3], "AP-CoMHE": _CB[4], "Adv-CoMHE": _CB[8], "G-CoMHE": _CB[9],
                  "MHE(O)": _CB[4], "MHE(H)": _CB[0], "HS-MHE(H)": _CB[2]}
# Other names (k=10, C=5, ...) by position, from a palette whose neighbours are far apart.
_OTHERS = [_CB[i] for i in (0, 3, 2, 4, 8, 5, 9, 6, 1, 7)]
LABELS = {"hidden_energy": "hyperspherical energy (hidden layers)", "test_error": "testing error (%)"}


def axis_label(metric: str, width: int = 0) -> str:
    """The metric's label and which way is better, for the value axis (wrapped at ``width`` characters)."""
    text = f"{METRICS[metric].label} ({'higher' if METRICS[metric].higher_is_better else 'lower'} is better)"
    return "\n".join(textwrap.wrap(text, width)) if width else text


def _shas(df: pd.DataFrame) -> str:
    # shortened, then sorted and deduplicated again: two commits may shorten to the same text
    short = sorted({s[:12] + ("-dirty" if s.endswith("-dirty") else "") for s in shas(df)})
    return ", ".join(short) or "no runs yet"


def stamp(fig, exp: Experiment, df: pd.DataFrame) -> None:
    """The footer every figure carries: profile, seeds, code, overrides and the command that made it."""
    from .report import command
    from .labels import stand_in_data
    protocol = ("overrides " + " ".join(exp.overrides) + ": NOT the paper protocol") if exp.overrides else \
        ("paper protocol" if exp.profile == "paper" else f"profile {exp.profile}: not the paper protocol")
    data = stand_in_data(exp)
    if data:  # said first, in the title's line of sight: these numbers are not the named data set's
        fig.text(0.5, 1.0, data, ha="center", va="bottom", fontsize=8, color="0.2")
    live = len(running_rows(df))
    running = f" · includes {live} run(s) still training, at their latest evaluation" if live else ""
    if df.attrs.get("incomplete"):  # runner.render: training was stopped by a signal
        running += f" · INCOMPLETE: {df.attrs['incomplete']}"
    text = (f"profile {exp.profile} · seeds {','.join(map(str, exp.seeds))} · {protocol} · code {_shas(df)}"
            f"{running}\n{command(exp)}")
    fig.text(0.01, -0.01, text, ha="left", va="top", fontsize=6.5, color="0.3", family="monospace",
             wrap=False)


def colour(name: str, index: int):
    """The method's fixed colour; other names (A-MHE, k=10, ...) take tab10 colours by position."""
    return METHOD_COLOURS.get(name) or _OTHERS[index % len(_OTHERS)]


def _style() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)


def _save(fig, out: Path, exp: Optional[Experiment] = None, df: Optional[pd.DataFrame] = None) -> List[Path]:
    """PNG and PDF, each rendered in memory and written atomically (a concurrent reader never sees half a file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if exp is not None:
        stamp(fig, exp, df if df is not None else pd.DataFrame())
    paths = [out.with_suffix(".png"), out.with_suffix(".pdf")]
    for path, options in zip(paths, ({"dpi": 150}, {})):
        buf = io.BytesIO()
        fig.savefig(buf, format=path.suffix[1:], bbox_inches="tight", **options)
        atomic_write(path, buf.getvalue())
    plt.close(fig)
    return paths


def _trained_rows(exp: Experiment, df: pd.DataFrame) -> List[str]:
    return [r.name for r in exp.rows if r.config is not None]


def _default_xlabel(exp: Experiment) -> str:
    """What the columns are, from the title: "Table 1: plain CNN depth, CIFAR-100" -> "plain CNN depth"."""
    return exp.title.split(":", 1)[-1].split(",")[0].strip()


@FIGURES.register("bars")
def bars(exp: Experiment, df: pd.DataFrame, cells: Sequence[CellRun], runs_root: Path, out: Path,
         xlabel: Optional[str] = None, **spec):
    from .report import cell_stats
    stats = cell_stats(exp, df)
    rows = _trained_rows(exp, df)
    metrics = list(dict.fromkeys(c.metric for c in exp.columns))
    width_in = max(4.5, 1.1 * len(exp.columns) + 2.5 * len(metrics))
    fig, axes = plt.subplots(1, len(metrics), figsize=(width_in, 3.8), squeeze=False, layout="constrained")
    width = 0.8 / max(len(rows), 1)
    for ax, metric in zip(axes[0], metrics):
        columns = [c for c in exp.columns if c.metric == metric]
        for j, row in enumerate(rows):
            xs = [i + (j - (len(rows) - 1) / 2) * width for i in range(len(columns))]
            st = [stats[(row, c.name)] for c in columns]
            ys = [s.mean if s.n else float("nan") for s in st]
            es = [s.std if s.n > 1 else 0.0 for s in st]
            ns = sorted({stats[(row, c.name)].n for c in exp.columns if stats[(row, c.name)].n})  # every panel's
            n = "n=" + "/".join(map(str, ns)) if ns else "no runs"
            ax.errorbar(xs, ys, yerr=es, fmt="o", color=colour(row, j), label=f"{row} ({n})", capsize=2, ms=4)
            for k, ref in enumerate(exp.references[:2]):  # the second source (table 6: the MHE paper) as crosses
                values = [_num(ref.get(row, c.name)) for c in columns]
                style = {"facecolors": "none", "edgecolors": "black"} if k == 0 else {"color": "black"}
                ax.scatter(xs, [float("nan") if v is None else v for v in values], marker="ox"[k], s=30,
                           linewidths=0.8, zorder=3, label=ref.label if j == 0 else None, **style)
        ax.set_xticks(range(len(columns)), [c.name for c in columns])
        ax.set_xlabel(xlabel or _default_xlabel(exp))
        ax.set_ylabel(axis_label(metric, width=34))
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                       title="mean ± std over seeds", title_fontsize=7)
    fig.suptitle(exp.title, fontsize=10)
    return _save(fig, out, exp, df)


def _curves(cells: Sequence[CellRun], runs_root: Path, column: str) -> pd.DataFrame:
    frames = []
    for cell in cells:
        if cell.column != column:
            continue
        run = RunDir(Path(runs_root) / cell.name)
        if run.verify().damaged:  # left out, as in the table (report.checked_status)
            continue
        try:
            rows = run.read_metrics()
            frame = pd.DataFrame(rows)[["iteration", "test_error", "hidden_energy"]].astype(float) if rows else None
        except (OSError, ValueError, KeyError):  # an unfinished run's unreadable metrics: no curve, no traceback
            continue
        if frame is not None:
            frames.append(frame.assign(method=cell.row, seed=cell.seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _band(ax, data: pd.DataFrame, x: str, y: str, label: str, c, **line) -> None:
    """Mean over seeds with a ± one sample std band; the label gives n (the seeds at the last x)."""
    grouped = data.groupby(x)[y]
    mean, std = grouped.mean(), grouped.std().fillna(0.0)
    n = int(grouped.count().iloc[-1]) if len(mean) else 0
    ax.plot(mean.index, mean.values, color=c, label=f"{label} (n={n})", **line)
    ax.fill_between(mean.index, mean - std, mean + std, color=c, alpha=0.2, linewidth=0)


@FIGURES.register("dynamics")
def dynamics(exp: Experiment, df: pd.DataFrame, cells: Sequence[CellRun], runs_root: Path, out: Path,
             column: Optional[str] = None, **spec):
    column = column or exp.columns[0].name
    data = _curves(cells, runs_root, column)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    energy_refs = {c.name: c for c in exp.columns if c.metric == "final_hidden_energy" and exp.references
                   and any(_num(exp.references[0].get(r.name, c.name)) is not None for r in exp.rows)}
    for j, row in enumerate(_trained_rows(exp, df)):
        mine = data[data["method"] == row] if len(data) else data
        if not len(mine):
            continue
        for ax, y in zip(axes, ("hidden_energy", "test_error")):
            _band(ax, mine, "iteration", y, row, colour(row, j))
        for name in energy_refs:
            ref = _num(exp.references[0].get(row, name)) if exp.references else None
            if ref is not None:
                axes[0].scatter([mine["iteration"].max()], [ref], marker="o", facecolors="none",
                                edgecolors=colour(row, j), s=40, zorder=3)
    for ax, y in zip(axes, ("hidden_energy", "test_error")):
        ax.set_xlabel("iteration")
        ax.set_ylabel(LABELS[y])
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=8, frameon=False, title="mean, band ± std over seeds", title_fontsize=7)
    if energy_refs:
        axes[0].set_title("hollow markers: paper end values (read-off)", fontsize=8)
    fig.suptitle(exp.title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out, exp, df)


@FIGURES.register("sweep")
def sweep(exp: Experiment, df: pd.DataFrame, cells: Sequence[CellRun], runs_root: Path, out: Path,
          flat: Sequence[str] = (), xlabel: str = "x", xscale: str = "log", **spec):
    xs = {c.name: c.x for c in exp.columns}
    metric = exp.columns[0].metric
    done = df[df["status"] == "done"].assign(x=lambda d: d["column"].map(xs)) if len(df) else df
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for j, row in enumerate(_trained_rows(exp, df)):
        mine = done[done["row"] == row] if len(done) else done
        c = colour(row, j)
        if row in flat and len(mine):  # the same run in every column: one value, drawn across the axis
            once = mine.drop_duplicates("run")[metric]
            mean, std = once.mean(), once.std()
            ax.axhline(mean, color=c, linestyle="--", label=f"{row} (n={len(once)})")
            if std == std:
                ax.axhspan(mean - std, mean + std, color=c, alpha=0.15, linewidth=0)
        elif len(mine):
            _band(ax, mine.astype({metric: float}), "x", metric, row, c, marker="o", ms=3)
        if exp.references:
            refs = [(xs[col.name], _num(exp.references[0].get(row, col.name))) for col in exp.columns]
            refs = [(x, r) for x, r in refs if r is not None]
            if refs:
                ax.plot(*zip(*refs), linestyle=":", marker="o", mfc="none", color=c, alpha=0.7, lw=0.8)
    ax.plot([], [], linestyle=":", marker="o", mfc="none", color="black", label=f"{exp.references[0].label} "
            "(read-off)" if exp.references else "reference")
    ax.set_xscale(xscale)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(axis_label(metric, width=40))
    ax.legend(fontsize=8, frameon=False, title="mean, band ± std over seeds", title_fontsize=7)
    fig.suptitle(exp.title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out, exp, df)


@FIGURES.register("selection")
def selection_sweep(exp: Experiment, df: pd.DataFrame, cells: Sequence[CellRun], runs_root: Path, out: Path,
                    metrics: Sequence[str] = (), flat: Sequence[str] = (), xlabel: str = "x", xscale: str = "log",
                    **spec):
    from .selection import choose
    select = (exp.select or {}).get("metric")  # without ``select:`` nothing is chosen (no stars)
    metrics = list(metrics) or list(dict.fromkeys(filter(None, [select, exp.columns[0].metric])))
    xs = {c.name: c.x for c in exp.columns}
    done = df[df["status"] == "done"].assign(x=lambda d: d["column"].map(xs)) if len(df) else df
    chosen = choose(exp, df) if len(done) and select else {}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.6), squeeze=False, sharex=True)
    for ax, metric in zip(axes[0], metrics):
        for j, row in enumerate(_trained_rows(exp, df)):
            mine = done[done["row"] == row].dropna(subset=[metric]) if len(done) else done
            c = colour(row, j)
            if not len(mine):
                continue
            if row in flat:  # one run per seed in every column: a line with its band
                one = mine.drop_duplicates("run")[metric].astype(float)
                ax.axhline(one.mean(), color=c, linestyle="--", label=f"{row} (no energy term)")
                if len(one) > 1:
                    ax.axhspan(one.mean() - one.std(), one.mean() + one.std(), color=c, alpha=0.12, linewidth=0)
                continue
            _band(ax, mine.astype({metric: float}), "x", metric, row, c, marker="o", ms=3)
            if row in chosen:
                pick = mine[mine["column"] == chosen[row].column][metric].astype(float)
                ax.scatter([xs[chosen[row].column]], [pick.mean()], marker="*", s=140, color=c, edgecolors="black",
                           linewidths=0.6, zorder=4)
        ax.set_xscale(xscale)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(axis_label(metric, width=40))
    if select:
        axes[0][0].scatter([], [], marker="*", s=100, color="white", edgecolors="black",
                           label=f"chosen: best mean {METRICS[select].label}")
    if axes[0][0].get_legend_handles_labels()[0]:  # no finished run yet: no legend (matplotlib would warn)
        axes[0][0].legend(fontsize=7, frameon=False, title="mean, band ± std over seeds", title_fontsize=7)
    fig.suptitle(exp.title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out, exp, df)


def render(exp: Experiment, df: pd.DataFrame, cells: Sequence[CellRun], runs_root: Path,
           out_dir: Path) -> List[Path]:
    """Every figure the experiment asks for: the first is ``<name>.png/pdf``, the others ``<name>-<kind>``."""
    _style()
    paths: List[Path] = []
    for i, spec in enumerate(exp.figures):
        spec = dict(spec)
        kind = spec.pop("kind")
        stem = exp.name if i == 0 else f"{exp.name}-{kind}"
        paths += FIGURES.get(kind)(exp, df, cells, Path(runs_root), Path(out_dir) / stem, **spec)
    return paths


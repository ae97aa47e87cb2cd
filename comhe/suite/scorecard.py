"""The scorecard: every claim of every table and figure, checked on our runs, on one page.

    make report        # -> results/SCORECARD.md and figures/scorecard.{png,pdf} (also make tables ...)
    make smoke         # -> results/smoke/SCORECARD.md and results/smoke/figures/ (never over the real ones)

One line per claim (``claims:`` of each experiment file): its verdict, n per side, the smallest and largest p of
its comparisons, the profile, the overrides, and the command that made it. Verdicts are ``claims.py``'s
(held / not held / too few runs) plus **not run**: no finished run on either side of any comparison yet. Written
whenever the runner renders every shipped table and figure (``python -m comhe.run all``: ``make report``, ``make
smoke``), from the run records only, like every table.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from . import claims as claims_lib
from .experiments import METRICS, CellRun, Experiment
from ..train.records import atomic_write

NOT_RUN = "not run"
VERDICTS = (claims_lib.HELD, claims_lib.NOT_HELD, claims_lib.TOO_FEW, NOT_RUN)
MARKS = {claims_lib.HELD: "✅", claims_lib.NOT_HELD: "❌", claims_lib.TOO_FEW: "⚠️", NOT_RUN: "⏳"}


@dataclass
class Entry:
    experiment: str
    title: str
    claim: str
    verdict: str
    n_sides: str                # "3 vs 3", or "2-3 vs 3" over the claim's comparisons
    p_range: str                # "0.050", "0.050-0.350", "" when no comparison was tested
    profile: str
    overrides: List[str]
    command: str


def _range(values: Sequence[float], fmt: str) -> str:
    if not values:
        return ""
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}" if lo == hi else f"{lo:{fmt}}-{hi:{fmt}}"


def entries(exp: Experiment, cells: Sequence[CellRun], runs_root: Path) -> List[Entry]:
    """The scorecard lines of one experiment, from its run records."""
    from . import report
    df = report.collect(exp, cells, runs_root)
    stats = report.cell_stats(exp, df)
    results = claims_lib.check_all(exp.claims, report.claim_values(exp, stats), [c.name for c in exp.columns],
                                   {c.name: METRICS[c.metric].higher_is_better for c in exp.columns})
    out = []
    for res in results:
        comps = res.comparisons
        ran = any(c.a or c.b for c in comps)
        verdict = res.verdict if ran else NOT_RUN
        na = _range([len(c.a) for c in comps], "d")
        nb = _range([len(c.b) for c in comps], "d")
        out.append(Entry(exp.name, exp.title, res.text, verdict, f"{na} vs {nb}",
                         _range([c.p for c in comps if c.p is not None], ".3f"), exp.profile, list(exp.overrides),
                         report.command(exp)))
    return out


def collect(experiments: Sequence[Experiment], cells, runs_root: Path) -> List[Entry]:
    """Every claim of ``experiments`` (``cells[name]``: the experiment's planned cells)."""
    return [e for exp in experiments for e in entries(exp, cells[exp.name], runs_root)]


def counts(found: Sequence[Entry]) -> dict:
    return {v: sum(e.verdict == v for e in found) for v in VERDICTS}


def command(experiments: Sequence[Experiment]) -> str:
    """The command that made this scorecard (every table and figure, with the options they were made with)."""
    from .report import command as table_command
    return table_command(experiments[0], target="all") if experiments else "python -m comhe.run all"


def render_md(found: Sequence[Entry], shas: Sequence[str] = (), made_by: str = "python -m comhe.run all") -> str:
    total = counts(found)
    profiles = sorted({e.profile for e in found})
    lines = ["# Scorecard: what of the two papers this suite confirms", "",
             f"{len(found)} claims of {len({e.experiment for e in found})} tables and figures, checked on our runs "
             f"(profile {', '.join(profiles) or 'none'}): " + ", ".join(f"**{total[v]} {v}**" for v in VERDICTS) + ".",
             "", f"Test: {claims_lib.TEST_NAME}. **{NOT_RUN}**: no finished run on either side yet; **too few "
             f"runs**: a side has too few finished runs to reach p <= {claims_lib.ALPHA} (3 seeds a side at least). "
             "n per side: finished runs of the better / the worse method, over the claim's comparisons. A claim "
             "made on a profile other than `paper`, or with overrides, is not the paper's protocol.", ""]
    if any(e.profile != "paper" or e.overrides for e in found):
        lines += ["**Not the paper protocol**: " + "; ".join(sorted({
            f"{e.experiment}: profile {e.profile}" + (f", overrides {' '.join(e.overrides)}" if e.overrides else "")
            for e in found if e.profile != "paper" or e.overrides})), ""]
    lines += ["| | table / figure | claim | verdict | n per side | p | made by |", "|:-:|:--|:--|:--|:-:|:-:|:--|"]
    for e in found:
        lines.append(f"| {MARKS[e.verdict]} | {e.experiment} | {e.claim} | {e.verdict} | {e.n_sides} | "
                     f"{e.p_range} | `{e.command}` |")
    lines += ["", f"Code: {', '.join(shas) or 'n/a'}. Generated from the run records by `{made_by}` (with "
              "`--collect-only` it trains nothing); do not edit. Each table's own page "
              "(`results/<name>.md`) lists the comparisons behind every verdict.", ""]
    return "\n".join(lines)


COLOURS = {claims_lib.HELD: "#2a9d48", claims_lib.NOT_HELD: "#d1495b", claims_lib.TOO_FEW: "#e9a23b",
           NOT_RUN: "#9aa0a6"}


def render_figure(found: Sequence[Entry], out: Path, shas: Sequence[str] = (),
                  made_by: str = "python -m comhe.run all") -> List[Path]:
    """One row per claim, a coloured box by verdict; experiments separated; PNG and PDF (atomic)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    height = max(2.5, 0.26 * len(found) + 1.4)
    fig, ax = plt.subplots(figsize=(9.5, height))
    for i, e in enumerate(found):
        y = len(found) - 1 - i
        ax.barh(y, 1, color=COLOURS[e.verdict], height=0.8)
        ax.text(0.02, y, f"{e.verdict}  ({e.n_sides})", va="center", fontsize=7, color="white")
        ax.text(1.03, y, f"{e.experiment}: {e.claim}"[:110], va="center", fontsize=7)
    ax.set_xlim(0, 4.2)
    ax.set_ylim(-0.6, len(found) - 0.4)
    ax.axis("off")
    total = counts(found)
    profiles = ", ".join(sorted({e.profile for e in found})) or "none"
    ax.set_title(f"Scorecard: {len(found)} claims of the CoMHE / MHE papers on our runs (profile {profiles})",
                 fontsize=9, loc="left")
    ax.legend(handles=[Patch(color=COLOURS[v], label=f"{v} ({total[v]})") for v in VERDICTS], loc="lower center",
              bbox_to_anchor=(0.5, 1.0 + 0.35 / height), ncol=4, fontsize=7, frameon=False)
    code = ", ".join(s[:12] for s in shas) or "n/a"
    fig.text(0.01, 0.002, f"{made_by} from the run records; n per side: finished runs; code {code}", fontsize=6,
             color="0.35")
    from .figures import _save
    return _save(fig, out)  # no experiment: no footer stamp (the line above is the scorecard's own)


def write(experiments: Sequence[Experiment], cells, runs_root: Path, results: Path,
          figures_dir: Optional[Path]) -> List[Path]:
    """``<results>/SCORECARD.md`` and, unless ``figures_dir`` is None, ``<figures>/scorecard.{png,pdf}``."""
    from . import report
    found = collect(experiments, cells, runs_root)
    shas = sorted({str(sha) for exp in experiments for c in cells[exp.name]
                   for sha in [report.record_sha(Path(runs_root) / c.name)] if sha is not None})
    Path(results).mkdir(parents=True, exist_ok=True)
    path = Path(results) / "SCORECARD.md"
    made_by = command(experiments)
    atomic_write(path, render_md(found, shas, made_by))
    paths = [path]
    if figures_dir is not None:
        paths += render_figure(found, Path(figures_dir) / "scorecard", shas, made_by)
    return paths

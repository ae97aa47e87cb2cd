"""Collect run records into tidy tables and render them like the paper: ``results/<name>.{csv,md,tex}``.

Only the run records (``records.RunDir``: config.yaml, final.json, meta.json) are read; the experiment file gives the
layout and the reference numbers. Nothing here is edited by hand: rerun ``python -m comhe.run <name>`` instead.

Cell text: ``ours mean ± std (n) | paper | Δ`` with the sample std (ddof 1) over the finished seeds, n the number
of finished runs, Δ = ours − reference. ``—``: no finished run yet. ``N/C``: every run diverged (the paper's "not
converged"); diverged runs are left out of means and std and counted as ``k N/C``. ``N/A`` and blank cells are the
paper's own (e.g. half-space MHE on the output layer only).

A table wider than ``WIDE_COLUMNS`` Markdown columns (MHE Table 2: 5 widths x ours / paper / Δ) is written with one
Markdown column per paper column, each cell ``ours`` over ``paper value (Δ)``. Overrides that change the protocol
(``lr=0.05``, ``experiments.Experiment.overrides``) are printed in the header of every table.

``running=True`` (``python -m comhe.run table1 --running``, ``make table1 RUNNING=1``) also counts the runs still
training, at their latest evaluation (``metrics.csv``), marked ``+ k running`` in the cell; claims and deltas use
the finished runs only, so nothing provisional is tested or compared with the paper.

Every finished run's records are checked against their seal (``train/seal.py``) before they are read: a damaged or
edited record makes the run ``damaged``, listed under the table with the file and why, and left out of every mean,
std, Δ and claim (``RETRAIN_DAMAGED=1`` retrains it); a record older than seals is counted and flagged unverified.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd
import yaml

from . import claims as claims_lib
from .experiments import EXPERIMENTS_DIR, METRICS, CellRun, Experiment, Reference
from ..train.records import RunDir, atomic_write
from ..train.seal import Verdict

DASH, NOT_CONVERGED, NOT_RUN = "—", "N/C", "not run"
WIDE_COLUMNS = 12   # Markdown columns beyond which a table gets the compact layout (one column per paper column)
DAMAGED_HINT = "`make verify` lists every damaged record; `RETRAIN_DAMAGED=1` retrains these runs"
RESULT_KEYS = ("final_test_error", "best_test_error", "final_test_accuracy", "best_test_accuracy", "best_iteration",
               "final_hidden_energy", "iterations", "diverged_at", "wall_time_s", "train_images_per_s",
               "final_val_accuracy", "final_val_loss", "stopped_early")  # the last three: node runs
META_KEYS = ("git_sha", "device", "torch", "cuda", "host")


def checked_status(run: RunDir) -> Tuple[str, Optional[Dict[str, Any]], Verdict]:
    """``done`` | ``diverged`` | ``damaged`` | ``partial`` | ``todo``, final.json when it is a result, and the seal's
    verdict (``seal.Verdict``): a finished run whose records fail their check is ``damaged``, with no results."""
    verdict = run.verify()
    if verdict.damaged:
        return "damaged", None, verdict
    try:
        final = run.read_final()
    except (OSError, ValueError):  # rewritten since it was checked: damaged too (never a traceback, never a number)
        return "damaged", None, Verdict("damaged", "final.json: changed while it was read")
    if final is not None:
        return ("diverged" if final.get("status") == "diverged" else "done"), final, verdict
    return run.status(), None, verdict


def record_sha(run_dir: Path) -> Optional[Any]:
    """The commit in a run's meta.json (None without one, or when its records are damaged)."""
    run = RunDir(run_dir)
    if not (run.path / "meta.json").exists() or run.verify().damaged:
        return None
    meta = _or_empty(run.read_meta, {})
    return meta.get("git_sha") if isinstance(meta, dict) else None


def _or_empty(read, default):
    """A partial run's record read for display only: what cannot be read is shown as missing."""
    try:
        return read()
    except (OSError, ValueError, RecursionError, yaml.YAMLError):
        return default


def _flatten(cfg: Dict[str, Any]) -> Dict[str, Any]:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        elif isinstance(value, list):
            out[key] = " ".join(map(str, value))
        else:
            out[key] = value
    return out


def collect(exp: Experiment, cells: Sequence[CellRun], runs_root: Path, running: bool = False) -> pd.DataFrame:
    """One row per planned run and cell: where it stands, its results, its environment and every config key.
    ``running``: a partial run gets its latest evaluation's values (``latest_iteration`` and the metrics)."""
    rows = []
    for cell in cells:
        run = RunDir(Path(runs_root) / cell.name)
        status, final, verdict = checked_status(run)
        if running and status == "partial":
            final = latest(run)
        readable = status not in ("todo", "damaged")  # a damaged run's settings are the planned ones
        meta = _or_empty(run.read_meta, {}) if readable else {}
        stored = _or_empty(run.read_config, None) if readable and run.config_path.exists() else None
        cfg = _flatten(stored if isinstance(stored, dict) else cell.cfg)
        cfg["device_requested"] = cfg.pop("device", None)  # "device" is the hardware the run used (meta.json)
        rows.append({"experiment": exp.name, "profile": exp.profile, "row": cell.row, "column": cell.column,
                     "seed": cell.seed, "run": cell.name, "status": status,
                     "record": verdict.state, "record_problem": verdict.problem if verdict.damaged else None,
                     **results(final), **{k: meta.get(k) for k in META_KEYS if isinstance(meta, dict)}, **cfg})
    return pd.DataFrame(rows)


def latest(run: RunDir) -> Optional[Dict[str, Any]]:
    """A partial run's results so far, final.json-like, from its latest evaluation after iteration 0 (None if none):
    ``final_<x>`` is the last row's ``<x>``, ``best_<x>`` the best so far (the lowest, the highest for an accuracy)."""
    rows = [r for r in _or_empty(run.read_metrics, []) if (_float(r.get("iteration")) or 0) > 0]
    if not rows:
        return None
    out: Dict[str, Any] = {"latest_iteration": int(float(rows[-1]["iteration"]))}
    for key in rows[-1]:
        values = [_float(r.get(key)) for r in rows]
        if values[-1] is not None:
            out[f"final_{key}"] = values[-1]
            best = max if METRICS.get(f"best_{key}", METRICS["best_test_error"]).higher_is_better else min
            out[f"best_{key}"] = best(v for v in values if v is not None)
    out["best_iteration"] = None
    return out


def _float(text: Any) -> Optional[float]:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def results(final: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """final.json's result keys; a metric final.json lacks is derived from its complement (accuracy = 100 - error)."""
    final = final or {}
    out = {k: final.get(k) for k in RESULT_KEYS + ("latest_iteration",)}
    for key, metric in METRICS.items():
        if out.get(key) is None and metric.complement and _num(final.get(metric.complement)) is not None:
            out[key] = 100.0 - float(final[metric.complement])
    return out


@dataclass
class CellStats:
    values: List[float]        # the column's metric over the finished runs
    diverged: int
    running: List[float] = field(default_factory=list)   # runs still training, at their latest evaluation

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def shown(self) -> List[float]:
        """What the cell's mean and std are over: the finished runs, and the running ones when they are shown."""
        return self.values + self.running

    @property
    def mean(self) -> float:
        return sum(self.shown) / len(self.shown)

    @property
    def std(self) -> float:
        if len(self.shown) < 2:
            return float("nan")
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.shown) / (len(self.shown) - 1))


def cell_stats(exp: Experiment, df: pd.DataFrame) -> Dict[Tuple[str, str], CellStats]:
    out = {}
    for column in exp.columns:
        part = df[df["column"] == column.name] if len(df) else df
        for row in exp.rows:
            mine = part[part["row"] == row.name] if len(part) else part
            done = mine[mine["status"] == "done"] if len(mine) else mine
            values = [float(v) for v in done[column.metric]] if len(done) else []
            diverged = int((mine["status"] == "diverged").sum()) if len(mine) else 0
            live = running_rows(mine)
            running = [float(v) for v in live[column.metric] if _num(v) is not None and v == v] if len(live) else []
            out[(row.name, column.name)] = CellStats(values, diverged, running)
    return out


def running_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of runs still training shown at their latest evaluation (``running=True``): status ``partial`` with
    a ``latest_iteration``; no rows when ``df`` is empty or was collected without ``running``."""
    if not len(df) or "latest_iteration" not in df:
        return df.iloc[:0]
    return df[(df["status"] == "partial") & df["latest_iteration"].notna()]


def shas(df: pd.DataFrame) -> List[str]:
    """The distinct commits (``git_sha``) of the runs of ``df``, sorted; runs without one are left out."""
    return sorted({str(s) for s in df.get("git_sha", pd.Series(dtype=object)).dropna()}) if len(df) else []


def _num(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def ours_text(stats: CellStats, digits: int, pm: str = "±") -> str:
    nc = f"; {stats.diverged} {NOT_CONVERGED}" if stats.diverged and stats.shown else ""
    live = f" + {len(stats.running)} running" if stats.running else ""
    if not stats.shown:
        return f"{NOT_CONVERGED} ({stats.diverged})" if stats.diverged else DASH
    if len(stats.shown) == 1:
        return f"{stats.mean:.{digits}f} ({stats.n}{live}{nc})"
    return f"{stats.mean:.{digits}f} {pm} {stats.std:.{digits}f} ({stats.n}{live}{nc})"


def ref_text(value: Any, digits: int) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}" if _num(value) is not None else str(value)


def delta_text(stats: CellStats, value: Any, digits: int) -> str:
    """Ours minus the reference, over the finished runs only (a running run is not a result)."""
    ref = _num(value)
    return f"{sum(stats.values) / stats.n - ref:+.{digits}f}" if ref is not None and stats.n else ""


def _refs_for(exp: Experiment, column: str) -> List[Reference]:
    """The first reference always (an empty paper column is information), the others where they have a value."""
    return [r for i, r in enumerate(exp.references)
            if i == 0 or any(r.get(row.name, column) is not None for row in exp.rows)]


def layout(exp: Experiment, stats: Dict[Tuple[str, str], CellStats], pm: str = "±", delta: str = "Δ"):
    """Header groups ``[(column, [sub-headers])]`` and body rows ``[[method, cell, cell, ...]]``."""
    groups = [(c.name, ["ours"] + [x for r in _refs_for(exp, c.name) for x in (r.label, delta)]) for c in exp.columns]
    body = []
    for row in exp.rows:
        line = [row.name]
        for column in exp.columns:
            digits = METRICS[column.metric][1]
            fixed = exp.layout_text(row, column)
            if fixed is None and column.name in exp.not_run:
                fixed = NOT_RUN  # COLUMNS= left it out: the reason is listed under the table
            st = stats[(row.name, column.name)]
            line.append(fixed if fixed is not None else ours_text(st, digits, pm))
            for ref in _refs_for(exp, column.name):
                value = ref.get(row.name, column.name)
                line += [ref_text(value, digits), "" if fixed is not None else delta_text(st, value, digits)]
        body.append(line)
    return groups, body


def discrepancies(exp: Experiment) -> List[str]:
    """Cells where two reference sources print different numbers (e.g. ResNet-18 in the CoMHE vs MHE paper)."""
    out = []
    for i, first in enumerate(exp.references):
        for other in exp.references[i + 1:]:
            for row in exp.rows:
                for column in exp.columns:
                    a, b = _num(first.get(row.name, column.name)), _num(other.get(row.name, column.name))
                    if a is not None and b is not None and abs(a - b) > 1e-9:
                        digits = METRICS[column.metric][1]
                        out.append(f"{column.name}, {row.name}: {first.label} {a:.{digits}f} vs {other.label} "
                                   f"{b:.{digits}f} ({b - a:+.{digits}f})")
    return out


def claim_values(exp: Experiment, stats: Dict[Tuple[str, str], CellStats]) -> Dict[Tuple[str, str], List[float]]:
    return {key: st.values for key, st in stats.items()}


def status_line(df: pd.DataFrame) -> str:
    counts = Counter(df.drop_duplicates("run")["status"]) if len(df) else Counter()
    parts = [f"{counts[s]} {s}" for s in ("done", "diverged", "damaged", "partial", "todo") if counts[s]]
    return ", ".join(parts) or "none planned"


def damaged_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run whose records failed their check (``record_problem``: the file and why)."""
    if not len(df) or "record" not in df:
        return df.iloc[:0]
    return df[df["status"] == "damaged"].drop_duplicates("run")


def record_lines(df: pd.DataFrame) -> List[str]:
    """Under the table: each damaged run with its file and why; how many runs are unverified (older records)."""
    lines = []
    damaged = damaged_rows(df)
    if len(damaged):
        lines += ["", f"Damaged run records, left out of every mean, Δ and claim ({DAMAGED_HINT}):"]
        lines += [f"- `{r['run']}` ({r['row']} / {r['column']}, seed {r['seed']}): {r['record_problem']}"
                  for _, r in damaged.iterrows()]
    unverified = df[df["record"] == "unverified"].drop_duplicates("run") if len(df) and "record" in df else df
    if len(unverified):
        lines += ["", f"Unverified run records: {len(unverified)} run(s) written before records were sealed are "
                  "counted, but an edit to them cannot be detected (`python -m comhe.run verify --seal` seals them "
                  "once you trust them)."]
    return lines


def _digits(exp: Experiment, column: str) -> int:
    return METRICS[exp.column(column).metric if column else exp.metric][1]


def _metric_line(exp: Experiment) -> str:
    metrics = dict.fromkeys(c.metric for c in exp.columns)
    return "; ".join(METRICS[m][0] for m in metrics)


def run_claims(exp: Experiment) -> List[Dict[str, Any]]:
    """The claims restricted to the columns that were run: a claim over not-run columns only is left out."""
    run = [c.name for c in exp.columns if c.name not in exp.not_run]
    out = []
    for claim in exp.claims:
        if claim.get("cells"):
            if all(col in run for _, col in claim["cells"]):
                out.append(claim)
            continue
        kept = [c for c in (claim.get("columns") or run) if c in run]
        if kept:
            out.append({**claim, "columns": kept})
    return out


def command(exp: Experiment, target: Optional[str] = None) -> str:
    """The command that regenerates this table: target, profile, seeds, columns, results folder and protocol
    overrides (``target``: another target with the same options, e.g. ``all`` for the scorecard)."""
    path = Path(exp.path).resolve()
    target = target or (exp.name if path.parent == EXPERIMENTS_DIR else
                        str(path.relative_to(EXPERIMENTS_DIR.parent) if EXPERIMENTS_DIR.parent in path.parents
                            else path))
    parts = ["python -m comhe.run", target] + ([f"--profile {exp.profile}"] if exp.profile != "paper" else [])
    if exp.seeds_given:
        parts.append(f"--seeds {','.join(map(str, exp.seeds))}")
    if exp.columns_given:  # as run: without it the command would plan (and maybe download) every column
        parts.append(f"--columns {','.join(exp.columns_given)}")
    if exp.results_given:
        parts.append(f"--results {exp.results_given}")
    return " ".join(parts + list(exp.overrides))


def protocol_line(exp: Experiment) -> str:
    """The header's warning that some runs are not the paper protocol ('' when every override is the protocol)."""
    if not exp.overrides:
        return ""
    from .labels import stand_in_data
    data = stand_in_data(exp)
    return ("Not the paper protocol: overrides " + ", ".join(exp.overrides) +
            " (on every cell that has the option; the reference numbers were made without them)." +
            (f" Every number here is on the {data[len('data: '):]}." if data else ""))


def compact(groups, body) -> Tuple[List[str], List[List[str]]]:
    """One column per paper column: ``ours<br>label value (Δ d)`` for each reference with a value there."""
    head = ["Method"] + [name for name, _ in groups]
    rows = []
    for line in body:
        out, i = [line[0]], 1
        for _, subs in groups:
            ours, refs = line[i], line[i + 1:i + len(subs)]
            labels = subs[1::2]
            quoted = [f"{label} {value}" + (f" (Δ {delta})" if delta else "")
                      for label, value, delta in zip(labels, refs[0::2], refs[1::2]) if value]
            out.append("<br>".join(filter(None, [ours] + ["; ".join(quoted)])) if ours or quoted else "")
            i += len(subs)
        rows.append(out)
    return head, rows


def render_md(exp: Experiment, df: pd.DataFrame, extra: Sequence[str] = ()) -> str:
    """``extra``: lines placed after the notes (e.g. where a table's settings were selected)."""
    stats = cell_stats(exp, df)
    groups, body = layout(exp, stats)
    head = ["Method"] + [f"{name}: {sub}" if i == 0 else sub for name, subs in groups for i, sub in enumerate(subs)]
    cell = "Cell: ours mean ± std over seeds (n finished runs) | reference | Δ = ours − reference."
    if len(head) > WIDE_COLUMNS:
        head, body = compact(groups, body)
        cell = ("Cell: ours mean ± std over seeds (n finished runs), below it the reference value and Δ = ours − "
                "reference.")
    warning = protocol_line(exp)
    stopped = df.attrs.get("incomplete")  # runner.render: training was stopped by a signal before these runs finished
    lines = [f"# {exp.title}", "", f"Source: {exp.source}", ""] + ([f"**{warning}**", ""] if warning else []) + \
        ([f"**INCOMPLETE: {stopped}**", ""] if stopped else []) + [
             f"Profile `{exp.profile}`, seeds {', '.join(map(str, exp.seeds))}; metric: {_metric_line(exp)}. "
             f"{cell} "
             f"{DASH}: not run yet; {NOT_CONVERGED}: diverged (not converged), left out of the mean.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join([":--"] + ["--:"] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    if any(st.running for st in stats.values()):
        lines += ["", "Cells with \"+ k running\" also count runs still training, at their latest evaluation "
                  f"({running_line(df)}); these are not results: Δ and the claims use the finished runs only."]
    lines += record_lines(df)
    lines += ["", "References:"] + ([f"- {r.label}: {r.source}" for r in exp.references] or ["- none"])
    if exp.not_run:
        lines += ["", "Not run:"] + [f"- {name}: {why}" for name, why in exp.not_run.items()]
    found = discrepancies(exp)
    if found:
        lines += ["", "Reference discrepancies (shown, not resolved):"] + [f"- {d}" for d in found]
    results = claims_lib.check_all(run_claims(exp), claim_values(exp, stats),
                                   [c.name for c in exp.columns if c.name not in exp.not_run],
                                   {c.name: METRICS[c.metric].higher_is_better for c in exp.columns})
    lines += ["", f"Claims of the paper, checked across seeds: {claims_lib.test_sentence(len(exp.seeds))}"]
    if not results:
        lines.append("- none: the paper's numbers for this layout were not recovered (docs/reference.md §3), so no "
                     "claim is checked")
    for res in results:
        lines.append(f"- **{res.verdict}**: {res.text}")
        lines += [f"  - {c.verdict}: {c.describe(_digits(exp, c.column))}" for c in res.comparisons]
    if exp.notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in exp.notes]
    if extra:
        lines += [""] + list(extra)
    devices = sorted({str(s) for s in df.get("device", pd.Series(dtype=object)).dropna()}) if len(df) else []
    lines += ["", f"Runs: {status_line(df)}. Code: {', '.join(shas(df)) or 'n/a'}. "
              f"Devices: {', '.join(devices) or 'n/a'}.",
              f"Generated from the run records by `{command(exp)}`; do not edit.", ""]
    return "\n".join(lines)


def running_line(df: pd.DataFrame) -> str:
    """``name at 1500 / 75000`` for each run shown at its latest evaluation."""
    live = running_rows(df)
    if not len(live):
        return ""
    live = live.drop_duplicates("run")
    return ", ".join(f"{r['run']} at iteration {int(r['latest_iteration'])} of {int(r['iterations'])}"
                     for _, r in live.iterrows())


def tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("—", "---"), ("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("−", "-")):
        text = text.replace(a, b)
    return text


def render_tex(exp: Experiment, df: pd.DataFrame) -> str:
    stats = cell_stats(exp, df)
    groups, body = layout(exp, stats)
    widths = [len(subs) for _, subs in groups]
    spec = "l" + "".join(" " + "r" * w for w in widths)
    top, rules, start = ["Method"], [], 2
    for (name, _subs), w in zip(groups, widths):
        top.append(rf"\multicolumn{{{w}}}{{c}}{{{tex_escape(name)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + w - 1}}}")
        start += w
    sub = [""] + [tex_escape(s) for _, subs in groups for s in subs]
    lines = [f"% {exp.title}: generated from the run records by `{command(exp)}`; do not edit.",
             f"% Profile {exp.profile}, seeds {', '.join(map(str, exp.seeds))}; runs: {status_line(df)}.",
             rf"\begin{{tabular}}{{{spec}}}"]
    if df.attrs.get("incomplete"):  # runner.render: training was stopped by a signal
        lines.insert(2, f"% INCOMPLETE: {df.attrs['incomplete']}")
    if exp.overrides or exp.profile != "paper":  # in the printed table, not only in a comment
        note = protocol_line(exp) or "Not the paper protocol."
        lines.insert(2, f"% {note}")
        lines.append(rf"\multicolumn{{{len(sub)}}}{{l}}{{\footnotesize Profile {tex_escape(exp.profile)}. "
                     rf"{tex_escape(note)}}} \\")
    running = any(st.running for st in stats.values())
    lines += [r"\toprule", " & ".join(top) + r" \\", " ".join(rules), " & ".join(sub) + r" \\", r"\midrule"]
    lines += [" & ".join(tex_escape(cell) for cell in line) + r" \\" for line in body]
    lines += [r"\bottomrule"]
    damaged = damaged_rows(df)
    if len(damaged):  # named in the .md; here the count, so that the printed table does not hide it
        lines.append(rf"\multicolumn{{{len(sub)}}}{{l}}{{\footnotesize {len(damaged)} run(s) left out: damaged run "
                     r"records (listed in the .md).} \\")
    if running:
        lines.append(rf"\multicolumn{{{len(sub)}}}{{l}}{{\footnotesize + k running: runs still training, at their "
                     r"latest evaluation; not results.} \\")
    lines += [r"\end{tabular}", ""]
    return "\n".join(lines)


def write(exp: Experiment, df: pd.DataFrame, out_dir: Path, extra: Sequence[str] = ()) -> List[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{exp.name}.{ext}" for ext in ("csv", "md", "tex")]
    # Atomic (temporary file + rename): two invocations rendering at once, or a reader, never see half a table.
    atomic_write(paths[0], df.to_csv(index=False))
    atomic_write(paths[1], render_md(exp, df, extra))
    atomic_write(paths[2], render_tex(exp, df))
    return paths

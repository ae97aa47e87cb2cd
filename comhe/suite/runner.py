"""Plan -> train -> collect -> render, for one or more experiments (the CLI: ``suite/cli.py``, ``python -m comhe.run``).

Planning resolves every cell of every requested experiment to a validated config; its run directory is
``<runs root>/<dataset-model-regulariser>-s<seed>-<hash of the config>`` (``records.run_name``), so identical configs
in different tables share one directory and are trained once, and a changed config never reuses an old result.

Training goes through ``launchers.execute_one(cfg, run_dir)`` (or torchrun), one call per run, through one of
``launchers.LAUNCHERS`` (local workers, torchrun, SLURM via submitit): it skips a finished run, resumes a partial
one (``engine.train`` resumes from the newest checkpoint) and holds the run directory's lock while it trains.

Concurrent invocations on the same results (two ``make table1``, a laptop and a SLURM array on one filesystem):
a run another process is training comes back ``locked``; once its own runs are done the runner waits for those
locks, polling, and then counts the run ``elsewhere`` if the other process finished it, or trains (resumes) it if
that process stopped without finishing. So every invocation ends with every run done (or failed) and renders the
same complete table, and no run is trained twice (``engine.train`` re-checks final.json under the lock).

A finished run whose records fail their seal (``train/seal.py``) is ``damaged``: not retrained and not counted as a
result, but named when the tables are written; ``retrain_damaged`` (``RETRAIN_DAMAGED=1``) first moves its folder
to ``<runs root>/.damaged/<run>.<UTC time>`` (kept for inspection, never read again) and trains the run afresh.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from . import experiments as experiments_lib
from . import labels
from . import progress as progress_lib
from .experiments import CellRun, Experiment
from .launchers import LAUNCHERS, _execute_guarded, execute_one, locked_by_other  # noqa: F401 - re-exported
from ..train.interrupt import STOP
from ..train.io_errors import DiskFailure
from ..train.records import RunDir, RunLocked
from ..train.seal import Verdict

WAIT_POLL_S = 2.0  # seconds between looks at runs another process is training


@dataclass
class Planned:
    """One run directory and every table cell it fills."""
    name: str
    cfg: Dict[str, Any]
    cells: List[CellRun] = field(default_factory=list)


@dataclass
class Plan:
    experiments: List[Experiment]
    cells: Dict[str, List[CellRun]]           # experiment name -> its cells
    runs: List[Planned]                       # unique run directories, in first-use order
    keep_weights: Dict[str, bool]             # run name -> keep its final weights (smoke drops them)


def targets(names: Sequence[str]) -> List[str]:
    """``all`` = every table and figure (not the demo); ``tables``, ``figures``; else names or YAML paths."""
    groups = {"all": [n for n in experiments_lib.names() if n != "demo"],
              "tables": [n for n in experiments_lib.names() if n.startswith("table")],
              "figures": [n for n in experiments_lib.names() if n.startswith("fig")]}
    out: List[str] = []
    for name in names:
        out += [n for n in groups.get(name, [name]) if n not in out]
    return out


def make_plan(names: Sequence[str], profile: str = "paper", seeds: Any = None, overrides: Sequence[str] = (),
              columns: Sequence[str] = ()) -> Plan:
    """``columns``: plan only these columns (case-insensitive) of each experiment (``COLUMNS=Cora``)."""
    exps = [experiments_lib.load(n, profile, seeds) for n in targets(names)]
    for exp in exps:  # a smoke column labelled t = 4 that ran at width 1 says so (labels.py)
        exp.notes = list(exp.notes) + labels.notes(exp)
    for exp in exps if columns else ():
        experiments_lib.restrict(exp, columns)
    cells: Dict[str, Any] = {}
    runs: Dict[str, Planned] = {}
    keep: Dict[str, bool] = {}
    for exp in exps:
        cells[exp.name] = experiments_lib.plan(exp, overrides)
        for cell in cells[exp.name]:
            runs.setdefault(cell.name, Planned(cell.name, cell.cfg)).cells.append(cell)
            keep[cell.name] = keep.get(cell.name, False) or exp.keep_weights
    return Plan(exps, cells, list(runs.values()), keep)


def status(runs_root: Path, name: str) -> str:
    return RunDir(Path(runs_root) / name).status()


def damaged_runs(runs: Sequence[Planned], runs_root: Path) -> Dict[str, Verdict]:
    """Run name -> the seal's verdict, for the finished runs of ``runs`` whose records are damaged."""
    found = {p.name: RunDir(Path(runs_root) / p.name).verify() for p in runs if status(runs_root, p.name) == "done"}
    return {name: verdict for name, verdict in found.items() if verdict.damaged}


def damaged_line(run_dir: Path, verdict: Verdict) -> str:
    """One line: the damaged file's path and why."""
    return f"damaged record: {Path(run_dir)}/{verdict.problem}"


def set_aside(run_dir: Path) -> Optional[Path]:
    """Move a damaged run's folder to ``<runs root>/.damaged/<run>.<UTC time>``, under its lock, so that the run is
    trained afresh. None when its records are no longer damaged; ``RunLocked`` when another process holds it."""
    run = RunDir(run_dir)
    run.lock()
    try:
        if not run.verify().damaged:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = run.path.parent / ".damaged" / f"{run.path.name}.{stamp}"
        for k in range(1, 1000):
            if not dest.exists():
                break
            dest = dest.with_name(f"{run.path.name}.{stamp}-{k}")
        dest.parent.mkdir(exist_ok=True)
        os.rename(run.path, dest)  # same filesystem: atomic; the lock moves with it and is released below
        return dest
    finally:
        run.unlock()


def _cpu_threads(processes: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(processes, 1))


def measured_defaults(results: Path = Path("results")) -> Dict[str, Any]:
    """What ``make bench-gpu`` measured on this CUDA card (``<results>/bench/best_jobs.json``, or ``results/bench/``):
    ``best_jobs`` and, per model, the fastest step mode ``modes``. Empty on the CPU or for a card not measured."""
    import torch
    if not torch.cuda.is_available():
        return {}
    name = torch.cuda.get_device_name(0)
    for path in dict.fromkeys([Path(results) / "bench" / "best_jobs.json", Path("results/bench/best_jobs.json")]):
        try:
            measured = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(measured, dict) and measured.get("device") == name:
            return measured
    return {}


def default_jobs(results: Path = Path("results"), measured: Optional[Dict[str, Any]] = None) -> int:
    """Local workers when JOBS is not given: 1 on the CPU (a run uses every core); on CUDA the best count measured by
    ``make bench-gpu`` on this card, else 4."""
    import torch
    if not torch.cuda.is_available():
        return 1
    jobs = (measured_defaults(results) if measured is None else measured).get("best_jobs")
    if isinstance(jobs, int) and not isinstance(jobs, bool) and jobs >= 1:
        return jobs
    return 4  # not measured on this card; run make bench-gpu


STEP_MODES = {"eager": {"cuda_graph": False}, "cuda_graph": {"cuda_graph": True},
              "compile": {"compile": True, "cuda_graph": False}}


def step_mode(modes: Dict[str, Any], model: str, regularizer: str) -> Optional[str]:
    """The mode ``make bench-gpu`` measured fastest for (model, regulariser) on this card, else None (not measured:
    the run's ``cuda_graph: auto`` decides). ``modes``: model -> regulariser -> mode; an older file's model -> mode
    was measured on the baseline and RP-CoMHE only, so it applies to those two."""
    entry = modes.get(model)
    if isinstance(entry, str):
        return entry if regularizer in ("none", "rp_comhe") else None
    return entry.get(regularizer) if isinstance(entry, dict) else None


def without_mode(modes: Dict[str, Any], mode: str) -> Dict[str, Any]:
    """``modes`` with ``mode`` replaced by eager (e.g. cuda_graph for DDP runs: graphs are single-process)."""
    return {model: ("eager" if entry == mode else entry) if isinstance(entry, str) else
            {reg: "eager" if m == mode else m for reg, m in entry.items()} for model, entry in modes.items()}


def apply_step_modes(plan: Plan, modes: Dict[str, Any]) -> List[str]:
    """Give each planned run the step mode ``make bench-gpu`` measured fastest for its model and regulariser on this
    card (``step_mode``). The keys are outside a run's identity: names and results are unchanged, only the speed (and
    a mode that fails on a run falls back to eager with a warning). Returns ``model/regulariser: mode`` per fast mode
    given."""
    changed = []
    for run in plan.runs:
        mode = step_mode(modes, run.cfg["model"], run.cfg["regularizer"])
        if mode in STEP_MODES:
            run.cfg = {**run.cfg, **STEP_MODES[mode]}  # eager too: measured faster than the captured default
            if mode != "eager":
                changed.append(f"{run.cfg['model']}/{run.cfg['regularizer']}: {mode}")
    return sorted(set(changed))


def prepare_configs(pending: Sequence[Planned], jobs: int, nproc: int = 1) -> List[Dict[str, Any]]:
    """Per-run execution settings (not part of the run's identity): CPU threads when several processes share the
    CPU (``jobs`` runs at once, or one run's ``nproc`` DDP processes), and as many DataLoader workers each."""
    import torch

    from .. import data
    cfgs = []
    processes = jobs if nproc <= 1 else nproc  # DDP runs go one at a time
    for p in pending:
        cfg = dict(p.cfg)
        if processes > 1 and cfg["threads"] == 0 and not torch.cuda.is_available():
            cfg["threads"] = _cpu_threads(processes)
        if cfg["workers"] == "auto" and processes > 1:  # the cores shared by the runs (or DDP ranks) at once
            cfg["workers"] = data.loader_workers("auto", processes)
        cfgs.append(cfg)
    return cfgs


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive flock on ``path`` (created), waiting for it: across processes, like ``RunDir.lock``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def preflight(pending: Sequence[Planned]) -> None:
    """Build each dataset once before any worker starts: a download or a synthetic write never races, and a
    missing dataset stops everything with one message (``DatasetUnavailable``) before anything is trained or created
    (``data.locate``: a mistyped data root is refused, not made). Where the dataset is written on use, a lock in the
    data root makes two runner invocations take turns (synthetic datasets are written in place, not atomically: one
    process would read the other's half-written files); data read in place get no lock file."""
    from .. import data
    seen = set()
    for p in pending:
        if STOP.requested:  # a stop signal: no further dataset (nothing will be trained)
            return
        cfg = p.cfg
        key = (cfg["dataset"], cfg["data_root"], tuple(sorted(cfg["data"].items())))
        if key in seen:
            continue
        seen.add(key)
        root = cfg["data_root"] or None
        problem, writes = data.locate(cfg["dataset"], root, **cfg["data"])
        if problem:
            raise data.DatasetUnavailable(problem)
        if not writes:
            data.build(cfg["dataset"], root=root, device="cpu", **cfg["data"])
            continue
        lock = data.data_root(root) / ".comhe-preflight.lock"
        with data.removed_if_failed(lock.parent, files=[lock]):
            lock.parent.mkdir(exist_ok=True)  # its parent exists (locate)
            with _file_lock(lock):
                data.build(cfg["dataset"], root=root, device="cpu", **cfg["data"])


def missing_data(runs: Sequence[Planned]) -> Dict[str, str]:
    """Run name -> why its dataset cannot be had (``DRY=1``); reads only, one look per distinct dataset."""
    from .. import data
    found: Dict[Any, Optional[str]] = {}
    out: Dict[str, str] = {}
    for p in runs:
        cfg = p.cfg
        key = (cfg["dataset"], cfg["data_root"], tuple(sorted(cfg["data"].items())))
        if key not in found:
            found[key] = data.locate(cfg["dataset"], cfg["data_root"] or None, **cfg["data"])[0]
        why = found[key]
        if why:
            out[p.name] = why
    return out


def check_nproc(pending: Sequence[Planned], nproc: int) -> None:
    """DDP splits each global batch over the processes (``engine.prepare`` checks it too, but only once launched)."""
    from ..train.config import ConfigError
    bad = sorted({p.cfg["batch_size"] for p in pending if p.cfg["batch_size"] % nproc})
    if nproc < 1 or bad:
        raise ConfigError(f"NPROC={nproc} must be >= 1 and divide every batch_size (not {', '.join(map(str, bad))})"
                          if bad else f"NPROC must be >= 1, got {nproc}")


def train(plan: Plan, runs_root: Path, jobs: int = 1, launcher: str = "local", options: Optional[Dict[str, Any]] = None,
          out=sys.stdout, nproc: int = 1, poll_s: float = WAIT_POLL_S, retrain_damaged: bool = False) -> Dict[str, int]:
    """Train every run of the plan that is not finished; wait for those another process is training (module
    docstring). A finished run with damaged records is counted ``damaged`` and left alone, or with
    ``retrain_damaged`` set aside and trained again. Returns the count of each outcome. Raises ``ConfigError`` for an
    ``nproc`` that does not fit.

    A first stop signal (Ctrl-C, SIGTERM: ``train/interrupt.py``) starts no further run; the runs in progress
    checkpoint and stop, and come back ``stopped``, the others ``not started``; a second Ctrl-C raises ``StopNow``."""
    with STOP.handling("no run starts; the runs in progress checkpoint and stop"):
        return _train(plan, runs_root, jobs, launcher, options, out, nproc, poll_s, retrain_damaged)


def _train(plan: Plan, runs_root: Path, jobs: int, launcher: str, options: Optional[Dict[str, Any]], out, nproc: int,
           poll_s: float, retrain_damaged: bool) -> Dict[str, int]:
    runs_root = Path(runs_root)
    damaged = damaged_runs(plan.runs, runs_root)
    for name in list(damaged) if retrain_damaged else ():
        try:
            dest = set_aside(runs_root / name)
        except RunLocked:
            continue  # another process is retraining it: it stays damaged here, named when the tables are written
        del damaged[name]
        if dest is not None:
            print(f"damaged record set aside in {dest}; the run is trained again", file=out, flush=True)
    pending = [p for p in plan.runs if status(runs_root, p.name) != "done"]
    counts = {"skipped": len(plan.runs) - len(pending) - len(damaged)}
    if damaged:
        counts["damaged"] = len(damaged)
    left = (f", {len(damaged)} damaged (not retrained: RETRAIN_DAMAGED=1, --retrain-damaged)" if damaged else "")
    print(f"{len(plan.runs)} runs: {counts['skipped']} finished (not retrained){left}, {len(pending)} to train",
          file=out, flush=True)
    if not pending:  # no run reads the data now: a data root given that is not there is still a typo to report
        from .precheck import check_data_root_exists
        for root in dict.fromkeys(p.cfg["data_root"] for p in plan.runs):
            check_data_root_exists(root)
        return counts
    check_nproc(pending, nproc)
    if launcher != "slurm":
        with STOP.phase("finishing the data preparation in progress; no run starts; then the tables and figures are "
                        "rendered from what exists (marked incomplete)"):
            preflight(pending)
    if STOP.requested:
        counts["not started"] = len(pending)
        print(f"stopped by {STOP.signal_name()} before training: {len(pending)} run(s) not started", file=out,
              flush=True)
        return counts
    cfgs = prepare_configs(pending, jobs, nproc) if launcher == "local" else [dict(p.cfg) for p in pending]
    dirs = [str(runs_root / p.name) for p in pending]
    keep = [plan.keep_weights[p.name] for p in pending]
    started, done, locked, disk_failures = time.perf_counter(), [0], [], []
    width = len(str(len(pending)))
    # Per-run progress and the table's ETA from the runs' progress records, whatever the launcher (progress.py)
    at_once = 1 if nproc > 1 and launcher == "local" else jobs if launcher == "local" or jobs > 1 else len(pending)
    pending_names = {p.name for p in pending}
    monitor = progress_lib.Monitor([(p.name, d, c) for p, d, c in zip(pending, dirs, cfgs)], at_once, out,
                                   finished=[(str(runs_root / p.name), p.cfg) for p in plan.runs
                                             if p.name not in pending_names]).start()

    def line(i: int, outcome: str, detail: str, index: str) -> None:
        cell = pending[i].cells[0]
        monitor.print(f"[{index:>{2 * width + 1}}] {outcome:<9} {pending[i].name}  ({cell.experiment}: {cell.row} / "
                      f"{cell.column}, seed {cell.seed})  {detail}")

    def on_result(i: int, result: Dict[str, Any]):
        outcome = "elsewhere" if result["outcome"] == "skipped" else result["outcome"]  # finished since planning
        if outcome in ("not started", "stopped"):  # after a stop signal (train/interrupt.py)
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome == "stopped":
                line(i, outcome, result.get("message", ""), "")
            return True
        if outcome == "locked":
            locked.append(i)
            line(i, outcome, "being trained by another process; waiting for it at the end", "")
            return True
        done[0] += 1
        counts[outcome] = counts.get(outcome, 0) + 1
        final = result.get("final") or {}
        err, acc = final.get("final_test_error"), final.get("final_test_accuracy")  # accuracy: node runs
        detail = f"test accuracy {acc:.2f}%" if isinstance(acc, float) else f"test error {err:.2f}%" \
            if isinstance(err, float) else result.get("message", "")
        line(i, outcome, detail + (" (finished by another process)" if outcome == "elsewhere" else ""),
             f"{done[0]}/{len(pending)}")
        if result.get("traceback"):
            print(result["traceback"], file=out, flush=True)
        if outcome in ("no data", "io error"):
            print(f"stopping: {result['message']}", file=out, flush=True)
            if outcome == "io error":
                disk_failures.append(result["message"])
            return False
        return True

    def launch(indices: List[int]) -> None:
        index_map = {k: i for k, i in enumerate(indices)}
        LAUNCHERS.get(launcher)([pending[i] for i in indices], [cfgs[i] for i in indices], [dirs[i] for i in indices],
                                [keep[i] for i in indices], jobs=jobs, nproc=nproc, out=out,
                                on_result=lambda k, result: on_result(index_map[k], result),
                                folder=runs_root.parent / "submitit", options=options or {})

    interrupted = False  # Ctrl-C while waiting for runs another process trains
    try:  # the monitor stops on every way out (before the closing line, so bars never tear it)
        with STOP.phase("no run starts; the runs in progress checkpoint and stop; then the tables and figures are "
                        "rendered from what exists (marked incomplete)"):
            launch(list(range(len(pending))))
        while locked and not counts.get("no data") and not disk_failures and not interrupted and not STOP.requested:
            print(f"waiting for {len(locked)} run(s) another process is training (poll every {poll_s:g} s; Ctrl-C "
                  "stops waiting and renders what exists)", file=out, flush=True)
            waiting, locked[:] = list(locked), []
            while waiting:
                with STOP.phase("stops waiting for the runs another process trains; then the tables and figures are "
                                "rendered from what exists"):
                    time.sleep(poll_s)
                if STOP.requested:  # stop waiting: render what exists, these runs as "locked"
                    counts["locked"] = len(waiting) + len(locked)
                    interrupted = True
                    break
                still: List[int] = []
                free: List[int] = []
                for i in waiting:
                    if RunDir(dirs[i]).status() == "done":
                        on_result(i, {"outcome": "elsewhere", "final": RunDir(dirs[i]).read_final()})
                    else:  # the other process stopped without finishing (killed, preempted): resume the run here
                        (still if locked_by_other(dirs[i]) else free).append(i)
                waiting = still
                if free:
                    launch(free)  # one locked again by a third process goes back to `locked`
    finally:
        monitor.stop()
    if disk_failures:
        raise DiskFailure(disk_failures[0])
    if interrupted:
        print(f"stopped waiting: {counts['locked']} run(s) left to the other process", file=out, flush=True)
        return counts
    if STOP.requested:
        last = ("stopped", "not started")  # the runs the stop left, after those that ended
        order = [k for k in counts if k not in last] + [k for k in last if k in counts]
        print(f"stopped by {STOP.signal_name()} after {time.perf_counter() - started:.0f} s: "
              + ", ".join(f"{counts[k]} {k}" for k in order)
              + ("; the stopped runs checkpointed: rerun the same command to resume" if counts.get("stopped") else ""),
              file=out, flush=True)
        return counts
    print(f"trained in {time.perf_counter() - started:.0f} s: " + ", ".join(f"{v} {k}" for k, v in counts.items()),
          file=out, flush=True)
    return counts


def dry_run(plan: Plan, runs_root: Path, out=sys.stdout, jobs: int = 1) -> Dict[str, int]:
    """List every cell's runs with their status (done / partial / todo), a partial run's iteration and ETA, and the
    runs whose data is missing; trains, creates and writes nothing."""
    states = {p.name: status(runs_root, p.name) for p in plan.runs}
    states.update(dict.fromkeys(damaged_runs(plan.runs, runs_root), "damaged"))
    no_data = missing_data([p for p in plan.runs if states[p.name] not in ("done", "damaged")])
    for exp in plan.experiments:
        cells = plan.cells[exp.name]
        warning = f"; overrides {' '.join(exp.overrides)}: not the paper protocol" if exp.overrides else ""
        print(f"{exp.name} (profile {exp.profile}, seeds {','.join(map(str, exp.seeds))}{warning}): {len(cells)} "
              "cell runs", file=out)
        width_r = max([len(c.row) for c in cells] + [3])
        width_c = max([len(c.column) for c in cells] + [6])
        print(f"  {'status':<8} {'row':<{width_r}} {'column':<{width_c}} seed  run", file=out)
        for c in cells:
            state = "no data" if c.name in no_data else states[c.name]
            extra = ("  " + progress_lib.describe(runs_root / c.name, c.cfg)) if states[c.name] == "partial" else ""
            print(f"  {state:<8} {c.row:<{width_r}} {c.column:<{width_c}} {c.seed:>4}  {c.name}{extra}", file=out)
        for column, why in exp.not_run.items():
            print(f"  not run: {column}: {why}", file=out)
    counts = {s: sum(v == s for v in states.values()) for s in ("done", "partial", "todo")}
    if "damaged" in states.values():
        counts["damaged"] = sum(v == "damaged" for v in states.values())
    todo = [p for p in plan.runs if states[p.name] not in ("done", "damaged")]
    from .. import data
    # full-batch node runs train no images: an iteration is an epoch of the whole graph
    images = sum(p.cfg["iterations"] * p.cfg["batch_size"] for p in todo if data.task(p.cfg["dataset"]) == "image")
    print(f"{len(plan.runs)} unique runs: {counts['done']} done, {counts['partial']} partial, {counts['todo']} todo; "
          f"left to train: {sum(p.cfg['iterations'] for p in todo)} iterations, {images} training images "
          "(partial runs counted whole)", file=out, flush=True)
    if counts.get("damaged"):
        print(f"{counts['damaged']} finished run(s) with damaged records: not results, not retrained "
              "(RETRAIN_DAMAGED=1 retrains them; python -m comhe.run verify names the files)", file=out, flush=True)
    eta = progress_lib.table_eta([(str(runs_root / p.name), p.cfg) for p in todo], jobs,
                                 reference=[(str(runs_root / p.name), p.cfg) for p in plan.runs
                                            if states[p.name] == "done"])
    if todo:
        print("ETA at the measured rates of these runs: " + (f"{progress_lib.duration(eta)} with {jobs} worker(s)"
              if eta is not None else "unknown (no run of this plan has a measured rate yet)"), file=out, flush=True)
    from . import costs
    from .precheck import check_data_root_exists
    for text in costs.lines([p.cfg for p in todo], data.task):
        print(text, file=out, flush=True)
    for root in dict.fromkeys(p.cfg["data_root"] for p in plan.runs) if not todo else ():
        try:  # as training would refuse it (train): every run is finished, so nothing reads a mistyped root
            check_data_root_exists(root)
        except ValueError as err:
            print(f"no data root: {err}", file=out, flush=True)
    for message in dict.fromkeys(no_data.values()):
        runs = sum(m == message for m in no_data.values())
        print(f"no data for {runs} run(s): {message}", file=out, flush=True)
    return counts


def render(plan: Plan, runs_root: Path, results: Path, figures_dir: Optional[Path], out=None,
           running: bool = False, incomplete: str = "") -> List[Path]:
    """Tables (csv, md, tex) and figures of every experiment of the plan, from the run records only (``running``:
    with the runs still training counted at their latest evaluation, marked as such). ``out``: sys.stdout as it is
    at the call. ``incomplete``: why training stopped early (a stop signal); the tables and figures of experiments
    with runs not finished say so (``df.attrs`` carries it to ``report`` and ``figures``)."""
    from . import report, selection
    out = sys.stdout if out is None else out
    paths = []
    for name, verdict in damaged_runs(plan.runs, runs_root).items():  # one line each, even if in several tables
        print(f"{damaged_line(Path(runs_root) / name, verdict)}; left out of the tables, figures and claims "
              "(RETRAIN_DAMAGED=1 retrains it)", file=out, flush=True)
    for exp in plan.experiments:
        df = report.collect(exp, plan.cells[exp.name], runs_root, running=running)
        if incomplete and any(status(runs_root, c.name) != "done" for c in plan.cells[exp.name]):
            df.attrs["incomplete"] = incomplete
        extra = (selection.sweep_lines(exp, df) if exp.select else []) + \
            (selection.table_lines(exp, plan.cells[exp.name], runs_root) if exp.selected_by else [])
        paths += report.write(exp, df, results, extra)
        if figures_dir is not None:
            from . import figures
            paths += figures.render(exp, df, plan.cells[exp.name], runs_root, figures_dir)
    if set(targets(["all"])) <= {exp.name for exp in plan.experiments}:  # every table and figure: the scorecard
        from . import scorecard
        paths += scorecard.write(plan.experiments, plan.cells, runs_root, results, figures_dir)
    print("wrote " + ", ".join(str(p) for p in paths), file=out, flush=True)
    return paths

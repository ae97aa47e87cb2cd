"""Plan -> train -> collect -> render, for one or more experiments (the CLI is ``comhe/run.py``).

Planning resolves every cell of every requested experiment to a validated config; its run directory is
``<runs root>/<dataset-model-regulariser>-s<seed>-<hash of the config>`` (``records.run_name``), so identical configs
in different tables share one directory and are trained once, and a changed config never reuses an old result.

Training goes through ``execute_one(cfg, run_dir)``, one call per run: it skips a finished run, resumes a partial
one (``engine.train`` resumes from the newest checkpoint), takes the run directory's lock for the whole training and
returns ``locked`` (skipping the run) when another process holds it. Launchers, a registry:

* ``local``            in this process (``jobs=1``) or ``jobs`` spawned worker processes, each training one run at a
                       time; on the CPU each worker gets ``cores // jobs`` threads, on GPUs workers take cards round
                       robin (several workers may share one card: small CIFAR runs do not fill an H100).
* ``slurm``            the same calls submitted as one submitit job array (``pip install submitit``; the core never
                       imports it); waits for the array and renders, or re-run later to collect.
* ``submitit-local``   submitit's local executor (subprocesses), how the SLURM path is tested without a cluster.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import experiments as experiments_lib
from .experiments import CellRun, Experiment
from .records import RunDir, RunLocked
from .registry import Registry

LAUNCHERS = Registry("launcher")


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


def make_plan(names: Sequence[str], profile: str = "paper", seeds: Any = None, overrides: Sequence[str] = ()) -> Plan:
    exps = [experiments_lib.load(n, profile, seeds) for n in targets(names)]
    cells, runs, keep = {}, {}, {}
    for exp in exps:
        cells[exp.name] = experiments_lib.plan(exp, overrides)
        for cell in cells[exp.name]:
            runs.setdefault(cell.name, Planned(cell.name, cell.cfg)).cells.append(cell)
            keep[cell.name] = keep.get(cell.name, False) or exp.keep_weights
    return Plan(exps, cells, list(runs.values()), keep)


def status(runs_root: Path, name: str) -> str:
    return RunDir(Path(runs_root) / name).status()


def execute_one(cfg: Dict[str, Any], run_dir: str, keep_weights: bool = True) -> Dict[str, Any]:
    """Train one run to the end (or skip it). Returns ``{"outcome": finished|diverged|skipped|locked, ...}``."""
    run = RunDir(run_dir)
    if run.status() == "done":
        return {"outcome": "skipped", "final": run.read_final()}
    from . import engine  # torch is imported here, not when planning on a login node
    try:
        final = engine.train(cfg, run_dir)
    except RunLocked as err:
        return {"outcome": "locked", "message": str(err)}
    if not keep_weights:  # smoke runs: the final weights are useless and ImageNet ResNets weigh 50-100 MB each
        shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
    return {"outcome": final["status"], "final": final}


def _execute_guarded(cfg: Dict[str, Any], run_dir: str, keep_weights: bool) -> Dict[str, Any]:
    """``execute_one`` that reports a failure instead of raising (one bad run must not stop a table)."""
    from .data import DatasetUnavailable
    from .engine import Preempted
    try:
        return execute_one(cfg, run_dir, keep_weights)
    except DatasetUnavailable as err:
        return {"outcome": "no data", "message": str(err)}
    except Preempted:  # a stop signal: the run checkpointed; stop here, do not start the next run
        raise
    except Exception as err:  # noqa: BLE001 - reported with its traceback, the others go on
        return {"outcome": "failed", "message": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(limit=6)}


def _cpu_threads(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(jobs, 1))


def prepare_configs(pending: Sequence[Planned], jobs: int) -> List[Dict[str, Any]]:
    """Per-run execution settings (not part of the run's identity): CPU threads when several runs share the CPU."""
    import torch
    cfgs = []
    for p in pending:
        cfg = dict(p.cfg)
        if jobs > 1 and cfg["threads"] == 0 and not torch.cuda.is_available():
            cfg["threads"] = _cpu_threads(jobs)
        cfgs.append(cfg)
    return cfgs


def preflight(pending: Sequence[Planned]) -> None:
    """Build each dataset once before any worker starts: a download or a synthetic write never races, and a
    missing dataset stops everything with one message (``DatasetUnavailable``) before anything is trained."""
    from . import data
    seen = set()
    for p in pending:
        cfg = p.cfg
        key = (cfg["dataset"], cfg["data_root"], tuple(sorted(cfg["data"].items())))
        if key not in seen:
            seen.add(key)
            data.build(cfg["dataset"], root=cfg["data_root"] or None, device="cpu", **cfg["data"])


_worker_index = None


def _worker_init(counter, gpus: int) -> None:
    global _worker_index
    with counter.get_lock():
        _worker_index = counter.value
        counter.value += 1
    if gpus > 1:  # before CUDA is initialised in this fresh (spawned) process
        os.environ["CUDA_VISIBLE_DEVICES"] = str(_worker_index % gpus)


@LAUNCHERS.register("local")
def launch_local(pending: Sequence[Planned], cfgs: Sequence[Dict], dirs: Sequence[str], keep: Sequence[bool],
                 jobs: int = 1, on_result: Callable = None, **_) -> None:
    if jobs <= 1:
        for i, args in enumerate(zip(cfgs, dirs, keep)):
            on_result(i, _execute_guarded(*args))
        return
    import torch
    ctx = mp.get_context("spawn")  # fork after torch/OpenMP initialisation can deadlock; CUDA needs spawn anyway
    counter = ctx.Value("i", 0)
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                             initargs=(counter, torch.cuda.device_count())) as pool:
        futures = {pool.submit(_execute_guarded, *args): i for i, args in enumerate(zip(cfgs, dirs, keep))}
        for future in as_completed(futures):
            if on_result(futures[future], future.result()) is False:
                for f in futures:
                    f.cancel()


def _submitit(cluster: Optional[str], pending, cfgs, dirs, keep, jobs: int, on_result, folder: Path,
              options: Dict[str, Any]) -> None:
    try:
        import submitit
    except ImportError:
        raise SystemExit("LAUNCHER=slurm needs submitit: pip install submitit (or pip install -e '.[slurm]')") from None
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)
    params = {"timeout_min": 24 * 60, "gpus_per_node": 1, "cpus_per_task": 8} if cluster != "local" else \
        {"timeout_min": 60}
    if cluster != "local":
        params["slurm_array_parallelism"] = max(jobs, 1) if jobs > 1 else 64
    executor.update_parameters(**{**params, **options})
    submitted = executor.map_array(_execute_guarded, list(cfgs), list(dirs), list(keep))
    print(f"submitted {len(submitted)} job(s) through submitit ({cluster or 'slurm'}), logs in {folder}; waiting "
          "(interrupting leaves them running: re-run the same command later to collect)", flush=True)
    for i, job in enumerate(submitted):
        try:
            result = job.result()
        except Exception as err:  # noqa: BLE001 - a failed job (e.g. timeout) is reported like a failed run
            result = {"outcome": "failed", "message": f"job {job.job_id}: {type(err).__name__}: {err}"}
        on_result(i, result)


@LAUNCHERS.register("slurm")
def launch_slurm(pending, cfgs, dirs, keep, jobs=1, on_result=None, folder=None, options=None, **_):
    _submitit(None, pending, cfgs, dirs, keep, jobs, on_result, folder, options or {})


@LAUNCHERS.register("submitit-local")
def launch_submitit_local(pending, cfgs, dirs, keep, jobs=1, on_result=None, folder=None, options=None, **_):
    _submitit("local", pending, cfgs, dirs, keep, jobs, on_result, folder, options or {})


def train(plan: Plan, runs_root: Path, jobs: int = 1, launcher: str = "local", options: Dict[str, Any] = None,
          out=sys.stdout) -> Dict[str, int]:
    """Train every run of the plan that is not finished. Returns the count of each outcome."""
    runs_root = Path(runs_root)
    pending = [p for p in plan.runs if status(runs_root, p.name) != "done"]
    counts = {"skipped": len(plan.runs) - len(pending)}
    print(f"{len(plan.runs)} runs: {counts['skipped']} finished (not retrained), {len(pending)} to train", file=out,
          flush=True)
    if not pending:
        return counts
    if launcher != "slurm":
        preflight(pending)
    cfgs = prepare_configs(pending, jobs) if launcher == "local" else [dict(p.cfg) for p in pending]
    dirs = [str(runs_root / p.name) for p in pending]
    keep = [plan.keep_weights[p.name] for p in pending]
    started, done = time.perf_counter(), [0]

    def on_result(i: int, result: Dict[str, Any]):
        done[0] += 1
        outcome = result["outcome"]
        counts[outcome] = counts.get(outcome, 0) + 1
        final = result.get("final") or {}
        err = final.get("final_test_error")
        detail = f"test error {err:.2f}%" if isinstance(err, float) else result.get("message", "")
        cell = pending[i].cells[0]
        print(f"[{done[0]:>{len(str(len(pending)))}}/{len(pending)}] {outcome:<9} {pending[i].name}  "
              f"({cell.experiment}: {cell.row} / {cell.column}, seed {cell.seed})  {detail}", file=out, flush=True)
        if result.get("traceback"):
            print(result["traceback"], file=out, flush=True)
        if outcome == "no data":
            print(f"stopping: {result['message']}", file=out, flush=True)
            return False
        return True

    LAUNCHERS.get(launcher)(pending, cfgs, dirs, keep, jobs=jobs, on_result=on_result,
                            folder=runs_root.parent / "submitit", options=options or {})
    print(f"trained in {time.perf_counter() - started:.0f} s: " + ", ".join(f"{v} {k}" for k, v in counts.items()),
          file=out, flush=True)
    return counts


def dry_run(plan: Plan, runs_root: Path, out=sys.stdout) -> Dict[str, int]:
    """List every cell's runs with their status (done / partial / todo); trains and writes nothing."""
    states = {p.name: status(runs_root, p.name) for p in plan.runs}
    for exp in plan.experiments:
        cells = plan.cells[exp.name]
        print(f"{exp.name} (profile {exp.profile}, seeds {','.join(map(str, exp.seeds))}): {len(cells)} cell runs",
              file=out)
        width_r = max([len(c.row) for c in cells] + [3])
        width_c = max([len(c.column) for c in cells] + [6])
        print(f"  {'status':<8} {'row':<{width_r}} {'column':<{width_c}} seed  run", file=out)
        for c in cells:
            print(f"  {states[c.name]:<8} {c.row:<{width_r}} {c.column:<{width_c}} {c.seed:>4}  {c.name}", file=out)
    counts = {s: sum(v == s for v in states.values()) for s in ("done", "partial", "todo")}
    todo = [p for p in plan.runs if states[p.name] != "done"]
    images = sum(p.cfg["iterations"] * p.cfg["batch_size"] for p in todo)
    print(f"{len(plan.runs)} unique runs: {counts['done']} done, {counts['partial']} partial, {counts['todo']} todo; "
          f"left to train: {sum(p.cfg['iterations'] for p in todo)} iterations, {images} training images "
          "(partial runs counted whole)", file=out, flush=True)
    return counts


def render(plan: Plan, runs_root: Path, results: Path, figures_dir: Optional[Path], out=sys.stdout) -> List[Path]:
    """Tables (csv, md, tex) and figures of every experiment of the plan, from the run records only."""
    from . import report
    paths = []
    for exp in plan.experiments:
        df = report.collect(exp, plan.cells[exp.name], runs_root)
        paths += report.write(exp, df, results)
        if figures_dir is not None:
            from . import figures
            paths += figures.render(exp, df, plan.cells[exp.name], runs_root, figures_dir)
    print("wrote " + ", ".join(str(p) for p in paths), file=out, flush=True)
    return paths

"""Reproduce paper tables and figures: plan the runs, train what is missing, write tables and figures.

    python -m comhe.run table1                          # the paper protocol, 3 seeds
    python -m comhe.run table1 --profile smoke          # CPU, synthetic data, seconds per run -> results/smoke/
    python -m comhe.run table1 --dry-run                # list the runs and their status; train nothing
    python -m comhe.run all --profile quick --jobs 4 lr=0.05 reg.proj_dim=30
    python -m comhe.run table5 --launcher slurm --slurm slurm_partition=gpu timeout_min=600
    python -m comhe.run table6 --nproc 8                # each run on 8 GPUs (torchrun, DDP)
    python -m comhe.run table1 --collect-only --running  # the table now, runs still training marked
    python -m comhe.run my.yaml --profile smoke         # your own experiment (docs/reference.md §7)
    python -m comhe.run verify --results results        # check every run record's seal (suite/verify.py)

Targets: table1 ... table11, fig1 ... fig3, demo, ``all`` (every table and figure), ``tables``, ``figures``, or a path
to an experiment YAML. ``key=value`` arguments override config keys in every cell (``reg.*`` only where the
regulariser has the option). Outputs: ``<results>/runs/<run>/`` (records), ``<results>/<target>.{csv,md,tex}``,
``<figures>/<target>.{png,pdf}`` (``<figures>`` defaults to ``figures``, or ``<results>/figures`` with ``--results``),
and with ``all`` ``<results>/SCORECARD.md``; ``<results>`` is ``results`` for the paper profile and
``results/<profile>`` for smoke and quick (never over a real table) unless ``--results`` is given. While training,
each run's progress and the table's ETA are shown (``progress.py``). A run another process is training is waited
for (``runner.py``). Exit codes: 0 all runs finished (or diverged: N/C is a result), 1 some run failed or was left to
another process (Ctrl-C while waiting), or a finished run's records are damaged (named; ``--retrain-damaged``
retrains it), 2 bad experiment, config, ``--nproc`` or missing data, 130 stopped by a signal (Ctrl-C or SIGTERM): no
run starts after it, the runs in progress checkpoint, the tables and figures are rendered from what exists, marked
incomplete (rerun to resume; a second Ctrl-C stops at once; ``train/interrupt.py``).
``--columns Cora`` plans only those columns; the tables show the others as not run, with the reason.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import sys
from pathlib import Path
from typing import Iterator, List, Optional

from ..train import config as config_lib
from ..train import records
from ..train.interrupt import STOP, StopNow
from ..train.io_errors import DiskFailure, disk_error
from . import experiments, precheck, runner

# Nothing at this module's top level imports torch (``comhe/__init__`` loads the library lazily): ``--help`` and every
# error ``precheck`` finds come in a fraction of a second; planning (``runner.make_plan``) is the first to load it.


def _options(pairs: List[str]) -> dict:
    out = {}
    for text in pairs:
        key, value = config_lib.parse_override(text)
        out[key] = value
    return out


def _bad_choice(what: str, value: str, valid, make_name: str) -> Optional[str]:
    """One line for a value outside ``valid`` (argparse's ``choices`` would print the whole usage)."""
    if value in valid:
        return None
    close = difflib.get_close_matches(str(value), list(valid), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown {what} {value!r}{hint}; valid: {', '.join(valid)} ({make_name}=... / --{what} ...)"


def _count(value: Optional[str], name: str, flag: str) -> Optional[int]:
    """``--jobs`` / ``--nproc`` as a whole number >= 1 (one line, not argparse's usage, for ``JOBS=two``)."""
    if value is None:
        return None
    text = str(value).strip()
    if not text.lstrip("-").isdigit():
        raise ValueError(f"{name} ({flag}) must be a whole number >= 1, got {value!r}")
    if int(text) < 1:
        raise ValueError(f"{name} ({flag}) must be >= 1, got {int(text)}")
    return int(text)


def epilog() -> str:
    """``--help``'s closing part: the targets, where data is read, how to override config keys."""
    names = experiments.names()
    root = os.environ.get("COMHE_DATA")
    return "\n".join([
        "targets:",
        "  " + " ".join(n for n in names if n.startswith("table")),
        "  " + " ".join(n for n in names if not n.startswith("table")),
        "  all (every table and figure, not the demo), tables, figures, or a path to an experiment YAML",
        "  (docs/reference.md section 7)",
        "",
        "data root: data_root=DIR (a config key), else $COMHE_DATA, else ./data; now: "
        + (f"{root} ($COMHE_DATA)" if root else f"{Path('data').resolve()} (./data; $COMHE_DATA is not set)"),
        "  (make table11 COMHE_DATA=DIR); COMHE_OFFLINE=1 turns downloads off",
        "",
        "overrides: key=value on every cell, typed as YAML against the key's default (docs/reference.md section 1):",
        "  lr=0.05  iterations=2000  threads=1  reg.proj_dim=30 (reg.*, model_options.*, data.*: only the cells",
        "  whose regulariser / model / dataset has the option). A key the table's rows or columns set is refused.",
        "  make: make table1 lr=0.05 reg.proj_dim=30, or ARGS='key=value ...'",
        "",
        "results: <results>/<target>.{csv,md,tex}, <results>/runs/<run>/; --profile smoke or quick: results/<profile>",
        "  unless --results is given (never over the paper profile's tables)",
    ])


@contextlib.contextmanager
def _no_empty_folders(folders: List[Path]) -> Iterator[None]:
    """Folders this command creates (``folders`` and their missing parents) are removed again at the end where they
    are still empty: a command that fails (missing data, a bad config) leaves no empty ``results/`` behind."""
    new = []
    for folder in folders:
        probe = Path(folder)
        while not probe.exists() and probe != probe.parent:
            new.append(probe)
            probe = probe.parent
    try:
        yield
    finally:
        for folder in sorted(set(new), key=lambda p: len(p.parts), reverse=True):  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()  # only an empty folder goes


def main(argv: Optional[List[str]] = None) -> int:
    """The command line, under the stop signals' handling: a first Ctrl-C or SIGTERM winds down (one line says
    how), a second Ctrl-C stops at once, never with a traceback."""
    with STOP.handling("stopping after planning: no run starts; the tables and figures are rendered from what "
                       "exists"):
        try:
            return _main(argv)
        except StopNow:
            print("stopped at once by a second Ctrl-C: every file is whole (written atomically); rerun the same "
                  "command to resume the runs from their last checkpoints and render the tables", file=sys.stderr)
            return 130


def _main(argv: Optional[List[str]] = None) -> int:
    if (sys.argv[1:] if argv is None else argv)[:1] == ["verify"]:
        from . import verify
        return verify.main((sys.argv[1:] if argv is None else argv)[1:])
    parser = argparse.ArgumentParser(prog="python -m comhe.run", description=__doc__.split("\n\n")[0],
                                     epilog=epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("args", nargs="+", metavar="TARGET|key=value")
    parser.add_argument("--profile", default="paper", help=f"one of {', '.join(experiments.PROFILES)}")
    parser.add_argument("--seeds", default=None, help="a count (3: seeds 0,1,2) or a list (0,4,5)")
    parser.add_argument("--jobs", default=None,
                        help="parallel local workers (or SLURM array parallelism); default: 1 on the CPU, on CUDA the "
                             "count `make bench-gpu` measured on this card, else 4")
    parser.add_argument("--nproc", default="1",
                        help="processes (GPUs) per run: each run through torchrun, DDP; must divide batch_size")
    parser.add_argument("--columns", default="", help="run only these columns, comma-separated (e.g. Cora): the "
                        "table shows the others as not run, with the reason")
    parser.add_argument("--dry-run", action="store_true", help="list the runs with their status; train nothing")
    parser.add_argument("--collect-only", action="store_true", help="write tables and figures; train nothing")
    parser.add_argument("--launcher", default="local", help=f"one of {', '.join(runner.LAUNCHERS.names())}")
    parser.add_argument("--slurm", nargs="*", default=[], metavar="KEY=VALUE",
                        help="submitit parameters, e.g. slurm_partition=gpu timeout_min=600 gpus_per_node=1")
    parser.add_argument("--results", default=None, help="tables go here, run records under <results>/runs (default: "
                        "results; results/smoke and results/quick for those profiles)")
    parser.add_argument("--figures", default=None,
                        help="default: figures/, or <results>/figures when --results is given")
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument("--retrain-damaged", action="store_true",
                        help="retrain finished runs whose records are damaged (python -m comhe.run verify)")
    parser.add_argument("--running", action="store_true",
                        help="tables and figures also count runs still training, at their latest evaluation (marked)")
    args = parser.parse_intermixed_args(argv)
    names = [a for a in args.args if "=" not in a]
    overrides = [a for a in args.args if "=" in a]
    if not names:
        parser.error("name at least one target (table1 ... table9, fig1, fig2, demo, all)")
    bad = _bad_choice("profile", args.profile, experiments.PROFILES, "PROFILE") or \
        _bad_choice("launcher", args.launcher, runner.LAUNCHERS.names(), "LAUNCHER")
    try:
        args.jobs = _count(args.jobs, "JOBS", "--jobs")
        args.nproc = _count(args.nproc, "NPROC", "--nproc")
    except ValueError as err:
        bad = bad or str(err)
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    columns = [c for c in args.columns.split(",") if c.strip()]
    try:  # everything that needs no torch, for every target, before planning imports it
        precheck.check(runner.targets(names), args.profile, args.seeds, overrides, columns)
        options = _options(args.slurm)
    except (experiments.ExperimentError, config_lib.ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    default_results = "results" if args.profile == "paper" else f"results/{args.profile}"
    results = Path(args.results or default_results)
    if args.figures is None:  # RESULTS=dir alone moves everything, figures included, out of the checkout
        args.figures = "figures" if str(results) == "results" else str(results / "figures")
    runs_root = results / "runs"
    with _no_empty_folders([runs_root, Path(args.figures), results]):
        return _run(args, names, overrides, columns, options, results, runs_root)


def _run(args: argparse.Namespace, names: List[str], overrides: List[str], columns: List[str], options: dict,
         results: Path, runs_root: Path) -> int:
    try:
        plan = runner.make_plan(names, args.profile, args.seeds, overrides, columns)
    except (experiments.ExperimentError, config_lib.ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for exp in plan.experiments:  # for the regenerate command every table and the scorecard print
        exp.results_given = args.results or ""
    if args.profile != "paper" and not args.results and not args.dry_run:
        print(f"profile {args.profile}: tables, runs and figures go to {results}/ (the paper profile's results/ and "
              "figures/ are left alone; --results DIR to choose)", flush=True)
    if not args.collect_only:  # where it trains, first: an NVIDIA GPU torch cannot use stops it before any write
        from . import estimate  # imports torch (the models' FLOP counts): after every torch-free check
        from ..train.devices import DeviceUnusable, deterministic_environment
        if any(p.cfg["deterministic"] for p in plan.runs):
            deterministic_environment()  # before CUDA starts here or in the workers spawned below
        try:
            for line in estimate.start_lines(plan, runs_root, args.jobs or 1, args.launcher, results):
                print(line, flush=True)
        except DeviceUnusable as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if not args.dry_run:  # fail before training anything, not when the first record or table is written
        folders = ([] if args.no_figures else [Path(args.figures)]) + [runs_root]
        try:
            for folder in folders:
                records.ensure_writable(folder)
        except OSError as err:
            print(f"error: cannot write to {err.filename or folder}: {err.strerror or err}; pick writable folders "
                  f"with --results / --figures (make RESULTS=... FIGURES=...)", file=sys.stderr)
            return 2
    if args.dry_run:
        runner.dry_run(plan, runs_root, out=sys.stdout, jobs=args.jobs or 1)
        return STOP.exit_code() if STOP.requested else 0
    counts = {}
    if not args.collect_only and not STOP.requested:
        from ..data import DatasetUnavailable
        from ..train.engine import Preempted
        measured = runner.measured_defaults(results) if args.launcher == "local" else {}  # {} on the CPU
        jobs = args.jobs
        if jobs is None:  # a DDP run takes the GPUs it needs; a SLURM array's parallelism is unbounded by default
            jobs = runner.default_jobs(results, measured) if args.launcher == "local" and args.nproc <= 1 else 1
        if not {config_lib.parse_override(o)[0] for o in overrides} & {"compile", "cuda_graph"}:
            modes = measured.get("modes") or {}
            if args.nproc > 1:
                modes = runner.without_mode(modes, "cuda_graph")  # CUDA graphs are single-process
            changed = runner.apply_step_modes(plan, modes)
            if changed:
                print(f"step mode measured fastest on this card by make bench-gpu: {', '.join(changed)} "
                      f"(compile=false cuda_graph=false turns it off)")
        try:
            counts = runner.train(plan, runs_root, jobs, args.launcher, options, nproc=args.nproc,
                                  retrain_damaged=args.retrain_damaged)
        except (DatasetUnavailable, config_lib.ConfigError) as err:
            hint = ("; or run only the columns whose data you have: COLUMNS=<names> (--columns)"
                    if isinstance(err, DatasetUnavailable) and any(len(e.columns) > 1 for e in plan.experiments)
                    else "")
            print(f"error: {err}{hint}", file=sys.stderr)
            return 2
        except Preempted as err:
            print(f"{err}" if "resume" in str(err) else f"{err}; rerun the same command to resume", file=sys.stderr)
            if not STOP.requested:
                return 130  # a worker was stopped by a signal: resumable, as after Ctrl-C
        except (DiskFailure, OSError) as err:  # a run (or the data written before) hit a full or failing disk
            message = str(err) if isinstance(err, DiskFailure) else disk_error(err)
            if message is None:
                raise
            print(f"error: {message}", file=sys.stderr)
            return 2
    incomplete = f"stopped by {STOP.signal_name()} before every run finished; rerun the same command to resume" \
        if STOP.requested else ""
    try:
        with STOP.phase("finishing the tables and figures from what exists"):
            runner.render(plan, runs_root, results, None if args.no_figures else Path(args.figures),
                          running=args.running, incomplete=incomplete)
    except OSError as err:  # a full disk, or a folder made unwritable since the check: one line, the runs are kept
        print(f"error: {disk_error(err) or f'cannot write {err.filename}: {err.strerror or err}'} (tables and "
              f"figures are rendered again by the same command)", file=sys.stderr)
        return 2
    if STOP.requested:
        return STOP.exit_code()
    if counts.get("no data"):
        return 2
    damaged = runner.damaged_runs(plan.runs, runs_root)  # named by render; the table is written, yet incomplete
    return 1 if counts.get("failed") or counts.get("locked") or counts.get("preempted") or damaged else 0


if __name__ == "__main__":
    sys.exit(main())

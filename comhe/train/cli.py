"""One run from the command line. Relaunching the same command resumes it; a finished run is not retrained.

    python -m comhe.train experiments/runs/cnn9_rp.yaml seed=1 reg.proj_dim=30
    python -m comhe.train cfg.yaml --run-dir results/runs/my-run
    torchrun --standalone --nproc_per_node=8 -m comhe.train cfg.yaml     # DDP

The run directory defaults to ``<runs-root>/<label>-s<seed>-<config hash>`` (``records.run_name``). Progress is a
tqdm bar on a terminal, else one fixed-column line per evaluation. Exit codes: 0 done (or already done), 2 bad
config, missing data, an unwritable run directory (one ``error:`` line; the run directory is not created) or a
finished run whose records are damaged (``records.RunDir.verify``), 3 the run is being trained by another process,
4 diverged, 130 stopped by a signal (Ctrl-C or SIGTERM): the run checkpointed
(relaunch to resume), with one line and no traceback; a second Ctrl-C stops at once, from the previous checkpoint
(``interrupt.py``). Under torchrun these are each worker's codes: torchrun itself exits 1 when any worker fails, so
scripts read the run's ``final.json`` (or its absence) rather than torchrun's exit code. ``COMHE_OFFLINE=1``
disables dataset downloads.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from . import config as config_lib
from .devices import deterministic_environment
from .interrupt import STOP, StopNow
from .io_errors import disk_error
from .records import RunLocked, run_name

COLUMNS = [("iteration", "iter", 7, "d"), ("epoch", "epoch", 7, ".1f"), ("lr", "lr", 8, ".4g"),
           ("train_loss", "loss", 8, ".4f"), ("train_acc", "train%", 7, ".2f"), ("reg_loss", "reg", 8, ".4f"),
           ("test_error", "test_err%", 9, ".2f"), ("hidden_energy", "hid_E", 8, ".4f"), ("seconds", "time_s", 8, ".0f")]


def _cell(value: Any, width: int, fmt: str) -> str:
    """A number, or "-" where there is none yet (the training columns at iteration 0: no step was taken)."""
    if isinstance(value, float) and value != value:
        return f"{'-':>{width}}"
    return f"{value:>{width}{fmt}}"


def line_reporter(out=None, columns=None) -> Callable[[Dict[str, Any]], None]:
    """One fixed-column line per evaluation; the header comes with the first line (after ``run:``)."""
    started: List[bool] = []
    out, columns = out or sys.stdout, columns or COLUMNS  # sys.stdout when called, not when imported

    def report(row: Dict[str, Any]) -> None:
        if not started:
            started.append(True)
            print(" ".join(f"{title:>{width}}" for _, title, width, _ in columns), file=out, flush=True)
        print(" ".join(_cell(row[key], width, fmt) for key, _, width, fmt in columns), file=out, flush=True)
    return report


def tqdm_reporter(total: int) -> Callable[[Dict[str, Any]], None]:
    from tqdm import tqdm
    bar = tqdm(total=total, unit="it", dynamic_ncols=True)

    def report(row: Dict[str, Any]) -> None:
        bar.update(int(row["iteration"]) - bar.n)
        bar.set_postfix(loss=_cell(row["train_loss"], 0, ".3f"), test_err=f"{row['test_error']:.2f}",
                        hid_E=f"{row['hidden_energy']:.3f}")
        if row["iteration"] >= total:
            bar.close()
    return report


def _fail(message: str, code: int) -> int:
    one_line = " ".join(str(message).split())  # messages quoting library errors may carry newlines
    print(f"error: {one_line}", file=sys.stderr)
    return code


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comhe.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML file of config keys (comhe/train/config.py lists them all)")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. lr=0.05 reg.proj_dim=30")
    parser.add_argument("--run-dir", help="where the run's records go (default: <runs-root>/<name>-<hash>)")
    parser.add_argument("--runs-root", default="results/runs")
    parser.add_argument("--label", default="", help="readable prefix of the run directory's name")
    parser.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto")
    args = parser.parse_intermixed_args(argv)
    with STOP.handling("stopping before training starts (nothing is written)"):
        try:
            return _main(args)
        except StopNow:
            print("stopped at once by a second Ctrl-C: nothing more was written; rerun the same command to resume "
                  "from the last checkpoint", file=sys.stderr)
            return 130


def _main(args) -> int:
    try:  # keys, types and ranges are checked before validate reads the registries (torch): bad input answers at once
        cfg = config_lib.load(args.config, args.overrides)
    except config_lib.ConfigError as err:
        return _fail(str(err), 2)
    if cfg["deterministic"]:  # before CUDA starts in this process: cuBLAS reads it once, at its first handle
        deterministic_environment()

    from . import devices, distributed, engine
    from .trainers import for_config
    from ..data import DatasetUnavailable
    run_dir = Path(args.run_dir) if args.run_dir else Path(args.runs_root) / run_name(cfg, args.label)
    from .records import RunDir
    if RunDir(run_dir).status() == "done":
        verdict = RunDir(run_dir).verify()  # a damaged record is no result; retrained only when asked
        if verdict.damaged:
            return _fail(f"damaged record: {run_dir}/{verdict.problem}; not retrained (move the folder away to "
                         "retrain it, or make <target> RETRAIN_DAMAGED=1)", 2)
        print(f"{run_dir}: already finished, not retrained")
        return 0
    try:  # no silent CPU fallback: an NVIDIA GPU torch cannot use stops the run before anything is written
        if cfg["device"] == "auto":
            devices.check_auto()
    except devices.DeviceUnusable as err:
        return _fail(str(err), 2)
    try:  # before the data is loaded (maybe downloaded), and without creating the run directory itself
        RunDir(run_dir).check_writable()
    except OSError as err:
        return _fail(_unwritable(run_dir, err), 2)
    import torch
    if "TORCHELASTIC_RUN_ID" in os.environ:  # under torchrun: it repeats the terminal's Ctrl-C to its workers
        STOP.escalate = False
    trainer = for_config(cfg)  # the image engine, or the node engine for a graph dataset
    ctx = distributed.init("cuda" if cfg["device"].startswith("cuda") or (
        cfg["device"] == "auto" and torch.cuda.is_available()) else "cpu")
    try:
        setup = trainer.prepare(cfg, ctx)
    except (DatasetUnavailable, ValueError, OSError) as err:  # ValueError: options the schema cannot see
        distributed.shutdown(ctx)
        if isinstance(err, OSError) and disk_error(err) is None:
            raise
        return _fail(disk_error(err) or str(err), 2)
    report = None
    if ctx.is_main and args.progress != "none":
        use_bar = args.progress == "bar" or (args.progress == "auto" and sys.stderr.isatty())
        report = tqdm_reporter(cfg["iterations"]) if use_bar else line_reporter(columns=trainer.columns)
    if ctx.is_main:  # where it trains (the run's meta records the same line), then where its records go
        print(devices.describe(setup.device)["device_line"], flush=True)
        print(f"run: {run_dir}", flush=True)
    if STOP.requested and not ctx.enabled:  # signalled while the data and model were prepared (DDP ranks agree on a
        distributed.shutdown(ctx)                   # stop inside the engine, at a step they all reach)
        print(f"stopped by {STOP.signal_name()} before training started: nothing was written", file=sys.stderr)
        return STOP.exit_code()
    try:
        with warnings.catch_warnings(), STOP.phase("the run checkpoints at its next step and stops"):
            warnings.simplefilter("default")
            final = trainer.train(cfg, run_dir, setup, report)
    except RunLocked as err:
        return _fail(str(err), 3)
    except engine.Preempted as err:
        print(str(err), file=sys.stderr)
        return STOP.exit_code() if STOP.requested else 130
    except (PermissionError, NotADirectoryError, FileExistsError) as err:  # e.g. the disk became read-only
        return _fail(_unwritable(run_dir, err), 2)
    except OSError as err:  # the disk is full or failing: the run resumes from its last checkpoint (io_errors.py)
        message = disk_error(err)
        if message is None:
            raise
        return _fail(message, 2)
    finally:
        distributed.shutdown(ctx)
    if final["status"] == "diverged":
        if ctx.is_main:
            print(f"{run_dir}: diverged (non-finite loss from iteration {final['diverged_at']}, stopped at "
                  f"{final['iterations']}): N/C")
        return 4
    if ctx.is_main:
        print(f"{run_dir}: {trainer.describe(final)}")
    return STOP.exit_code() if STOP.requested else 0  # a signal after the last step: the run is finished anyway


def _unwritable(run_dir: Path, err: OSError) -> str:
    return (f"cannot write the run directory {run_dir} ({err.strerror or err}: {err.filename}); "
            "choose a writable --runs-root or --run-dir")


if __name__ == "__main__":
    sys.exit(main())

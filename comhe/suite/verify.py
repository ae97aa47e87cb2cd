"""``python -m comhe.run verify [--results DIR] [--seal]`` (``make verify``): check the run records of a results folder.

Each run folder under ``<results>/runs`` is checked against its seal (``train/seal.py``): one line per damaged run,
naming the file and why, one per unverified run (written before records were sealed), then a count of each state.
Exit codes: 0 nothing damaged, 1 some record damaged, 2 no run records there.

``--seal`` adopts the unverified records once you trust them: each must still parse as a result; it is then sealed
as a new run would be (final.json rewritten with the same values, then the manifest). Damaged records are never
sealed: retrain them (``RETRAIN_DAMAGED=1`` on the make target that planned them) or delete their folders.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from ..train.records import RunDir, RunLocked
from ..train.seal import Verdict


def run_folders(runs_root: Path) -> List[Path]:
    """The run folders of a runs root, sorted; hidden ones (``.damaged``, ``.launch``) are not runs."""
    return sorted(p for p in Path(runs_root).iterdir() if p.is_dir() and not p.name.startswith("."))


def check(runs_root: Path) -> List[Tuple[Path, Verdict]]:
    return [(path, RunDir(path).verify()) for path in run_folders(runs_root)]


def seal_unverified(run_dir: Path) -> str:
    """Seal one unverified record; returns what was done, in a few words."""
    run = RunDir(run_dir)
    try:
        run.lock()
    except RunLocked as err:
        return f"not sealed: {err}"
    try:
        verdict = run.verify()
        if verdict.state != "unverified":
            return f"not sealed: {verdict.state}"
        final = run.read_final()
        if final is None:  # verify() gives a record without final.json another state; it may have gone since
            return "not sealed: no final.json"
        run.write_final(final)
        return "sealed"
    finally:
        run.unlock()


def main(argv: Optional[List[str]] = None, out=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comhe.run verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results",
                        help="the results folder; its run records are in <results>/runs")
    parser.add_argument("--seal", action="store_true",
                        help="seal the unverified records (written before records were sealed) once you trust them")
    args = parser.parse_args(argv)
    out = sys.stdout if out is None else out
    runs_root = Path(args.results) / "runs"
    if not runs_root.is_dir():
        print(f"error: no run records in {runs_root} (pick the results folder with --results / make RESULTS=...)",
              file=sys.stderr)
        return 2
    found = check(runs_root)
    counts = {state: 0 for state in ("sealed", "unverified", "unfinished", "damaged")}
    for path, verdict in found:
        if verdict.state == "unverified" and args.seal:
            done = seal_unverified(path)
            print(f"{done}: {path}", file=out)
            verdict = RunDir(path).verify()
        elif verdict.state == "unverified":
            print(f"unverified: {path}: {verdict.problem}", file=out)
        if verdict.damaged:
            print(f"damaged: {path}/{verdict.problem}", file=out)
        counts[verdict.state] += 1
    print(f"{runs_root}: {len(found)} runs: {counts['sealed']} sealed and intact, {counts['unverified']} unverified "
          f"(written before records were sealed; --seal adopts them), {counts['unfinished']} unfinished (no result "
          f"to check), {counts['damaged']} damaged", file=out)
    if counts["damaged"]:
        print("damaged runs are left out of every table, figure and claim; RETRAIN_DAMAGED=1 on the make target that "
              "planned them retrains them (their folders are set aside in runs/.damaged)", file=out)
    out.flush()
    return 1 if counts["damaged"] else 0

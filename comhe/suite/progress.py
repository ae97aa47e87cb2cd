"""Live progress of a table: per-run iteration / total, images/s and ETA, and the table's ETA from measured rates.

Every run writes its progress record (``comhe/train/progress.py``: ``<run dir>/progress.json``, every few seconds)
whatever launches it: a local worker, torchrun, a SLURM job on a shared filesystem. The runner polls those records
(``Monitor``, a background thread, every ``POLL_S`` seconds) and shows them

* on a terminal: one tqdm bar for the table (iterations of every run left to train) and one per running run;
* in a log or any other non-terminal output: a block of lines every ``LINE_EVERY_S`` seconds
  (``COMHE_PROGRESS_S=...`` changes it), one for the table and one per running run.

The table's ETA (``table_eta``) adds up, for each unfinished run, its iterations left over its rate (its own where
measured, else the mean of the measured runs of the same model and dataset, else of all measured runs) and divides
by the runs that train at once; the plan's runs finished earlier lend their rates. While training, once a run has
finished in this command, the ETA is at least the pace the command has kept (``Monitor._observed_eta``: wall time,
so each run's start-up counts). It says "unknown" until a first rate is measured. ``DRY=1`` shows each partial run's
iteration and ETA (``describe``) without writing anything: the lock probe is read-only.
"""
from __future__ import annotations

import fcntl
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..train import progress as records_progress
from ..train.records import RunDir

POLL_S = 2.0
LINE_EVERY_S = float(os.environ.get("COMHE_PROGRESS_S", 60.0))
STALE_S = 600.0   # a "running" record not rewritten for this long, with its lock free, is a stopped run
_UNREAD: Any = object()  # default of the ``record`` parameters: read the run's progress record


def duration(seconds: Optional[float]) -> str:
    """``3d 4h``, ``2h 05m``, ``7m 12s``, ``42s``; ``?`` for None."""
    if seconds is None or seconds != seconds:
        return "?"
    s = int(round(max(seconds, 0)))
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m:02d}m"
    return f"{m}m {s % 60:02d}s" if m else f"{s}s"


def locked_now(run_dir: str | Path) -> bool:
    """Whether a process holds the run's lock, probed read-only (no file is created or written)."""
    path = Path(run_dir) / ".lock"
    try:
        f = open(path, "r")
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False


def measured_rate(run_dir: str | Path, cfg: Mapping[str, Any], record: Optional[Dict[str, Any]] = _UNREAD
                  ) -> Optional[float]:
    """Iterations per second of a run: its progress record, else its final.json, else its metrics' last row.
    ``record``: the run's progress record (or None: it has none) when the caller has just read it."""
    if record is _UNREAD:
        record = records_progress.read(run_dir)
    if record and record.get("iterations_per_s"):
        return float(record["iterations_per_s"])
    run = RunDir(run_dir)
    final = run.read_final() or {}
    if final.get("train_images_per_s") and final["train_images_per_s"] == final["train_images_per_s"]:
        return float(final["train_images_per_s"]) / cfg["batch_size"]
    rows = run.read_metrics()
    if rows and float(rows[-1].get("seconds") or 0) > 0 and float(rows[-1]["iteration"]) > 0:
        return float(rows[-1]["iteration"]) / float(rows[-1]["seconds"])
    return None


def iteration_of(run_dir: str | Path, cfg: Mapping[str, Any], record: Optional[Dict[str, Any]] = _UNREAD) -> int:
    """Iterations done: ``iterations`` for a finished run, else the progress record's, else the metrics'.
    ``record``: as for ``measured_rate``."""
    run = RunDir(run_dir)
    if run.status() == "done":
        return int((run.read_final() or {}).get("iterations") or cfg["iterations"])
    if record is _UNREAD:
        record = records_progress.read(run_dir)
    if record:
        return int(record.get("iteration") or 0)
    rows = run.read_metrics()
    return int(float(rows[-1]["iteration"])) if rows else 0


def _group(cfg: Mapping[str, Any]) -> Tuple[str, str]:
    return cfg["dataset"], cfg["model"]


def table_eta(runs: Sequence[Tuple[str, Mapping[str, Any]]], concurrent: int,
              rates: Optional[Dict[str, float]] = None,
              records: Optional[Mapping[str, Optional[Dict[str, Any]]]] = None,
              reference: Sequence[Tuple[str, Mapping[str, Any]]] = ()) -> Optional[float]:
    """Seconds until every run of ``runs`` (``(run dir, cfg)``) is finished, at the measured rates (module
    docstring); None while no rate is known. ``rates`` (run dir -> iterations/s) and ``records`` (run dir -> its
    progress record, or None for none) save re-reading records. ``reference``: finished runs of the same plan, whose
    rates count too (28 of 40 runs done is not "no rate yet")."""
    rates = dict(rates) if rates is not None else {}
    records = records or {}
    for run_dir, cfg in list(runs) + list(reference):
        if run_dir not in rates:
            rate = measured_rate(run_dir, cfg, records.get(run_dir, _UNREAD))
            if rate:
                rates[run_dir] = rate
    if not rates:
        return None
    by_group: Dict[Tuple[str, str], List[float]] = {}
    cfgs = {**dict(reference), **dict(runs)}
    for run_dir, rate in rates.items():
        if run_dir in cfgs:
            by_group.setdefault(_group(cfgs[run_dir]), []).append(rate)
    overall = sum(rates.values()) / len(rates)
    seconds, left_runs, longest = 0.0, 0, 0.0
    for run_dir, cfg in runs:
        left = cfg["iterations"] - iteration_of(run_dir, cfg, records.get(run_dir, _UNREAD))
        if left <= 0 or RunDir(run_dir).status() == "done":
            continue
        group = by_group.get(_group(cfg))
        rate = rates.get(run_dir) or (sum(group) / len(group) if group else overall)
        seconds += left / rate
        longest = max(longest, left / rate)
        left_runs += 1
    if not left_runs:
        return 0.0
    return max(seconds / max(1, min(concurrent, left_runs)), longest)


def describe(run_dir: str | Path, cfg: Mapping[str, Any], now: Optional[float] = None) -> str:
    """A partial run for ``DRY=1``: its iteration, whether it is training now (and where), its ETA."""
    now = time.time() if now is None else now
    record = records_progress.read(run_dir)
    done, total = iteration_of(run_dir, cfg, record), cfg["iterations"]
    text = f"iteration {done}/{total} ({100.0 * done / max(total, 1):.1f}%)"
    rate = measured_rate(run_dir, cfg, record)
    if locked_now(run_dir):
        where = f" on {record['host']} (pid {record['pid']})" if record else ""
        age = f", updated {duration(now - record['updated'])} ago" if record else ""
        eta = f", ETA {duration((total - done) / rate)}" if rate else ""
        rate_text = f", {rate * cfg['batch_size']:.0f} img/s" if rate else ""
        return f"{text}, training now{where}{rate_text}{eta}{age}"
    since = f" {duration(now - record['updated'])} ago" if record else ""
    left = f"; {duration((total - done) / rate)} left at its last rate" if rate else ""
    return f"{text}, stopped{since} (the next run of the command resumes it from its last checkpoint){left}"


class Monitor:
    """Polls the progress records of ``runs`` (``(name, run dir, cfg)``) and shows them (module docstring)."""

    def __init__(self, runs: Sequence[Tuple[str, str, Mapping[str, Any]]], concurrent: int, out=sys.stdout,
                 bars: Optional[bool] = None, poll_s: Optional[float] = None, line_every_s: Optional[float] = None,
                 finished: Sequence[Tuple[str, Mapping[str, Any]]] = ()):
        """``finished``: ``(run dir, cfg)`` of the plan's runs finished before this command (their rates count)."""
        self.runs, self.concurrent, self.out = list(runs), max(1, concurrent), out
        self.reference = list(finished)
        self._started = time.monotonic()
        self._baseline: Optional[Tuple[int, int]] = None   # (iterations done, runs finished) at the first look
        self.bars = (hasattr(out, "isatty") and out.isatty()) if bars is None else bars
        self.poll_s = POLL_S if poll_s is None else poll_s
        self.line_every_s = LINE_EVERY_S if line_every_s is None else line_every_s
        self.total = sum(cfg["iterations"] for _, _, cfg in self.runs)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._tqdm: Dict[str, Any] = {}
        self._last_lines = time.monotonic()
        self._final_rates: Dict[str, Optional[float]] = {}   # finished runs: read once

    # --- what the runner prints goes through here, so that bars and lines do not tear each other
    def print(self, text: str) -> None:
        with self._lock:
            if self._tqdm:
                from tqdm import tqdm
                tqdm.write(text, file=self.out)
            else:
                print(text, file=self.out, flush=True)

    def start(self) -> "Monitor":
        if self.runs:
            self._thread = threading.Thread(target=self._loop, name="comhe-progress", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._lock:
            for bar in self._tqdm.values():
                bar.close()
            self._tqdm.clear()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - a display problem must never stop a table
                pass

    # --- one look at every record
    def snapshot(self) -> Dict[str, Any]:
        """``{"done": iterations done in all runs, "finished": runs, "running": [(name, record)], "eta_s": ...}``."""
        done, finished, running, rates, records = 0, 0, [], {}, {}
        now = time.time()
        for name, run_dir, cfg in self.runs:
            if run_dir in self._final_rates or RunDir(run_dir).status() == "done":
                finished += 1
                done += cfg["iterations"]
                if run_dir not in self._final_rates:
                    self._final_rates[run_dir] = measured_rate(run_dir, cfg)
                rate = self._final_rates[run_dir]
            else:
                record = records[run_dir] = records_progress.read(run_dir)
                if record and record.get("status") == "running" and now - record.get("updated", 0) < STALE_S:
                    running.append((name, record))
                    done += int(record.get("iteration") or 0)
                rate = measured_rate(run_dir, cfg, record)
            if rate:
                rates[run_dir] = rate
        for run_dir, cfg in self.reference:  # read once: finished runs do not change
            if run_dir not in self._final_rates:
                self._final_rates[run_dir] = measured_rate(run_dir, cfg)
            known = self._final_rates[run_dir]
            if known:
                rates[run_dir] = known
        eta = table_eta([(d, c) for _, d, c in self.runs], self.concurrent, rates, records, self.reference)
        observed = self._observed_eta(done, finished)
        if observed is not None:  # the larger: run rates leave out each run's start-up (imports, data, model)
            eta = observed if eta is None else max(eta, observed)
        return {"done": done, "finished": finished, "running": running, "eta_s": eta}

    def _observed_eta(self, done: int, finished: int) -> Optional[float]:
        """The ETA at the pace this command has kept: iterations done since it started over the wall time, which
        counts every cost of a run (start-up, data, evaluations) and the workers' concurrency. Only once a run has
        finished here, so that some start-up is in the measure (a GCN run trains in 2 s after 5-40 s of imports)."""
        if self._baseline is None:
            self._baseline = (done, finished)
            return None
        done0, finished0 = self._baseline
        elapsed = time.monotonic() - self._started
        if finished <= finished0 or done <= done0 or elapsed <= 0:
            return None
        return max(self.total - done, 0) * elapsed / (done - done0)

    def poll(self) -> Optional[Dict[str, Any]]:
        """Draw the bars, or print the block of lines when one is due; returns the snapshot shown (None when no
        line was due: in log mode nothing is read between two blocks)."""
        if self.bars:
            snap = self.snapshot()
            self._draw_bars(snap)
            return snap
        if time.monotonic() - self._last_lines < self.line_every_s:
            return None
        snap = self.snapshot()
        self._last_lines = time.monotonic()
        self.print("\n".join(self.lines(snap)))
        return snap

    def lines(self, snap: Mapping[str, Any]) -> List[str]:
        head = (f"[progress] {snap['finished']}/{len(self.runs)} runs finished, {len(snap['running'])} running; "
                f"{snap['done']}/{self.total} iterations ({100.0 * snap['done'] / max(self.total, 1):.1f}%); "
                f"table ETA {duration(snap['eta_s']) if snap['eta_s'] is not None else 'unknown (no rate yet)'}")
        return [head] + [f"[progress]   {name}  {_run_text(record)}" for name, record in snap["running"]]

    def _draw_bars(self, snap: Mapping[str, Any]) -> None:
        from tqdm import tqdm
        with self._lock:
            if "table" not in self._tqdm:
                self._tqdm["table"] = tqdm(total=self.total, desc="table", unit="it", file=self.out, position=0,
                                           dynamic_ncols=True, leave=True)
            table = self._tqdm["table"]
            table.n = snap["done"]
            table.set_postfix_str(f"{snap['finished']}/{len(self.runs)} runs, ETA "
                                  f"{duration(snap['eta_s']) if snap['eta_s'] is not None else '?'}", refresh=False)
            table.refresh()
            live = {name for name, _ in snap["running"]}
            for name in [n for n in self._tqdm if n != "table" and n not in live]:
                self._tqdm.pop(name).close()
            for name, record in snap["running"]:
                if name not in self._tqdm:
                    self._tqdm[name] = tqdm(total=record.get("iterations") or 1, desc=name[:40], unit="it",
                                            file=self.out, position=len(self._tqdm), dynamic_ncols=True, leave=False)
                bar = self._tqdm[name]
                bar.n = int(record.get("iteration") or 0)
                bar.set_postfix_str(_run_text(record, short=True), refresh=False)
                bar.refresh()


def _run_text(record: Mapping[str, Any], short: bool = False) -> str:
    it, total = int(record.get("iteration") or 0), int(record.get("iterations") or 0)
    epochs = record.get("unit") == "epoch"  # a full-batch node run: epochs of the whole graph, no images
    rate = record.get("iterations_per_s") if epochs else record.get("images_per_s")
    speed = (f"{rate:.1f} epochs/s" if epochs else f"{rate:.0f} img/s") if rate else \
        ("? epochs/s" if epochs else "? img/s")
    eta = duration(record.get("eta_s"))
    latest = record.get("latest") or {}
    key, label = ("test_acc", "test accuracy") if epochs else ("test_error", "test error")
    err = f", {label} {latest[key]:.2f}% at {int(latest['iteration'])}" \
        if isinstance(latest.get(key), (int, float)) and latest.get("iteration") else ""
    if short:
        return f"{speed}, ETA {eta}{err}"
    return f"{it}/{total} ({100.0 * it / max(total, 1):.1f}%)  {speed}  ETA {eta}{err}"

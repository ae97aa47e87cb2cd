"""How runs are executed: one call per run (``execute_one``) and the launchers that make those calls (a registry).

* ``local``            in this process (``jobs=1``) or ``jobs`` spawned worker processes, each training one run at a
                       time; on the CPU each worker gets ``cores // jobs`` threads, on GPUs workers take cards round
                       robin (several workers may share one card: small CIFAR runs do not fill an H100). Workers die
                       with the runner (``die_with_parent``). With ``nproc > 1`` each run is ``nproc`` DDP processes
                       (``execute_torchrun``), one run at a time.
* ``slurm``            one submitit job per run, as one job array (``pip install submitit``; the core never imports
                       it). Each job runs ``SubmititRun``, which follows submitit's checkpointing protocol: a
                       preempted or timed-out job checkpoints and is requeued, and resumes from that checkpoint.
* ``submitit-local``   submitit's local executor (subprocesses), how the SLURM path is tested without a cluster.

Outcomes of one run: ``finished`` / ``diverged`` (trained here), ``skipped`` (finished before the call),
``elsewhere`` (another process finished it during the call), ``locked`` (another process is training it now),
``no data``, ``failed``; after a stop signal (``train/interrupt.py``) ``stopped`` (the run checkpointed; a rerun
resumes it) and ``not started``. The local launcher starts no run once a stop was asked for, forwards the signal to its
workers as SIGTERM and reports every run in progress as it ends; ``execute_one`` alone raises ``engine.Preempted``.
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..registry import Registry
from ..train.interrupt import STOP
from ..train.records import RunDir, RunLocked, atomic_write

LAUNCHERS = Registry("launcher")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def _finished_after_last_lock(run: RunDir) -> bool:
    """final.json is newer than the last lock taken on the run. False when the last locker found the run already
    finished (``engine.train`` returns final.json unchanged when another process finished it while this one was
    preparing its data and model): the lock file's mtime is its last acquisition (``RunDir.lock`` rewrites it)."""
    try:
        return run.final_path.stat().st_mtime_ns > (run.path / ".lock").stat().st_mtime_ns
    except OSError:
        return False


def execute_one(cfg: Dict[str, Any], run_dir: str, keep_weights: bool = True) -> Dict[str, Any]:
    """Train one run to the end (or skip it). Returns ``{"outcome": ..., "final": ..., "message": ...}``."""
    run = RunDir(run_dir)
    if run.status() == "done":
        return {"outcome": "skipped", "final": run.read_final()}
    from ..train.trainers import for_config  # torch is imported here, not when planning on a login node
    evaluated: List[Dict[str, Any]] = []  # the engine reports each evaluation it ran in this process
    try:
        final = for_config(cfg).train(cfg, run_dir, report=evaluated.append)
    except RunLocked as err:
        return {"outcome": "locked", "message": str(err)}
    if not (evaluated or _finished_after_last_lock(run)):
        return {"outcome": "elsewhere", "final": final}
    if not keep_weights:  # smoke runs: the final weights are useless and ImageNet ResNets weigh 50-100 MB each
        shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
    return {"outcome": final["status"], "final": final}


def _guarded(call: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    """A failure reported instead of raised (one bad run must not stop a table); a stop signal is raised."""
    from ..data import DatasetUnavailable
    from ..train.engine import Preempted
    try:
        return call()
    except DatasetUnavailable as err:
        return {"outcome": "no data", "message": str(err)}
    except Preempted:  # a stop signal: the run checkpointed; stop here, do not start the next run
        raise
    except OSError as err:  # the disk is full or failing: stop (the next runs would fail alike), one line
        from ..train.io_errors import disk_error
        if disk_error(err) is None:
            raise
        return {"outcome": "io error", "message": disk_error(err)}
    except Exception as err:  # noqa: BLE001 - reported with its traceback, the others go on
        return {"outcome": "failed", "message": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(limit=6)}


def _execute_guarded(cfg: Dict[str, Any], run_dir: str, keep_weights: bool) -> Dict[str, Any]:
    return _guarded(lambda: execute_one(cfg, run_dir, keep_weights))


NOT_STARTED = {"outcome": "not started", "message": "not started: a stop was asked for"}


def _worker_execute(cfg: Dict[str, Any], run_dir: str, keep_weights: bool, parent_pid: int) -> Dict[str, Any]:
    """``_execute_guarded`` in a pool worker; after a stop signal it starts no run (the pool may have queued more).
    Stopped by a signal after its runner died, the worker exits: else it would wait for its next run forever, as the
    pool's queues stay open while any worker holds their ends."""
    from ..train.engine import Preempted
    if STOP.requested:
        _exit_if_orphaned(parent_pid)
        return NOT_STARTED
    _BUSY.set()
    try:
        result = _execute_guarded(cfg, run_dir, keep_weights)
    except Preempted as err:
        result = {"outcome": "stopped", "message": str(err)}
    finally:
        _BUSY.clear()
    # However the run ended (stopped, or its last steps finished before the signal was seen): an orphan exits here.
    _exit_if_orphaned(parent_pid)
    return result


def _exit_if_orphaned(parent_pid: int) -> None:
    """Exit when reparented: the runner is gone (PR_SET_PDEATHSIG sent the signal) and nobody reads a result."""
    if os.getppid() != parent_pid:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(143)


# --- processes that die with the runner ------------------------------------------------------------------------------

def _prctl():
    """libc's prctl, resolved in this process (a forked child about to exec must not dlopen); None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when ``parent_pid`` dies, even by SIGKILL: the engine then checkpoints and stops, instead
    of training on as an orphan that nobody collects and that holds the run's lock. Linux: PR_SET_PDEATHSIG; else (or
    if prctl fails) a daemon thread polling the parent pid every second."""
    prctl = _prctl()
    if prctl is not None and prctl(PR_SET_PDEATHSIG, signal.SIGTERM) == 0:
        if os.getppid() != parent_pid:  # the parent died before the prctl: nobody will send it
            os.kill(os.getpid(), signal.SIGTERM)
        return
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


_worker_index = None
_worker_stop = None  # the pool worker's stop handling, held for its life
_BUSY = threading.Event()  # set while this pool worker trains a run


def _exit_when_orphaned_and_idle(parent_pid: int) -> None:
    """A pool worker whose runner died while it waited for its next run (its own run had ended just before) gets no
    signal that wakes it: the pool's queue stays open while any worker holds its ends. Polled: it exits once
    orphaned and idle; a worker still training was sent SIGTERM (PR_SET_PDEATHSIG) and exits after its checkpoint."""
    while os.getppid() == parent_pid:
        time.sleep(0.2)
    while _BUSY.is_set():
        time.sleep(0.1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(143)


def _worker_init(counter, gpus: int, parent_pid: int) -> None:
    global _worker_index, _worker_stop
    # A stop signal (the terminal's Ctrl-C to the whole process group, the runner's SIGTERM) is handled by the
    # engine: checkpoint and stop; the runner prints the line. A second Ctrl-C ends the worker at once: raised, it
    # would be caught by the pool's loop, which would go on to the next run.
    STOP.quiet = STOP.hard_exit = True
    _worker_stop = STOP.handling()
    _worker_stop.__enter__()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # blocked by the runner (pool)
    die_with_parent(parent_pid)
    threading.Thread(target=_exit_when_orphaned_and_idle, args=(parent_pid,), daemon=True).start()
    with counter.get_lock():
        _worker_index = counter.value
        counter.value += 1
    if gpus > 1:  # before CUDA is initialised in this fresh (spawned) process
        os.environ["CUDA_VISIBLE_DEVICES"] = str(_worker_index % gpus)


# --- multi-GPU runs: torchrun ----------------------------------------------------------------------------------------

def torchrun_command(cfg_path: Path, run_dir: str, nproc: int) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "comhe.train", str(cfg_path), "--run-dir", str(run_dir), "--progress", "lines"]


def execute_torchrun(cfg: Dict[str, Any], run_dir: str, keep_weights: bool, nproc: int, out=None) -> Dict[str, Any]:
    """One run as ``nproc`` DDP processes (torchrun + ``comhe.train``); output in ``<runs>/.launch/<run>.log``, and
    passed through to ``out``.

    Classified from its records, not torchrun's exit code (1 whatever its workers' codes: 2 bad input, 3 locked,
    4 diverged, 143 stopped). A stop signal to this process is forwarded to torchrun as SIGTERM (torchrun passes it
    to its workers, which checkpoint) and raised as ``Preempted`` once torchrun is gone."""
    from ..train.config import dump
    from ..train.engine import Preempted
    out = out or sys.stdout
    run = RunDir(run_dir)
    if run.status() == "done":
        return {"outcome": "skipped", "final": run.read_final()}
    if locked_by_other(run.path):
        return {"outcome": "locked", "message": f"{run_dir} is being trained by another process"}
    cfg_path = Path(run_dir).parent / ".launch" / f"{Path(run_dir).name}.yaml"  # not in the run directory: a run
    cfg_path.parent.mkdir(parents=True, exist_ok=True)                          # that fails early leaves none
    atomic_write(cfg_path, dump(cfg))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = None

    def forward(signum):
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
    # The output goes to a log file, copied to ``out`` as it grows: through a pipe, the workers would die of a broken
    # pipe at their next line if this process died, before they could checkpoint on the SIGTERM it leaves them.
    # torchrun runs in its own session: a Ctrl-C at the terminal reaches this process alone, which sends torchrun
    # one SIGTERM (torchrun would repeat a SIGINT to its workers, and print its own traceback for it).
    log_path = cfg_path.with_suffix(".log")
    with STOP.handling("torchrun's workers checkpoint and stop"):
        STOP.on_first.append(forward)
        try:
            with open(log_path, "w") as log, open(log_path) as reader:
                prctl = _prctl()  # torchrun dies with this process, its workers then get SIGTERM from it (Linux)
                proc = subprocess.Popen(torchrun_command(cfg_path, run_dir, nproc), stdout=log,
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                        preexec_fn=prctl and (lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)))
                if STOP.requested:
                    proc.send_signal(signal.SIGTERM)
                held = False
                while proc.poll() is None:
                    held = _copy_until_stop(reader, out) or held
                    time.sleep(0.2)
                if _copy_until_stop(reader, out) or held:
                    print(f"torchrun's output after the stop: {log_path}", file=out, flush=True)
        finally:
            STOP.on_first.remove(forward)
        stopped = STOP.requested
    final = run.read_final()
    if final is not None:
        if not _finished_after_last_lock(run):
            return {"outcome": "elsewhere", "final": final}
        if not keep_weights:
            shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
        return {"outcome": final["status"], "final": final}
    if stopped:  # torchrun may go before its workers (SLURM signals every process of a job step): wait for the lock
        deadline = time.monotonic() + 120
        while locked_by_other(run.path) and time.monotonic() < deadline:
            time.sleep(0.5)
        raise Preempted(f"stopped by a signal: {run_dir} checkpointed; rerun the same command to resume")
    if locked_by_other(run.path):
        return {"outcome": "locked", "message": f"{run_dir} is being trained by another process"}
    tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
    return {"outcome": "failed", "message": f"torchrun exited with {proc.returncode} and no final.json; the end of "
                                            f"its output ({log_path}):\n{tail}"}


def _copy_until_stop(reader, out) -> bool:
    """Copy what torchrun wrote since the last call to ``out``. After a stop, hold it back (torchrun reports its
    own shutdown at length, with a traceback; the log keeps it): returns whether anything was held back."""
    text = reader.read()
    if text and not STOP.requested:
        out.write(text)
        out.flush()
        return False
    return bool(text)


def locked_by_other(run_dir) -> bool:
    """Whether another process holds the run's lock now (a probe: takes and releases it when free)."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        return False
    try:
        run.lock()
    except RunLocked:
        return True
    run.unlock()
    return False


# --- launchers -------------------------------------------------------------------------------------------------------

@LAUNCHERS.register("local")
def launch_local(pending, cfgs: Sequence[Dict], dirs: Sequence[str], keep: Sequence[bool], jobs: int = 1,
                 on_result: Optional[Callable] = None, nproc: int = 1, out=None, **_) -> None:
    """Each run in this process, or in ``jobs`` spawned workers. After a stop signal no run starts: the ones not
    started are reported ``not started``, those in progress as they end (``stopped``, checkpointed, or finished)."""
    on_result = on_result or (lambda i, result: None)
    if nproc > 1 or jobs <= 1:  # in this process; a DDP run takes nproc processes (often every GPU) for itself
        from ..train.engine import Preempted
        for i, (cfg, run_dir, keep_weights) in enumerate(zip(cfgs, dirs, keep)):
            if STOP.requested:
                on_result(i, NOT_STARTED)
                continue
            call = (lambda c=cfg, d=run_dir, k=keep_weights: execute_torchrun(c, d, k, nproc, out)) if nproc > 1 \
                else (lambda c=cfg, d=run_dir, k=keep_weights: execute_one(c, d, k))
            try:
                result = _guarded(call)
            except Preempted as err:
                result = {"outcome": "stopped", "message": str(err)}
            if on_result(i, result) is False:
                return
        return
    _launch_pool(cfgs, dirs, keep, jobs, on_result)


def _launch_pool(cfgs, dirs, keep, jobs: int, on_result: Callable) -> None:
    """``jobs`` spawned workers. A stop signal reaches the workers from the terminal (Ctrl-C goes to the whole
    process group) or from here (SIGTERM, forwarded at the first signal); queued runs are cancelled or, already
    handed to a worker, refused by it (``_worker_execute``). Never ``with ProcessPoolExecutor``: its exit waits for
    every queued run, and a second Ctrl-C must not wait."""
    import torch
    ctx = mp.get_context("spawn")  # fork after torch/OpenMP initialisation can deadlock; CUDA needs spawn anyway
    counter = ctx.Value("i", 0)
    pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                               initargs=(counter, torch.cuda.device_count(), os.getpid()))

    def forward(signum):  # in the signal handler: only a kill per worker
        for pid in list(getattr(pool, "_processes", None) or {}):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    STOP.on_first.append(forward)
    stopped_at_once = True
    try:
        # The workers start with the stop signals blocked (a blocked mask is inherited through fork and exec) until
        # their handler is in place: a Ctrl-C while they import torch waits for it instead of killing them.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            futures = {pool.submit(_worker_execute, *args, os.getpid()): i
                       for i, args in enumerate(zip(cfgs, dirs, keep))}
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if STOP.requested:  # signalled while submitting, before the workers existed
            forward(STOP.signum)
        pending, cancelled = set(futures), False
        while pending:
            if STOP.requested and not cancelled:
                cancelled = True
                for f in pending:
                    f.cancel()
            for f in [f for f in pending if f.cancelled()]:
                pending.discard(f)
                on_result(futures[f], NOT_STARTED)
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                if future.cancelled():
                    on_result(futures[future], NOT_STARTED)
                    continue
                try:
                    result = future.result()
                except BrokenProcessPool as err:  # a worker died (killed, out of memory): its run is resumable
                    result = {"outcome": "stopped" if STOP.requested else "failed",
                              "message": f"its worker process died ({err})"}
                    if STOP.requested and RunDir(dirs[futures[future]]).status() == "todo":
                        result = NOT_STARTED
                if on_result(futures[future], result) is False:
                    for f in pending:
                        f.cancel()
        stopped_at_once = False
    finally:
        STOP.on_first.remove(forward)
        pool.shutdown(wait=not stopped_at_once, cancel_futures=True)


class SubmititRun:
    """What each submitit job runs: one run (``execute_one``, or torchrun when ``nproc > 1``).

    submitit's checkpointing protocol: submitit calls ``checkpoint`` from its handler of the preemption / time-out
    signal (USR2, or $SUBMITIT_PREEMPT_SIGNAL; SLURM sends it ``signal_delay_s`` before the time limit, and at
    preemption where PreemptParameters=send_user_signal), pickles the ``DelayedSubmission`` it returns and requeues
    the job. The engine handles that signal while it trains (``engine.STOP_SIGNALS``): it checkpoints and raises
    ``Preempted``; the signal is then raised again for submitit's handler, restored by now. The requeued job calls
    this again with the same arguments and ``engine.train`` resumes from the checkpoint."""

    def __init__(self, nproc: int = 1):
        self.nproc = nproc

    def __call__(self, cfg: Dict[str, Any], run_dir: str, keep_weights: bool) -> Dict[str, Any]:
        from ..train.engine import Preempted
        try:
            if self.nproc > 1:
                return _guarded(lambda: execute_torchrun(cfg, run_dir, keep_weights, self.nproc))
            return _execute_guarded(cfg, run_dir, keep_weights)
        except Preempted as err:
            sig = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
            if sig is not None and callable(signal.getsignal(sig)):  # a submitit job: its handler exits from here
                signal.raise_signal(sig)
            return {"outcome": "preempted", "message": str(err)}  # not in a submitit job: rerun to resume

    def checkpoint(self, *args: Any, **kwargs: Any):
        from submitit.helpers import DelayedSubmission
        return DelayedSubmission(self, *args, **kwargs)  # the same run again: the engine resumes it


def _submitit(cluster, pending, cfgs, dirs, keep, jobs: int, on_result, folder: Path, options: Dict[str, Any],
              nproc: int = 1) -> None:
    try:
        import submitit
    except ImportError:
        raise SystemExit("LAUNCHER=slurm needs submitit: pip install submitit (or pip install -e '.[slurm]')") from None
    # How often a timed-out job is requeued (submitit's default 3) is the executor's, not a job parameter.
    limits = {k: options[k] for k in options if k.endswith("max_num_timeout")}
    options = {k: v for k, v in options.items() if k not in limits}
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster, **limits)
    if cluster == "local":
        params = {"timeout_min": 60}
    else:  # one task per job; with nproc > 1 that task runs torchrun on nproc GPUs of one node
        params = {"timeout_min": 24 * 60, "gpus_per_node": nproc, "tasks_per_node": 1, "cpus_per_task": 8 * nproc,
                  "slurm_array_parallelism": max(jobs, 1) if jobs > 1 else 64}
    executor.update_parameters(**{**params, **options})
    submitted = executor.map_array(SubmititRun(nproc), list(cfgs), list(dirs), list(keep))
    print(f"submitted {len(submitted)} job(s) through submitit ({cluster or 'slurm'}), logs in {folder}; waiting "
          "(interrupting leaves them running: re-run the same command later to collect)", flush=True)
    for i, job in enumerate(submitted):
        with STOP.phase("stops waiting for the jobs (they run on: rerun the same command to collect them)"):
            while not job.done() and not STOP.requested:  # a Ctrl-C stops the waiting; the jobs run on
                time.sleep(1.0)
        if STOP.requested:
            print(f"stopped waiting: {len(submitted) - i} job(s) left running; rerun the same command to collect them",
                  flush=True)
            return
        try:
            result = job.result()
        except Exception as err:  # noqa: BLE001 - a failed job (e.g. timed out too often) is reported as failed
            result = {"outcome": "failed", "message": f"job {job.job_id}: {type(err).__name__}: {err}"}
        on_result(i, result)


@LAUNCHERS.register("slurm")
def launch_slurm(pending, cfgs, dirs, keep, jobs=1, on_result=None, folder=None, options=None, nproc=1, **_):
    _submitit(None, pending, cfgs, dirs, keep, jobs, on_result, folder, options or {}, nproc)


@LAUNCHERS.register("submitit-local")
def launch_submitit_local(pending, cfgs, dirs, keep, jobs=1, on_result=None, folder=None, options=None, nproc=1, **_):
    _submitit("local", pending, cfgs, dirs, keep, jobs, on_result, folder, options or {}, nproc)

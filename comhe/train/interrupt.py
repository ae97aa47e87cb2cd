"""Stopping on a signal, the same way everywhere: the first Ctrl-C (SIGINT) or SIGTERM asks for a stop, a second Ctrl-C
stops at once.

One ``StopState`` per process (``STOP``). ``with STOP.handling(doing=...)`` installs its handler for ``STOP_SIGNALS``
(the outermost ``with`` installs and, on leaving, restores the previous handlers; nested ones share the state):

* the first stop signal sets ``STOP.signum``, prints one line to stderr saying what the process does about it
  (``STOP.doing``: e.g. "the run in progress checkpoints and stops") and returns: the code polls ``STOP.requested`` at
  its safe points (the engines after each step, the runner before each run) and winds down from there;
* a second SIGINT raises ``StopNow`` (a ``KeyboardInterrupt``) from wherever the process is, or ends the process with
  ``os._exit`` where an exception could be swallowed (``hard_exit``: pool workers, whose executor loop catches every
  exception). No file is damaged: every record and checkpoint is written to a temporary file and renamed
  (``records.atomic_write``), so a stop anywhere leaves the old or the new version, and the next run removes the
  temporary files (``RunDir.remove_temp_files``). A repeated SIGTERM is not an escalation: the suite forwards SIGTERM
  to its workers and torchrun its own signal, which a worker may receive besides the terminal's SIGINT.

A SIGINT ignored when the process started (a background job of a non-interactive shell, ``nohup``) stays ignored.
The exit code of a stopped process is 130 (``exit_code``), for Ctrl-C and SIGTERM alike.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Optional

# SIGTERM: kill, scancel, SLURM preemption, torchrun stopping its workers, a dead runner's workers (PR_SET_PDEATHSIG);
# SIGUSR1: a common `sbatch --signal`; SIGUSR2: submitit's preemption / time-out signal (`--signal=USR2@90`), which
# comhe.suite.launchers re-raises to submitit once the checkpoint is written, so that submitit requeues the job.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StopNow(KeyboardInterrupt):
    """A second Ctrl-C: stop at once (no checkpoint of the step in progress; the previous one is intact)."""


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class StopState:
    """Whether (and by which signal) this process was asked to stop, and how it reacts to the next one."""

    def __init__(self):
        self.signum: Optional[int] = None   # the first stop signal received; None while no stop was asked for
        self.doing = "stopping"             # the one line's text after "<signal>: " (set by the current phase)
        self.hard_exit = False              # a second Ctrl-C ends the process with os._exit (pool workers)
        self.quiet = False                  # no line printed (processes whose parent prints it: pool workers)
        self.escalate = True                # a second SIGINT stops at once (not under torchrun, which repeats it)
        self.on_first = []                  # callables(signum) run on the first signal (forward it to workers)
        self._depth = 0
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def signal_name(self) -> str:
        return signal_name(self.signum) if self.signum is not None else "a signal"

    def exit_code(self) -> int:
        """130 whatever the stop signal: one code for "stopped on request, resumable" (issue #19 asks for 130
        after Ctrl-C and SIGTERM alike; the signal is named in the stop line and the table's INCOMPLETE note)."""
        return 128 + signal.SIGINT

    def reset(self) -> None:
        self.signum, self.on_first = None, []

    @contextlib.contextmanager
    def handling(self, doing: Optional[str] = None):
        """Handle ``STOP_SIGNALS`` in the body (main thread only; elsewhere the state is only read). The outermost
        ``with`` starts from no stop requested; ``doing``: what a first signal makes the process do (the outermost
        one's text stands: an engine inside the suite's runner does not replace the runner's)."""
        outer = self._depth == 0
        before = self.doing
        if outer:
            self.reset()
            self.install()
            if doing:
                self.doing = doing
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            self.doing = before
            if outer:  # the stop was handled (or never came): a later run in this process starts afresh
                self.restore()
                self.reset()

    def install(self) -> None:
        """Handle ``STOP_SIGNALS`` from now on (main thread only); ``restore`` puts the previous handlers back."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            current = signal.getsignal(sig)
            if sig == signal.SIGINT and current is signal.SIG_IGN:
                continue  # started in the background: Ctrl-C is not meant for this process
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    @contextlib.contextmanager
    def phase(self, doing: str):
        """What a first signal makes the process do while in the body (the line printed), without installing."""
        before, self.doing = self.doing, doing
        try:
            yield
        finally:
            self.doing = before

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            if not self.quiet:
                again = "; Ctrl-C again to stop at once" if signal.SIGINT in self._previous and self.escalate else ""
                _say(f"{signal_name(signum)}: {self.doing}{again}")
            for call in list(self.on_first):
                call(signum)
            return
        if signum != signal.SIGINT or not self.escalate:
            return  # a stop is under way; a forwarded or repeated SIGTERM changes nothing
        if self.hard_exit:
            os._exit(130)  # a pool worker: the runner says it
        raise StopNow("stopped at once by a second Ctrl-C")


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError, RuntimeError):  # stderr closed, a broken pipe, or the signal came in mid-print
        pass


STOP = StopState()

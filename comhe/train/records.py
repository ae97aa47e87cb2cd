"""Per-run records, the only interface between training and reporting.

A run directory holds::

    config.yaml    the resolved config (every key, after overrides)
    metrics.csv    one row per evaluation, appended (iteration, epoch, lr, train_loss, train_acc, reg_loss,
                   test_error, hidden_energy, energy/<layer>..., seconds)
    final.json     written once, at the end: status (finished | diverged), final and best test error, ...
    meta.json      git sha, torch / CUDA versions, device, seed, host, command, wall time
    record.sha256  the seal, written just before final.json: the SHA-256 of the four files above (seal.py)
    checkpoints/   see checkpoint.py
    progress.json  the live progress record, rewritten every few seconds while training (progress.py)
    tensorboard/   TensorBoard event files, with ``tensorboard=true`` only (tracking.py)
    .lock          held (flock) by the process training the run

Every file is written atomically (temporary file + rename), so a reader never sees half a record, and a run killed at
any point leaves either the old or the new version of each file. A finished run is never written again; its seal
(``verify``) tells a damaged or edited record from a good one.
"""
from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO, Any, Dict, List, Mapping, Optional, Sequence

import yaml

from . import config as config_lib
from . import seal

# How a run is executed or observed, not what it computes: left out of its hash.
RUN_ID_IGNORES = ("device", "amp", "channels_last", "compile", "cuda_graph", "workers", "threads", "data_root",
                  "eval_batch_size", "checkpoint_every", "tensorboard", "flush_subnormals")


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, fsync'd, then renamed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def config_hash(cfg: Mapping[str, Any]) -> str:
    """A short hash of what a run computes (execution-only keys such as ``device`` are left out)."""
    added = config_lib.ADDED_KEYS  # at their default, keys added later leave the hash alone
    semantic = {k: v for k, v in cfg.items()
                if k not in RUN_ID_IGNORES and not (k in added and v == config_lib.DEFAULTS[k])}
    return hashlib.sha256(json.dumps(semantic, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run_name(cfg: Mapping[str, Any], label: str = "") -> str:
    """``<label or model-regularizer>-s<seed>-<hash>``: readable, and a changed config never reuses a directory."""
    label = label or f"{cfg['dataset']}-{cfg['model']}-{cfg['regularizer']}"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    return f"{safe}-s{cfg['seed']}-{config_hash(cfg)}"


class RunLocked(RuntimeError):
    """Another process holds this run directory."""


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` (and its parents) and write a probe file there; raise ``OSError`` where that fails."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(20, "exists and is not a directory", str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-probe{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_file: Optional[IO[str]] = None

    # --- state
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def final_path(self) -> Path:
        return self.path / "final.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def status(self) -> str:
        """``done`` (final.json exists), ``partial`` (a config was written), or ``todo``."""
        if self.final_path.exists():
            return "done"
        return "partial" if self.config_path.exists() else "todo"

    # --- locking: one trainer per run directory, across processes and machines sharing a POSIX filesystem
    def lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunLocked(f"{self.path} is being trained by {holder}") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        self._lock_file = f

    def unlock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def check_writable(self) -> None:
        """Raise ``OSError`` unless the run directory can be created and written, without creating it (a run that
        fails before training leaves no directory): creates its parent (the runs root) and writes a probe there."""
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(20, "exists and is not a directory", str(self.path))
        ensure_writable(self.path if self.path.is_dir() else self.path.parent)

    def remove_temp_files(self) -> List[str]:
        """Delete the temporary files of atomic writes killed midway (``.<name>.tmp<pid>``); returns their names.

        Call with the lock held, so that no live writer owns them. They never shadow a record (readers only open
        final names) but would pile up, one per kill, next to checkpoints of hundreds of MB.
        """
        stale = [p for folder in (self.path, self.checkpoint_dir) if folder.is_dir() for p in folder.glob(".*.tmp*")]
        for p in stale:
            p.unlink(missing_ok=True)
        return [p.name for p in stale]

    # --- records
    def write_config(self, cfg: Mapping[str, Any]) -> None:
        atomic_write(self.config_path, yaml.safe_dump(dict(cfg), sort_keys=False))

    def read_config(self) -> Dict[str, Any]:
        return yaml.safe_load(self.config_path.read_text())

    def write_meta(self, meta: Mapping[str, Any]) -> None:
        atomic_write(self.path / "meta.json", json.dumps(meta, indent=2, default=str))

    def read_meta(self) -> Dict[str, Any]:
        path = self.path / "meta.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def write_final(self, final: Mapping[str, Any]) -> None:
        """Seal the run: the manifest of its records (``seal.py``), then final.json, each atomically. Call last."""
        text = json.dumps({**final, seal.SEAL_KEY: seal.MANIFEST}, indent=2, default=float)
        atomic_write(self.path / seal.MANIFEST, seal.manifest_text(self.path, text.encode()))
        atomic_write(self.final_path, text)

    def verify(self) -> seal.Verdict:
        """``sealed`` | ``unverified`` | ``damaged`` (``.problem`` names the file) | ``unfinished``: ``seal.verify``."""
        return seal.verify(self.path)

    def read_final(self) -> Optional[Dict[str, Any]]:
        """final.json as written (the seal's marker left out: a detail of the record, not a result); None if absent.
        Raises ``ValueError`` for a damaged file: check ``verify()`` first."""
        if not self.final_path.exists():
            return None
        final = json.loads(self.final_path.read_text())
        if isinstance(final, dict):
            final.pop(seal.SEAL_KEY, None)
        return final

    def read_done(self) -> Dict[str, Any]:
        """A finished run's final.json (``status() == "done"`` said it exists); raises if it vanished since."""
        final = self.read_final()
        if final is None:
            raise FileNotFoundError(f"{self.final_path} vanished after its run was seen finished")
        return final

    def read_metrics(self) -> List[Dict[str, str]]:
        if not self.metrics_path.exists():
            return []
        with self.metrics_path.open(newline="") as f:
            return list(csv.DictReader(f))

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        """Append one row; the file (header included) is rewritten atomically, never left half-written."""
        rows = self.read_metrics() + [{k: _fmt(v) for k, v in row.items()}]
        self._write_metrics(rows)

    def extend_metrics(self, rows) -> None:
        """Append several rows in one atomic rewrite (a full-batch run logs an epoch in less time than a write)."""
        if rows:
            self._write_metrics(self.read_metrics() + [{k: _fmt(v) for k, v in r.items()} for r in rows])

    def truncate_metrics(self, last_iteration: int) -> None:
        """Drop rows after ``last_iteration`` (a resumed run recomputes them, identically)."""
        rows = self.read_metrics()
        kept = [r for r in rows if int(r["iteration"]) <= last_iteration]
        if len(kept) != len(rows):
            self._write_metrics(kept)

    def _write_metrics(self, rows: Sequence[Mapping[str, Any]]) -> None:
        fields: List[str] = []
        for r in rows:
            fields += [k for k in r if k not in fields]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.metrics_path, buf.getvalue())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    return str(value)


REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout this package runs from


def git_sha(repo: Path = REPO_ROOT) -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def environment(device) -> Dict[str, Any]:
    import torch

    from . import cpu, devices

    return {
        "git_sha": git_sha(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": torch.cuda.get_device_name(device) if getattr(device, "type", "") == "cuda" else platform.processor()
        or platform.machine(),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "command": " ".join(sys.argv),
        **cpu.execution(),  # threads and subnormal floats, measured (train/cpu.py)
        **devices.describe(device),  # device_line (what the run printed), driver, GPU memory or CPU threads
    }

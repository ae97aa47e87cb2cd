"""Checkpoints that survive being killed at any instant, and detect corruption.

``save`` serialises the state to memory, hashes it (SHA-256), writes ``ckpt-<iteration>.pt`` atomically (temporary
file, fsync, rename), then records ``{file, iteration, sha256}`` in ``manifest.json`` (also atomic), then deletes all
but the newest ``keep`` files. ``load_latest`` walks the manifest from the newest entry, verifies each file's hash and
loads the first intact one with ``torch.load(weights_only=True)``; a truncated or corrupted file is reported with a
warning and skipped, so the run falls back to the previous checkpoint, or restarts when none is intact.
"""
from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .records import atomic_write

MANIFEST = "manifest.json"


def _manifest(directory: Path) -> List[Dict[str, Any]]:
    path = directory / MANIFEST
    if not path.exists():
        return []
    try:
        entries = json.loads(path.read_text())
        return entries if isinstance(entries, list) else []
    except (json.JSONDecodeError, OSError):
        # stacklevel 3: reported at the trainer's call of save / load_latest, past this helper
        warnings.warn(f"{path} is unreadable; looking for checkpoints without it", stacklevel=3)
        return []


def save(directory: Path, iteration: int, state: Dict[str, Any], keep: int = 2) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    name = f"ckpt-{iteration:09d}.pt"
    atomic_write(directory / name, payload)
    entries = [e for e in _manifest(directory) if e.get("file") != name]
    entries.append({"file": name, "iteration": iteration, "sha256": hashlib.sha256(payload).hexdigest()})
    entries.sort(key=lambda e: e["iteration"])
    kept, dropped = entries[-keep:], entries[:-keep]
    atomic_write(directory / MANIFEST, json.dumps(kept, indent=1))
    for entry in dropped:
        (directory / entry["file"]).unlink(missing_ok=True)
    return directory / name


def load_latest(directory: Path, map_location: Any = "cpu") -> Optional[Dict[str, Any]]:
    """The newest intact checkpoint's state, or ``None`` (with a warning for every damaged one skipped, reported at
    the caller's line: the trainer that resumes)."""
    directory = Path(directory)
    for entry in reversed(_manifest(directory)):
        path = directory / entry["file"]
        try:
            payload = path.read_bytes()
        except OSError:
            warnings.warn(f"checkpoint {path} is missing; falling back to an earlier one", stacklevel=2)
            continue
        if hashlib.sha256(payload).hexdigest() != entry["sha256"]:
            warnings.warn(f"checkpoint {path} is corrupted (checksum mismatch); falling back to an earlier one",
                          stacklevel=2)
            continue
        try:
            return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
        except Exception as err:  # a file with the right hash that does not load: written by an incompatible torch
            warnings.warn(f"checkpoint {path} does not load ({err.__class__.__name__}: {err}); falling back",
                          stacklevel=2)
    if any(directory.glob("ckpt-*.pt")) and not _manifest(directory):
        warnings.warn(f"checkpoints in {directory} have no manifest (killed before the first was recorded); "
                      "restarting the run", stacklevel=2)
    return None

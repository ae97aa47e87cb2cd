"""The seal of a finished run: ``record.sha256``, the SHA-256 of every record a result is read from.

Tables, figures, claims and the scorecard read a finished run's ``final.json`` (the numbers), ``metrics.csv`` (the
curves), ``config.yaml`` (the settings in the tidy CSV) and ``meta.json`` (code commit and device in the footers).
``RunDir.write_final`` seals them: it writes ``record.sha256`` (atomically) listing the SHA-256 of each of these
files, ``final.json``'s included, and only then ``final.json`` (atomically). A kill between the two leaves a run
without ``final.json``, i.e. unfinished: it resumes from its final checkpoint and is sealed again. Nothing writes to a
finished run's records afterwards, so any difference is damage or an edit. The format is ``sha256sum``'s: inside a
run folder ``sha256sum -c record.sha256`` checks it too.

``verify(run_dir)`` gives one of:

* ``sealed``      every listed file is there with its checksum, none was added, and final.json is a result;
* ``unverified``  no ``record.sha256`` and ``final.json`` does not say it was sealed: a record written before seals
                  existed. Each file still has to parse (a truncated or zeroed one is damaged), but an edited number
                  cannot be told from a real one; such runs are counted and flagged (``seal_older`` adopts them);
* ``damaged``     ``problem`` says which file and why, in one line;
* ``unfinished``  no ``final.json``: no result to check (training, stopped, or never started).

A checksum detects damage and careless edits, not forgery: whoever rewrites ``final.json`` and the manifest together
is not caught (that would need a secret key, which a results folder shared with collaborators cannot keep).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import yaml

from ..digests import file_digest

MANIFEST = "record.sha256"
SEALED = ("config.yaml", "metrics.csv", "meta.json", "final.json")   # every file a result is read from
SEAL_KEY = "record_checksums"   # in final.json: "this record was sealed" (a deleted manifest is then damage)
FINAL_STATUSES = ("finished", "diverged")
PERCENT_KEYS = ("final_test_error", "best_test_error", "final_test_accuracy", "best_test_accuracy",
                "final_val_accuracy")
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](\S+)$")


@dataclass(frozen=True)
class Verdict:
    state: str          # sealed | unverified | damaged | unfinished
    problem: str = ""   # damaged: "<file>: <why>" (several joined by "; "); unverified: why

    @property
    def damaged(self) -> bool:
        return self.state == "damaged"


def sha256_of(path: Path) -> str:
    return file_digest(path, "sha256")


def manifest_text(run_dir: Path, final_bytes: bytes) -> str:
    """The manifest of ``run_dir``'s records as they are on disk, with ``final_bytes`` as ``final.json``."""
    lines = []
    for name in SEALED:
        if name == "final.json":
            lines.append(f"{hashlib.sha256(final_bytes).hexdigest()}  {name}")
        elif (Path(run_dir) / name).is_file():
            lines.append(f"{sha256_of(Path(run_dir) / name)}  {name}")
    return "\n".join(lines) + "\n"


def _read_manifest(run_dir: Path) -> Tuple[Optional[Dict[str, str]], str]:
    """``({file: sha256}, "")``, ``(None, "")`` when there is no manifest, ``({}, why)`` when it is unreadable."""
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return None, ""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        return {}, f"unreadable ({err.strerror or err})"
    except UnicodeDecodeError:
        return {}, "not UTF-8 text"
    listed: Dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = _LINE.match(line)
        if not match or match.group(2) not in SEALED or match.group(2) in listed:
            return {}, f"line {number} is not '<sha256>  <record file>'"
        listed[match.group(2)] = match.group(1)
    if "final.json" not in listed:
        return {}, "does not list final.json"
    return listed, ""


def _text(path: Path) -> str:
    """The file's text; ``ValueError`` with a short reason for an empty, all-zero or non-UTF-8 file."""
    data = path.read_bytes()
    if not data.strip():
        raise ValueError("empty")
    if not data.strip(b"\0"):
        raise ValueError("all zero bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 text (byte {err.start})") from None


def _json_object(path: Path) -> dict:
    try:
        value = json.loads(_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err.msg} at line {err.lineno})") from None
    except RecursionError:
        raise ValueError("not JSON (nested too deep)") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def check_final(final: Mapping) -> None:
    """``ValueError`` unless ``final`` is a result: a known status and percentages that are finite and in [0, 100]."""
    if final.get("status") not in FINAL_STATUSES:
        raise ValueError(f"status {final.get('status')!r} is neither {' nor '.join(FINAL_STATUSES)}")
    for key in PERCENT_KEYS:
        value = final.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0.0 <= value <= 100.0:
            raise ValueError(f"{key} = {value!r} is not a percentage")


def _check_config(path: Path) -> None:
    try:
        value = yaml.safe_load(_text(path))
    except yaml.YAMLError as err:
        raise ValueError(f"not YAML ({str(err).splitlines()[0]})") from None
    except RecursionError:
        raise ValueError("not YAML (nested too deep)") from None
    if not isinstance(value, dict):
        raise ValueError("not a YAML mapping")


def _check_metrics(path: Path) -> None:
    try:
        rows = list(csv.reader(io.StringIO(_text(path), newline="")))
    except csv.Error as err:
        raise ValueError(f"not CSV ({err})") from None
    if not rows or "iteration" not in rows[0]:
        raise ValueError("no header with an iteration column")
    at = rows[0].index("iteration")
    for number, row in enumerate(rows[1:], 2):
        if len(row) != len(rows[0]):
            raise ValueError(f"line {number} has {len(row)} fields, the header {len(rows[0])}")
        try:
            float(row[at])
        except ValueError:
            raise ValueError(f"line {number}: iteration {row[at]!r} is not a number") from None


CONTENT_CHECKS = {"final.json": lambda p: check_final(_json_object(p)), "config.yaml": _check_config,
                  "metrics.csv": _check_metrics, "meta.json": _json_object}


def _content_problems(run_dir: Path, names: Tuple[str, ...] = SEALED) -> List[str]:
    """``<file>: <why>`` for each record of ``names`` present that does not parse as what it should be."""
    out = []
    for name in names:
        path = Path(run_dir) / name
        if not path.exists():
            continue
        try:
            CONTENT_CHECKS[name](path)
        except OSError as err:
            out.append(f"{name}: unreadable ({err.strerror or err})")
        except ValueError as err:
            out.append(f"{name}: {err}")
    return out


def _says_sealed(run_dir: Path) -> bool:
    try:
        return SEAL_KEY in _json_object(Path(run_dir) / "final.json")
    except (OSError, ValueError):
        return False


def verify(run_dir: Path) -> Verdict:
    """Check a run's records against its seal (module docstring). Reads only; never raises for a bad file."""
    run_dir = Path(run_dir)
    if not (run_dir / "final.json").exists():
        return Verdict("unfinished")
    listed, why = _read_manifest(run_dir)
    if listed is None:
        problems = _content_problems(run_dir)
        if problems:
            return Verdict("damaged", "; ".join(problems))
        if _says_sealed(run_dir):
            return Verdict("damaged", f"{MANIFEST}: missing, though final.json was written with one")
        return Verdict("unverified", f"no {MANIFEST}: written before run records were sealed")
    if why:
        return Verdict("damaged", f"{MANIFEST}: {why}")
    problems = []
    for name in SEALED:
        path = run_dir / name
        if name not in listed:
            if path.exists():
                problems.append(f"{name}: not in {MANIFEST} (written after the run finished)")
            continue
        try:
            actual = sha256_of(path)
        except FileNotFoundError:
            problems.append(f"{name}: missing (listed in {MANIFEST})")
            continue
        except OSError as err:
            problems.append(f"{name}: unreadable ({err.strerror or err})")
            continue
        if actual != listed[name]:
            problems.append(f"{name}: checksum differs from {MANIFEST} (the file or its checksum changed since the "
                            "run finished)")
    # The sealed files are what the writers wrote; final.json is still checked to be a result (cheap: a few keys).
    problems = problems or _content_problems(run_dir, ("final.json",))
    return Verdict("damaged", "; ".join(problems)) if problems else Verdict("sealed")

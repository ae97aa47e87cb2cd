"""Benchmarks (``make bench``, ``make bench-gpu``): scripts that print tables and write ``results/bench/*.csv``.

They are not tests: speed goals are recorded in BENCHMARKS.md with machine, date and command.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List


def write_csv(path: str | Path, rows: List[Dict]) -> Path:
    """Rows (dicts, keys in first-seen order) to ``path``, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields: List[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path

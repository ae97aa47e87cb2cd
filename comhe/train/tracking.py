"""Optional experiment tracking: every metrics row of a run as TensorBoard scalars (``tensorboard=true``).

    make table1 tensorboard=true             # or python -m comhe.train cfg.yaml tensorboard=true
    tensorboard --logdir results/runs        # one TensorBoard run per run directory

The event files go to ``<run dir>/tensorboard/``; each metrics row (``records.py``: train loss and accuracy, test
error, learning rate, regulariser loss, hidden-layer and per-layer energies) is logged at its iteration. A resumed run
opens the log with ``purge_step`` at the resumed iteration, so the rows recomputed after the checkpoint replace the
ones logged before the interruption instead of doubling them. ``torch.utils.tensorboard`` (and the ``tensorboard``
package it needs: ``pip install tensorboard``) is imported only when the option is on. The option is how a run is
observed, not what it computes: it is not part of the run's name.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional

FOLDER = "tensorboard"


class TensorBoardTracker:
    def __init__(self, log_dir: Path, start_iteration: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # torch's module needs the tensorboard package
            raise ValueError(f"tensorboard=true needs the tensorboard package (pip install tensorboard): {err}") \
                from None
        self.writer = SummaryWriter(str(log_dir), purge_step=start_iteration if start_iteration > 0 else None)

    def log(self, row: Mapping[str, Any]) -> None:
        step = int(row["iteration"])
        for key, value in row.items():
            if key != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_tracker(cfg: Mapping[str, Any], run_dir: Path, start_iteration: int) -> Optional[TensorBoardTracker]:
    """The run's tracker, or None when ``cfg["tensorboard"]`` is off (nothing imported then)."""
    if not cfg.get("tensorboard"):
        return None
    return TensorBoardTracker(Path(run_dir) / FOLDER, start_iteration)

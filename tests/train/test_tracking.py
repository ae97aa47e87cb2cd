"""Optional TensorBoard logging (issue 14, item 10): every metrics row as scalars at its iteration, a resumed run
without duplicates, off by default (nothing written, nothing imported), and never part of a run's name."""
import ast
from pathlib import Path

import pytest

from comhe.train import engine, tracking
from comhe.train.records import run_name
from run_helpers import REPO, small_cfg


def scalars(log_dir: Path, tag: str):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = accumulator.EventAccumulator(str(log_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_every_metrics_row_is_logged_at_its_iteration(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = small_cfg(tmp_path, tensorboard=True)
    run_dir = tmp_path / "run"
    engine.train(cfg, run_dir)
    rows = [r for r in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    logged = scalars(run_dir / tracking.FOLDER, "test_error")
    assert [s for s, _ in logged] == [0, 4, 8, 12] == [int(r.split(",")[0]) for r in rows]
    from comhe.train.records import RunDir
    expected = [float(r["test_error"]) for r in RunDir(run_dir).read_metrics()]
    assert [v for _, v in logged] == pytest.approx(expected)
    assert [s for s, _ in scalars(run_dir / tracking.FOLDER, "train_loss")] == [4, 8, 12]   # NaN at 0: not logged
    layer = next(k for k in RunDir(run_dir).read_metrics()[0] if k.startswith("energy/"))
    assert len(scalars(run_dir / tracking.FOLDER, layer)) == 4


def test_off_by_default_and_not_part_of_the_run_name(tmp_path):
    cfg = small_cfg(tmp_path, iterations=4, checkpoint_every=4)
    assert cfg["tensorboard"] is False and tracking.open_tracker(cfg, tmp_path, 0) is None
    engine.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / tracking.FOLDER).exists()
    assert run_name(cfg) == run_name({**cfg, "tensorboard": True})


def test_tensorboard_is_imported_only_when_enabled():
    tree = ast.parse((REPO / "comhe" / "train" / "tracking.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not any("tensorboard" in ast.unparse(n) for n in top)
    engine_tree = ast.parse((REPO / "comhe" / "train" / "engine.py").read_text())
    assert not any("tensorboard" in ast.unparse(n) for n in ast.walk(engine_tree) if isinstance(n, ast.ImportFrom))

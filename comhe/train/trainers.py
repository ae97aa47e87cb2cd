"""Which trainer runs a config: the minibatch image engine or the full-batch node engine, by the dataset's task.

    trainer = for_config(cfg)          # TRAINERS["image"] (engine.py) or TRAINERS["node"] (node_engine.py)
    setup = trainer.prepare(cfg, ctx)
    final = trainer.train(cfg, run_dir, setup, report)

Both write the same run records (records.py) and raise ``engine.Preempted`` after checkpointing on a stop signal,
so the runner, the launchers and the reports treat every run alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

from .. import data


@dataclass(frozen=True)
class Trainer:
    prepare: Callable
    train: Callable
    describe: Callable[[Dict[str, Any]], str]   # the one-line summary of a final.json
    columns: Optional[List[tuple]] = None  # progress columns of ``python -m comhe.train`` (None: cli.COLUMNS)


def _image() -> Trainer:
    from . import engine

    def describe(final: Dict[str, Any]) -> str:
        return (f"final test error {final['final_test_error']:.2f}% (best {final['best_test_error']:.2f}% at "
                f"{final['best_iteration']}), {final['wall_time_s']:.0f} s")
    return Trainer(engine.prepare, engine.train, describe)


def _node() -> Trainer:
    from . import node_engine
    return Trainer(node_engine.prepare, node_engine.train, node_engine.describe, node_engine.COLUMNS)


TRAINERS: Dict[str, Callable[[], Trainer]] = {"image": _image, "node": _node}  # by data.task(dataset)


def for_config(cfg: Mapping[str, Any]) -> Trainer:
    return TRAINERS[data.task(cfg["dataset"])]()

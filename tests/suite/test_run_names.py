"""Run directory names are a run's identity: a renamed run is retrained. Every run name of every shipped experiment
and profile, as planned before the package was reorganised, is pinned in ``golden/run_names.json``."""
import json
from pathlib import Path

import pytest

from comhe.suite import experiments, runner
from comhe.train import config
from comhe.train.records import config_hash

GOLDEN = json.loads((Path(__file__).resolve().parent / "golden" / "run_names.json").read_text())


@pytest.mark.parametrize("name", sorted({key.split("/")[0] for key in GOLDEN}))
def test_every_pinned_run_name_is_unchanged(name):
    for profile in experiments.PROFILES:
        if f"{name}/{profile}" not in GOLDEN:
            continue
        plan = runner.make_plan([name], profile)
        assert sorted({c.name for c in plan.cells[name]}) == GOLDEN[f"{name}/{profile}"], (name, profile)


def test_the_golden_file_covers_every_experiment_of_the_first_layout():
    pinned = {key.split("/")[0] for key in GOLDEN}
    assert {"table1", "table6", "table9", "fig1", "fig2", "demo"} <= pinned
    assert sum(len(v) for v in GOLDEN.values()) > 1000


def test_a_key_added_later_leaves_the_hash_alone_at_its_default(monkeypatch):
    cfg = config.resolve(["regularizer=rp_comhe"])
    before = config_hash(cfg)
    monkeypatch.setitem(config.DEFAULTS, "new_key", 0.5)
    monkeypatch.setattr(config, "ADDED_KEYS", config.ADDED_KEYS + ("new_key",))
    assert config_hash({**cfg, "new_key": 0.5}) == before
    assert config_hash({**cfg, "new_key": 0.25}) != before

"""warmup_iterations: a linear LR ramp on top of either schedule, off by default (the official loop has none)."""
import pytest

from comhe.train import config, optim
from comhe.train.records import config_hash


def test_ramp_is_linear_then_the_schedule_takes_over():
    cfg = config.resolve(["lr=0.1", "warmup_iterations=4", "milestones=[6]", "iterations=10"])
    got = [optim.lr_at(cfg, i) for i in range(8)]
    assert got == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.01, 0.01])


def test_ramp_multiplies_the_staircase_too():
    cfg = config.resolve(["lr=0.1", "warmup_iterations=2", "lr_schedule=staircase", "lr_decay_every=1",
                          "lr_decay=0.5"])
    assert [optim.lr_at(cfg, i) for i in range(3)] == pytest.approx([0.05, 0.05, 0.025])


def test_default_is_the_official_loop_and_leaves_run_names_alone():
    cfg = config.resolve([])
    assert cfg["warmup_iterations"] == 0 and optim.lr_at(cfg, 0) == cfg["lr"]
    assert config_hash(cfg) == config_hash({k: v for k, v in cfg.items() if k != "warmup_iterations"})
    assert config_hash(config.resolve(["warmup_iterations=200"])) != config_hash(cfg)


@pytest.mark.parametrize("overrides, match", [(["warmup_iterations=-1"], "warmup_iterations must be >= 0"),
                                              (["warmup_iterations=5", "cuda_graph=true"], "one graph per learning")])
def test_bad_warmups_are_refused_in_one_line(overrides, match):
    with pytest.raises(config.ConfigError, match=match):
        config.resolve(overrides)

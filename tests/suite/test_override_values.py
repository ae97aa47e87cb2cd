"""``overrides._value``: the value a cell config has for an override key, defaults filled in from the config
defaults and from the named constructor's signature; a dotted key under a plain (non-section) key has none."""
import pytest

from comhe.suite import overrides
from comhe.train import config


@pytest.mark.parametrize("cfg, key, value", [
    ({}, "lr", config.DEFAULTS["lr"]),
    ({"lr": 0.05}, "lr", 0.05),
    ({"regularizer": "rp_comhe", "reg": {"proj_dim": 8}}, "reg.proj_dim", 8),
    ({"regularizer": "rp_comhe"}, "reg.proj_dim", 40),          # RP-CoMHE's constructor default
    ({"regularizer": "none"}, "reg.proj_dim", None),            # the baseline has no such option
    ({}, "model.width", None),                                  # `model` is a name, not a section
])
def test_the_value_of_an_override_key_in_a_cell(cfg, key, value):
    assert overrides._value(cfg, key) == value

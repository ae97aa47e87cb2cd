"""The open config sections (``reg``, ``model_options``, ``data``): their option types come from the constructor the
run names, and a section that is not a mapping is refused with the file it came from."""
import pytest

from comhe.train import config


@pytest.mark.parametrize("cfg, section, expected", [
    ({"regularizer": "rp_comhe"}, "reg", {"proj_dim": int, "num_proj": int, "seed": int, "lambda_hidden": float}),
    ({"model": "cnn9"}, "model_options", {"width": float, "bn_momentum": float, "in_channels": int}),
    ({"dataset": "synthetic"}, "data", {"num_classes": int, "train_per_class": int, "download": bool}),
])
def test_section_types_are_the_named_constructors(cfg, section, expected):
    types = config.section_types(cfg, section)
    assert {key: types[key] for key in expected} == expected


def test_a_section_that_is_not_a_mapping_is_refused():
    with pytest.raises(config.ConfigError) as err:
        config.merge(config.DEFAULTS, {"reg": 3}, where=" in table1.yaml")
    assert str(err.value) == "reg in table1.yaml must be a mapping, got 3"


def test_an_optional_option_is_checked_against_its_annotation():
    assert config.resolve(base={"regularizer": "rp_comhe", "reg": {"seed": 7}})["reg"]["seed"] == 7
    with pytest.raises(config.ConfigError, match=r"reg\.seed must be int, got 'seven'"):
        config.resolve(base={"regularizer": "rp_comhe", "reg": {"seed": "seven"}})

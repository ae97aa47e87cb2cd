"""``registry.Registry`` and ``registry.keyword_types``: the name tables behind models, datasets, regularisers and
projections, and the option types config validation reads from their signatures."""
from typing import Optional

import pytest

from comhe.registry import Registry, keyword_types


def test_a_name_registered_twice_is_refused_and_the_first_entry_kept():
    reg = Registry("widget")

    @reg.register("round")
    def first():
        return 1

    with pytest.raises(KeyError, match="widget 'round' is registered twice"):
        reg.register("round")(lambda: 2)
    assert reg.get("round") is first and len(reg) == 1 and list(reg) == ["round"] and "round" in reg


def test_an_unknown_name_lists_the_close_ones_and_every_valid_one():
    reg = Registry("widget")
    for name in ("round", "square", "rounded"):
        reg.register(name)(lambda: None)
    with pytest.raises(ValueError) as err:
        reg.get("roud")
    assert str(err.value) == "unknown widget 'roud' (did you mean round, rounded?); valid: round, square, rounded"
    with pytest.raises(ValueError) as err:
        reg.get("xyz")
    assert str(err.value) == "unknown widget 'xyz'; valid: round, square, rounded"


def test_keyword_types_reads_plain_and_optional_annotations():
    def build(model, *, width: float = 1.0, seed: Optional[int] = None, name: str = "a", flag: bool = False,
              shape: tuple = (), unannotated=3):
        return model

    assert keyword_types(build) == {"width": float, "seed": int, "name": str, "flag": bool}


def test_keyword_types_of_an_annotation_that_does_not_evaluate_is_empty():
    def build(model, *, width: "NotAType" = 1.0):  # noqa: F821 - the point: a name that does not resolve
        return model

    assert keyword_types(build) == {}

"""The model registry and ``build``: a constructor is ``f(num_classes, *, option=default, ...)``."""
from __future__ import annotations

import inspect
import numbers
from typing import Any, Dict, List

from torch import nn

from ..registry import Registry

MODELS = Registry("model")


def names() -> List[str]:
    """Registered model names, in registration order."""
    return MODELS.names()


def option_defaults(name: str) -> Dict[str, Any]:
    """The options of model ``name`` and their defaults, e.g. ``{'width': 4, 'in_channels': 3, 'image_size': 32}``."""
    params = inspect.signature(MODELS.get(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _same_kind(value: Any, default: Any) -> bool:
    # bool is an Integral in Python: keep True from passing as a width, and 4 from passing as a flag.
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, numbers.Integral):
        return isinstance(value, numbers.Integral)
    if isinstance(default, numbers.Real):
        return isinstance(value, numbers.Real)
    return default is None or isinstance(value, type(default))


def build(name: str, num_classes: int, **options: Any) -> nn.Module:
    """Model ``name`` with ``num_classes`` outputs; ``options`` override ``option_defaults(name)``.

    Returns a module mapping ``[B, C, H, W]`` images to ``[B, num_classes]`` logits.
    Raises ``ValueError`` for an unknown name, an unknown option, or an option of the wrong type (each message lists
    what is valid), so a typo in an experiment config fails before any training starts.
    """
    defaults = option_defaults(name)
    for key, value in options.items():
        if key not in defaults:
            raise ValueError(f"model {name!r} has no option {key!r}; valid: {', '.join(defaults) or '(none)'}")
        if not _same_kind(value, defaults[key]):
            raise ValueError(f"model {name!r} option {key!r} = {value!r} should be of type "
                             f"{type(defaults[key]).__name__}, like its default {defaults[key]!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return MODELS.get(name)(int(num_classes), **options)

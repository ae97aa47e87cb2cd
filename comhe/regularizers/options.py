"""Every option a regulariser takes, checked by name before anything is built: one ``TypeError`` (wrong type) or
``ValueError`` (out of range) whose message starts with the option's name, so ``lambda_hidden="1"``, a negative
weight, ``nan``, ``seed="a"`` or ``proj_dim=2.5`` fail at ``build`` instead of deep inside the first call.

=====================  =====================================  ==========================================
option                 type                                   range
=====================  =====================================  ==========================================
``lambda_hidden``      number (``None``: the default)         finite, >= 0
``lambda_output``      number (``None``: the default)         finite, >= 0
``eps``                number                                 finite, >= 0 (the energies: > 0)
``proj_lr``            number                                 finite, >= 0
``proj_weight_decay``  number                                 finite, >= 0
``proj_dim``           integer                                >= 1
``num_proj``           integer                                >= 1
``min_group_size``     integer                                >= 1
``power_iters``        integer                                >= 1
``proj_iters``         integer                                >= 0
``seed``               integer (``None``: torch's seed)       what ``torch.Generator.manual_seed`` takes
``proj_lr_fixed``      bool
``include_frozen``     bool
``layers``             ``"both"``, ``"hidden"``, ``"output"``
``classifier``         module name (``None``: the last one)
``example_input``      a tensor or a tuple of them (``None``)
=====================  =====================================  ==========================================

``s`` is checked by ``energy.canonical_power`` and ``exclude`` by ``layers.excluded_names`` (they say the option's
name too). Integers are Python / NumPy integers, never ``bool`` (``True`` is no count); numbers are any real but
``bool``, stored as ``float``.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Dict, Tuple

import torch

SEED_RANGE = (-(2 ** 63), 2 ** 64 - 1)  # what torch.Generator.manual_seed accepts


def _number(name: str, value: Any, low: float = 0.0) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if float(value) < low:
        raise ValueError(f"{name} must be >= {low:g}, got {value!r}")


def _integer(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {low}, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


def _seed(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer (or None: torch's initial seed), got {value!r} "
                        f"({type(value).__name__})")
    if not SEED_RANGE[0] <= int(value) <= SEED_RANGE[1]:
        raise ValueError(f"{name} must be in [-2**63, 2**64 - 1], got {value!r}")


def _layer_set(name: str, value: Any) -> None:
    if value not in ("both", "hidden", "output"):
        raise ValueError(f"unknown layer set {name}={value!r}; valid: both, hidden, output")


def _module_name(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a module name (a non-empty string, e.g. 'fc'), got {value!r}")


def _example_input(name: str, value: Any) -> None:
    if not (isinstance(value, torch.Tensor) or (isinstance(value, tuple) and value)):
        raise TypeError(f"{name} must be a batch the model takes (a tensor, or a tuple of positional arguments), "
                        f"got {type(value).__name__}")


# option -> its check; a value of None is the default wherever the signature's default is None
CHECKS: Dict[str, Callable[[str, Any], None]] = {
    "lambda_hidden": _number, "lambda_output": _number, "eps": _number, "proj_lr": _number,
    "proj_weight_decay": _number,
    "proj_dim": lambda n, v: _integer(n, v, 1), "num_proj": lambda n, v: _integer(n, v, 1),
    "min_group_size": lambda n, v: _integer(n, v, 1), "power_iters": lambda n, v: _integer(n, v, 1),
    "proj_iters": lambda n, v: _integer(n, v, 0),
    "seed": _seed, "proj_lr_fixed": _flag, "include_frozen": _flag, "layers": _layer_set,
    "classifier": _module_name, "example_input": _example_input,
}
MAY_BE_NONE = ("lambda_hidden", "lambda_output", "seed", "classifier", "example_input")


def check_options(required: Tuple[str, ...] = (), **options: Any) -> None:
    """Raise ``TypeError`` / ``ValueError``, naming the option, for the first value out of type or range (the table
    in the module docstring); names without a check here pass. ``required``: options where ``None`` is no default."""
    for name, value in options.items():
        if value is None and name in MAY_BE_NONE and name not in required:
            continue
        if name in CHECKS:
            CHECKS[name](name, value)

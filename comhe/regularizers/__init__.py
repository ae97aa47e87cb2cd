"""Regularisers as ``nn.Module``s, by name: ``reg = comhe.regularizers.build(name, model, **options)``.

    reg = build("rp_comhe", model)          # any nn.Module with conv / linear layers
    loss, stats = reg(lr=current_lr)        # loss: scalar, already weighted; add it to the task loss

=================  ===========================================================  ======================
name               what                                                         module
=================  ===========================================================  ======================
``none``           the baseline: a zero                                         ``base.py``
``mhe``            full-space MHE on every layer                                ``mhe.py``
``hs_mhe``         half-space MHE on the hidden layers, full-space on the output
``rp_comhe``       CoMHE, random projections (``comhe.projections``)
``ap_comhe``       CoMHE, learned angle-preserving projections
``adv_comhe``      CoMHE, adversarial projections
``g_comhe``        CoMHE, groups of coordinates
``orthonormal``    ``||W W^T - I||_F^2``                                         ``orthogonality.py``
``orthogonal``     the same on unit-norm rows
``srip``           spectral restricted isometry (Bansal et al. 2018)
=================  ===========================================================  ======================

Every regulariser is registered here, in one table: the modules that define them import only the library below
them (``energy``, ``layers``, ``projections``, ``base``), never this registry.
"""
from __future__ import annotations

import inspect
from typing import Dict, List

from torch import nn

from ..registry import Registry
from .base import NoRegularizer, Regularizer
from .mhe import (MHE, AdversarialProjectionCoMHE, AngleProjectionCoMHE, EnergyRegularizer, GroupCoMHE,
                  HalfSpaceMHE, RandomProjectionCoMHE)
from .orthogonality import SRIP, Orthogonal, Orthonormal

__all__ = ["REGULARIZERS", "Regularizer", "EnergyRegularizer", "build", "names", "option_defaults"]

REGULARIZERS = Registry("regulariser")
for _name, _cls in {"none": NoRegularizer, "mhe": MHE, "hs_mhe": HalfSpaceMHE, "rp_comhe": RandomProjectionCoMHE,
                    "ap_comhe": AngleProjectionCoMHE, "adv_comhe": AdversarialProjectionCoMHE, "g_comhe": GroupCoMHE,
                    "orthonormal": Orthonormal, "orthogonal": Orthogonal, "srip": SRIP}.items():
    REGULARIZERS.register(_name)(_cls)


# Options of the library only: objects, not config values (a run config cannot hold a tensor).
LIBRARY_ONLY = ("example_input",)


def option_defaults(name: str) -> Dict[str, object]:
    """The options ``build(name, ...)`` accepts from a config, with their defaults (``None`` = decided from other
    options); ``build`` also takes ``example_input`` (``layers.find_layers``)."""
    params = inspect.signature(REGULARIZERS.get(name).__init__).parameters
    return {k: p.default for k, p in params.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in LIBRARY_ONLY}


def build(name: str, model: nn.Module, **options) -> Regularizer:
    """The regulariser ``name`` for ``model``. Unknown option names raise ``ValueError`` listing the valid ones; a
    value of the wrong type or out of range raises ``TypeError`` / ``ValueError`` naming the option (``options.py``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"build({name!r}, model): model must be an nn.Module, got {type(model).__name__}")
    valid = option_defaults(name)
    unknown = sorted(set(options) - set(valid) - set(LIBRARY_ONLY))
    if unknown:
        raise ValueError(f"regulariser {name!r} has no option {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join(valid) or '(none)'}")
    return REGULARIZERS.get(name)(model, **options)


def names() -> List[str]:
    return REGULARIZERS.names()

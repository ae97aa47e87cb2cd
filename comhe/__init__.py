"""comhe: hyperspherical-energy regularisers (MHE, HS-MHE, CoMHE) for PyTorch, and the suite that reproduces them.

    import comhe
    reg = comhe.regularizers.build("rp_comhe", model)   # any nn.Module with conv / linear layers
    loss = task_loss + reg(lr=current_lr)[0]

The library's modules are imported on first use (PEP 562 ``__getattr__``): ``import comhe`` alone does not import
torch, so the command lines (``python -m comhe.run``, ``python -m comhe.train``) answer ``--help`` and bad input
before torch is loaded (seconds on a busy machine).
"""
from __future__ import annotations

import importlib
from typing import Any, List

__version__ = "0.1.0"

_MODULES = ("energy", "layers", "projections", "regularizers")  # the library: torch only
_NAMES = {"hyperspherical_energy": "energy", "layer_energies": "energy"}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_MODULES) | set(_NAMES))

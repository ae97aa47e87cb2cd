"""One seed for Python, NumPy and torch; every RNG state captured for checkpoints (as tensors: weights_only loads).

RNG states are CPU byte tensors whatever the generator's device; a checkpoint loaded with a non-CPU ``map_location``
hands them over on that device, so ``set_rng_state`` moves each to the CPU first (``torch.set_rng_state``,
``Generator.set_state`` and ``numpy`` take nothing else)."""
from __future__ import annotations

import os
import random
import sys
from typing import Any, Dict

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed every RNG. ``deterministic`` turns on ``torch.use_deterministic_algorithms`` (bitwise-repeatable runs on
    the GPU, at some speed cost; CPU runs are deterministic anyway) and disables cuDNN autotuning."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # torch.use_deterministic_algorithms imports torch._inductor (~1 s of CPU, more than a Cora run) to set its config:
    # only where the setting changes. inductor's flag matters once torch.compile is imported, so it is kept in step.
    inductor = sys.modules.get("torch._inductor.config")
    if (torch.are_deterministic_algorithms_enabled() != deterministic
            or torch.is_deterministic_algorithms_warn_only_enabled()
            or (inductor is not None and inductor.deterministic != deterministic)):
        torch.use_deterministic_algorithms(deterministic, warn_only=False)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def rng_state() -> Dict[str, Any]:
    version, keys, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [version, list(keys), gauss],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()  # pragma: cuda
    return state


def _on_cpu(value):
    return value.cpu() if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def set_rng_state(state: Dict[str, Any]) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", _on_cpu(np_state["keys"]).numpy().astype(np.uint32), int(np_state["pos"]),
                         int(np_state["has_gauss"]), float(np_state["cached_gaussian"])))
    torch.set_rng_state(_on_cpu(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_on_cpu(s) for s in state["cuda"]])  # pragma: cuda

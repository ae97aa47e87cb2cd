"""One seed for Python, NumPy and torch; every RNG state captured for checkpoints (as tensors: weights_only loads).

RNG states are CPU byte tensors whatever the generator's device; a checkpoint loaded with a non-CPU ``map_location``
hands them over on that device, so ``set_rng_state`` moves each to the CPU first (``torch.set_rng_state``,
``Generator.set_state`` and ``numpy`` take nothing else).

A run's CUDA RNG state is its own device's only (``rng_state(device)``): a checkpoint then resumes whatever the
number of visible GPUs (a run started alone on an 8-GPU node, resumed as one of several jobs that each see one GPU).
Older checkpoints hold a list with every visible GPU's state; the entry at the run's device index is restored (the
first where the list is shorter), never the others onto devices the run does not use."""
from __future__ import annotations

import random
import sys
from typing import Any, Dict, Optional, Tuple, cast

import numpy as np
import torch

from .devices import deterministic_environment


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed every RNG. ``deterministic`` turns on ``torch.use_deterministic_algorithms`` (bitwise-repeatable runs on
    the GPU, at some speed cost; CPU runs are deterministic anyway) and disables cuDNN autotuning."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # Too late if cuBLAS already started in this process: the entry points (train/cli.py, suite/cli.py) set it
        # first; this covers library use in a fresh process.
        deterministic_environment()
    # torch.use_deterministic_algorithms imports torch._inductor (~1 s of CPU, more than a Cora run) to set its config:
    # only where the setting changes. inductor's flag matters once torch.compile is imported, so it is kept in step.
    inductor = sys.modules.get("torch._inductor.config")
    if (torch.are_deterministic_algorithms_enabled() != deterministic
            or torch.is_deterministic_algorithms_warn_only_enabled()
            or (inductor is not None and inductor.deterministic != deterministic)):
        torch.use_deterministic_algorithms(deterministic, warn_only=False)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def _cuda_index(device) -> Optional[int]:
    """The CUDA device whose RNG belongs to the run: ``device`` (a CUDA device; None: the current one), else None."""
    if not torch.cuda.is_available():
        return None
    if device is None:
        return torch.cuda.current_device() if torch.cuda.is_initialized() else None
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def rng_state(device=None) -> Dict[str, Any]:
    """Python, NumPy and torch CPU RNG states, and the CUDA RNG state of the run's ``device`` (none on the CPU)."""
    version, keys, gauss = random.getstate()
    # legacy=True: the (name, keys, pos, has_gauss, cached_gaussian) tuple (NumPy's stubs give a union for any flag)
    np_state = cast(Tuple[Any, ...], np.random.get_state(legacy=True))
    state = {
        "python": [version, list(keys), gauss],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    index = _cuda_index(device)
    if index is not None and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state(index)
    return state


def _on_cpu(value):
    return value.cpu() if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def set_rng_state(state: Dict[str, Any], device=None) -> None:
    """Restore ``rng_state``'s; the CUDA part onto the run's ``device`` only (any number of GPUs visible)."""
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", _on_cpu(np_state["keys"]).numpy().astype(np.uint32), int(np_state["pos"]),
                         int(np_state["has_gauss"]), float(np_state["cached_gaussian"])))
    torch.set_rng_state(_on_cpu(state["torch"]))
    index = _cuda_index(device)
    saved = state.get("cuda")
    if saved is None or index is None:
        return
    if isinstance(saved, (list, tuple)):  # an older checkpoint: every visible GPU's state, by index
        saved = saved[index] if index < len(saved) else saved[0]
    torch.cuda.set_rng_state(_on_cpu(saved), index)

"""Where a run trains, said in one line, and a refusal when a visible NVIDIA GPU cannot be used.

    describe(device)["device_line"]  # "device: NVIDIA H100 80GB HBM3 (79.2 GiB), cuda:0 of 1; torch 2.14.1, CUDA 13.0,
                                     # cuDNN 9.24.0, driver 580.65" or "device: CPU, 16 threads; torch ..."
    check_auto()                     # raises DeviceUnusable (a ValueError, one line) when ``device: auto`` would
                                     # silently fall back to the CPU although an NVIDIA GPU is visible

A GPU is *visible* when ``nvidia-smi`` (on PATH) answers with one, or the kernel module's
``/proc/driver/nvidia/version`` exists. ``CUDA_VISIBLE_DEVICES=""`` (or ``-1``) hides the GPUs on purpose: no refusal.
Why torch cannot use a visible GPU is told where it can be: a CPU-only torch build, or a driver older than the one
the build's CUDA needs (``MIN_DRIVER``, NVIDIA's CUDA compatibility table: the oldest driver of each CUDA major
version under minor-version compatibility); otherwise torch's own warning, if it gave one.

Also a stdlib-only script, so that ``make venv`` can pick a torch build for this machine's driver before any torch
is installed (it is run by path, not as ``comhe.train.devices``, so the package and torch are not imported):

    python3 comhe/train/devices.py --pip-index [FLAVOUR]   # the pip options of the build (nothing without a driver)
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
from typing import Any, Dict, Optional

PROC_VERSION = "/proc/driver/nvidia/version"
# CUDA major version -> the oldest Linux driver (major number) that runs its builds (minor-version compatibility).
MIN_DRIVER = {13: 580, 12: 525, 11: 450}
# The torch build for a driver, newest first: (oldest driver major, flavour of download.pytorch.org/whl/<flavour>).
# "" is PyPI's default build (torch 2.14.1: CUDA 13.0). Below the last entry no build of the pinned torch fits.
FLAVOURS = ((580, ""), (570, "cu128"), (525, "cu126"))
TORCH_INDEX = "https://download.pytorch.org/whl/"


def deterministic_environment() -> None:
    """What ``deterministic: true`` needs from the environment before CUDA starts: cuBLAS reads its workspace config
    once, when this process creates its first handle (``torch.use_deterministic_algorithms`` requires it)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


class DeviceUnusable(ValueError):
    """``device: auto`` would train on the CPU although an NVIDIA GPU is visible (one line: what and how on)."""


def nvidia_visible() -> Optional[Dict[str, Any]]:
    """``{"gpus": [name, ...], "memory_mib": [...], "driver": "535.104.05"}`` of the NVIDIA GPUs this machine shows, or
    None. ``gpus`` is empty when only the kernel module's version file tells of a driver."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return None
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            answer = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total",
                                     "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=15)
        except (OSError, subprocess.SubprocessError):
            answer = None
        rows = [[c.strip() for c in line.split(",")] for line in (answer.stdout.splitlines() if answer and
                                                                    answer.returncode == 0 else []) if line.strip()]
        rows = [r for r in rows if len(r) >= 2]
        if rows:
            memory = [float(r[2]) if len(r) > 2 and r[2].replace(".", "", 1).isdigit() else None for r in rows]
            return {"gpus": [r[0] for r in rows], "memory_mib": memory, "driver": rows[0][1]}
    try:
        with open(PROC_VERSION) as f:
            text = f.read()
    except OSError:
        return None
    found = re.search(r"Kernel Module\s+(?:for\s+\S+\s+)?(\d+(?:\.\d+)+)", text) or re.search(r"(\d{3}\.\d+(?:\.\d+)?)",
                                                                                               text)
    return {"gpus": [], "memory_mib": [], "driver": found.group(1) if found else "unknown"}


def _major(version: Optional[str]) -> Optional[int]:
    found = re.match(r"\s*(\d+)", version or "")
    return int(found.group(1)) if found else None


def torch_flavour(driver: Optional[str]) -> Optional[str]:
    """The torch build (``FLAVOURS``) for this driver version: "" for PyPI's default, None when none fits."""
    major = _major(driver)
    if major is None:
        return None
    return next((flavour for oldest, flavour in FLAVOURS if major >= oldest), None)


def why_unusable(gpu: Dict[str, Any], torch_version: str, torch_cuda: Optional[str], torch_said: str = "") -> str:
    """Why a torch build cannot use the visible GPU ``gpu`` (``nvidia_visible``), as far as it can be told."""
    if not torch_cuda:
        return f"torch {torch_version} is a CPU-only build"
    cuda_major, driver = _major(torch_cuda), _major(gpu["driver"])
    need = MIN_DRIVER.get(cuda_major) if cuda_major is not None else None
    if need is not None and driver is not None and driver < need:
        return f"its CUDA {torch_cuda} needs driver >= {need}, this machine has {gpu['driver']}"
    said = " ".join(torch_said.split())[:240]
    return f"torch says: {said}" if said else ("torch.cuda.is_available() is False for a reason torch does not give "
                                               "(a container without the GPU devices? nvidia-smi shows the driver's "
                                               "view)")


def refusal(gpu: Dict[str, Any], torch_version: str, torch_cuda: Optional[str], torch_said: str = "") -> str:
    """The one line a command stops with when ``device: auto`` would silently train on the CPU."""
    names = ", ".join(dict.fromkeys(gpu["gpus"])) or "an NVIDIA driver"
    fits = torch_flavour(gpu["driver"])
    install = (f"update the NVIDIA driver (CUDA 12 builds need >= {MIN_DRIVER[12]})" if fits is None else
               f"install a torch build this driver runs: rm -rf .venv; make venv (picks "
               f"{fits or 'PyPI default'} for driver {gpu['driver']}; docs/gpu.md)")
    return (f"an NVIDIA GPU is visible ({names}, driver {gpu['driver']}) but torch {torch_version} (built for "
            f"CUDA {torch_cuda or 'none'}) cannot use it: {why_unusable(gpu, torch_version, torch_cuda, torch_said)}. "
            f"Either {install}, or train on the CPU on purpose with device=cpu")


def cuda_available() -> tuple:
    """``(torch.cuda.is_available(), the warning torch gave while finding out, if any)``."""
    import torch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = torch.cuda.is_available()
    return ok, " ".join(str(w.message) for w in caught)


def check_auto() -> None:
    """Raise ``DeviceUnusable`` when ``device: auto`` resolves to the CPU while an NVIDIA GPU is visible."""
    ok, said = cuda_available()
    if ok:
        return
    gpu = nvidia_visible()
    if gpu is not None:
        import torch
        raise DeviceUnusable(refusal(gpu, torch.__version__, torch.version.cuda, said))


def describe(device, threads: Optional[int] = None) -> Dict[str, Any]:
    """What a run's meta records about where it trains (``device_line`` is what it prints)."""
    import torch
    device = torch.device(device)
    gpu = nvidia_visible()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if cudnn:  # 92400 is 9.24.0; before cuDNN 9, 8902 was 8.9.2
        cudnn = f"{cudnn // 10000}.{cudnn % 10000 // 100}.{cudnn % 100}" if cudnn >= 90000 else \
            f"{cudnn // 1000}.{cudnn % 1000 // 100}.{cudnn % 100}"
    versions = (f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none (CPU build)'}, "
                f"cuDNN {cudnn or 'none'}, driver {gpu['driver'] if gpu else 'none'}")
    info: Dict[str, Any] = {"driver": gpu["driver"] if gpu else None}
    if device.type == "cuda":
        index = device.index or 0
        props = torch.cuda.get_device_properties(index)
        info.update(gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda_device=index,
                    device_line=f"device: {props.name} ({props.total_memory / 2**30:.1f} GiB), cuda:{index} of "
                                f"{torch.cuda.device_count()}; {versions}")
    else:
        threads = threads or torch.get_num_threads()
        purpose = " (on purpose: device=cpu; an NVIDIA GPU is visible)" if gpu else ""
        info.update(cpu_threads=threads, device_line=f"device: CPU, {threads} threads{purpose}; {versions}")
    return info


def _pip_index(flavour: Optional[str]) -> str:
    """pip options for a torch build: ``flavour`` (cu126, cpu, ...) as given, else the one for this driver; nothing
    without an NVIDIA driver (PyPI's default, as always) or where PyPI's default build fits the driver."""
    if flavour is None:
        gpu = nvidia_visible()
        if gpu is None:
            return ""
        flavour = torch_flavour(gpu["driver"])
        if flavour is None:
            print(f"warning: NVIDIA driver {gpu['driver']} is older than any torch build of requirements/ci.txt "
                  f"supports (CUDA 12 needs >= {MIN_DRIVER[12]}); installing PyPI's default build", file=sys.stderr)
            return ""
    return f"--extra-index-url={TORCH_INDEX}{flavour}" if flavour else ""  # one word: the Makefile appends a space


if __name__ == "__main__":  # python3 comhe/train/devices.py --pip-index [FLAVOUR]
    if sys.argv[1:2] != ["--pip-index"]:
        sys.exit("usage: python3 comhe/train/devices.py --pip-index [FLAVOUR]")
    print(_pip_index(sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else None))

"""Host syncs and host-to-device copies of the training loop, measured on the CPU (part of ``make bench``, and tested).

On CUDA, reading a device tensor on the host (``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``, ``.cpu()``) waits
for the GPU, and a copy from pageable (not pinned) host memory to the GPU is synchronous. On the CPU neither shows:
everything is on the host. ``DeviceTags`` tags every tensor that would live on the device in a CUDA run (the run's
parameters, buffers, data and regulariser state, every tensor made with an explicit ``device=``, whatever is computed
from a tagged tensor, and what ``.to(device)`` returns) and records, per iteration of the loop (an iteration starts
with ``loader.next_batch()``):

* ``sync``: a tagged tensor read on the host;
* ``pageable copy`` / ``pinned copy``: a host tensor moved to the device (``.to(device)``, ``torch.tensor(...,
  device=)``, ``copy_`` from a host tensor into a device one);
* ``host operand``: a host tensor of more than one element in a device op (an error on CUDA).

    python -m comhe.bench.transfers [--iterations 61] [--regularizer rp_comhe]

The engine's goal (GPU issue): at most one sync per ``CHECK_EVERY`` (20) iterations of the steady-state loop, and no
pageable copy in it; the data stream's one upload per epoch is listed apart.
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections import Counter
from typing import Dict, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakTensorKeyDictionary

from ..train import config, engine
from .shapes import synthetic_bundle


class DeviceTags(TorchDispatchMode):
    """Tags tensors that would be on the device; ``events``: ``(iteration, kind, what)``."""

    def __init__(self):
        super().__init__()
        self.tags = WeakTensorKeyDictionary()
        self.iteration = 0
        self.events: List[Tuple[int, str, str]] = []
        self.python_factory = 0  # inside a torch.zeros / randn / ... called from Python (host unless device=)

    def tag(self, *tensors) -> None:
        for t in tree_leaves(tensors):
            if isinstance(t, torch.Tensor):
                self.tags[t] = True

    def on_device(self, t) -> bool:
        return isinstance(t, torch.Tensor) and t in self.tags

    def record(self, kind: str, what: str) -> None:
        self.events.append((self.iteration, kind, what))

    def moved_to_device(self, src: torch.Tensor, what: str) -> None:
        self.record("pinned copy" if src.is_pinned() else "pageable copy", what)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        device_inputs = any(self.on_device(t) for t in tensors)
        if name == "_local_scalar_dense" and device_inputs:
            self.record("sync", "item / float / int / bool")
        elif name == "copy_" and self.on_device(args[0]) and not self.on_device(args[1]):
            self.moved_to_device(args[1], "copy_ into a device tensor")
        elif device_inputs:
            host = [t for t in tensors if not self.on_device(t) and t.numel() > 1]
            if host:
                self.record("host operand", f"{name} with a host tensor of shape {tuple(host[0].shape)}")
        out = func(*args, **kwargs)
        # A factory torch calls itself (autograd's zero gradients, ...) takes the options of the tensors it serves,
        # device ones in the loop; one called from Python is tagged by the patched factory (host unless device=).
        internal_factory = not tensors and not self.python_factory
        if (device_inputs and name != "_local_scalar_dense") or internal_factory:
            self.tag(out)
        return out


# Factories: at dispatch every one says device=cpu, so an explicit device= is seen where Python calls them.
FACTORIES = ("zeros", "ones", "empty", "full", "arange", "randn", "rand", "randint", "randperm", "eye", "linspace",
             "tensor", "as_tensor")
HOST_DATA = ("tensor", "as_tensor")  # these copy host data to the device when given one


@contextlib.contextmanager
def host_transfers(tags: DeviceTags, device: torch.device):
    """``tags`` active, and the tensor methods that never dispatch on the CPU (a same-device ``.to``, ``.cpu()``,
    ``.tolist()``, ``.numpy()``, ``torch.tensor(..., device=)``) patched to report to it."""
    originals = {name: getattr(torch.Tensor, name) for name in ("to", "cpu", "tolist", "numpy")}
    factories = {name: getattr(torch, name) for name in FACTORIES}

    def to(self, *args, **kwargs):
        target = torch._C._nn._parse_to(*args, **kwargs)[0]
        out = originals["to"](self, *args, **kwargs)
        if target is not None and torch.device(target).type == device.type and not tags.on_device(self):
            tags.moved_to_device(self, f".to(device) of a host tensor {tuple(self.shape)}")
            out = out.clone() if out is self else out  # the host tensor stays a host tensor
            tags.tag(out)
        return out

    def reader(name):
        def read(self, *args, **kwargs):
            if tags.on_device(self):
                tags.record("sync", f".{name}()")
            return originals[name](self, *args, **kwargs)
        return read

    def factory(name):
        def make(*args, **kwargs):
            tags.python_factory += 1
            try:
                out = factories[name](*args, **kwargs)
            finally:
                tags.python_factory -= 1
            if kwargs.get("device") is not None:
                if name in HOST_DATA and not tags.on_device(args[0] if args else kwargs.get("data")):
                    tags.record("pageable copy", f"torch.{name}(host data, device=...)")
                tags.tag(out)
            return out
        return make

    patches = {"to": to, "cpu": reader("cpu"), "tolist": reader("tolist"), "numpy": reader("numpy")}
    try:
        for name, fn in patches.items():
            setattr(torch.Tensor, name, fn)
        for name in factories:
            setattr(torch, name, factory(name))
        with tags:
            yield tags
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
        for name, fn in factories.items():
            setattr(torch, name, fn)


def tag_setup(tags: DeviceTags, s) -> None:
    """Everything of a run that lives on its device: model, regulariser, optimiser state, data, the loader's
    device-side permutation and draws."""
    tags.tag(list(s.model.parameters()), list(s.model.buffers()), list(s.reg.buffers()),
             [v for state in s.optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)])
    bundle = s.bundle
    tags.tag([t for t in (bundle.train_images, bundle.train_labels, bundle.test_images, bundle.test_labels)
              if t is not None])
    tags.tag(s.loader.device_tensors())


def measure(cfg: Dict, run_dir: str, steps_per_epoch: Optional[int] = None) -> DeviceTags:
    """Train ``cfg`` on the CPU (a CIFAR-shaped tensor dataset of ``steps_per_epoch`` batches, default one epoch
    longer than the run) with every would-be device tensor tagged; the events."""
    steps = steps_per_epoch or cfg["iterations"] + 4
    bundle = synthetic_bundle("cpu", classes=10, train=cfg["batch_size"] * steps, test=16)
    s = engine.prepare(cfg, bundle=bundle)
    tags = DeviceTags()
    tag_setup(tags, s)
    next_batch = s.loader.next_batch

    def counted():
        tags.iteration += 1
        return next_batch()

    s.loader.next_batch = counted
    with host_transfers(tags, s.device):
        engine.train(cfg, run_dir, setup=s)
    return tags


def steady_window(iterations: int) -> Tuple[int, int]:
    """Whole check intervals after the first, before the last iteration (whose evaluation and checkpoint are not
    the steady state): iterations ``first + 1 .. last``."""
    last = (iterations - 1) // engine.CHECK_EVERY * engine.CHECK_EVERY
    return engine.CHECK_EVERY, last


def steady_state(tags: DeviceTags, iterations: int) -> Counter:
    """Events of the steady-state window (``steady_window``), by kind."""
    first, last = steady_window(iterations)
    return Counter(kind for it, kind, _ in tags.events if first < it <= last)


def small_cfg(regularizer: str = "rp_comhe", iterations: int = 61) -> Dict:
    """CNN-9 at width 1/4 (4/8/16 channels), batch 8, one epoch longer than the run, evaluation only at its ends."""
    return config.resolve(base={"model": "cnn9", "model_options": {"width": 0.25}, "regularizer": regularizer,
                                "reg": {"proj_dim": 8, "num_proj": 4} if regularizer == "rp_comhe" else {},
                                "batch_size": 8, "iterations": iterations, "milestones": [iterations // 2],
                                "eval_every": 10 ** 6, "checkpoint_every": 10 ** 6, "eval_batch_size": 16,
                                "device": "cpu", "threads": 1})


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=61)
    parser.add_argument("--regularizer", default="rp_comhe")
    args = parser.parse_args(argv)
    cfg = small_cfg(args.regularizer, args.iterations)
    with tempfile.TemporaryDirectory() as tmp:
        tags = measure(cfg, tmp)
    first, last = steady_window(args.iterations)
    window = last - first
    counts = steady_state(tags, args.iterations)
    print(f"engine loop, {args.regularizer}: iterations {first + 1}..{last} ({window} steady-state iterations, a "
          f"host check every {engine.CHECK_EVERY})")
    for kind in ("sync", "pageable copy", "pinned copy", "host operand"):
        print(f"  {kind:<14} {counts.get(kind, 0):>4}  ({counts.get(kind, 0) / window:.3f} per iteration)")
    shown: Counter = Counter()
    for it, kind, what in tags.events:
        if first < it <= last and shown[(kind, what)] < 3:
            shown[(kind, what)] += 1
            print(f"    iteration {it}: {kind}: {what}")
    return {kind: counts.get(kind, 0) / window for kind in ("sync", "pageable copy", "pinned copy", "host operand")}


if __name__ == "__main__":
    main()

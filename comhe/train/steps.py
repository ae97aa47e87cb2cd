"""The training step, eager or captured in CUDA graphs (config ``cuda_graph: true``).

A step is model forward (bf16 autocast on CUDA; BN and the regulariser in fp32), the task loss, the regulariser's
loss (its random projections drawn inside the step), backward and the SGD update. It returns detached device
tensors ``(task loss, correct count, regulariser loss)`` and never synchronises with the host.

``GraphStep`` runs ``warmup`` steps eagerly (they create the optimiser's momentum buffers and let cuDNN/cuBLAS pick
their kernels), then captures the whole step, optimiser included, into one CUDA graph and replays it: one launch per
iteration instead of hundreds, which is what small CIFAR networks need on an H100. The learning rate is a constant
of a captured graph, so one graph is captured per LR value (4 for the official schedule) in a shared memory pool.
The RP-CoMHE generator is registered with every graph, so replays draw fresh projections (``register_generator_
state``). Checkpoints are restored before the first step, so the graph captures the restored tensors. Capture runs in
``capture_error_mode="thread_local"``: the default global mode is invalidated by CUDA calls from other threads, such as
the DataLoader's pin-memory thread (ImageNet).

A mode that cannot run (a capture or a ``torch.compile`` that fails on this torch / card / model) falls back to the
eager step with a warning, instead of failing the run (``FallbackStep``); the run's numbers are the same either way.
Caveat: the GPU speed of this path is measured by ``make bench-gpu`` (BENCHMARKS.md); whether it is the default is
decided there, not here.
"""
from __future__ import annotations

import warnings
from typing import Dict, Tuple

import torch
from torch import Tensor

from ..registry import Registry

STEPS = Registry("step mode")


@STEPS.register("eager")
class EagerStep:
    def __init__(self, setup):
        self.s = setup

    def run(self, x: Tensor, y: Tensor, lr: float) -> Tuple[Tensor, Tensor, Tensor]:
        s = self.s
        for group in s.optimizer.param_groups:
            group["lr"] = lr
        # cache_enabled=False: a graph must not capture autocast's weight-cast cache (torch.cuda.graphs docs)
        with torch.autocast(s.device.type, s.amp_dtype or torch.float32, enabled=s.amp_dtype is not None,
                            cache_enabled=False):
            logits = s.net(x)
            task = s.loss_fn(logits, y)
        if s.aux_loss is not None:  # the model's own term (PointNet's T-Net orthogonality), in float32
            task = task + s.aux_loss()
        reg_loss, _ = s.reg(lr=lr, stats=False)
        s.optimizer.zero_grad(set_to_none=True)
        (task + reg_loss).backward()
        s.optimizer.step()
        return task.detach(), (logits.argmax(1) == y).sum(), reg_loss.detach()

    __call__ = run


def _generators(reg) -> list:
    """Custom CUDA generators the regulariser draws from (RP-CoMHE), to register with a graph."""
    gens = []
    for module in reg.modules():
        gen = getattr(module, "_generator", None)
        if isinstance(gen, torch.Generator) and gen.device.type == "cuda":
            gens.append(gen)  # pragma: cuda
    return gens


class CaptureFailed(RuntimeError):
    """A CUDA-graph capture failed (nothing ran: a capture only records)."""


@STEPS.register("cuda_graph")
class GraphStep(EagerStep):
    warmup = 3

    def __init__(self, setup):
        super().__init__(setup)
        if setup.device.type != "cuda":
            raise ValueError("cuda_graph: true needs a CUDA device")
        if setup.ctx.enabled:
            raise ValueError("cuda_graph: true is single-process only (DDP's all-reduce is not captured here)")
        self.done = 0
        self.graphs: Dict[float, torch.cuda.CUDAGraph] = {}
        self.outputs: Dict[float, Tuple[Tensor, Tensor, Tensor]] = {}
        self.static_x = self.static_y = None
        self.pool = None

    def _capture(self, lr: float) -> None:
        s = self.s
        graph = torch.cuda.CUDAGraph()
        for gen in _generators(s.reg):
            graph.register_generator_state(gen)  # pragma: cuda
        s.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            self.outputs[lr] = super().run(self.static_x, self.static_y, lr)
        self.pool = graph.pool()
        self.graphs[lr] = graph

    def run(self, x: Tensor, y: Tensor, lr: float) -> Tuple[Tensor, Tensor, Tensor]:  # pragma: cuda
        if self.done < self.warmup:
            # Warm-up on a side stream, as torch.cuda.graphs requires; these are real training steps.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = super().run(x, y, lr)
            torch.cuda.current_stream().wait_stream(side)
            self.done += 1
            return tuple(t.clone() for t in out)
        if self.static_x is None:
            self.static_x, self.static_y = x.clone(), y.clone()
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        if lr not in self.graphs:
            try:
                self._capture(lr)  # capturing does not run the step: replay below does
            except Exception as err:  # noqa: BLE001 - any capture failure, at the first LR or at a milestone
                raise CaptureFailed(f"capturing the step at lr={lr:g} failed: {type(err).__name__}: {err}") from err
        self.graphs[lr].replay()
        self.done += 1
        return tuple(t.clone() for t in self.outputs[lr])

    __call__ = run


@STEPS.register("compile")
class CompiledStep(EagerStep):
    """The eager step over the compiled model and regulariser (``setup.prepare`` compiled them)."""


class FallbackStep:
    """Runs ``mode``'s step; if it raises before its first success (a capture or compilation this torch, card or
    model does not support), warns, undoes the mode (uncompiled model and regulariser) and takes the eager step from
    then on. Later failures propagate: they are not the mode's."""

    def __init__(self, setup, mode: str):
        self.s, self.mode = setup, mode
        self.inner = STEPS.get(mode)(setup)
        self.proven = mode == "eager"

    def run(self, x: Tensor, y: Tensor, lr: float) -> Tuple[Tensor, Tensor, Tensor]:
        if self.proven and self.mode != "cuda_graph":
            return self.inner(x, y, lr)
        try:
            out = self.inner(x, y, lr)
        except CaptureFailed as err:  # at any LR: a milestone re-captures
            return self._fall_back(err, x, y, lr)
        except Exception as err:  # noqa: BLE001 - any failure of the mode before it ran once: fall back, say so
            if self.proven:
                raise
            return self._fall_back(err, x, y, lr)
        # A graph step is proven once it has captured and replayed, i.e. after its warm-up steps.
        self.proven = not isinstance(self.inner, GraphStep) or bool(self.inner.graphs)
        return out

    def _fall_back(self, err: Exception, x: Tensor, y: Tensor, lr: float):
        warnings.warn(f"step mode {self.mode!r} failed ({type(err).__name__}: {str(err)[:300]}); "
                      "falling back to the eager step for this run", RuntimeWarning, stacklevel=3)
        self._to_eager()
        return self.inner(x, y, lr)

    def _to_eager(self) -> None:
        s = self.s
        if hasattr(s.net, "_orig_mod"):  # torch.compile's wrapper
            s.net = s.net._orig_mod
        if getattr(s.reg, "_compiled", None) is not None:
            s.reg._compiled = None
        if s.device.type == "cuda":
            torch.cuda.synchronize(s.device)  # pragma: cuda
        s.optimizer.zero_grad(set_to_none=True)
        self.mode, self.inner, self.proven = "eager", EagerStep(s), True

    __call__ = run


def build(setup, mode: str):
    """The step for ``mode`` (eager, cuda_graph, compile), falling back to eager if the mode fails to start."""
    return FallbackStep(setup, mode)

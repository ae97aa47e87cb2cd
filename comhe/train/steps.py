"""The training step, eager or captured in CUDA graphs (config ``cuda_graph: true``).

A step is model forward (bf16 autocast on CUDA; BN and the regulariser in fp32), the task loss, the regulariser's
loss (its random projections drawn inside the step), backward and the SGD update. It returns detached device
tensors ``(task loss, correct count, regulariser loss)`` and never synchronises with the host.

``GraphStep`` runs ``warmup`` steps eagerly (they create the optimiser's momentum buffers and let cuDNN/cuBLAS pick
their kernels), then captures the whole step, optimiser included, into one CUDA graph and replays it: one launch per
iteration instead of hundreds, which is what small CIFAR networks need on an H100. The learning rate is a constant
of a captured graph, so one graph is captured per LR value (4 for the official schedule) in a shared memory pool.
The RP-CoMHE generator is registered with every graph, so replays draw fresh projections (``register_generator_
state``). Checkpoints are restored before the first step, so the graph captures the restored tensors.
Caveat: the GPU speed of this path is measured by ``make bench-gpu`` (BENCHMARKS.md); whether it is the default is
decided there, not here.
"""
from __future__ import annotations

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
            gens.append(gen)
    return gens


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
            graph.register_generator_state(gen)
        s.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph, pool=self.pool):
            self.outputs[lr] = super().run(self.static_x, self.static_y, lr)
        self.pool = graph.pool()
        self.graphs[lr] = graph

    def run(self, x: Tensor, y: Tensor, lr: float) -> Tuple[Tensor, Tensor, Tensor]:
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
            self._capture(lr)  # capturing does not run the step: replay below does
        self.graphs[lr].replay()
        self.done += 1
        return tuple(t.clone() for t in self.outputs[lr])

    __call__ = run


def build(setup, mode: str):
    return STEPS.get(mode)(setup)

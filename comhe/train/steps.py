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

Which mode a run takes: ``choose_mode`` (``cuda_graph: auto``, the default: captured on a single-process CUDA run).
A fast mode verifies itself before the run's first step (``FallbackStep.verify``): one step of it and one eager step
from the same state (model, optimiser, generators, RNGs, restored afterwards) must agree within ``TOLERANCE``. A mode
that disagrees, or cannot run (a capture or a ``torch.compile`` that fails on this torch / card / model), falls back
to the eager step with a one-line warning and the reason in the run's meta (``step_fallback``), instead of failing the
run. The capture, its side stream and replays run on the run's own device (``setup.device``), not the current one.
"""
from __future__ import annotations

import contextlib
import copy
import math
import warnings
from typing import Any, Dict, Optional, Tuple

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


def _generator_owners(reg) -> list:
    """``(module, generator)`` for every custom generator the regulariser draws from (RP-CoMHE), any device."""
    return [(m, m._generator) for m in reg.modules() if isinstance(getattr(m, "_generator", None), torch.Generator)]


def _generators(reg) -> list:
    """Custom CUDA generators the regulariser draws from (RP-CoMHE), to register with a graph."""
    return [gen for _, gen in _generator_owners(reg) if gen.device.type == "cuda"]


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
        # The run's own device, not the current one: a capture on another card records nothing of this run's
        # kernels (an empty graph whose replays do nothing). torch.cuda.graph's default capture stream is created
        # once per process on whichever device was current then, so the step brings its own.
        self.device = setup.device
        with torch.cuda.device(self.device):
            self.side = torch.cuda.Stream(device=self.device)

    def _capture(self, lr: float) -> None:
        s = self.s
        graph = torch.cuda.CUDAGraph()
        for gen in _generators(s.reg):
            graph.register_generator_state(gen)  # pragma: cuda
        s.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.device(self.device), torch.cuda.graph(graph, pool=self.pool, stream=self.side,
                                                              capture_error_mode="thread_local"):
            self.outputs[lr] = super().run(self.static_x, self.static_y, lr)
        self.pool = graph.pool()
        self.graphs[lr] = graph

    def run(self, x: Tensor, y: Tensor, lr: float) -> Tuple[Tensor, Tensor, Tensor]:
        if self.done < self.warmup:
            # Warm-up on a side stream, as torch.cuda.graphs requires; these are real training steps.
            main = torch.cuda.current_stream(self.device)
            self.side.wait_stream(main)
            with torch.cuda.device(self.device), torch.cuda.stream(self.side):
                out = super().run(x, y, lr)
            main.wait_stream(self.side)
            self.done += 1
            loss, correct, reg_loss = out
            return loss.clone(), correct.clone(), reg_loss.clone()
        if self.static_x is None:
            self.static_x, self.static_y = x.clone(), y.clone()
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        if lr not in self.graphs:
            try:
                self._capture(lr)  # capturing does not run the step: replay below does
            except Exception as err:  # noqa: BLE001 - any capture failure, at the first LR or at a milestone
                raise CaptureFailed(f"capturing the step at lr={lr:g} failed: {type(err).__name__}: {err}") from err
        with torch.cuda.device(self.device):
            self.graphs[lr].replay()
        self.done += 1
        loss, correct, reg_loss = self.outputs[lr]
        return loss.clone(), correct.clone(), reg_loss.clone()

    __call__ = run


@STEPS.register("compile")
class CompiledStep(EagerStep):
    """The eager step over the compiled model and regulariser (``setup.prepare`` compiled them)."""


# The self-check's tolerances (relative): one step of the fast mode against one eager step from the same state. Under
# bf16 autocast the two may pick different kernels (cuDNN autotuning, atomics in weight gradients); in float32 they
# agree to rounding. An empty or stale graph (a capture on the wrong card, an unregistered generator) is off by ~100%.
TOLERANCE = {"bf16": {"loss": 2e-2, "update": 5e-2}, "fp32": {"loss": 1e-3, "update": 1e-2}}


def compare(eager: Tuple[float, float], fast: Tuple[float, float], eager_update: Dict[str, Tensor],
            fast_update: Dict[str, Tensor], tolerance: Dict[str, float]) -> Optional[str]:
    """Why a fast step's ``(task loss, regulariser loss)`` and parameter updates (name -> after - before) disagree
    with the eager step's, or None. Losses: ``|fast - eager| <= loss * |eager| + 1e-6`` each; updates: the norm of
    the difference over all parameters ``<= update * ||eager update||`` (a step that updates nothing is off by 1)."""
    for what, a, b in (("loss", eager[0], fast[0]), ("regulariser loss", eager[1], fast[1])):
        if not math.isfinite(b) or abs(b - a) > tolerance["loss"] * abs(a) + 1e-6:
            return f"{what} {b:.6g} vs eager {a:.6g} (tolerance {tolerance['loss']:g} relative)"
    diff = math.sqrt(sum(float((fast_update[k].float() - u.float()).square().sum()) for k, u in eager_update.items()))
    size = math.sqrt(sum(float(u.float().square().sum()) for u in eager_update.values()))
    if not math.isfinite(diff) or diff > tolerance["update"] * size + 1e-12:
        return (f"parameter update differs from the eager one by {diff / max(size, 1e-30):.3g} of its norm "
                f"(tolerance {tolerance['update']:g})")
    return None


def choose_mode(cfg, device: torch.device, distributed_run: bool) -> str:
    """The step mode of a run: ``cuda_graph: true`` / ``compile: true`` as asked; ``cuda_graph: auto`` (the default):
    the captured step for a single-process CUDA run, compile where capture is refused (a scheduled BN momentum, baked
    into a graph), else eager. DDP runs keep eager (the all-reduce is not captured here) or compile."""
    if cfg["cuda_graph"] is True:
        return "cuda_graph"
    if cfg["compile"]:
        return "compile"
    if cfg["cuda_graph"] == "auto" and device.type == "cuda" and not distributed_run:
        return "compile" if cfg.get("bn_schedule", "constant") != "constant" else "cuda_graph"
    return "eager"


@contextlib.contextmanager
def _uncompiled(s):
    """The eager step's view of a compiled setup: the model and regulariser as ``torch.compile`` got them."""
    net, compiled = s.net, getattr(s.reg, "_compiled", None)
    s.net = getattr(net, "_orig_mod", net)
    if compiled is not None:
        s.reg._compiled = None
    try:
        yield
    finally:
        s.net = net
        if compiled is not None:
            s.reg._compiled = compiled


def _snapshot(s) -> Dict[str, Any]:
    from .seeding import rng_state
    owners = _generator_owners(s.reg)
    return {"model": copy.deepcopy(s.model.state_dict()), "optimizer": copy.deepcopy(s.optimizer.state_dict()),
            "reg": copy.deepcopy(s.reg.state_dict()), "rng": rng_state(s.device),
            "generators": [(m, gen, gen.get_state()) for m, gen in owners]}


def _restore(s, snap: Dict[str, Any]) -> None:
    from .seeding import set_rng_state
    s.model.load_state_dict(snap["model"])  # in place: the parameters the optimiser and a graph hold stay the same
    s.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
    s.reg.load_state_dict(snap["reg"])
    for module, gen, state in snap["generators"]:  # the same generator objects (a graph registers the object)
        gen.set_state(state)
        module._generator, module._pending_state = gen, None
    set_rng_state(snap["rng"], s.device)
    s.optimizer.zero_grad(set_to_none=True)


def _one_step(step, s, x: Tensor, y: Tensor, lr: float):
    before = {k: p.detach().clone() for k, p in s.model.named_parameters()}
    loss, _, reg = step(x, y, lr)
    losses = (float(loss), float(reg))
    return losses, {k: p.detach() - before[k] for k, p in s.model.named_parameters()}


class FallbackStep:
    """Runs ``mode``'s step, verified first (``verify``); if the mode fails before its first success (a capture or
    compilation this torch, card or model does not support), warns, undoes the mode (uncompiled model and
    regulariser) and takes the eager step from then on. Later failures propagate: they are not the mode's.
    ``meta``: what the run records (the mode it trains with, the self-check, why it fell back)."""

    def __init__(self, setup, mode: str):
        self.s, self.mode = setup, mode
        self.inner = STEPS.get(mode)(setup)
        self.proven = mode == "eager"
        self.meta: Dict[str, Any] = {"step_mode": mode}

    def verify(self, x: Tensor, y: Tensor, lr: float) -> None:
        """Before the first real step: from the same state, one step of the mode and one eager step must give the
        same losses and parameter update (``compare``, ``TOLERANCE``); the state (model, optimiser, regulariser and
        its generators, RNGs) is then put back as it was. On a mismatch or a failure the run takes the eager step."""
        s, fast = self.s, self.inner
        start = _snapshot(s)
        try:
            for _ in range(getattr(fast, "warmup", 0)):  # a graph step's eager warm-up, so that the next one captures
                fast(x, y, lr)
            middle = _snapshot(s)
            with _uncompiled(s):
                eager, eager_update = _one_step(EagerStep(s), s, x, y, lr)
            _restore(s, middle)
            got, fast_update = _one_step(fast, s, x, y, lr)
            tolerance = TOLERANCE["bf16" if s.amp_dtype is not None else "fp32"]
            problem = compare(eager, got, eager_update, fast_update, tolerance)
        except Exception as err:  # noqa: BLE001 - a capture or compilation that fails is the mode failing
            problem = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
        _restore(s, start)
        if problem:
            return self._give_up(f"self-check failed: {problem}")
        self.inner = STEPS.get(self.mode)(s)  # a fresh step: its warm-up and capture start from the real state
        self.meta["step_self_check"] = (f"passed: losses {got[0]:.6g} / {got[1]:.6g} vs eager {eager[0]:.6g} / "
                                        f"{eager[1]:.6g}, tolerance {tolerance}")

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
        self._give_up(f"{type(err).__name__}: {' '.join(str(err).split())[:300]}")
        return self.inner(x, y, lr)

    def _give_up(self, why: str) -> None:
        warnings.warn(f"step mode {self.mode!r} failed ({why}); falling back to the eager step for this run",
                      RuntimeWarning, stacklevel=3)
        self.meta.update(step_mode="eager", step_requested=self.mode, step_fallback=why)
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


def build(setup, mode: str, first_batch: Optional[Tuple[Tensor, Tensor, float]] = None) -> FallbackStep:
    """The step for ``mode`` (eager, cuda_graph, compile), falling back to eager if the mode fails to start.
    ``first_batch`` ``(x, y, lr)`` on the device: a fast mode verifies itself on it first (``FallbackStep.verify``)."""
    step = FallbackStep(setup, mode)
    if mode != "eager" and first_batch is not None:
        step.verify(*first_batch)
    return step

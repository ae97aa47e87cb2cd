"""Projections for compressive MHE (CoMHE, CVPR 2020; docs/reference.md §1), a registry.

A projection maps the stacked neurons of same-shape layers ``w: [L, N, d]`` to ``C`` projected copies
``[L, C, N, k]``; the CoMHE regulariser then takes the half-space energy of every copy and averages over ``C``.
Every projection works on several such stacks at once (one per group of same-shape layers) so that a step costs a
handful of batched ops, not a Python loop over layers and projections.

* ``random`` (RP-CoMHE): ``C`` Gaussian ``k x d`` matrices per layer, i.i.d. N(0, 1), redrawn every call, no gradient.
  All of a step's matrices come from **one** ``randn`` on the projection's own generator, seeded by ``seed``, so two
  processes with the same seed (e.g. DDP ranks) draw the same matrices. Deviation from the official code: there, TF
  op seeds make same-shape layers share one matrix per step; here every layer gets its own draw (same distribution).
* ``angle`` (AP-CoMHE): one learned ``P`` per layer (``C`` of them if ``num_proj > 1``), N(0, 1) init. Each training
  call first takes ``iters`` SGD steps on ``P`` minimising ``||cos(W) - cos(PW)||_F`` (Frobenius norm, not squared,
  full ``N x N`` cosine matrices, eps 1e-4 inside the norms) plus the official tiny L2 (gradient ``5e-7 P``), at the
  network's current learning rate; then it returns the projection by the look-ahead ``P~ = P - lr * grad_P``, built
  inside the autograd graph so that ``W`` receives the second-order gradient through ``P~`` (as the official code).
* ``adversarial`` (Adv-CoMHE): the same, but ``P`` takes ``iters`` gradient-**ascent** steps on the full-space s=2
  energy of ``PW`` and the look-ahead is ``P~ = P + lr * grad_P``.
* ``group`` (G-CoMHE, no official code): the ``d`` coordinates are split into ``C`` contiguous groups (zero-padded to a
  multiple of ``C``, which changes no norm or inner product); group ``c`` of every neuron is its ``c``-th projection.
  For a conv weight ``[out, in, kh, kw]`` and ``C`` dividing ``in``, a group is a block of ``in / C`` input channels
  with all their kernel taps. Our choice of default, ``C = 8``, is not from the paper (unknown there).

The learned projections keep their matrices as buffers, so ``state_dict`` (a checkpoint) restores them, and an
optimiser built from ``model.parameters()`` never sees them. In ``eval()`` mode no inner step is taken.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .energy import cosine_from_gram, energy_from_gram
from .registry import Registry

PROJECTIONS = Registry("projection")
GroupShape = Tuple[int, int, int]  # (layers L, neurons N, fan-in d) of one stack


def project(p: Tensor, w: Tensor) -> Tensor:
    """Projected neurons. p: ``[L, C, k, d]``, w: ``[L, N, d]`` -> ``[L, C, N, k]`` (row n of copy c is ``P_c w_n``)."""
    layers, copies, k, d = p.shape
    y = torch.bmm(p.reshape(layers, copies * k, d), w.transpose(1, 2))  # [L, C*k, N]
    return y.view(layers, copies, k, -1).transpose(-1, -2)


def angle_preservation_loss(p: Tensor, w: Tensor, eps: float = 1e-4) -> Tensor:
    """``||cos(W) - cos(P W)||_F`` per layer and copy. p: ``[L, C, k, d]``, w: ``[L, N, d]`` -> ``[L, C]``."""
    cos_w, _ = cosine_from_gram(w @ w.transpose(1, 2), eps)
    y = project(p, w)
    cos_y, _ = cosine_from_gram(y @ y.transpose(-1, -2), eps)
    return (cos_y - cos_w.unsqueeze(1)).pow(2).sum((-2, -1)).sqrt()


def projected_energy(p: Tensor, w: Tensor, eps: float = 1e-4) -> Tensor:
    """Full-space s=2 pair-mean energy of the projected neurons ``P W``: ``[L, C]`` (the adversary's objective)."""
    y = project(p, w)
    return energy_from_gram(y @ y.transpose(-1, -2), s=2, half_space=False, eps=eps)


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {value!r}")


class Projection(nn.Module):
    """Base: ``forward(stacks, lr) -> [L, C, N, k]`` per stack. ``applies_to(d)`` says if projecting a fan-in ``d``
    compresses anything (layers where it does not get the unprojected half-space energy instead)."""

    def __init__(self, shapes: Sequence[GroupShape], proj_dim: int, num_proj: int):
        super().__init__()
        _check_positive(proj_dim=proj_dim, num_proj=num_proj)
        self.shapes = [tuple(s) for s in shapes]
        self.proj_dim, self.num_proj = proj_dim, num_proj

    def applies_to(self, fan_in: int) -> bool:
        return fan_in > self.proj_dim


@PROJECTIONS.register("random")
class RandomProjection(Projection):
    def __init__(self, shapes: Sequence[GroupShape], proj_dim: int = 40, num_proj: int = 20,
                 seed: Optional[int] = None, **_ignored):
        super().__init__(shapes, proj_dim, num_proj)
        self.seed = int(torch.initial_seed() if seed is None else seed)
        self._sizes = [n * num_proj * proj_dim * d for n, _, d in self.shapes]
        self._generator: Optional[torch.Generator] = None
        self._pending_state: Optional[Tuple[str, Tensor]] = None

    def generator(self, device: torch.device) -> torch.Generator:
        gen = self._generator
        if gen is None or gen.device.type != device.type or (device.index is not None and gen.device != device):
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            if self._pending_state is not None and self._pending_state[0] == device.type:
                gen.set_state(self._pending_state[1])
            self._pending_state = None
            self._generator = gen
        return gen

    def forward(self, stacks: List[Tensor], lr: Optional[float] = None) -> List[Tensor]:
        w0 = stacks[0]
        flat = torch.randn(sum(self._sizes), generator=self.generator(w0.device), device=w0.device, dtype=w0.dtype)
        out = []
        for chunk, w, (layers, _, d) in zip(flat.split(self._sizes), stacks, self.shapes):
            out.append(project(chunk.view(layers, self.num_proj, self.proj_dim, d), w))
        return out

    # The generator's state travels in state_dict, so a checkpoint resumes the exact sequence of draws.
    def get_extra_state(self):
        if self._generator is not None:
            return {"seed": self.seed, "device": self._generator.device.type, "state": self._generator.get_state()}
        pending = self._pending_state
        return {"seed": self.seed, "device": pending[0] if pending else "", "state": pending[1] if pending else None}

    def set_extra_state(self, state) -> None:
        self.seed = int(state["seed"])
        self._generator = None
        self._pending_state = (state["device"], state["state"]) if state.get("state") is not None else None


class LearnedProjection(Projection):
    """A projection ``P`` per layer, updated by ``iters`` inner steps per call, then used through a look-ahead."""

    direction = -1.0  # -1: descend the objective (angle); +1: ascend it (adversarial)

    def __init__(self, shapes: Sequence[GroupShape], proj_dim: int = 30, num_proj: int = 1, iters: int = 1,
                 lr: float = 0.1, weight_decay: float = 5e-7, eps: float = 1e-4, fixed_lr: bool = False, **_ignored):
        super().__init__(shapes, proj_dim, num_proj)
        # fixed_lr: the inner steps and the look-ahead use ``lr`` whatever the network's rate (under Adam at 1e-3
        # the official "network's current LR" would barely move P); default: the network's, as the official code.
        self.fixed_lr = bool(fixed_lr)
        if not isinstance(iters, int) or iters < 0:
            raise ValueError(f"proj_iters must be an integer >= 0, got {iters!r}")
        self.iters, self.lr, self.weight_decay, self.eps = iters, float(lr), float(weight_decay), eps
        for i, (layers, _, d) in enumerate(self.shapes):
            self.register_buffer(f"p{i}", torch.randn(layers, num_proj, proj_dim, d))

    def matrices(self) -> List[Tensor]:
        return [getattr(self, f"p{i}") for i in range(len(self.shapes))]

    # Subclasses define objective(p [L, C, k, d], w [L, N, d]) -> [L, C].

    def _gradients(self, stacks: Sequence[Tensor], create_graph: bool) -> Tuple[List[Tensor], List[Tensor]]:
        with torch.enable_grad():
            ps = [p.detach().requires_grad_(True) for p in self.matrices()]
            total = sum(self.objective(p, w).sum() for p, w in zip(ps, stacks))
            return ps, list(torch.autograd.grad(total, ps, create_graph=create_graph))

    @torch.no_grad()
    def inner_step(self, stacks: Sequence[Tensor], lr: float) -> None:
        """One SGD step on the stored ``P`` (descent for angle, ascent for adversarial), ``W`` held fixed."""
        _, grads = self._gradients([w.detach() for w in stacks], create_graph=False)
        for p, g in zip(self.matrices(), grads):
            p.mul_(1.0 - lr * self.weight_decay).add_(g, alpha=self.direction * lr)

    def forward(self, stacks: List[Tensor], lr: Optional[float] = None) -> List[Tensor]:
        lr = self.lr if lr is None or self.fixed_lr else float(lr)
        if self.training:
            for _ in range(self.iters):
                self.inner_step(stacks, lr)
        outer_grad = torch.is_grad_enabled() and any(w.requires_grad for w in stacks)
        ps, grads = self._gradients(stacks, create_graph=outer_grad)
        return [project(p.detach() + self.direction * lr * g, w) for p, g, w in zip(ps, grads, stacks)]


@PROJECTIONS.register("angle")
class AngleProjection(LearnedProjection):
    direction = -1.0

    def objective(self, p: Tensor, w: Tensor) -> Tensor:
        return angle_preservation_loss(p, w, self.eps)


@PROJECTIONS.register("adversarial")
class AdversarialProjection(LearnedProjection):
    direction = 1.0

    def __init__(self, shapes: Sequence[GroupShape], proj_dim: int = 30, num_proj: int = 1, iters: int = 10,
                 **options):
        super().__init__(shapes, proj_dim, num_proj, iters, **options)

    def objective(self, p: Tensor, w: Tensor) -> Tensor:
        return projected_energy(p, w, self.eps)


@PROJECTIONS.register("group")
class GroupProjection(Projection):
    def __init__(self, shapes: Sequence[GroupShape], num_proj: int = 8, proj_dim: int = 1, **_ignored):
        # proj_dim is unused: a group's size is ceil(d / num_proj)
        super().__init__(shapes, 1, num_proj)

    def applies_to(self, fan_in: int) -> bool:
        return fan_in > self.num_proj

    def forward(self, stacks: List[Tensor], lr: Optional[float] = None) -> List[Tensor]:
        out = []
        for w in stacks:
            layers, n, d = w.shape
            size = math.ceil(d / self.num_proj)
            if size * self.num_proj != d:
                w = F.pad(w, (0, size * self.num_proj - d))
            out.append(w.view(layers, n, self.num_proj, size).transpose(1, 2))
        return out


def build(name: str, shapes: Sequence[GroupShape], **options) -> Projection:
    return PROJECTIONS.get(name)(shapes, **options)

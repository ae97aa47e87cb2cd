"""Projections for compressive MHE (CoMHE, CVPR 2020; docs/reference.md §1), a registry: ``build(name, **options)``.

A projection turns the projected buckets of a regulariser's stack (``stacking.py``: layers of one fan-in ``d``,
``[L, N, d]``) into their projected neurons, ``[L * C, k, N]`` per bucket (``columns``: column ``n`` of copy ``c`` of
layer ``l`` is ``P_lc w_n``; G-CoMHE gives rows, ``[L * C, N, k]``). The regulariser then takes the half-space
energy of every copy and averages over ``C``. All of a call's projections of every layer are a handful of batched
ops, not a Python loop over layers and projections.

* ``random`` (RP-CoMHE): ``C`` Gaussian ``k x d`` matrices per layer, i.i.d. N(0, 1), redrawn every call, no gradient.
  All of a call's matrices come from **one** ``randn`` on the projection's own generator, seeded by ``seed``, so two
  processes with the same seed (e.g. DDP ranks) draw the same matrices, and its state travels in ``state_dict``.
  Deviation from the official code: there, TF op seeds make same-shape layers share one matrix per step; here every
  layer gets its own draw (same distribution). The draw is laid out layer by layer in order of first appearance of
  each weight shape; a weight stored channels_last is projected in its memory order (the same distribution, other
  draws than the same weight stored row-major).
* ``angle`` (AP-CoMHE): one learned ``P`` per layer (``C`` of them if ``num_proj > 1``), N(0, 1) init. Each training
  call first takes ``iters`` SGD steps on every ``P`` minimising ``||cos(W) - cos(PW)||_F`` (Frobenius norm, not
  squared, full ``N x N`` cosine matrices, eps 1e-4 inside the norms) plus the official tiny L2 (gradient
  ``5e-7 P``), at the network's current learning rate (``step_lr``); then it returns the projection by the look-ahead
  ``P~ = P - lr * grad_P``, built inside the autograd graph so that ``W`` receives the second-order gradient through
  ``P~`` (as the official code). Every layer's objective is one term of one batched sum (one gradient for all).
* ``adversarial`` (Adv-CoMHE): the same, but ``P`` takes ``iters`` gradient-**ascent** steps on the full-space s=2
  energy of ``PW`` and the look-ahead is ``P~ = P + lr * grad_P``.
* ``group`` (G-CoMHE, no official code): the ``d`` coordinates are split into contiguous groups (zero-padded to a
  multiple), group ``c`` of every neuron being its ``c``-th projection. For a conv weight ``[out, in, kh, kw]`` and a
  group count dividing ``in``, a group is a block of input channels with all their kernel taps. The group count is
  ``num_proj`` (our default 8; the paper gives none), lowered so that a group keeps ``min_group_size`` (8)
  coordinates: the half-space s=2 energy of random directions in ``m`` dimensions has an infinite mean for ``m <= 3``
  and 1.2x its large-``m`` value at ``m = 8``, so 2-coordinate groups of a fan-in-16 layer would dominate the total. A
  layer left with one group is not compressed and gets the unprojected half-space energy.

Modules: ``base.py`` (what every projection shares), ``random_projection.py``, ``learned.py`` (angle,
adversarial), ``group.py``; every one is registered in the table below.

The learned projections keep their matrices as buffers, saved per group of same-shape layers (``p0``, ``p1``, ... in
order of first appearance, ``[L, C, k, d]``, coordinates in the weight's logical order), so ``state_dict`` restores
them and an optimiser built from ``model.parameters()`` never sees them. In ``eval()`` mode no inner step is taken.
"""
from __future__ import annotations

from ..registry import Registry
from .base import Projection, project_columns
from .group import GroupProjection
from .learned import AdversarialProjection, AngleProjection, LearnedProjection
from .random_projection import RandomProjection

__all__ = ["PROJECTIONS", "Projection", "RandomProjection", "LearnedProjection", "AngleProjection",
           "AdversarialProjection", "GroupProjection", "build", "project_columns"]

PROJECTIONS = Registry("projection")
for _name, _cls in {"random": RandomProjection, "angle": AngleProjection, "adversarial": AdversarialProjection,
                    "group": GroupProjection}.items():
    PROJECTIONS.register(_name)(_cls)


def build(name: str, **options) -> Projection:
    return PROJECTIONS.get(name)(**options)

"""``g_s`` and its slope elementwise, without autograd: the math of the fused energies (``pairs.GramEnergy``, the
packed list; ``chunked.py``, the CPU's Gram-by-Gram path). ``energy.PAIR_TERMS`` is the differentiable definition;
``tests/library/test_stacking_pairs.py`` checks both fused paths against it, values and gradients."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .energy import ANGLE_EPS, Power


def term_values(x: Tensor, s: Power) -> Tensor:
    """``g_s(x)`` as a new tensor (``x`` is left as it is; the work is in place on the new one)."""
    if s in (0, 1, 2):
        u = torch.rsub(x, 2.0, alpha=2.0)                              # 2 - 2x
        return u.log_().neg_() if s == 0 else u.rsqrt_() if s == 1 else u.reciprocal_()
    angle = x.acos().mul_(1.0 / math.pi).add_(ANGLE_EPS)
    return angle.log_().neg_() if s == "a0" else angle.reciprocal_() if s == "a1" else angle.pow_(-2)


def term_slopes(x: Tensor, t: Tensor, s: Power) -> Tensor:
    """``d g_s / dx`` at ``x`` as a new tensor, from ``t = g_s(x)``: ``2 t^2`` (s=2), ``t^3`` (s=1), ``1 / (1 - x)``
    (s=0); angular: the chain through ``theta = acos(x)/pi + 1e-4`` with ``d theta / dx = -1 / (pi sqrt(1 - x^2))``
    (infinite at |x| = 1, as in autograd)."""
    if s == 2:
        return t.square().mul_(2.0)
    if s == 1:
        return t.pow(3)
    if s == 0:
        return torch.rsub(x, 1.0).reciprocal_()
    theta_slope = torch.rsub(x.square(), 1.0).sqrt_().mul_(math.pi).reciprocal_()    # -d theta / dx
    if s == "a0":                                                                     # t = -log theta
        return torch.exp(t).mul_(theta_slope)                                         # 1/theta = e^t
    if s == "a1":                                                                     # t = 1/theta
        return t.square().mul_(theta_slope)
    return t.pow(1.5).mul_(theta_slope).mul_(2.0)                                     # t = theta^-2

"""Hyperspherical energy of a set of neurons (MHE, NeurIPS 2018; CoMHE, CVPR 2020).

Conventions (docs/reference.md §1, as the official TensorFlow code computes them):

* Rows are neurons: ``w`` is ``[N, d]`` (a conv weight ``[out, in, kh, kw]`` is flattened to ``[out, in*kh*kw]``),
  or batched ``[..., N, d]``.
* Regularised cosine with ``eps`` inside the norm:
  ``c_ij = w_i.w_j / (sqrt(|w_i|^2 + eps) * sqrt(|w_j|^2 + eps))``. ``eps = 0`` gives the exact unit-sphere cosine.
* Per-pair term ``g_s(c)`` over the strict upper triangle ``i < j`` (the diagonal is never evaluated):

  ====  =============================  ====================================
  s     g_s(c)                         meaning
  ====  =============================  ====================================
  0     ``-log(2 - 2c)``               ``-2 log|w_i - w_j|`` (unit vectors)
  1     ``(2 - 2c)^(-1/2)``            ``1 / |w_i - w_j|`` (Thomson)
  2     ``(2 - 2c)^(-1)``              ``1 / |w_i - w_j|^2``
  a0    ``-log(acos(c)/pi + 1e-4)``    angular (A-MHE)
  a1    ``(acos(c)/pi + 1e-4)^(-1)``
  a2    ``(acos(c)/pi + 1e-4)^(-2)``
  ====  =============================  ====================================

* ``reduction="mean"`` divides by the number of unordered pairs (the official code); ``"sum"`` is the plain sum over
  unordered pairs (the Thomson-problem convention).
* Half-space MHE appends the virtual neurons ``-w_i``: the energy runs over all ``2N(2N-1)/2`` pairs of ``[W; -W]``,
  the ``N`` pairs ``(w_i, -w_i)`` included. It is computed from the ``N x N`` Gram of ``W``: the pair ``(i, j)`` occurs
  twice with cosine ``c_ij`` and twice with ``-c_ij``, and ``(w_i, -w_i)`` has cosine ``-|w_i|^2 / (|w_i|^2 + eps)``.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Union

import torch
from torch import Tensor

Power = Union[int, str]

ANGLE_EPS = 1e-4  # the official code adds 1e-4 to acos(c)/pi in every angular term


def _log_term(c: Tensor) -> Tensor:
    return -torch.log(2.0 - 2.0 * c)


def _inv_sqrt_term(c: Tensor) -> Tensor:
    return torch.rsqrt(2.0 - 2.0 * c)


def _inv_term(c: Tensor) -> Tensor:
    return torch.reciprocal(2.0 - 2.0 * c)


def _angle(c: Tensor) -> Tensor:
    return torch.acos(c) / math.pi + ANGLE_EPS


def _angular_log_term(c: Tensor) -> Tensor:
    return -torch.log(_angle(c))


def _angular_inv_term(c: Tensor) -> Tensor:
    return torch.reciprocal(_angle(c))


def _angular_inv_sq_term(c: Tensor) -> Tensor:
    return _angle(c).pow(-2)


# s -> g_s(c), the per-pair energy as a function of the pair's (regularised) cosine.
PAIR_TERMS: Dict[Power, Callable[[Tensor], Tensor]] = {
    0: _log_term,
    1: _inv_sqrt_term,
    2: _inv_term,
    "a0": _angular_log_term,
    "a1": _angular_inv_term,
    "a2": _angular_inv_sq_term,
}
POWERS = tuple(PAIR_TERMS)


def canonical_power(s: object) -> Power:
    """``0, 1, 2`` (int or str) or ``"a0", "a1", "a2"``; anything else raises ``ValueError`` listing the valid ones."""
    if isinstance(s, bool):  # bool is an int subclass; True is not a power
        s = str(s)
    if isinstance(s, str) and s.strip() in {"0", "1", "2"}:
        s = int(s.strip())
    if isinstance(s, float) and s.is_integer():
        s = int(s)
    if isinstance(s, str):
        s = s.strip().lower()
    if not isinstance(s, (int, str)) or s not in PAIR_TERMS:  # (a list is not hashable: no ``in`` before this)
        raise ValueError(f"unknown power s={s!r}; valid: {', '.join(map(str, POWERS))}")
    return s


def pair_term(cos: Tensor, s: Power) -> Tensor:
    """``g_s(c)`` elementwise. ``cos``: any shape, values in ``[-1, 1]``."""
    return PAIR_TERMS[canonical_power(s)](cos)


def half_space_pair_term(cos: Tensor, s: Power) -> Tensor:
    """``2 g_s(c) + 2 g_s(-c)``: what one real pair ``i < j`` contributes to the half-space energy.

    For s = 2 this is ``2 / (1 - c^2)`` exactly (``1/(2-2c) + 1/(2+2c) = 1/(1-c^2)``), one fused expression instead of
    two branches; the value is the same up to rounding.
    """
    s = canonical_power(s)
    if s == 2:
        return 2.0 * torch.reciprocal(1.0 - cos * cos)
    g = PAIR_TERMS[s]
    return 2.0 * (g(cos) + g(-cos))


def num_pairs(num_neurons: int, half_space: bool = False) -> int:
    """Unordered pairs the energy runs over: ``N(N-1)/2``, or ``N(2N-1)`` with the virtual ``-w`` neurons."""
    n = 2 * num_neurons if half_space else num_neurons
    return n * (n - 1) // 2


def cosine_from_gram(gram: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Regularised cosines from a Gram matrix.

    gram: ``[..., N, N]`` = ``W W^T``. Returns ``(cos [..., N, N], sq_norm_ratio [..., N])`` where
    ``sq_norm_ratio_i = |w_i|^2 / (|w_i|^2 + eps)`` (the negated cosine of the half-space pair ``(w_i, -w_i)``).
    Cosines are clamped to ``[-1, 1]`` so rounding never takes ``acos`` or ``2 - 2c`` out of their domain.
    """
    sq = torch.diagonal(gram, dim1=-2, dim2=-1)
    denom = sq + eps
    inv_norm = torch.rsqrt(denom)
    cos = gram * inv_norm.unsqueeze(-1) * inv_norm.unsqueeze(-2)
    return cos.clamp(-1.0, 1.0), sq / denom


def strict_upper(n: int, device=None) -> Tensor:
    """Boolean ``[n, n]`` mask of the pairs ``i < j``."""
    return torch.ones(n, n, dtype=torch.bool, device=device).triu(1)


def energy_from_gram(gram: Tensor, s: Power = 2, half_space: bool = False, eps: float = 1e-4,
                     reduction: str = "mean", upper: Optional[Tensor] = None) -> Tensor:
    """Energy from the Gram ``[..., N, N]`` of the neurons; returns ``[...]``. See the module docstring.

    upper: a precomputed ``strict_upper(N)`` (saves two ops per call on a hot path).
    """
    s = canonical_power(s)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"unknown reduction {reduction!r}; valid: mean, sum")
    n = gram.shape[-1]
    cos, sq_ratio = cosine_from_gram(gram, eps)
    if upper is None:
        upper = strict_upper(n, gram.device)
    # Entries off the strict upper triangle are replaced by 0 *before* g is applied, so the diagonal (c = 1, an
    # infinite energy when eps = 0) never enters the value or the gradient.
    pair_cos = torch.where(upper, cos, 0.0)
    term = half_space_pair_term(pair_cos, s) if half_space else pair_term(pair_cos, s)
    total = torch.where(upper, term, 0.0).sum((-2, -1))
    if half_space:
        total = total + _antipodal_terms(sq_ratio, s, eps).sum(-1)
    if reduction == "sum":
        return total
    pairs = num_pairs(n, half_space)
    return total / pairs if pairs > 0 else total * 0.0


def _antipodal_terms(sq_ratio: Tensor, s: Power, eps: float) -> Tensor:
    """g_s at the cosine of each pair ``(w_i, -w_i)``, ``-|w_i|^2/(|w_i|^2 + eps)``. ``[..., N]``.

    With ``eps = 0`` that cosine is exactly -1 and carries no gradient; it is used as a constant so that the
    angular terms (whose derivative is infinite at -1) do not produce NaN gradients.
    """
    if eps == 0:
        return pair_term(torch.full_like(sq_ratio, -1.0), s).detach()
    return pair_term(-sq_ratio, s)


def _check_neurons(w: Tensor) -> None:
    if not isinstance(w, Tensor):
        raise TypeError(f"w must be a torch.Tensor of neurons [N, d] or [..., N, d], got {type(w).__name__}")
    if w.dim() < 2:
        raise ValueError(f"w must have rows as neurons: shape [N, d] or [..., N, d], got shape {tuple(w.shape)}")
    if w.shape[-2] == 0 or w.shape[-1] == 0:
        raise ValueError(f"w is empty (shape {tuple(w.shape)}): need at least one neuron of dimension >= 1")
    if not w.is_floating_point():
        raise TypeError(f"w must be floating point, got {w.dtype}")


def hyperspherical_energy(w: Tensor, s: Power = 2, half_space: bool = False, eps: float = 1e-4,
                          reduction: str = "mean") -> Tensor:
    """Hyperspherical energy of the neurons (rows) of ``w``.

    w: ``[N, d]`` -> scalar, or ``[..., N, d]`` -> ``[...]`` (one value per batch entry).
    s: ``0, 1, 2, "a0", "a1", "a2"`` (table in the module docstring). half_space: add the virtual neurons ``-w``.
    eps: added to ``|w_i|^2`` inside the norm (official: 1e-4; 0 = exact). reduction: ``"mean"`` over unordered pairs
    (official) or ``"sum"`` (Thomson convention). One neuron has no pair in full space: its energy is 0.

    A conv weight ``[out, in, kh, kw]`` would be read as a batch of ``[kh, kw]`` neuron sets: pass ``neurons(weight)``.
    With ``eps=0`` a zero neuron has no direction and gives NaN (with ``eps > 0`` it stays finite); the angular
    powers keep their fixed ``+1e-4`` inside the log / power whatever ``eps`` is (docs/reference.md §1).
    """
    _check_neurons(w)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    gram = w @ w.transpose(-2, -1)
    return energy_from_gram(gram, s=s, half_space=half_space, eps=eps, reduction=reduction)


def neurons(weight: Tensor) -> Tensor:
    """A layer's weight as neurons: ``[out, ...] -> [out, prod(...)]`` (conv ``[out, in, kh, kw]`` or linear)."""
    return weight.reshape(weight.shape[0], -1)


def layer_energies(model: torch.nn.Module, s: Power = 2, eps: float = 1e-4, exclude=None) -> Dict[str, float]:
    """Monitor for the dynamics figure: the unprojected, full-space, pair-mean energy (default s=2) of every
    regularisable layer of ``model`` (``layers.find_layers``), as ``{layer name: float}``, whatever regulariser (if
    any) trains the model. One batched Gram per group of same-shape layers; no gradient. ``exclude``: module-name
    patterns of layers to leave out, as the regularisers' (e.g. PointNet's zero-initialised T-Net transforms)."""
    from .layers import find_layers, group_by_shape, stack_neurons  # layers does not import energy; keep it so

    out: Dict[str, float] = {}
    with torch.no_grad():
        for group in group_by_shape(find_layers(model, exclude=exclude, warn=False)):
            w = stack_neurons(group).float()
            values = energy_from_gram(w @ w.transpose(1, 2), s=s, eps=eps).cpu().tolist()
            out.update({layer.name: v for layer, v in zip(group, values)})
    return out

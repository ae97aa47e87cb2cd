"""Orthogonality baselines of the paper tables, in their standard published forms (not in the official code).

With ``W`` a layer's neurons ``[N, d]`` (rows), ``W^`` the same rows divided by ``sqrt(|w_i|^2 + eps)``:

* ``orthonormal``: soft orthonormality ``sum_layers ||W W^T - I||_F^2`` (Xie et al. 2017; the "SO" regulariser of
  Bansal et al., NeurIPS 2018). It pushes rows to unit norm **and** to be mutually orthogonal.
* ``orthogonal``: the same on normalised rows, ``sum_layers ||W^ W^^T - I||_F^2``: only the angles between neurons
  are penalised (the diagonal is ~0), norms are free, as in MHE.
* ``srip``: spectral restricted isometry (Bansal et al. 2018), ``sum_layers sigma(W W^T - I)`` with ``sigma`` the
  spectral norm; the smaller of ``W W^T`` (``N <= d``) and ``W^T W`` is used, so a wide layer is not charged for the
  ``N - d`` eigenvalues that must be 0. In the loss ``sigma`` comes from power iteration on persistent vectors
  (``power_iters`` per call, like ``torch.nn.utils.spectral_norm``; SRIP restarts two iterations from a random vector
  each step); the gradient flows through the final ``||M u||``. That estimate is below the true value and can move
  the wrong way between calls, so the stats (the monitor) report the exact spectral norm, ``penalty/<layer>``, and the
  estimate the loss used, ``estimate/<layer>``.

Our naming: "orthonormal" is the form that also fixes norms. Default weights are ours, not the paper's (the CoMHE
paper gives none): chosen so that on CNN-9 at He init the loss is of the order of the MHE term (~5). They are
constant (Bansal et al. decay theirs). Default layers: hidden only (the classifier can be added with
``layers="both"``; it then gets ``lambda_output``, by default equal to ``lambda_hidden``).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..energy import cosine_from_gram
from ..layers import group_by_shape, stack_neurons
from ..pairs import ExactConstants
from .base import Regularizer, choose_layers
from .options import check_options


class _GramPenalty(Regularizer, ExactConstants):
    """Sum over layers of ``lambda * penalty(Gram)``, one batched Gram per group of same-shape layers."""

    def __init__(self, model: nn.Module, *, lambda_hidden: float, lambda_output: Optional[float] = None,
                 layers: str = "hidden", eps: float = 1e-4, classifier: Optional[str] = None,
                 exclude: Optional[Sequence[str]] = None, example_input=None, include_frozen: bool = False):
        check_options(("lambda_hidden",), lambda_hidden=lambda_hidden, lambda_output=lambda_output, layers=layers,
                      eps=eps, classifier=classifier, example_input=example_input, include_frozen=include_frozen)
        chosen, leave = choose_layers(model, layers=layers, classifier=classifier, exclude=exclude,
                                      example_input=example_input, include_frozen=include_frozen)
        super().__init__(chosen, leave, include_frozen)
        self.lambda_hidden = float(lambda_hidden)
        self.lambda_output = self.lambda_hidden if lambda_output is None else float(lambda_output)
        self.eps = float(eps)
        self.groups = group_by_shape(chosen)
        for i, group in enumerate(self.groups):
            weights = [self.lambda_output if g.role == "output" else self.lambda_hidden for g in group]
            n = self.gram_size(group[0].num_neurons, group[0].fan_in)
            self.register_constant(f"weight{i}", weights, self.dtype_hint, self.device_hint)
            eye = torch.eye(n, device=self.device_hint, dtype=self.dtype_hint)
            self.register_buffer(f"eye{i}", eye, persistent=False)

    def gram_size(self, num_neurons: int, fan_in: int) -> int:
        return num_neurons

    def gram(self, w: Tensor) -> Tensor:
        return w @ w.transpose(1, 2)  # [L, N, N]

    def penalty(self, i: int, gram: Tensor) -> Tensor:  # [L, n, n] -> [L]
        return (gram - getattr(self, f"eye{i}")).pow(2).sum((-2, -1))

    def compute(self, lr):
        loss, values = None, []
        for i, group in enumerate(self.groups):
            gram = self.gram(stack_neurons(group).to(self.dtype_hint))  # float32 for half-precision weights
            value = self.penalty(i, gram)
            term = (value * getattr(self, f"weight{i}")).sum()
            loss = term if loss is None else loss + term
            values.append((value, gram))
        return loss, values

    def monitored(self, i: int, value: Tensor, gram: Tensor) -> Tensor:
        """The per-layer value the stats report (``[L]``): the penalty itself."""
        return value

    def summarize(self, values) -> Dict[str, float]:
        with torch.no_grad():
            per_layer = [(layer, v) for i, (group, (value, gram)) in enumerate(zip(self.groups, values))
                         for layer, v in zip(group, self.monitored(i, value, gram).cpu().tolist())]
        return self.weighted_stats(per_layer, "penalty")

    def layer_terms(self):
        return [(self.term_name, f"{self.lambda_output if layer.role == 'output' else self.lambda_hidden:g}")
                for layer in self.layers]


class Orthonormal(_GramPenalty):
    term_name = "||W W^T - I||_F^2"

    def __init__(self, model: nn.Module, *, lambda_hidden: float = 1e-3, lambda_output: Optional[float] = None,
                 layers: str = "hidden", classifier: Optional[str] = None, exclude: Optional[Sequence[str]] = None,
                 example_input=None, include_frozen: bool = False):
        super().__init__(model, lambda_hidden=lambda_hidden, lambda_output=lambda_output, layers=layers,
                         classifier=classifier, exclude=exclude, example_input=example_input,
                         include_frozen=include_frozen)


class Orthogonal(_GramPenalty):
    term_name = "||cos(W) - I||_F^2 (unit-norm rows)"

    def __init__(self, model: nn.Module, *, lambda_hidden: float = 1e-2, lambda_output: Optional[float] = None,
                 layers: str = "hidden", eps: float = 1e-4, classifier: Optional[str] = None,
                 exclude: Optional[Sequence[str]] = None, example_input=None, include_frozen: bool = False):
        super().__init__(model, lambda_hidden=lambda_hidden, lambda_output=lambda_output, layers=layers, eps=eps,
                         classifier=classifier, exclude=exclude, example_input=example_input,
                         include_frozen=include_frozen)

    def gram(self, w: Tensor) -> Tensor:
        cos, _ = cosine_from_gram(w @ w.transpose(1, 2), self.eps)
        return cos


class SRIP(_GramPenalty):
    term_name = "spectral norm of W W^T - I (W^T W - I for wide layers)"

    def __init__(self, model: nn.Module, *, lambda_hidden: float = 0.1, lambda_output: Optional[float] = None,
                 layers: str = "hidden", classifier: Optional[str] = None, exclude: Optional[Sequence[str]] = None,
                 example_input=None, include_frozen: bool = False, power_iters: int = 2):
        check_options(power_iters=power_iters)
        super().__init__(model, lambda_hidden=lambda_hidden, lambda_output=lambda_output, layers=layers,
                         classifier=classifier, exclude=exclude, example_input=example_input,
                         include_frozen=include_frozen)
        self.power_iters = power_iters
        for i, group in enumerate(self.groups):
            n = self.gram_size(group[0].num_neurons, group[0].fan_in)
            start = torch.randn(len(group), n, 1, device=self.device_hint, dtype=self.dtype_hint)
            self.register_buffer(f"u{i}", F.normalize(start, dim=1))

    def gram_size(self, num_neurons: int, fan_in: int) -> int:
        return min(num_neurons, fan_in)

    def gram(self, w: Tensor) -> Tensor:
        return w @ w.transpose(1, 2) if w.shape[1] <= w.shape[2] else w.transpose(1, 2) @ w

    def penalty(self, i: int, gram: Tensor) -> Tensor:
        m = gram - getattr(self, f"eye{i}")  # [L, n, n], symmetric
        u = getattr(self, f"u{i}")  # [L, n, 1]
        with torch.no_grad():
            for _ in range(self.power_iters):
                u = F.normalize(m.detach() @ u, dim=1)
            if self.training:
                getattr(self, f"u{i}").copy_(u)
        return (m @ u).norm(dim=(1, 2))  # = |largest eigenvalue| once u has converged

    def monitored(self, i: int, value: Tensor, gram: Tensor) -> Tensor:
        """The exact spectral norm of ``M = Gram - I`` (symmetric: its largest |eigenvalue|)."""
        return torch.linalg.eigvalsh(gram - getattr(self, f"eye{i}")).abs().amax(-1)

    def summarize(self, values) -> Dict[str, float]:
        stats = super().summarize(values)
        stats.update({f"estimate/{layer.name}": v for group, (value, _) in zip(self.groups, values)
                      for layer, v in zip(group, value.detach().cpu().tolist())})
        return stats

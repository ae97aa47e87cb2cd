"""The hyperspherical-energy regularisers: MHE, HS-MHE and the CoMHE projections (RP, AP, Adv, G).

Calling one returns ``(loss, stats)``: ``loss`` a scalar tensor, already weighted, to add to the task loss;
``stats`` a dict of floats (per-layer energies ``energy/<layer>``, weighted sums ``hidden``, ``output``, ``total``).
Pass ``stats=False`` on the hot path to skip the device-to-host copy the floats need. The learned CoMHE projections
(``ap_comhe``, ``adv_comhe``) step their matrices at the network's learning rate: pass it, ``reg(lr=current_lr)``,
once per training step (every training-mode call is one inner update of ``P``).

Energy regularisers (docs/reference.md §1, defaults = the official code):

=============  =====================================================================================
``mhe``        every hidden layer: full-space MHE; classifier: full-space MHE
``hs_mhe``     every hidden layer: half-space MHE; classifier: full-space MHE
``rp_comhe``   a conv with 3 input channels, or a layer of fan-in <= proj_dim: unprojected half-space MHE;
``ap_comhe``   every other hidden layer, fc included: half-space MHE of its projections (``projections.py``),
``adv_comhe``  averaged over the ``num_proj`` projections; classifier: full-space, unprojected MHE
``g_comhe``
=============  =====================================================================================

Weights: hidden ``lambda_hidden`` = 1, output ``lambda_output`` = 10 (0.1 and 1 for the angular ``s = a1, a2``), the
total is the weighted **sum** over layers. ``layers``: ``"both"`` (default), ``"hidden"`` or ``"output"``
(MHE Table 4). The classifier is the last linear / 1x1 conv unless ``classifier="<module name>"`` says otherwise;
``exclude=["pattern", ...]`` leaves layers out (``layers.find_layers``).

Everything is batched: the layers are stacked by weight shape (one ``stack`` and one ``bmm`` per shape), all random
projections of a step come from one ``randn``, and the energies of all Grams with the same neuron count and space go
through one fused computation (``energy_from_gram``). ``tests/library/test_regularizers.py`` checks it against a plain
per-layer loop. ``orthogonal``, ``orthonormal`` and ``srip`` live in ``orthogonality.py``, ``none`` in ``base.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .. import projections as projection_registry
from ..energy import canonical_power, energy_from_gram, strict_upper
from ..layers import Layer, find_layers, select, stack_neurons, unprojected
from .base import Regularizer


@dataclass
class _Group:
    """Same-shape layers that receive the same term (one stacked Gram or one batched projection)."""

    layers: List[Layer]
    half_space: bool
    projected: bool
    weight: float
    bucket: int = -1


class EnergyRegularizer(Regularizer):
    hidden_half_space = False
    projection: Optional[str] = None

    def __init__(self, model: nn.Module, *, s=2, layers: str = "both", lambda_hidden: Optional[float] = None,
                 lambda_output: Optional[float] = None, eps: float = 1e-4, classifier: Optional[str] = None,
                 exclude: Optional[Sequence[str]] = None, **projection_options):
        self.s = canonical_power(s)
        angular = self.s in ("a1", "a2")  # the official code's 0.1 / 1 is for a1 and a2 only; a0 keeps 1 / 10
        self.lambda_hidden = float((0.1 if angular else 1.0) if lambda_hidden is None else lambda_hidden)
        self.lambda_output = float((1.0 if angular else 10.0) if lambda_output is None else lambda_output)
        if eps <= 0:
            raise ValueError(f"eps must be > 0 in a regulariser (it keeps zero and padded neurons finite), got {eps}")
        self.eps = float(eps)
        chosen = select(find_layers(model, classifier, exclude), layers)
        if not chosen:
            raise ValueError(f"layers={layers!r} selects no layer of {type(model).__name__}")
        super().__init__(chosen)
        self.which = layers
        self.proj = None
        if self.projection is None:
            self.groups = self._plan(chosen, None)
        else:
            # An empty projection first validates the options and says which fan-ins it compresses.
            probe = projection_registry.build(self.projection, [], **projection_options)
            self.groups = self._plan(chosen, probe)
            shapes = [(len(g.layers), g.layers[0].num_neurons, g.layers[0].fan_in) for g in self.groups
                      if g.projected]
            self.proj = projection_registry.build(self.projection, shapes, **projection_options).to(
                device=self.device_hint, dtype=self.dtype_hint)
        self._plan_buckets()
        self._energy = energy_from_gram

    def compile(self, **options) -> "EnergyRegularizer":
        self._energy = torch.compile(energy_from_gram, dynamic=False, **options)
        return self

    def _plan(self, layers: List[Layer], probe) -> List[_Group]:
        groups: Dict[tuple, _Group] = {}
        for layer in layers:
            if layer.role == "output":
                half_space, projected, weight = False, False, self.lambda_output
            else:
                projected = probe is not None and not unprojected(layer, probe.applies_to(layer.fan_in))
                half_space, weight = (probe is not None) or self.hidden_half_space, self.lambda_hidden
            key = (layer.shape, half_space, projected, weight, layer.role == "output")
            groups.setdefault(key, _Group([], half_space, projected, weight)).layers.append(layer)
        return list(groups.values())

    def _plan_buckets(self) -> None:
        """Grams with the same neuron count and space share one energy computation; record its rows' weights."""
        keys: List[Tuple[int, bool]] = []
        row_weights: List[List[float]] = []
        self.row_layers: List[List[int]] = []
        index = {layer.name: i for i, layer in enumerate(self.layers)}
        copies = self.proj.num_proj if self.proj is not None else 1
        for g in self.groups:
            key = (g.layers[0].num_neurons, g.half_space)
            if key not in keys:
                keys.append(key)
                row_weights.append([])
                self.row_layers.append([])
            g.bucket = keys.index(key)
            per_layer = copies if g.projected else 1
            for layer in g.layers:
                row_weights[g.bucket] += [g.weight / per_layer] * per_layer
                self.row_layers[g.bucket] += [index[layer.name]] * per_layer
        self.buckets = keys
        for b, ((n, _), weights) in enumerate(zip(keys, row_weights)):
            weights = torch.tensor(weights, device=self.device_hint, dtype=self.dtype_hint)
            self.register_buffer(f"row_weight{b}", weights, persistent=False)
            self.register_buffer(f"upper{b}", strict_upper(n, self.device_hint), persistent=False)

    def compute(self, lr: Optional[float]):
        stacks = [stack_neurons(g.layers) for g in self.groups]
        projected = iter(())
        if self.proj is not None and any(g.projected for g in self.groups):
            projected = iter(self.proj([w for g, w in zip(self.groups, stacks) if g.projected], lr))
        pieces: List[List[Tensor]] = [[] for _ in self.buckets]
        for g, w in zip(self.groups, stacks):
            if g.projected:
                y = next(projected)  # [L, C, N, k]
                pieces[g.bucket].append((y @ y.transpose(-1, -2)).flatten(0, 1))  # [L*C, N, N]
            else:
                pieces[g.bucket].append(w @ w.transpose(1, 2))  # [L, N, N]
        loss, energies = None, []
        for b, (_, half_space) in enumerate(self.buckets):
            gram = pieces[b][0] if len(pieces[b]) == 1 else torch.cat(pieces[b])
            energy = self._energy(gram, self.s, half_space, self.eps, upper=getattr(self, f"upper{b}"))
            term = (energy * getattr(self, f"row_weight{b}")).sum()
            loss = term if loss is None else loss + term
            energies.append(energy)
        return loss, energies

    def summarize(self, energies: List[Tensor]) -> Dict[str, float]:
        sums = [0.0] * len(self.layers)
        counts = [0] * len(self.layers)
        for b, energy in enumerate(energies):
            for row, value in zip(self.row_layers[b], energy.detach().cpu().tolist()):
                sums[row] += value
                counts[row] += 1
        return self.weighted_stats([(layer, total / count) for layer, total, count in zip(self.layers, sums, counts)],
                                   "energy")

    def extra_repr(self) -> str:
        plan = ", ".join(f"{len(g.layers)}x{list(g.layers[0].shape)}{'/proj' if g.projected else ''}"
                         f"{'/hs' if g.half_space else ''}" for g in self.groups)
        return f"s={self.s}, layers={self.which}, lambda_hidden={self.lambda_hidden}, " \
               f"lambda_output={self.lambda_output}, groups=[{plan}]"


class MHE(EnergyRegularizer):
    def __init__(self, model: nn.Module, *, s=2, layers: str = "both", lambda_hidden: Optional[float] = None,
                 lambda_output: Optional[float] = None, eps: float = 1e-4, classifier: Optional[str] = None,
                 exclude: Optional[Sequence[str]] = None):
        super().__init__(model, s=s, layers=layers, lambda_hidden=lambda_hidden, lambda_output=lambda_output,
                         eps=eps, classifier=classifier, exclude=exclude)


class HalfSpaceMHE(MHE):
    hidden_half_space = True


class RandomProjectionCoMHE(EnergyRegularizer):
    projection = "random"

    def __init__(self, model: nn.Module, *, s=2, layers: str = "both", lambda_hidden: Optional[float] = None,
                 lambda_output: Optional[float] = None, eps: float = 1e-4, classifier: Optional[str] = None,
                 exclude: Optional[Sequence[str]] = None, proj_dim: int = 40, num_proj: int = 20,
                 seed: Optional[int] = None):
        super().__init__(model, s=s, layers=layers, lambda_hidden=lambda_hidden, lambda_output=lambda_output,
                         eps=eps, classifier=classifier, exclude=exclude, proj_dim=proj_dim, num_proj=num_proj,
                         seed=seed)


class _LearnedCoMHE(EnergyRegularizer):
    def __init__(self, model: nn.Module, *, s=2, layers: str = "both", lambda_hidden: Optional[float] = None,
                 lambda_output: Optional[float] = None, eps: float = 1e-4, classifier: Optional[str] = None,
                 exclude: Optional[Sequence[str]] = None, proj_dim: int = 30, num_proj: int = 1,
                 proj_iters: int = 1, proj_lr: float = 0.1, proj_weight_decay: float = 5e-7,
                 proj_lr_fixed: bool = False):
        super().__init__(model, s=s, layers=layers, lambda_hidden=lambda_hidden, lambda_output=lambda_output,
                         eps=eps, classifier=classifier, exclude=exclude, proj_dim=proj_dim, num_proj=num_proj,
                         iters=proj_iters, lr=proj_lr, weight_decay=proj_weight_decay, fixed_lr=proj_lr_fixed)


class AngleProjectionCoMHE(_LearnedCoMHE):
    """``proj_lr`` is used only when ``reg()`` is called without ``lr``, or always with ``proj_lr_fixed=True``."""

    projection = "angle"


class AdversarialProjectionCoMHE(_LearnedCoMHE):
    projection = "adversarial"

    def __init__(self, model: nn.Module, *, s=2, layers: str = "both", lambda_hidden: Optional[float] = None,
                 lambda_output: Optional[float] = None, eps: float = 1e-4, classifier: Optional[str] = None,
                 exclude: Optional[Sequence[str]] = None, proj_dim: int = 30, num_proj: int = 1,
                 proj_iters: int = 10, proj_lr: float = 0.1, proj_weight_decay: float = 5e-7,
                 proj_lr_fixed: bool = False):
        super().__init__(model, s=s, layers=layers, lambda_hidden=lambda_hidden, lambda_output=lambda_output,
                         eps=eps, classifier=classifier, exclude=exclude, proj_dim=proj_dim, num_proj=num_proj,
                         proj_iters=proj_iters, proj_lr=proj_lr, proj_weight_decay=proj_weight_decay,
                         proj_lr_fixed=proj_lr_fixed)


class GroupCoMHE(EnergyRegularizer):
    """``num_proj`` is the number of coordinate groups (ours: 8; the paper does not say)."""

    projection = "group"

    def __init__(self, model: nn.Module, *, s=2, layers: str = "both", lambda_hidden: Optional[float] = None,
                 lambda_output: Optional[float] = None, eps: float = 1e-4, classifier: Optional[str] = None,
                 exclude: Optional[Sequence[str]] = None, num_proj: int = 8):
        super().__init__(model, s=s, layers=layers, lambda_hidden=lambda_hidden, lambda_output=lambda_output,
                         eps=eps, classifier=classifier, exclude=exclude, num_proj=num_proj)

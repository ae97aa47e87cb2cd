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
``ap_comhe``   every other hidden layer, fc included: half-space MHE of its projections (``projections``),
``adv_comhe``  averaged over the ``num_proj`` projections; classifier: full-space, unprojected MHE
``g_comhe``
=============  =====================================================================================

Weights: hidden ``lambda_hidden`` = 1, output ``lambda_output`` = 10 (0.1 and 1 for the angular ``s = a1, a2``), the
total is the weighted **sum** over layers. ``layers``: ``"both"`` (default), ``"hidden"`` or ``"output"``
(MHE Table 4). The classifier is the last linear / 1x1 conv unless ``classifier="<module name>"`` says otherwise;
``exclude=["pattern", ...]`` leaves layers out (``layers.find_layers``).

Everything is batched (``stacking.py``, ``pairs.py``): the weights of every layer are read in place and stacked by one
``cat`` into zero-padded buckets of equal fan-in; the projections of a call come from one draw and one ``bmm`` per
bucket; one fused function (``pairs.GramEnergy``) takes the Grams, the half- and full-space pair terms of every layer
and their gradient in ~35 kernels whatever the depth (on the CPU a long list goes a few Grams at a time instead:
``chunked.py``). ``tests/library/test_regularizers.py`` checks the loss and the
gradients against a plain per-layer loop in float64. ``reg.compile()`` (config ``compile: true``) compiles all of it
but the ``cat``, the random draw and the AP / Adv inner steps (``torch.compile`` has no double backward).
``orthogonal``, ``orthonormal`` and ``srip`` live in ``orthogonality.py``, ``none`` in ``base.py``.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .. import projections as projection_registry
from ..energy import canonical_power
from ..layers import Layer, unprojected
from ..pairs import PairPlan, gram_energy, plan_blocks
from ..stacking import Stack, Stacker, plan_buckets
from .base import Regularizer, choose_layers
from .options import check_options

# the regulariser's option -> the learned projection's argument (``projections.learned.LearnedProjection``)
PROJECTION_ARGUMENTS = {"proj_iters": "iters", "proj_lr": "lr", "proj_weight_decay": "weight_decay",
                        "proj_lr_fixed": "fixed_lr"}


@dataclass(frozen=True)
class Term:
    """How one layer is regularised: ``kind`` full / half / projected (half-space energy of ``copies``
    projections to ``dim`` coordinates, averaged), with weight ``weight`` (lambda)."""

    kind: str
    weight: float
    copies: int = 1
    dim: int = 0
    why: str = ""      # why a CoMHE hidden layer is not projected


def _own_code(fn):
    """``fn`` with a code object of its own. Dynamo keeps its compiled graphs per code object, at most 8
    (``recompile_limit``) and then silently runs eagerly: every regulariser instance gets its own cache."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def _loss_of(reg: "EnergyRegularizer"):
    """The function ``compile`` compiles: the flat stack (and the call's projection matrices) to the loss."""
    def loss(flat: Tensor, orders, mats):
        return reg._loss(Stack(reg.stacker, flat, orders), mats, fused=False)
    return loss


class EnergyRegularizer(Regularizer):
    hidden_half_space = False
    projection: Optional[str] = None

    def __init__(self, model: nn.Module, *, s=2, layers: str = "both", lambda_hidden: Optional[float] = None,
                 lambda_output: Optional[float] = None, eps: float = 1e-4, classifier: Optional[str] = None,
                 exclude: Optional[Sequence[str]] = None, example_input=None, include_frozen: bool = False,
                 **projection_options):
        check_options(layers=layers, lambda_hidden=lambda_hidden, lambda_output=lambda_output, eps=eps,
                      classifier=classifier, example_input=example_input, include_frozen=include_frozen,
                      **projection_options)
        self.s = canonical_power(s)
        angular = self.s in ("a1", "a2")  # the official code's 0.1 / 1 is for a1 and a2 only; a0 keeps 1 / 10
        self.lambda_hidden = float((0.1 if angular else 1.0) if lambda_hidden is None else lambda_hidden)
        self.lambda_output = float((1.0 if angular else 10.0) if lambda_output is None else lambda_output)
        if eps <= 0:
            raise ValueError(f"eps must be > 0 in a regulariser (it keeps zero and padded neurons finite), got {eps}")
        self.eps = float(eps)
        chosen, leave = choose_layers(model, layers=layers, classifier=classifier, exclude=exclude,
                                      example_input=example_input, include_frozen=include_frozen)
        super().__init__(chosen, leave, include_frozen)
        self.which = layers
        # An unattached projection validates the options and says which fan-ins it compresses.
        proj = projection_registry.build(self.projection, **{PROJECTION_ARGUMENTS.get(k, k): v
                                                             for k, v in projection_options.items()}) \
            if self.projection else None
        self.terms = [self._term(layer, proj) for layer in chosen]
        buckets = plan_buckets(chosen, [t.kind == "projected" for t in self.terms])
        self.stacker = Stacker(chosen, buckets, self.dtype_hint, self.device_hint)
        self.proj = proj
        if proj is not None:
            proj.setup(self.stacker, [b for b, bucket in enumerate(buckets) if bucket.projected], self.dtype_hint,
                       self.device_hint)
        blocks, offset = plan_blocks(buckets, lambda i: (self.terms[i].copies, self.terms[i].kind != "full",
                                                         self.terms[i].weight / self.terms[i].copies))
        self.pairs = PairPlan(blocks, offset, len(chosen), self.dtype_hint, self.device_hint)
        self._compiled: Optional[Callable[..., Tuple[Tensor, Tensor]]] = None

    def _term(self, layer: Layer, proj) -> Term:
        if layer.role == "output":
            return Term("full", self.lambda_output)
        if proj is None:
            return Term("half" if self.hidden_half_space else "full", self.lambda_hidden)
        if not unprojected(layer, proj.applies_to(layer.fan_in)):
            return Term("projected", self.lambda_hidden, proj.copies(layer.fan_in), proj.dim(layer.fan_in))
        why = "3 input channels" if layer.is_rgb_conv else f"fan-in {layer.fan_in} not compressed"
        return Term("half", self.lambda_hidden, why=why)

    def compile(self, **options) -> "EnergyRegularizer":  # type: ignore[override]  # returns self (base.py)
        """``torch.compile`` everything from the stacked weights to the loss, as one graph with its own cache."""
        self._compiled = torch.compile(_own_code(_loss_of(self)), dynamic=False, **options)
        return self

    def compute(self, lr: Optional[float]):
        stack = self.stacker()
        mats = self.proj.matrices(stack, lr) if self.proj is not None else []
        if self._compiled is not None:
            self.pairs.indices()  # the packed list's indices: built outside the graph (a chunked plan builds them late)
            if self.proj is not None:
                self.proj.prepare(stack)  # gather indices: built outside the graph, once per memory layout
            return self._compiled(stack.flat, stack.orders, mats)
        return self._loss(stack, mats, fused=True)

    def _loss(self, stack: Stack, mats: Sequence[Optional[Tensor]], fused: bool) -> Tuple[Tensor, Tensor]:
        projected = iter(self.proj.rows(stack, mats)) if self.proj is not None else iter(())
        rows = [next(projected) if bucket.projected else stack.view(b)
                for b, bucket in enumerate(self.stacker.buckets)]
        as_columns = self.proj is not None and self.proj.columns  # (only a projection makes buckets projected)
        columns = [bucket.projected and as_columns for bucket in self.stacker.buckets]
        return gram_energy(rows, self.pairs, self.s, self.eps, fused, columns)

    def summarize(self, terms: Tensor) -> Dict[str, float]:
        energies = self.pairs.per_layer(terms)
        return self.weighted_stats(list(zip(self.layers, energies)), "energy")

    def layer_terms(self) -> List[Tuple[str, str]]:
        out = []
        for term in self.terms:
            words = {"full": "full-space", "half": "half-space"}.get(term.kind)
            if words is None:
                words = f"half-space of {term.copies} projections to {term.dim}"
                if self.projection == "group":
                    words = f"half-space of {term.copies} coordinate groups of {term.dim}"
            elif term.why:  # (only an unprojected "half" term has a why)
                words += f" (unprojected: {term.why})"
            out.append((f"{words}, s={self.s}", f"{term.weight:g}"))
        return out

    def extra_repr(self) -> str:
        return f"s={self.s}, layers={self.which}, eps={self.eps:g}\n" + self.describe()


class MHE(EnergyRegularizer):
    def __init__(self, model: nn.Module, *, s=2, layers: str = "both", lambda_hidden: Optional[float] = None,
                 lambda_output: Optional[float] = None, eps: float = 1e-4, classifier: Optional[str] = None,
                 exclude: Optional[Sequence[str]] = None, example_input=None, include_frozen: bool = False):
        super().__init__(model, s=s, layers=layers, lambda_hidden=lambda_hidden, lambda_output=lambda_output,
                         eps=eps, classifier=classifier, exclude=exclude, example_input=example_input,
                         include_frozen=include_frozen)


class HalfSpaceMHE(MHE):
    hidden_half_space = True


class RandomProjectionCoMHE(EnergyRegularizer):
    projection = "random"

    def __init__(self, model: nn.Module, *, s=2, layers: str = "both", lambda_hidden: Optional[float] = None,
                 lambda_output: Optional[float] = None, eps: float = 1e-4, classifier: Optional[str] = None,
                 exclude: Optional[Sequence[str]] = None, example_input=None, include_frozen: bool = False,
                 proj_dim: int = 40, num_proj: int = 20, seed: Optional[int] = None):
        super().__init__(model, s=s, layers=layers, lambda_hidden=lambda_hidden, lambda_output=lambda_output,
                         eps=eps, classifier=classifier, exclude=exclude, example_input=example_input,
                         include_frozen=include_frozen, proj_dim=proj_dim, num_proj=num_proj, seed=seed)


class _LearnedCoMHE(EnergyRegularizer):
    def __init__(self, model: nn.Module, *, s=2, layers: str = "both", lambda_hidden: Optional[float] = None,
                 lambda_output: Optional[float] = None, eps: float = 1e-4, classifier: Optional[str] = None,
                 exclude: Optional[Sequence[str]] = None, example_input=None, include_frozen: bool = False,
                 proj_dim: int = 30, num_proj: int = 1, proj_iters: int = 1, proj_lr: float = 0.1,
                 proj_weight_decay: float = 5e-7, proj_lr_fixed: bool = False):
        super().__init__(model, s=s, layers=layers, lambda_hidden=lambda_hidden, lambda_output=lambda_output,
                         eps=eps, classifier=classifier, exclude=exclude, example_input=example_input,
                         include_frozen=include_frozen, proj_dim=proj_dim, num_proj=num_proj, proj_iters=proj_iters,
                         proj_lr=proj_lr, proj_weight_decay=proj_weight_decay, proj_lr_fixed=proj_lr_fixed)


class AngleProjectionCoMHE(_LearnedCoMHE):
    """``proj_lr`` is used only when ``reg()`` is called without ``lr``, or always with ``proj_lr_fixed=True``
    (``projections.learned.LearnedProjection.step_lr``)."""

    projection = "angle"


class AdversarialProjectionCoMHE(_LearnedCoMHE):
    projection = "adversarial"

    def __init__(self, model: nn.Module, *, s=2, layers: str = "both", lambda_hidden: Optional[float] = None,
                 lambda_output: Optional[float] = None, eps: float = 1e-4, classifier: Optional[str] = None,
                 exclude: Optional[Sequence[str]] = None, example_input=None, include_frozen: bool = False,
                 proj_dim: int = 30, num_proj: int = 1, proj_iters: int = 10, proj_lr: float = 0.1,
                 proj_weight_decay: float = 5e-7, proj_lr_fixed: bool = False):
        super().__init__(model, s=s, layers=layers, lambda_hidden=lambda_hidden, lambda_output=lambda_output,
                         eps=eps, classifier=classifier, exclude=exclude, example_input=example_input,
                         include_frozen=include_frozen, proj_dim=proj_dim, num_proj=num_proj, proj_iters=proj_iters,
                         proj_lr=proj_lr, proj_weight_decay=proj_weight_decay, proj_lr_fixed=proj_lr_fixed)


class GroupCoMHE(EnergyRegularizer):
    """``num_proj`` is the number of coordinate groups (ours: 8; the paper does not say), lowered per layer so that a
    group keeps at least ``min_group_size`` coordinates (``projections.GroupProjection``)."""

    projection = "group"

    def __init__(self, model: nn.Module, *, s=2, layers: str = "both", lambda_hidden: Optional[float] = None,
                 lambda_output: Optional[float] = None, eps: float = 1e-4, classifier: Optional[str] = None,
                 exclude: Optional[Sequence[str]] = None, example_input=None, include_frozen: bool = False,
                 num_proj: int = 8, min_group_size: int = 8):
        super().__init__(model, s=s, layers=layers, lambda_hidden=lambda_hidden, lambda_output=lambda_output,
                         eps=eps, classifier=classifier, exclude=exclude, example_input=example_input,
                         include_frozen=include_frozen, num_proj=num_proj, min_group_size=min_group_size)

"""The regulariser interface: an ``nn.Module`` whose call returns ``(loss, stats)``; and the baseline, ``none``.

Subclasses implement ``compute(lr) -> (loss, parts)`` and ``summarize(parts) -> stats``; ``forward`` runs them in
float32 (float64 for float64 weights) outside any autocast region, whatever the weights' dtype. ``print(reg)`` /
``reg.describe()`` lists every layer it acts on (role, term, lambda) and every parameter it leaves out, with the
reason. The registry of every regulariser is ``comhe.regularizers.REGULARIZERS``.

**Dtypes: the regulariser follows its model.** Each call reads the weights' dtypes as they are *now* and computes in
``compute_dtype`` of them: float64 if any weight is float64, else float32 (fp16, bf16, float32 weights, and inside
autocast). Its own tensors (learned projections, power-iteration vectors, plan constants) are brought to that dtype
when it changes, so ``model.double()`` (or ``.half()``, ``.float()``) after ``build`` needs nothing else, and
``reg.to(dtype)`` / ``reg.double()`` / ``reg.half()`` / ``reg.bfloat16()`` are accepted (a parent module converting
both is the usual case) but never store half-precision state: a half or bf16 request keeps float32, and the next call
sets whatever the weights decide. A weight of any other dtype (integer, float8, complex) is an error saying what to do.

**Frozen layers** (``weight.requires_grad == False`` at ``build``) are left out, listed with the reason; the option
``include_frozen=True`` keeps them (their term is a constant, with no gradient). A layer frozen (or unfrozen) after
``build`` keeps its plan, and the next call warns once that the regulariser should be built again.
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..layers import Layer, find_layers, left_out, select

SUPPORTED = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LOW_PRECISION = (torch.float16, torch.bfloat16)


def _weight_device(layers: List[Layer]) -> torch.device:
    return layers[0].weight.device if layers else torch.device("cpu")


def compute_dtype(weights: Sequence[Tensor]) -> torch.dtype:
    """float64 if any weight is float64, else float32: never a half-precision energy (fp16 overflows ``1 / (1 - c^2)``
    past ~256 neurons, and bf16 has 3 significant digits). Raises ``TypeError`` for a dtype the math cannot take."""
    dtypes = {w.dtype for w in weights}
    odd = dtypes.difference(SUPPORTED)
    if odd:
        raise TypeError(f"the regulariser computes in float32 / float64 and reads weights of dtype float16, "
                        f"bfloat16, float32 or float64, not {', '.join(sorted(map(str, odd)))}: regularise a "
                        "floating-point copy of the model, or exclude those layers (exclude=[...])")
    return torch.float64 if torch.float64 in dtypes else torch.float32


def choose_layers(model: nn.Module, *, layers: str, classifier: Optional[str], exclude, example_input,
                  include_frozen: bool) -> Tuple[List[Layer], List[Tuple[str, str]]]:
    """The layers a regulariser acts on (``layers.find_layers``, then the layer set ``layers``, then without the frozen
    ones unless ``include_frozen``) and ``(parameter, why)`` for every parameter of the model it leaves out."""
    chosen = select(find_layers(model, classifier, exclude, example_input), layers)
    if not chosen:
        raise ValueError(f"layers={layers!r} selects no layer of {type(model).__name__}")
    frozen = set() if include_frozen else {layer.name for layer in chosen if not layer.weight.requires_grad}
    kept = [layer for layer in chosen if layer.name not in frozen]
    if not kept:
        raise ValueError(f"every layer layers={layers!r} selects is frozen (requires_grad=False): nothing to "
                         "regularise; pass include_frozen=True to regularise them anyway")
    return kept, left_out(model, kept, exclude, layers, frozen)


class Regularizer(nn.Module):
    """Base class. Subclasses implement ``compute(lr) -> (loss, parts)`` and ``summarize(parts) -> stats``.

    The model's weights are referenced, not registered: ``reg.parameters()`` is empty and ``reg.state_dict()`` holds
    only the regulariser's own state (learned projections, generator state, power-iteration vectors).
    The regulariser always runs in float32 (float64 for float64 weights), also for fp16 / bf16 weights and inside a
    bf16 ``autocast`` region: a low-precision Gram would turn cosines near 1 into large errors in ``1 / (1 - c^2)``.
    It follows the weights' dtype at every call (module docstring); the loss has the compute dtype.
    ``left_out``: ``(parameter, reason)`` for every parameter of the model it does not act on (``describe``).
    """

    lambda_hidden: float  # set by the subclasses that call ``weighted_stats``
    lambda_output: float

    def __init__(self, layers: List[Layer], left_out: Sequence[Tuple[str, str]] = (), include_frozen: bool = False):
        super().__init__()
        self.layers = list(layers)
        self.left_out = list(left_out)
        self.include_frozen = include_frozen
        self.device_hint = _weight_device(self.layers)
        self.dtype_hint = compute_dtype(self.weights())
        self._trainable = tuple(w.requires_grad for w in self.weights())

    def weights(self) -> List[Tensor]:
        """The model's weights whose dtype decides the compute dtype (the layers' weights)."""
        return [layer.weight for layer in self.layers]

    def forward(self, lr: Optional[float] = None, stats: bool = True) -> Tuple[Tensor, Dict[str, float]]:
        self.follow_weights()
        device = self.layers[0].weight.device if self.layers else self.device_hint
        with torch.autocast(device.type, enabled=False):
            loss, parts = self.compute(lr)
        return loss, (self.summarize(parts) if stats else {})

    def follow_weights(self) -> None:
        """Bring the regulariser's own tensors to the compute dtype of the weights as they are now (the model may have
        been converted since ``build``), and warn once if a layer was frozen or unfrozen since then."""
        weights = self.weights()
        dtype = compute_dtype(weights)
        if dtype != self.dtype_hint:
            self._apply(lambda t: t.to(dtype) if t.is_floating_point() else t)
        trainable = tuple(w.requires_grad for w in weights)
        if trainable != self._trainable:
            changed = [layer.name for layer, now, then in zip(self.layers, trainable, self._trainable) if now != then]
            self._trainable = trainable
            if changed and not self.include_frozen:
                warnings.warn(f"{', '.join(changed)}: requires_grad changed since the regulariser was built, which "
                              "still regularises them (a frozen layer's term is a constant): build it again to leave "
                              "frozen layers out, or pass include_frozen=True to keep them", stacklevel=3)

    def _apply(self, fn, recurse=True):
        """``reg.to(...)``, ``.double()``, ``.half()``, ...: its own floating tensors are converted, except that a
        half-precision result is replaced by the float32 conversion of the original (no state is ever kept in fp16
        / bf16, nor rounded through them)."""
        before = {name: t for name, t in self.named_buffers() if t.is_floating_point()}
        super()._apply(fn, recurse)
        for name, t in list(self.named_buffers()):
            if t.dtype in LOW_PRECISION and name in before:
                owner, _, key = name.rpartition(".")
                module = self.get_submodule(owner) if owner else self
                module._buffers[key] = before[name].to(device=t.device, dtype=torch.float32)
        floating = [t for t in self.buffers() if t.is_floating_point()]
        if floating:
            self.dtype_hint, self.device_hint = floating[0].dtype, floating[0].device
        return self

    def compute(self, lr: Optional[float]):  # pragma: no cover - every registered subclass overrides it
        raise TypeError(f"{type(self).__name__} does not define compute()")

    # Returns self (``reg = build(...).compile()``), where nn.Module.compile returns None: a deliberate override.
    def compile(self, **options) -> "Regularizer":  # type: ignore[override]
        """``torch.compile`` the pure tensor math (fuses the energy's elementwise chain into a few kernels)."""
        return self

    def summarize(self, parts) -> Dict[str, float]:
        return {}

    def layer_terms(self) -> List[Tuple[str, str]]:
        """``(term, lambda)`` per layer of ``self.layers``, as words (``describe``)."""
        return [("", "") for _ in self.layers]

    def describe(self) -> str:
        """Every layer acted on, by name, with role, shape, term and lambda; then every parameter left out and why."""
        rows = [(layer.name, layer.role, "x".join(map(str, layer.shape)), term, weight)
                for layer, (term, weight) in zip(self.layers, self.layer_terms())]
        head = ("layer", "role", "shape", "term", "lambda")
        widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
        lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in [head] + rows]
        if self.left_out:
            width = max(len(name) for name, _ in self.left_out)
            lines += ["left out:"] + [f"  {name.ljust(width)}  {why}" for name, why in self.left_out]
        return "\n".join(lines)

    def extra_repr(self) -> str:
        return self.describe() if self.layers else ""

    def weighted_stats(self, per_layer: List[Tuple[Layer, float]], prefix: str) -> Dict[str, float]:
        """``{prefix/<layer>: value}`` plus the lambda-weighted sums ``hidden`` (input + hidden), ``output``, ``total``
        (needs ``lambda_hidden`` / ``lambda_output`` attributes)."""
        stats: Dict[str, float] = {}
        hidden = output = 0.0
        for layer, value in per_layer:
            stats[f"{prefix}/{layer.name}"] = value
            if layer.role == "output":
                output += self.lambda_output * value
            else:
                hidden += self.lambda_hidden * value
        stats.update(hidden=hidden, output=output, total=hidden + output)
        return stats


class NoRegularizer(Regularizer):
    """The baseline: a zero loss on the model's device (so ``loss + reg_loss`` needs no special case)."""

    def __init__(self, model: nn.Module):
        weight = next(iter(model.parameters()), None)
        self._probe = [] if weight is None else [weight]  # a list: referenced, not registered
        super().__init__([])
        self.register_buffer("zero", torch.zeros((), device=weight.device if weight is not None else None,
                                                 dtype=self.dtype_hint), persistent=False)

    def weights(self) -> List[Tensor]:
        return list(self._probe)

    def compute(self, lr):
        return self.zero, None

    def summarize(self, parts) -> Dict[str, float]:
        return {"total": 0.0}

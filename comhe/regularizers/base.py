"""The regulariser interface: an ``nn.Module`` whose call returns ``(loss, stats)``; and the baseline, ``none``.

Subclasses implement ``compute(lr) -> (loss, parts)`` and ``summarize(parts) -> stats``; ``forward`` runs them in
float32 (float64 for float64 weights) outside any autocast region, whatever the weights' dtype. ``print(reg)`` /
``reg.describe()`` lists every layer it acts on (role, term, lambda) and every parameter it leaves out, with the
reason. The registry of every regulariser is ``comhe.regularizers.REGULARIZERS``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..layers import Layer


def _weight_device(layers: List[Layer]) -> torch.device:
    return layers[0].weight.device if layers else torch.device("cpu")


def compute_dtype(layers: List[Layer]) -> torch.dtype:
    """float64 if any weight is float64, else float32: never a half-precision energy (fp16 overflows ``1 / (1 - c^2)``
    past ~256 neurons, and bf16 has 3 significant digits)."""
    return torch.float64 if any(layer.weight.dtype == torch.float64 for layer in layers) else torch.float32


class Regularizer(nn.Module):
    """Base class. Subclasses implement ``compute(lr) -> (loss, parts)`` and ``summarize(parts) -> stats``.

    The model's weights are referenced, not registered: ``reg.parameters()`` is empty and ``reg.state_dict()`` holds
    only the regulariser's own state (learned projections, generator state, power-iteration vectors).
    The regulariser always runs in float32 (float64 for float64 weights), also for fp16 / bf16 weights and inside a
    bf16 ``autocast`` region: a low-precision Gram would turn cosines near 1 into large errors in ``1 / (1 - c^2)``.
    ``left_out``: ``(parameter, reason)`` for every parameter of the model it does not act on (``describe``).
    """

    def __init__(self, layers: List[Layer], left_out: Sequence[Tuple[str, str]] = ()):
        super().__init__()
        self.layers = list(layers)
        self.left_out = list(left_out)
        self.device_hint = _weight_device(self.layers)
        self.dtype_hint = compute_dtype(self.layers)

    def forward(self, lr: Optional[float] = None, stats: bool = True) -> Tuple[Tensor, Dict[str, float]]:
        device = self.layers[0].weight.device if self.layers else self.device_hint
        with torch.autocast(device.type, enabled=False):
            loss, parts = self.compute(lr)
        return loss, (self.summarize(parts) if stats else {})

    def compute(self, lr: Optional[float]):  # pragma: no cover - every registered subclass overrides it
        raise TypeError(f"{type(self).__name__} does not define compute()")

    def compile(self, **options) -> "Regularizer":
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
        super().__init__([])
        weight = next(iter(model.parameters()), None)
        self.register_buffer("zero", torch.zeros((), device=weight.device if weight is not None else None),
                             persistent=False)

    def compute(self, lr):
        return self.zero, None

    def summarize(self, parts) -> Dict[str, float]:
        return {"total": 0.0}

"""The regulariser interface: an ``nn.Module`` whose call returns ``(loss, stats)``; and the baseline, ``none``.

Subclasses implement ``compute(lr) -> (loss, parts)`` and ``summarize(parts) -> stats``; ``forward`` runs them in
float32 outside any autocast region. The registry of every regulariser is ``comhe.regularizers.REGULARIZERS``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..layers import Layer


def _weight_device(layers: List[Layer]) -> torch.device:
    return layers[0].weight.device if layers else torch.device("cpu")


class Regularizer(nn.Module):
    """Base class. Subclasses implement ``compute(lr) -> (loss, parts)`` and ``summarize(parts) -> stats``.

    The model's weights are referenced, not registered: ``reg.parameters()`` is empty and ``reg.state_dict()`` holds
    only the regulariser's own state (learned projections, generator state, power-iteration vectors).
    The regulariser always runs in float32, also inside a bf16 ``autocast`` region: a low-precision Gram would turn
    cosines near 1 into large errors in ``1 / (1 - c^2)``.
    """

    def __init__(self, layers: List[Layer]):
        super().__init__()
        self.layers = list(layers)
        self.device_hint = _weight_device(self.layers)
        self.dtype_hint = self.layers[0].weight.dtype if self.layers else torch.get_default_dtype()

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

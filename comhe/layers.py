"""Which layers of a model the regularisers act on, and how they are stacked for batched computation.

A *regularisable layer* is any ``nn.Conv1d/2d/3d`` or ``nn.Linear`` with a weight (transposed convolutions are
skipped: their neurons are not the weight's rows). Layers are found by walking ``model.named_modules()`` in
registration order, so no model needs to be written for this library.

Roles (PAPER.md §1):

* ``output``: the classifier. The last ``nn.Linear`` or 1x1 convolution in registration order, unless the caller
  names it. It always gets full-space, unprojected energy.
* ``input``: the first regularisable layer (CNN-9's first conv, 3 input channels). The CoMHE variants give it
  unprojected half-space energy, as the official code does for every conv with 3 input channels.
* ``hidden``: everything else, shortcut 1x1 convolutions of residual networks included.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

REGULARISABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
ROLES = ("input", "hidden", "output")
LAYER_SETS = {"both": ("input", "hidden", "output"), "hidden": ("input", "hidden"), "output": ("output",)}
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class Layer:
    """One regularisable layer: its name in the model, its weight, and its role."""

    name: str
    weight: nn.Parameter
    role: str

    @property
    def num_neurons(self) -> int:
        return self.weight.shape[0]

    @property
    def fan_in(self) -> int:
        return self.weight[0].numel()

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.weight.shape)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model under DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _is_classifier_candidate(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, REGULARISABLE) and all(k == 1 for k in module.kernel_size)


def find_layers(model: nn.Module, classifier: Optional[str] = None) -> List[Layer]:
    """Every regularisable layer of ``model`` with its role, in registration order.

    classifier: the module name of the output layer (e.g. ``"fc"``); default the last linear or 1x1 conv.
    Raises ``ValueError`` if the model has no regularisable layer or ``classifier`` names none of them.
    """
    model = unwrap(model)
    found: "OrderedDict[str, nn.Module]" = OrderedDict()
    seen = set()
    for name, module in model.named_modules():
        if not isinstance(module, REGULARISABLE) or getattr(module, "weight", None) is None:
            continue
        if isinstance(module.weight, nn.parameter.UninitializedParameter):
            raise ValueError(f"layer {name!r} is lazy and not initialised yet: run one forward pass before "
                             "building a regulariser")
        if id(module.weight) in seen:  # a weight shared by two modules is regularised once
            continue
        seen.add(id(module.weight))
        found[name] = module
    if not found:
        raise ValueError(f"{type(model).__name__} has no regularisable layer (nn.Conv1d/2d/3d or nn.Linear with a "
                         "weight): nothing for a hyperspherical-energy regulariser to act on")
    if classifier is None:
        candidates = [n for n, m in found.items() if _is_classifier_candidate(m)]
        classifier = candidates[-1] if candidates else None
    elif classifier not in found:
        raise ValueError(f"classifier {classifier!r} is not a regularisable layer of the model; "
                         f"valid: {', '.join(found)}")
    names = list(found)
    layers = []
    for i, name in enumerate(names):
        if name == classifier:
            role = "output"
        elif i == 0 or (i == 1 and names[0] == classifier):
            role = "input"
        else:
            role = "hidden"
        layers.append(Layer(name, found[name].weight, role))
    return layers


def select(layers: Sequence[Layer], which: str) -> List[Layer]:
    """Keep the layers of a layer set: ``"both"`` (all), ``"hidden"`` (input + hidden), ``"output"``."""
    if which not in LAYER_SETS:
        raise ValueError(f"unknown layer set {which!r}; valid: {', '.join(LAYER_SETS)}")
    return [layer for layer in layers if layer.role in LAYER_SETS[which]]


def group_by_shape(layers: Sequence[Layer]) -> List[List[Layer]]:
    """Layers with identical weight shapes, in order of first appearance. One group is one batched matmul."""
    groups: Dict[Tuple[int, ...], List[Layer]] = OrderedDict()
    for layer in layers:
        groups.setdefault(layer.shape, []).append(layer)
    return list(groups.values())


def stack_neurons(group: Sequence[Layer]) -> torch.Tensor:
    """The neurons of same-shape layers as one tensor ``[L, N, d]`` (one ``stack``; its backward is one ``unbind``)."""
    first = group[0].weight
    if len(group) == 1:
        return first.reshape(1, first.shape[0], -1)
    return torch.stack([layer.weight for layer in group]).reshape(len(group), first.shape[0], -1)

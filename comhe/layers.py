"""Which layers of a model the regularisers act on, and how they are stacked for batched computation.

A *regularisable layer* is any ``nn.Conv1d/2d/3d`` or ``nn.Linear`` with a weight (transposed convolutions are
skipped: their neurons are not the weight's rows). Layers are found by walking ``model.named_modules()`` in
registration order, so no model needs to be written for this library.

Roles (docs/reference.md §1):

* ``output``: the classifier. The last ``nn.Linear`` or 1x1 convolution, unless the caller names it. It always gets
  full-space, unprojected energy. "Last" is in the order of the forward pass when an example input is given
  (``example_input=``: one forward in eval mode, no gradient), else in registration order; registration order can be
  wrong (a model whose ``head`` is defined before its ``body``), so a warning says so when another candidate could
  read the chosen one's output (its fan-in channels equal the chosen layer's neurons) or a non-candidate layer is
  registered after it.
* ``input``: the first regularisable layer (CNN-9's first conv), in the same order.
* ``hidden``: everything else, shortcut 1x1 convolutions of residual networks included.

Which hidden layers the CoMHE variants project is decided by ``unprojected`` below, not by the role: as in the
official code, a convolution with 3 input channels (the RGB stem) stays unprojected, and so does any layer whose fan-in
a projection would not compress. A 2-layer GCN's first layer (fan-in 1,433 on Cora) is therefore projected.

``exclude``: module-name patterns (``fnmatch``: ``"feature_transform.*"``, ``"*.tnet.fc3"``) of layers no regulariser
may touch; a pattern that matches no layer is an error, so a typo never silently regularises everything.
"""
from __future__ import annotations

import fnmatch
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

REGULARISABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
Regularisable = Union[nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear]
ROLES = ("input", "hidden", "output")
LAYER_SETS = {"both": ("input", "hidden", "output"), "hidden": ("input", "hidden"), "output": ("output",)}
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class Layer:
    """One regularisable layer: its name in the model, its weight, and its role."""

    name: str
    weight: Tensor  # an nn.Parameter, unless a parametrisation computes the module's weight
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

    @property
    def is_rgb_conv(self) -> bool:
        """A convolution reading 3 input channels (the image stem), which the official CoMHE code never projects."""
        return self.weight.dim() > 2 and self.weight.shape[1] == 3


def unprojected(layer: Layer, compresses: bool) -> bool:
    """Whether a CoMHE variant gives ``layer`` the unprojected half-space energy instead of a projected one: the
    classifier (always full-space, unprojected), a conv with 3 input channels (the official ``n_input == 3``), or a
    layer whose fan-in the projection does not compress (``compresses``: e.g. fan-in > ``proj_dim``)."""
    return layer.role == "output" or layer.is_rgb_conv or not compresses


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
    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and all(k == 1 for k in module.kernel_size)


Patterns = Union[None, str, Iterable[str]]


def excluded_names(names: Sequence[str], exclude: Patterns) -> List[str]:
    """The names matched by the ``fnmatch`` patterns ``exclude`` (a string or several). Raises ``ValueError`` for a
    pattern that matches nothing, naming the valid names."""
    iterable = isinstance(exclude, (list, tuple, set, frozenset)) or exclude is None
    given: List[object] = [exclude] if isinstance(exclude, str) or not iterable else list(exclude or ())
    patterns = [p for p in given if isinstance(p, str) and p]
    if len(patterns) != len(given):
        raise ValueError(f"exclude must be module-name patterns (strings), got {exclude!r}")
    out: List[str] = []
    for pattern in patterns:
        hits = fnmatch.filter(names, pattern)
        if not hits:
            raise ValueError(f"exclude pattern {pattern!r} matches no regularisable layer; the layers are: "
                             f"{', '.join(names)}")
        out += [n for n in hits if n not in out]
    return out


def forward_order(model: nn.Module, example_input) -> List[str]:
    """Names of the regularisable modules in the order one forward pass calls them (first call counts), for
    ``example_input`` (a tensor, or a tuple of positional arguments). The forward runs in eval mode without
    gradient, so no running statistic moves; every module's mode is restored."""
    order: List[str] = []
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, REGULARISABLE):
            hooks.append(module.register_forward_pre_hook(
                lambda mod, args, name=name: None if name in order else order.append(name)))
    modes = {m: m.training for m in model.modules()}
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    try:
        model.eval()
        with torch.no_grad():
            model(*args)
    finally:
        for hook in hooks:
            hook.remove()
        for m, mode in modes.items():
            m.training = mode
    return order


def _warn_if_ambiguous(found: "OrderedDict[str, Regularisable]", classifier: str) -> None:
    chosen = found[classifier]
    names = list(found)
    readers = [n for n, m in found.items() if n != classifier and _is_classifier_candidate(m)
               and m.weight.shape[1] == chosen.weight.shape[0]]
    later = names[names.index(classifier) + 1:]
    if readers or later:
        why = (f"{', '.join(readers)} could read its output" if readers else
               f"{', '.join(later)} {'is' if len(later) == 1 else 'are'} registered after it")
        warnings.warn(f"the classifier was taken to be {classifier!r}, the last linear / 1x1 conv in registration "
                      f"order, but {why}: pass classifier='<name>' or example_input=<a batch> to be sure",
                      stacklevel=4)


def find_layers(model: nn.Module, classifier: Optional[str] = None, exclude: Patterns = None,
                example_input=None, warn: bool = True) -> List[Layer]:
    """Every regularisable layer of ``model`` with its role, in forward order if ``example_input`` is given (layers
    the forward does not call follow, in registration order), else in registration order.

    classifier: the module name of the output layer (e.g. ``"fc"``); default the last linear or 1x1 conv.
    exclude: module-name patterns of layers to leave out (see the module docstring).
    Raises ``ValueError`` if the model has no regularisable layer, ``classifier`` names none of them, or an
    ``exclude`` pattern matches none of them; warns when the default classifier is ambiguous (module docstring),
    unless ``warn=False`` (monitors, which only sum energies, have nothing to warn a user about).
    """
    model = unwrap(model)
    found: "OrderedDict[str, Regularisable]" = OrderedDict()
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
    for name in excluded_names(list(found), exclude):
        if name == classifier:
            raise ValueError(f"classifier {classifier!r} is also excluded by exclude={exclude!r}")
        del found[name]
    if not found:
        raise ValueError(f"exclude={exclude!r} leaves no layer of {type(model).__name__} to regularise")
    if example_input is not None:
        called = [n for n in forward_order(model, example_input) if n in found]
        found = OrderedDict([(n, found[n]) for n in called] + [(n, m) for n, m in found.items() if n not in called])
    if classifier is None:
        candidates = [n for n, m in found.items() if _is_classifier_candidate(m)]
        classifier = candidates[-1] if candidates else None
        if classifier is not None and example_input is None and warn:
            _warn_if_ambiguous(found, classifier)
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


def left_out(model: nn.Module, chosen: Sequence[Layer], exclude: Patterns = None,
             which: str = "both", frozen: Iterable[str] = ()) -> List[Tuple[str, str]]:
    """``(parameter name, why it is not regularised)`` for every parameter of ``model`` that no chosen layer holds;
    ``frozen``: the names of layers left out because their weight does not require a gradient."""
    frozen = set(frozen)
    model = unwrap(model)
    held = {id(layer.weight) for layer in chosen}
    names = [n for n, m in model.named_modules() if isinstance(m, REGULARISABLE) and getattr(m, "weight", None)
             is not None]
    excluded = set(excluded_names(names, exclude)) if exclude else set()
    out = []
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in held:
                continue
            full = f"{module_name}.{param_name}" if module_name else param_name
            why = ("frozen (requires_grad=False): include_frozen=True keeps it"
                   if module_name in frozen and param_name == "weight" else
                   _reason(module, module_name, param_name, excluded, which))
            out.append((full, why))
            held.add(id(param))  # a parameter shared by two modules is listed once
    return out


def _reason(module: nn.Module, name: str, param: str, excluded: set, which: str) -> str:
    kind = type(module).__name__
    if isinstance(module, REGULARISABLE) and param == "weight":
        if name in excluded:
            return "excluded (exclude=)"
        return f"not in layers={which!r}"
    if param == "bias" or param.endswith("_bias"):
        return f"{kind} bias: not a neuron direction"
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return f"{kind}: a transposed convolution's neurons are not its weight's rows"
    if isinstance(module, nn.Embedding):
        return "nn.Embedding: its rows are token vectors, not neurons"
    if isinstance(module, nn.MultiheadAttention) and param.startswith(("in_proj", "q_proj", "k_proj", "v_proj")):
        return "nn.MultiheadAttention: the packed query/key/value projection is not an nn.Linear"
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
        return f"{kind}: a normalisation scale, not neurons"
    return f"{kind}.{param}: not the weight of an nn.Conv1d/2d/3d or nn.Linear"


def select(layers: Sequence[Layer], which: str) -> List[Layer]:
    """Keep the layers of a layer set: ``"both"`` (all), ``"hidden"`` (input + hidden), ``"output"``."""
    if not isinstance(which, str) or which not in LAYER_SETS:
        raise ValueError(f"unknown layer set layers={which!r}; valid: {', '.join(LAYER_SETS)}")
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

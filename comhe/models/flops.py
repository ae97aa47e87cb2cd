"""Model FLOPs from layer shapes: MFU in `make bench-gpu`, the time estimates of `make doctor` and `DRY=1`."""
from __future__ import annotations

import torch
from torch import nn


def forward_flops(model: nn.Module, input_shape, device="cpu") -> int:
    """FLOPs (2 per multiply-add) of one forward pass of one example through every conv and linear layer.

    input_shape: ``[C, H, W]``. Counted from each layer's weight and output shape with forward hooks; BN, ReLU,
    pooling and the loss are left out (they are < 1% of a CNN's FLOPs). A training step costs ~3x this (backward:
    gradients w.r.t. inputs and weights).
    """
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features * output[0].numel() // module.out_features
        else:  # conv: every output element is a dot product over (in / groups) x kernel
            per_output = module.weight[0].numel()
            total += 2 * per_output * output[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d,
                                                                                         nn.Conv3d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total

"""Model FLOPs from layer shapes (for MFU), and the peak dense bf16 throughput of common cards."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

# Dense bf16 tensor-core peak, FLOP/s (vendor datasheets, without sparsity).
PEAK_BF16 = {"H200": 989.4e12, "H100 SXM": 989.4e12, "H100 80GB HBM3": 989.4e12, "H100 PCIe": 756.5e12,
             "H100 NVL": 835.5e12, "A100": 312e12, "L40S": 362.1e12, "A10": 125e12, "RTX 4090": 165.2e12}


def peak_flops(device_name: str) -> Optional[float]:
    for key, value in PEAK_BF16.items():
        if key in device_name:
            return value
    if "H100" in device_name:
        return PEAK_BF16["H100 SXM"]
    return None


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

"""Model FLOPs from layer shapes (for MFU), and the peak dense bf16 throughput of common cards."""
from __future__ import annotations

from typing import Optional

from ..models.flops import forward_flops  # noqa: F401  (bench.flops.forward_flops: its public name here)

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

"""``flops.peak_flops``: the bf16 peak an MFU figure divides by, read from the CUDA device name."""
import pytest

from comhe.bench.flops import peak_flops


@pytest.mark.parametrize("device_name, peak", [
    ("NVIDIA H100 80GB HBM3", 989.4e12),
    ("NVIDIA H100 PCIe", 756.5e12),
    ("NVIDIA H100 NVL", 835.5e12),
    ("NVIDIA H100 (a variant not in the table)", 989.4e12),   # an unlisted H100 is taken as the SXM part
    ("NVIDIA H200", 989.4e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA GeForce RTX 4090", 165.2e12),
    ("Tesla V100-SXM2-16GB", None),                             # not listed: no MFU rather than a wrong one
    ("cpu (2 threads)", None),
])
def test_peak_by_device_name(device_name, peak):
    assert peak_flops(device_name) == peak

"""Fashion-MNIST: Debian's ``dataset-fashion-mnist`` files when present (read by our IDX parser), else torchvision."""
from __future__ import annotations

import gzip
import urllib.error
from pathlib import Path

import numpy as np
import torch

from .bundle import DATASETS, DataBundle, DatasetUnavailable, offline, tensor_bundle

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist package


def read_idx_gz(path) -> np.ndarray:
    """Parse a gzipped IDX file (MNIST format: 0x0000, dtype 0x08 = uint8, ndim, big-endian int32 dims, data)."""
    with gzip.open(path, "rb") as f:
        raw = bytearray(f.read())  # writable, so torch.as_tensor does not warn
    if raw[:3] != b"\x00\x00\x08":
        raise DatasetUnavailable(f"{path} is not a uint8 IDX file (header {raw[:4].hex()})")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=raw[3], offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3])
    if data.size != np.prod(dims):
        raise DatasetUnavailable(f"{path} is truncated: {data.size} bytes for dims {dims}")
    return data.reshape(dims)


@DATASETS.register("fashion_mnist")
def _fashion_mnist(root: Path, device: torch.device, download: bool) -> DataBundle:
    from torchvision.datasets import FashionMNIST
    files = [f"{split}-{kind}-idx{n}-ubyte.gz" for split in ("train", "t10k") for kind, n in (("images", 3),
                                                                                               ("labels", 1))]
    if all((FASHION_MNIST_SYSTEM_DIR / f).is_file() for f in files):
        xtr, ytr, xte, yte = (read_idx_gz(FASHION_MNIST_SYSTEM_DIR / f) for f in files)
        return tensor_bundle("fashion_mnist", (xtr[:, None], ytr), (xte[:, None], yte), 10, device,
                             list(FashionMNIST.classes))
    try:
        splits = [FashionMNIST(str(root), train=train, download=download and not offline())
                  for train in (True, False)]
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        raise DatasetUnavailable(f"Fashion-MNIST not found ({type(err).__name__}: {err}); put {', '.join(files)} in "
                                 f"{FASHION_MNIST_SYSTEM_DIR} or {root / 'FashionMNIST' / 'raw'}") from err
    pairs = [(s.data[:, None].numpy(), s.targets.numpy()) for s in splits]
    return tensor_bundle("fashion_mnist", pairs[0], pairs[1], 10, device, list(FashionMNIST.classes))

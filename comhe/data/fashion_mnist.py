"""Fashion-MNIST: Debian's ``dataset-fashion-mnist`` files (``/usr/share/datasets/fashion-mnist``, or the same four
``.gz`` files in ``<data root>/fashion-mnist/``) read by our IDX parser, else torchvision's copy or download in
``<data root>/FashionMNIST/raw``. Missing everywhere with downloads off (or a failed download): one line that names
the install command, and no folder left behind."""
from __future__ import annotations

import gzip
import urllib.error
from pathlib import Path

import numpy as np
import torch

from .bundle import (DATASETS, LOCATORS, WRITE, DataBundle, DatasetUnavailable, offline, removed_if_failed,
                     tensor_bundle)

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist package
FILES = [f"{split}-{kind}-idx{n}-ubyte.gz" for split in ("train", "t10k") for kind, n in (("images", 3), ("labels", 1))]
INSTALL = "apt-get install dataset-fashion-mnist"


def _idx_folder(root: Path):
    """The first folder holding the four Debian-named files: the system one, then ``<root>/fashion-mnist``."""
    for folder in (FASHION_MNIST_SYSTEM_DIR, root / "fashion-mnist"):
        if all((folder / f).is_file() for f in FILES):
            return folder
    return None


def _torchvision_copy(root: Path) -> bool:
    raw = root / "FashionMNIST" / "raw"
    return all((raw / f[:-3]).is_file() for f in FILES)


def missing_message(root: Path, why: str) -> str:
    return (f"Fashion-MNIST not found ({why}): install it with `{INSTALL}` (Debian / Ubuntu: files in "
            f"{FASHION_MNIST_SYSTEM_DIR}), or put {', '.join(FILES)} in {root / 'fashion-mnist'}")


@LOCATORS.register("fashion_mnist")
def _locate_fashion_mnist(root: Path, download: bool):
    if _idx_folder(root) is not None or _torchvision_copy(root):
        return None
    return WRITE if download else missing_message(root, "downloads are off")


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
    folder = _idx_folder(root)
    if folder is not None:
        xtr, ytr, xte, yte = (read_idx_gz(folder / f) for f in FILES)
        return tensor_bundle("fashion_mnist", (xtr[:, None], ytr), (xte[:, None], yte), 10, device,
                             list(FashionMNIST.classes))
    get = download and not offline()
    if not get and not _torchvision_copy(root):
        raise DatasetUnavailable(missing_message(root, "downloads are off" if download else "download=False"))
    try:  # torchvision makes FashionMNIST/raw before it downloads: a failed download must not leave them
        with removed_if_failed(root / "FashionMNIST" / "raw"):
            splits = [FashionMNIST(str(root), train=train, download=get) for train in (True, False)]
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        why = " ".join(f"{type(err).__name__}: {err}".split())
        raise DatasetUnavailable(missing_message(root, f"the download failed: {why}")) from err
    pairs = [(s.data[:, None].numpy(), s.targets.numpy()) for s in splits]
    return tensor_bundle("fashion_mnist", pairs[0], pairs[1], 10, device, list(FashionMNIST.classes))

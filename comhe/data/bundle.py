"""Datasets by name: ``build(name, root=None, device="cpu", download=True, **options) -> DataBundle``.

Root: the argument, else ``$COMHE_DATA``, else ``./data``. ``COMHE_OFFLINE=1`` turns downloads off (a missing
dataset then fails at once instead of after network timeouts). Registered names (``DATASETS.names()``):

=====================  ======  ==============================================================================
name                   kind    source
=====================  ======  ==============================================================================
``cifar10/100``        tensor  torchvision's CIFAR classes (download + md5 check on first use)
``fashion_mnist``      tensor  ``/usr/share/datasets/fashion-mnist`` (Debian package) if present, else torchvision
``imagenet``           loader  ``root/imagenet/{train,val}/<class>/*.JPEG`` (torchvision ``ImageNet`` if meta.bin)
``synthetic``          tensor  tiny CIFAR written by ``data/synthetic.py`` and read by torchvision's CIFAR code
``synthetic_imagenet`` loader  tiny JPEG ImageFolder written by ``data/synthetic.py``
``modelnet40``         points  the HDF5 release ``modelnet40_ply_hdf5_2048`` (h5py; download + md5 check)
``synthetic_modelnet40`` points  small clouds in that layout written by ``data/synthetic_points.py``
``image_folder``       tensor  ``root/<folder>/<split>/<class>/*.{png,jpg}`` up to 64 x 64, decoded once (cached)
``cifar10_jpeg_export`` tensor  the CIFAR-10 images re-saved as JPEG (``cifar10-images.tar.xz``): not CIFAR-10
=====================  ======  ==============================================================================

"tensor" bundles hold the whole dataset on ``device`` as uint8 ``[N, C, H, W]`` and stream batches with
``streams.TensorLoader`` (official augmentation: ``augment.py``); "loader" bundles stream from disk with a
``DataLoader``. Both kinds give ``train_loader(batch_size, seed, rank=0, world_size=1, augment=True)`` and
``test_loader(batch_size, rank=0, world_size=1)`` yielding ``(x float32 [B, C, H, W], y int64 [B])``. Any failure
to find or verify data raises ``DatasetUnavailable`` with a one-line message saying which file to put where.
"points" bundles (``modelnet.py``) hold float32 clouds ``[N, 3, P]`` on ``device`` and yield ``x [B, 3, P]``.

Nothing is written where the user did not ask (``locate``): a dataset that is there is read in place; one that is
downloaded or written on use (synthetic) goes into the data root, which is created only when its parent exists (a
mistyped ``data_root=/nonexistent/sub/typo`` is an error that creates nothing); real data that cannot be had is an
error before anything is created, and a failed download removes the empty folders it made (``removed_if_failed``).
"""
from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor

from ..registry import Registry
from .streams import TensorLoader, eval_batches

DATASETS = Registry("dataset")
# name -> locate(root: Path, download: bool, **options): None (present, read in place), WRITE (downloaded or written
# into root on use), or the one-line message saying what is missing and where to put it. Reads only.
LOCATORS = Registry("dataset locator")
WRITE = "write"


class DatasetUnavailable(RuntimeError):
    """A dataset is missing, corrupted or malformed; the message says what to put where."""


@dataclass
class DataBundle:
    """A dataset ready for the engine. Tensor fields are set for ``kind == "tensor"`` only (else None)."""
    name: str
    kind: str                     # "tensor" (whole set on device) or "loader" (DataLoader from disk)
    num_classes: int
    in_channels: int
    image_size: int               # H = W of the batches
    num_train: int
    num_test: int
    train_loader: Callable[..., Iterable]   # (batch_size, seed, rank=0, world_size=1, augment=True)
    test_loader: Callable[..., Iterable]    # (batch_size, rank=0, world_size=1): in order, unaugmented; batch i
                                            # goes to rank i % world_size; iterate once per call
    classes: Optional[List[str]] = None
    train_images: Optional[Tensor] = None   # uint8 [N, C, H, W] on device (kind "points": float32 [N, 3, P])
    train_labels: Optional[Tensor] = None   # int64 [N]
    test_images: Optional[Tensor] = None
    test_labels: Optional[Tensor] = None


def option_defaults(name: str) -> dict:
    """The options ``build(name, ...)`` accepts (after root, device, download), with their defaults."""
    params = list(inspect.signature(DATASETS.get(name)).parameters.values())[3:]
    # ``workers`` is the run config's top-level key (not part of a run's identity), passed in by ``setup.prepare``
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty and p.name != "workers"}


def takes_workers(name: str) -> bool:
    """Whether dataset ``name`` reads from disk with DataLoader workers (the config's ``workers``)."""
    return "workers" in inspect.signature(DATASETS.get(name)).parameters


NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000, "fashion_mnist": 10, "modelnet40": 40,
               "cora": 7, "citeseer": 6, "pubmed": 3}
# Datasets of graphs for node classification (``planetoid.py``): ``comhe.train.node_engine`` trains them.
NODE_DATASETS: set = set()


# dataset name -> probe(root, **options) -> why its files are not usable on disk now (missing or damaged), or None;
# cheap, never downloads: the reason a ``COLUMNS=`` table gives for a column it did not run. (``LOCATORS`` answer
# another question: can the dataset be had at all, downloads included.)
PROBES: Dict[str, Callable[..., Optional[str]]] = {}


def probe(name: str, root=None, **options) -> Optional[str]:
    """Why dataset ``name`` is unavailable on disk now (one line), or None when it is there or has no probe."""
    fn = PROBES.get(name)
    return fn(data_root(root), **options) if fn else None


def task(name: str) -> str:
    """``"node"`` for a graph dataset (full-batch node classification), else ``"image"``."""
    return "node" if name in NODE_DATASETS else "image"


def declared_num_classes(name: str, options: dict) -> int:
    """The class count a config implies without loading the data (config checks; 10 where it is not declared)."""
    return int(options.get("num_classes", NUM_CLASSES.get(name, 10)))


def data_root(root=None) -> Path:
    return Path(root if root is not None else os.environ.get("COMHE_DATA", "./data")).expanduser()


def locate(name: str, root=None, download: bool = True, **options) -> Tuple[Optional[str], bool]:
    """``(problem, writes)``: why dataset ``name`` cannot be had (one line; None when it can) and whether using it
    writes into the data root (a download, a synthetic dataset). Creates, downloads and writes nothing (``DRY=1``,
    the runner's preflight). A dataset without a locator is taken as written on use."""
    path = data_root(root)
    found = LOCATORS.get(name)(path, download and not offline(), **options) if name in LOCATORS else WRITE
    if found is None:
        return None, False
    if found != WRITE:
        return found, False
    if path.is_dir():
        return None, True
    if path.exists():
        return f"data root {path} exists and is not a directory", True
    if not path.parent.is_dir():
        return (f"data root {path} does not exist, nor does {path.parent}: nothing was created; fix data_root= / "
                f"$COMHE_DATA, or create it (mkdir -p {path})"), True
    return None, True


@contextlib.contextmanager
def removed_if_failed(path: Path, files: Iterable[Path] = ()):
    """Folders of ``path``'s chain that do not exist yet, and ``files``, are removed again if the body fails (folders
    only while empty): a failed download or write leaves nothing behind."""
    path = Path(path)
    new = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        new.append(probe)
        probe = probe.parent
    try:
        yield
    except BaseException:
        if new:
            for f in files:
                Path(f).unlink(missing_ok=True)
            for folder in new:  # deepest first
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise


def build(name: str, root=None, device="cpu", download: bool = True, **options) -> DataBundle:
    """Load dataset ``name`` (see the module table); ``options`` go to its builder (e.g. ``image_size``)."""
    problem, _ = locate(name, root, download, **options)
    if problem:
        raise DatasetUnavailable(problem)
    with removed_if_failed(data_root(root)):
        return DATASETS.get(name)(data_root(root), torch.device(device), download, **options)


def tensor_bundle(name: str, train: tuple, test: tuple, num_classes: int, device: torch.device,
                  classes: Optional[List[str]] = None) -> DataBundle:
    """Bundle from ``(images uint8 [N, C, H, W], labels [N])`` pairs (numpy or torch), moved to ``device``."""
    (xtr, ytr), (xte, yte) = [(torch.as_tensor(x).to(device), torch.as_tensor(y).long().to(device))
                              for x, y in (train, test)]

    def train_loader(batch_size: int, seed: int, rank: int = 0, world_size: int = 1, augment: bool = True):
        return TensorLoader(xtr, ytr, batch_size, augment=augment, seed=seed, rank=rank, world_size=world_size)

    return DataBundle(name, "tensor", num_classes, xtr.shape[1], xtr.shape[-1], len(ytr), len(yte), train_loader,
                      lambda batch_size, rank=0, world_size=1: eval_batches(xte, yte, batch_size, rank, world_size),
                      classes, xtr, ytr, xte, yte)



def offline() -> bool:
    """``COMHE_OFFLINE=1``: never touch the network (air-gapped nodes, tests), so a missing dataset fails at once."""
    return os.environ.get("COMHE_OFFLINE", "").lower() not in ("", "0", "false", "no")

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
=====================  ======  ==============================================================================

"tensor" bundles hold the whole dataset on ``device`` as uint8 ``[N, C, H, W]`` and stream batches with
``streams.TensorLoader`` (official augmentation: ``augment.py``); "loader" bundles stream from disk with a
``DataLoader``. Both kinds give ``train_loader(batch_size, seed, rank=0, world_size=1, augment=True)`` and
``test_loader(batch_size, rank=0, world_size=1)`` yielding ``(x float32 [B, C, H, W], y int64 [B])``. Any failure
to find or verify data raises ``DatasetUnavailable`` with a one-line message saying which file to put where.
"points" bundles (``modelnet.py``) hold float32 clouds ``[N, 3, P]`` on ``device`` and yield ``x [B, 3, P]``.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional

import torch
from torch import Tensor

from ..registry import Registry
from .streams import TensorLoader, eval_batches

DATASETS = Registry("dataset")


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


NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000, "fashion_mnist": 10}
NUM_CLASSES["modelnet40"] = 40


def declared_num_classes(name: str, options: dict) -> int:
    """The class count a config implies without loading the data (config checks; 10 where it is not declared)."""
    return int(options.get("num_classes", NUM_CLASSES.get(name, 10)))


def data_root(root=None) -> Path:
    return Path(root if root is not None else os.environ.get("COMHE_DATA", "./data")).expanduser()


def build(name: str, root=None, device="cpu", download: bool = True, **options) -> DataBundle:
    """Load dataset ``name`` (see the module table); ``options`` go to its builder (e.g. ``image_size``)."""
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

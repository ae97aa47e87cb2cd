"""Datasets by name: ``build(name, root=None, device="cpu", download=True, **options) -> DataBundle``.

Root: the argument, else ``$COMHE_DATA``, else ``./data``. ``COMHE_OFFLINE=1`` turns downloads off (a missing
dataset then fails at once instead of after network timeouts). Registered names (``DATASETS.names()``):

=====================  ======  ==============================================================================
name                   kind    source
=====================  ======  ==============================================================================
``cifar10/100``        tensor  torchvision's CIFAR classes (download + md5 check on first use)
``fashion_mnist``      tensor  ``/usr/share/datasets/fashion-mnist`` (Debian package) if present, else torchvision
``imagenet``           loader  ``root/imagenet/{train,val}/<class>/*.JPEG`` (torchvision ``ImageNet`` if meta.bin)
``synthetic``          tensor  tiny CIFAR written by ``comhe.synthetic`` and read by torchvision's CIFAR code
``synthetic_imagenet`` loader  tiny JPEG ImageFolder written by ``comhe.synthetic``
=====================  ======  ==============================================================================

"tensor" bundles hold the whole dataset on ``device`` as uint8 ``[N, C, H, W]`` and stream batches with
``comhe.augment.TensorLoader`` (official augmentation, see there); "loader" bundles stream from disk with a
``DataLoader``. Both kinds give ``train_loader(batch_size, seed, rank=0, world_size=1, augment=True)`` and
``test_loader(batch_size, rank=0, world_size=1)`` yielding ``(x float32 [B, C, H, W], y int64 [B])``. Any failure to find or verify data
raises ``DatasetUnavailable`` with a one-line message saying which file to put where.
"""
from __future__ import annotations

import gzip
import os
import shutil
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional

import numpy as np
import torch
from torch import Tensor

from . import synthetic
from .augment import LoaderStream, TensorLoader, eval_batches
from .registry import Registry

DATASETS = Registry("dataset")
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist package
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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
    train_images: Optional[Tensor] = None   # uint8 [N, C, H, W] on device
    train_labels: Optional[Tensor] = None   # int64 [N]
    test_images: Optional[Tensor] = None
    test_labels: Optional[Tensor] = None


def option_defaults(name: str) -> dict:
    """The options ``build(name, ...)`` accepts (after root, device, download), with their defaults."""
    import inspect
    params = list(inspect.signature(DATASETS.get(name)).parameters.values())[3:]
    # ``workers`` is the run config's top-level key (not part of a run's identity), passed in by ``setup.prepare``
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty and p.name != "workers"}


def takes_workers(name: str) -> bool:
    """Whether dataset ``name`` reads from disk with DataLoader workers (the config's ``workers``)."""
    import inspect
    return "workers" in inspect.signature(DATASETS.get(name)).parameters


NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000, "fashion_mnist": 10}


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


# ---- CIFAR ------------------------------------------------------------------------------------------------------

def _corrupt_cifar_files(cls, root: Path) -> List[str]:
    """Names of the extracted files that are missing or fail their md5 (torchvision's own check)."""
    from torchvision.datasets.utils import check_integrity
    entries = cls.train_list + cls.test_list + [[cls.meta["filename"], cls.meta["md5"]]]
    return [name for name, md5 in entries if not check_integrity(str(root / cls.base_folder / name), md5)]


def _offline() -> bool:
    """``COMHE_OFFLINE=1``: never touch the network (air-gapped nodes, tests), so a missing dataset fails at once."""
    return os.environ.get("COMHE_OFFLINE", "").lower() not in ("", "0", "false", "no")


def extract_tar(archive: Path, to: Path) -> None:
    """Extract a tar archive into ``to``, refusing it whole if any member would land outside ``to`` (absolute
    path, ``..``, a link pointing out) or is a device: Python's ``filter="data"`` checks, applied to every member
    before anything is written. torchvision's ``extract_archive`` calls ``extractall`` unfiltered, which on Python <
    3.14 writes wherever the member names say.
    """
    import tarfile
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, to)
            tar.extractall(to, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    except (tarfile.TarError, ValueError) as err:
        raise DatasetUnavailable(f"{archive} was not extracted: {err}; delete it and download it again") from None


def _check_member(member, to: Path) -> None:
    import tarfile
    if hasattr(tarfile, "data_filter"):  # Python >= 3.12, 3.11.4, 3.10.12, 3.9.17
        tarfile.data_filter(member, str(to))  # raises tarfile.FilterError (a TarError) naming the member
        return
    target = (to / member.name).resolve()  # older Pythons: regular files and folders inside ``to`` only
    if not (member.isfile() or member.isdir()) or not target.is_relative_to(to.resolve()):
        raise ValueError(f"unsafe member {member.name!r}")


def _ensure_cifar(cls, root: Path, download: bool) -> None:
    from torchvision.datasets.utils import calculate_md5, check_integrity, download_url
    bad = _corrupt_cifar_files(cls, root)
    if not bad:
        return
    archive = root / cls.filename
    hint = (f"put {cls.filename} (md5 {cls.tgz_md5}) in {root}, or the extracted {cls.base_folder}/ folder"
            + (f" (in the one there, {', '.join(bad)} are missing or fail the md5 check)"
               if (root / cls.base_folder).is_dir() else ""))
    if not archive.is_file():
        if not download or _offline():
            why = "download=False" if not download else "downloads are off (COMHE_OFFLINE is set)"
            raise DatasetUnavailable(f"{cls.base_folder} missing or incomplete in {root} and {why}: {hint}")
        try:  # torchvision's download, which checks the archive's md5; extraction is ours (extract_tar)
            download_url(cls.url, str(root), cls.filename, cls.tgz_md5)
        except (urllib.error.URLError, OSError, RuntimeError) as err:
            raise DatasetUnavailable(f"could not download {cls.url} ({type(err).__name__}: {err}); {hint}") from err
    if not check_integrity(str(archive), cls.tgz_md5):
        raise DatasetUnavailable(f"{archive} has md5 {calculate_md5(str(archive))}, expected {cls.tgz_md5} "
                                 f"(incomplete or wrong file): delete it and {hint}")
    extract_tar(archive, root)
    bad = _corrupt_cifar_files(cls, root)
    if bad:
        raise DatasetUnavailable(f"{', '.join(bad)} in {root / cls.base_folder} failed the md5 check: {hint}")


def _load_cifar(name: str, cls, root: Path, device: torch.device, num_classes: int) -> DataBundle:
    """Read both splits with torchvision (``data`` is HWC uint8 ``[N, 32, 32, 3]``) into a tensor bundle."""
    splits = [cls(str(root), train=train) for train in (True, False)]
    pairs = [(np.ascontiguousarray(s.data.transpose(0, 3, 1, 2)), np.asarray(s.targets)) for s in splits]
    return tensor_bundle(name, pairs[0], pairs[1], num_classes, device, list(splits[0].classes))


@DATASETS.register("cifar10")
def _cifar10(root: Path, device: torch.device, download: bool) -> DataBundle:
    from torchvision.datasets import CIFAR10
    _ensure_cifar(CIFAR10, root, download)
    return _load_cifar("cifar10", CIFAR10, root, device, 10)


@DATASETS.register("cifar100")
def _cifar100(root: Path, device: torch.device, download: bool) -> DataBundle:
    from torchvision.datasets import CIFAR100
    _ensure_cifar(CIFAR100, root, download)
    return _load_cifar("cifar100", CIFAR100, root, device, 100)


@DATASETS.register("synthetic")
def _synthetic(root: Path, device: torch.device, download: bool, num_classes: int = 10, train_per_class: int = 20,
               test_per_class: int = 10, seed: int = 0) -> DataBundle:
    """Tiny CIFAR in its own folder per parameter set under ``root`` (never next to real data).

    Written aside and renamed into place, so processes that build it at the same time (DDP ranks, parallel runs)
    never read a half-written one, and runs with other parameters never rewrite it under a reader.
    """
    from torchvision.datasets import CIFAR10, CIFAR100
    base = CIFAR10 if num_classes <= 10 else CIFAR100
    where = root / (f"synthetic-cifar{10 if base is CIFAR10 else 100}-{num_classes}c-"
                    f"{train_per_class}x{test_per_class}-seed{seed}")
    params = {"num_classes": num_classes, "train_per_class": train_per_class, "test_per_class": test_per_class,
              "seed": seed}
    if synthetic.read_manifest(where / base.base_folder).get("params") != params:
        partial = root / f".{where.name}.partial{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        synthetic.write_cifar(partial, **params)
        try:
            partial.rename(where)  # atomic; if another process got there first, theirs is identical: keep it
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
    cls = synthetic.cifar_class_with_recorded_md5(base, where / base.base_folder)
    bad = _corrupt_cifar_files(cls, where)
    if bad:
        raise DatasetUnavailable(f"synthetic {', '.join(bad)} in {where / base.base_folder} failed the md5 check "
                                 "recorded when it was written: delete that folder to rewrite it")
    return _load_cifar("synthetic", cls, where, device, num_classes)


# ---- Fashion-MNIST ----------------------------------------------------------------------------------------------

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
        splits = [FashionMNIST(str(root), train=train, download=download and not _offline())
                  for train in (True, False)]
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        raise DatasetUnavailable(f"Fashion-MNIST not found ({type(err).__name__}: {err}); put {', '.join(files)} in "
                                 f"{FASHION_MNIST_SYSTEM_DIR} or {root / 'FashionMNIST' / 'raw'}") from err
    pairs = [(s.data[:, None].numpy(), s.targets.numpy()) for s in splits]
    return tensor_bundle("fashion_mnist", pairs[0], pairs[1], 10, device, list(FashionMNIST.classes))


# ---- ImageNet (DataLoader path) ---------------------------------------------------------------------------------

def _image_folder(top: Path, split: str, transform):
    """``ImageFolder(top/split)``, or torchvision ``ImageNet`` when its ``meta.bin`` is there (human class names)."""
    from torchvision.datasets import ImageFolder, ImageNet
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
    split_dir = top / split
    if not split_dir.is_dir():
        raise DatasetUnavailable(f"{split_dir} not found: expected {top}/{{train,val}}/<class>/*.JPEG")
    try:
        if (top / "meta.bin").is_file():
            return ImageNet(str(top), split=split, transform=transform)
        return ImageFolder(str(split_dir), transform=transform)
    except FileNotFoundError as err:
        empty = [str(d) for d in sorted(split_dir.iterdir()) if d.is_dir() and not any(
            has_file_allowed_extension(f.name, IMG_EXTENSIONS) for f in d.iterdir() if f.is_file())]
        what = f"empty class folder(s) {', '.join(empty)}" if empty else str(err)
        raise DatasetUnavailable(f"{what}: every class folder needs at least one image {IMG_EXTENSIONS}") from err


def _imagenet_bundle(name: str, top: Path, device: torch.device, image_size: int, workers: int) -> DataBundle:
    from torch.utils.data import DataLoader, DistributedSampler
    from torchvision import transforms as T
    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()] + norm)
    # Resize(256) + CenterCrop(224) at full size; the same 256/224 ratio at any other image_size.
    eval_tf = T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size)] + norm)
    train = _image_folder(top, "train", train_tf)
    plain_train, test = _image_folder(top, "train", eval_tf), _image_folder(top, "val", eval_tf)
    if test.classes != train.classes:  # ImageFolder numbers classes per split: a missing one shifts every label
        raise DatasetUnavailable(f"{top}/val has classes that differ from {top}/train "
                                 f"({len(test.classes)} vs {len(train.classes)}); both need the same class folders")
    loader_args = {"num_workers": workers, "pin_memory": device.type == "cuda"}

    def train_loader(batch_size: int, seed: int, rank: int = 0, world_size: int = 1, augment: bool = True):
        """An unbounded, resumable stream of batches (``LoaderStream``) over this rank's shard of each epoch."""
        data = train if augment else plain_train
        # DistributedSampler also for one process: the order is a function of (seed, epoch) only.
        sampler = DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                     drop_last=True)
        return LoaderStream(data, batch_size, sampler, seed, **loader_args)

    def test_loader(batch_size: int, rank: int = 0, world_size: int = 1):
        # Each rank decodes only its own batches (i % world_size == rank). A fixed generator: DataLoader.__iter__
        # draws a base seed, which must not come from the global RNG (an evaluation would shift the training's crops).
        batches = range(rank, -(-len(test) // batch_size), world_size)
        mine = [j for b in batches for j in range(b * batch_size, min((b + 1) * batch_size, len(test)))]
        return DataLoader(test, batch_size, sampler=mine, generator=torch.Generator(), **loader_args)

    return DataBundle(name, "loader", len(train.classes), 3, image_size, len(train), len(test), train_loader,
                      test_loader, list(train.classes))


@DATASETS.register("imagenet")
def _imagenet(root: Path, device: torch.device, download: bool, image_size: int = 224,
              workers: int = 8) -> DataBundle:
    # ``download`` cannot apply: ImageNet is only distributed after registration at image-net.org.
    return _imagenet_bundle("imagenet", root / "imagenet", device, image_size, workers)


@DATASETS.register("synthetic_imagenet")
def _synthetic_imagenet(root: Path, device: torch.device, download: bool, image_size: int = 32, workers: int = 0,
                        num_classes: int = 3, per_class: int = 4, size: int = 40, seed: int = 0) -> DataBundle:
    where = root / f"synthetic-imagenet-{num_classes}x{per_class}-{size}px-seed{seed}"
    if not where.is_dir():  # write aside and rename, so an interrupted write is never mistaken for a dataset
        partial = where.with_name(where.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        synthetic.write_imagenet_folder(partial, num_classes, per_class, size, seed)
        partial.rename(where)
    return _imagenet_bundle("synthetic_imagenet", where / "imagenet", device, image_size, workers)

"""CIFAR-10 / CIFAR-100 (torchvision's download and md5 checks; our bounded extraction and our reader) and
``synthetic``, a tiny CIFAR written in the real format by ``synthetic.py`` and read by the same code.

The batches are pickles. torchvision's ``CIFAR10`` reads them with ``pickle.load``, which runs whatever code a
planted file names (its md5 check guards against damage, not against a file replaced together with its recorded
sum, as the synthetic sets record theirs). Here they are read by ``pickles.safe_load`` (a restricted, bounded
unpickler: numpy arrays, lists, strings) and checked: ``data`` uint8 ``[n, 3072]``, one label per row, each a class.
"""
from __future__ import annotations

import os
import shutil
import urllib.error
from pathlib import Path
from typing import List

import numpy as np
import torch

from . import synthetic
from .archives import extract_release
from .bundle import DATASETS, LOCATORS, WRITE, DataBundle, DatasetUnavailable, offline, tensor_bundle
from .pickles import UnsafePickle, safe_load

# What a release can be, for the extraction's bounds: each tar holds 8 files (~180 MB in all, 155 MB the largest).
RELEASE_MEMBERS = 16
RELEASE_BYTES = 512 << 20


def _corrupt_cifar_files(cls, root: Path) -> List[str]:
    """Names of the extracted files that are missing or fail their md5 (torchvision's own check)."""
    from torchvision.datasets.utils import check_integrity
    entries = cls.train_list + cls.test_list + [[cls.meta["filename"], cls.meta["md5"]]]
    return [name for name, md5 in entries if not check_integrity(str(root / cls.base_folder / name), md5)]


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
        if not download or offline():
            why = "download=False" if not download else "downloads are off (COMHE_OFFLINE is set)"
            raise DatasetUnavailable(f"{cls.base_folder} missing or incomplete in {root} and {why}: {hint}")
        try:  # torchvision's download, which checks the archive's md5; extraction is ours (extract_release)
            download_url(cls.url, str(root), cls.filename, cls.tgz_md5)
        except (urllib.error.URLError, OSError, RuntimeError) as err:
            raise DatasetUnavailable(f"could not download {cls.url} ({type(err).__name__}: {err}); {hint}") from err
    if not check_integrity(str(archive), cls.tgz_md5):
        raise DatasetUnavailable(f"{archive} has md5 {calculate_md5(str(archive))}, expected {cls.tgz_md5} "
                                 f"(incomplete or wrong file): delete it and {hint}")
    extract_release(archive, root, cls.base_folder, max_members=RELEASE_MEMBERS, max_bytes=RELEASE_BYTES)
    bad = _corrupt_cifar_files(cls, root)
    if bad:
        raise DatasetUnavailable(f"{', '.join(bad)} in {root / cls.base_folder} failed the md5 check: {hint}")


def _locate_cifar(cls, root: Path, download: bool):
    """Present (checked in full when loaded), downloaded on use, or the message of ``_ensure_cifar``."""
    if (root / cls.base_folder).is_dir() or (root / cls.filename).is_file():
        return None
    if download:
        return WRITE
    return (f"{cls.base_folder} missing or incomplete in {root} and downloads are off (download=False or "
            f"COMHE_OFFLINE is set): put {cls.filename} (md5 {cls.tgz_md5}) in {root}, or the extracted "
            f"{cls.base_folder}/ folder")


@LOCATORS.register("cifar10")
def _locate_cifar10(root: Path, download: bool):
    from torchvision.datasets import CIFAR10
    return _locate_cifar(CIFAR10, root, download)


@LOCATORS.register("cifar100")
def _locate_cifar100(root: Path, download: bool):
    from torchvision.datasets import CIFAR100
    return _locate_cifar(CIFAR100, root, download)


def _read_pickle(path: Path) -> dict:
    try:
        value = safe_load(path)
    except UnsafePickle as err:
        raise DatasetUnavailable(f"{path} {err}: not a CIFAR batch; delete it and download it again") from None
    except OSError as err:
        raise DatasetUnavailable(f"cannot read {path} ({err.strerror or err})") from None
    if not isinstance(value, dict):
        raise DatasetUnavailable(f"{path} holds a {type(value).__name__}, not a CIFAR batch (a dict)")
    return value


def read_split(cls, root: Path, train: bool, num_classes: int):
    """Images uint8 ``[N, 3, 32, 32]`` and labels int64 ``[N]`` of one split, batch after batch in the listed order
    (torchvision's order), read with the restricted unpickler and checked."""
    folder = root / cls.base_folder
    images, labels = [], []
    for name, _ in (cls.train_list if train else cls.test_list):
        batch = _read_pickle(folder / name)
        data, targets = batch.get("data"), batch.get("labels", batch.get("fine_labels"))
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == 3 * 32 * 32):
            raise DatasetUnavailable(f"{folder / name}: 'data' is not uint8 [n, 3072] (a CIFAR batch's images)")
        if not (isinstance(targets, list) and len(targets) == len(data) and all(
                isinstance(t, int) and not isinstance(t, bool) and 0 <= t < num_classes for t in targets)):
            raise DatasetUnavailable(f"{folder / name}: the labels are not {len(data)} integers in [0, "
                                     f"{num_classes})")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(targets, dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def class_names(cls, root: Path, num_classes: int) -> List[str]:
    path = root / cls.base_folder / cls.meta["filename"]
    names = _read_pickle(path).get(cls.meta["key"])
    if not (isinstance(names, list) and len(names) >= num_classes and all(isinstance(n, str) for n in names)):
        raise DatasetUnavailable(f"{path}: {cls.meta['key']!r} is not a list of {num_classes} class names")
    return names[:num_classes]


def _load_cifar(name: str, cls, root: Path, device: torch.device, num_classes: int) -> DataBundle:
    """Both splits (images ``[N, 3, 32, 32]`` uint8) into a tensor bundle."""
    train, test = (read_split(cls, root, split, num_classes) for split in (True, False))
    return tensor_bundle(name, train, test, num_classes, device, class_names(cls, root, num_classes))


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
        try:
            synthetic.write_cifar(partial, **params)
        except BaseException:  # a full disk, Ctrl-C: no half-written copy is left behind
            shutil.rmtree(partial, ignore_errors=True)
            raise
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

"""CIFAR-10 / CIFAR-100 (torchvision's download, md5 checks and reader; our safe extraction) and ``synthetic``, a
tiny CIFAR written in the real format by ``synthetic.py`` and read by the same code."""
from __future__ import annotations

import os
import shutil
import urllib.error
from pathlib import Path
from typing import List

import numpy as np
import torch

from . import synthetic
from .archives import extract_tar
from .bundle import DATASETS, LOCATORS, WRITE, DataBundle, DatasetUnavailable, offline, tensor_bundle


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

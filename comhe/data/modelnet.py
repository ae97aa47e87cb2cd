"""ModelNet-40 in the HDF5 release of the PointNet authors, ``modelnet40_ply_hdf5_2048`` (docs/reference.md §2b).

Layout (``root/modelnet40_ply_hdf5_2048/``): ``ply_data_train0..4.h5`` (9,840 shapes), ``ply_data_test0..1.h5``
(2,468), each with ``data`` float32 ``[n, 2048, 3]`` (points normalised to the unit sphere, in random order) and
``label`` uint8 ``[n, 1]``; ``shape_names.txt`` (40 class names, one a line, label order); ``train_files.txt`` and
``test_files.txt`` (one h5 path a line, relative to the official repository: ``data/modelnet40_ply_hdf5_2048/...``;
only the file name is used here). Other keys and files of the release are not read.

* Reading needs h5py, an optional extra (``pip install -e '.[points]'``), imported only here and only when used.
* The first ``num_points`` (1,024) points of each shape are kept, as the official ``train.py`` does.
* Every h5 file is checked against ``MD5``, the sums that third-party loaders pin (not verified by this project
  against the original release; ``COMHE_MODELNET40_MD5=off`` skips the check for a copy you trust). A mismatch, a
  missing file or key, a wrong shape or dtype, or a label outside the class list stops with one line naming the file.
* ``download=True`` fetches ``URL`` (``COMHE_MODELNET40_URL`` overrides it: a mirror or a ``file://`` path) into
  ``root``, extracts it with ``archives.extract_release`` (bounded; only ``root/modelnet40_ply_hdf5_2048`` is
  written) and checks the md5s.

Datasets: ``modelnet40`` (the release) and ``synthetic_modelnet40`` (files in the same layout written by
``synthetic_points.write_modelnet40``, read by the same code against the md5s recorded when they were written).
Both hold the whole set on the device as ``[S, 3, num_points]`` float32 (9,840 x 3 x 1,024 x 4 bytes = 121 MB) and
stream batches with ``points.PointCloudLoader``.
"""
from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from . import synthetic_points
from .archives import extract_release
from .bundle import DATASETS, LOCATORS, WRITE, DataBundle, DatasetUnavailable, offline
from .points import AUGMENTATIONS, PointCloudLoader, eval_point_batches
from ..digests import file_digest

FOLDER = "modelnet40_ply_hdf5_2048"
ARCHIVE = FOLDER + ".zip"
URL = "https://shapenet.cs.stanford.edu/media/modelnet40_ply_hdf5_2048.zip"  # the official code's download link
MD5 = {"ply_data_train0.h5": "3176385ffc31a7b6b5af22191fd920d1",
       "ply_data_train1.h5": "e3f613fb500559403b34925112754dc4",
       "ply_data_train2.h5": "0c56e233a090ff87c3049d4ce08e7d8b",
       "ply_data_train3.h5": "9d2af465adfa33a3285c369f3ca66c45",
       "ply_data_train4.h5": "dff38de489b2c41bfaeded86c2208984",
       "ply_data_test0.h5": "e9732e6d83b09e79e9a7617df058adee",
       "ply_data_test1.h5": "aba4b12a67c34391cc3c015a6f08ed4b"}
NUM_CLASSES = 40
# What the release can be, for the extraction's bounds: 7 h5 files of <= 2,048 shapes x 2,048 points x (xyz, normal,
# face id) 4-byte values (12,311 shapes: ~710 MB in all, ~120 MB each) and a few text files.
RELEASE_MEMBERS = 32
RELEASE_BYTES = 1 << 30
EXTRA = "pip install -e '.[points]'"


def import_h5py():
    try:
        import h5py
    except ImportError:
        raise DatasetUnavailable(f"reading ModelNet-40 (HDF5) needs h5py: {EXTRA}") from None
    return h5py


def md5_of(path: Path) -> str:
    return file_digest(path, "md5")


def split_files(folder: Path, split: str) -> List[Path]:
    """The h5 files ``<split>_files.txt`` lists, resolved by file name inside ``folder``."""
    listing = folder / f"{split}_files.txt"
    if not listing.is_file():
        raise DatasetUnavailable(f"{listing} is missing: {folder} is not a complete {FOLDER} folder")
    names = [Path(line.strip()).name for line in listing.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetUnavailable(f"{listing} lists no h5 file")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DatasetUnavailable(f"{', '.join(missing)} (listed in {listing.name}) missing from {folder}")
    return [folder / n for n in names]


def check_md5(path: Path, expected: str) -> None:
    actual = md5_of(path)
    if actual != expected:
        raise DatasetUnavailable(f"{path} has md5 {actual}, expected {expected}: a corrupted or different file; "
                                 f"delete {path.parent} and download it again")


def read_h5(path: Path, num_points: int, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(points float32 [n, num_points, 3], labels int64 [n])`` of one release file, checked (one-line errors)."""
    h5py = import_h5py()
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("data", "label") if k not in f]
            if missing:
                raise DatasetUnavailable(f"{path} has no {' or '.join(map(repr, missing))} dataset (keys: "
                                         f"{', '.join(f.keys()) or 'none'}): not a {FOLDER} file")
            data, label = f["data"], f["label"]
            if data.ndim != 3 or data.shape[2] != 3 or data.shape[1] < num_points or data.dtype.kind != "f":
                raise DatasetUnavailable(f"{path}: 'data' is {data.dtype} {tuple(data.shape)}, expected float "
                                         f"[n, >= {num_points}, 3] (num_points={num_points})")
            if label.shape not in ((data.shape[0], 1), (data.shape[0],)) or label.dtype.kind not in "iu":
                raise DatasetUnavailable(f"{path}: 'label' is {label.dtype} {tuple(label.shape)}, expected integer "
                                         f"[{data.shape[0]}, 1] (one per shape of 'data')")
            points = np.asarray(data[:, :num_points, :], dtype=np.float32)
            labels = np.asarray(label[...]).reshape(-1).astype(np.int64)
    except OSError as err:  # h5py's error for a file that is not HDF5 (truncated, HTML error page, ...)
        raise DatasetUnavailable(f"{path} is not a readable HDF5 file ({err}): delete it and download it again") \
            from None
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise DatasetUnavailable(f"{path}: label {int(bad[0])} outside the {num_classes} classes of shape_names.txt")
    return points, labels


def class_names(folder: Path) -> List[str]:
    path = folder / "shape_names.txt"
    if not path.is_file():
        raise DatasetUnavailable(f"{path} is missing: {folder} is not a complete {FOLDER} folder")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetUnavailable(f"{path} lists no class")
    return names


def read_split(folder: Path, split: str, num_points: int, md5: Optional[Mapping[str, str]],
               names: List[str]) -> Tuple[np.ndarray, np.ndarray]:
    """Every file of ``split`` concatenated in the listed order: ``([n, num_points, 3], [n])``."""
    parts = []
    for path in split_files(folder, split):
        if md5 is not None:
            if path.name not in md5:
                raise DatasetUnavailable(f"{path} is not one of the release's files ({', '.join(md5)})")
            check_md5(path, md5[path.name])
        parts.append(read_h5(path, num_points, len(names)))
    return np.concatenate([p for p, _ in parts]), np.concatenate([y for _, y in parts])


def read_folder(folder: Path, num_points: int = 1024, md5: Optional[Mapping[str, str]] = None):
    """``(train points, train labels, test points, test labels, class names)`` of a ``modelnet40_ply_hdf5_2048``
    folder; points ``float32 [n, num_points, 3]``, labels ``int64 [n]``."""
    if not isinstance(num_points, int) or num_points < 1:
        raise ValueError(f"num_points must be an integer >= 1, got {num_points!r}")
    names = class_names(folder)
    train = read_split(folder, "train", num_points, md5, names)
    test = read_split(folder, "test", num_points, md5, names)
    return (*train, *test, names)


def download(url: str, root: Path) -> Path:
    """``url`` -> ``root/<archive>`` through a temporary file renamed into place (no half archive is ever left)."""
    root.mkdir(parents=True, exist_ok=True)
    target = root / ARCHIVE
    partial = root / f".{ARCHIVE}.partial{os.getpid()}"
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
        os.replace(partial, target)
    except (urllib.error.URLError, OSError, ValueError) as err:
        partial.unlink(missing_ok=True)
        raise DatasetUnavailable(f"could not download {url} ({type(err).__name__}: {err}); put {ARCHIVE} or the "
                                 f"extracted {FOLDER}/ folder in {root} (COMHE_MODELNET40_URL names a mirror)") \
            from None
    return target


def _not_found(root: Path, download_ok: bool) -> str:
    why = "download=False" if not download_ok else "downloads are off (COMHE_OFFLINE is set)"
    return f"{FOLDER}/ not found in {root} and {why}: put {ARCHIVE} ({URL}) or its extracted {FOLDER}/ folder there"


@LOCATORS.register("modelnet40")
def _locate_modelnet40(root: Path, download: bool, **_options):
    """The extracted release: read in place (None); the archive, or none with downloads on: extracted (and first
    downloaded) into ``root`` on use (``WRITE``); neither, with downloads off: the line ``ensure`` would raise.
    (``download`` here is already False when ``COMHE_OFFLINE`` is set: ``bundle.locate``.)"""
    if (root / FOLDER / "train_files.txt").is_file():
        return None
    if (root / ARCHIVE).is_file() or download:
        return WRITE
    return _not_found(root, download_ok=offline())  # offline: "downloads are off"; else the caller's download=False


def ensure(root: Path, download_ok: bool) -> Path:
    """The release folder under ``root``, extracted from ``root/<archive>`` or downloaded first when missing."""
    folder = root / FOLDER
    if (folder / "train_files.txt").is_file():
        return folder
    archive = root / ARCHIVE
    if not archive.is_file():
        if not download_ok or offline():
            raise DatasetUnavailable(_not_found(root, download_ok))
        archive = download(os.environ.get("COMHE_MODELNET40_URL") or URL, root)
    # extracted aside, checked, moved into place: nothing outside root/FOLDER is ever written (archives.py)
    return extract_release(archive, root, FOLDER, RELEASE_MEMBERS, RELEASE_BYTES,
                           required=("train_files.txt", "test_files.txt", "shape_names.txt"))


def points_bundle(name: str, train: Tuple[np.ndarray, np.ndarray], test: Tuple[np.ndarray, np.ndarray],
                  classes: List[str], device: torch.device, augmentation: str) -> DataBundle:
    """A bundle of clouds ``[n, P, 3]`` held on ``device`` channels first (``[n, 3, P]``); batches ``[B, 3, P]``."""
    AUGMENTATIONS.get(augmentation)  # an unknown name fails here, listing the valid ones
    (xtr, ytr), (xte, yte) = [(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1))).to(device),
                               torch.from_numpy(y).to(device)) for x, y in (train, test)]

    def train_loader(batch_size: int, seed: int, rank: int = 0, world_size: int = 1, augment: bool = True):
        return PointCloudLoader(xtr, ytr, batch_size, augmentation if augment else "none", seed, rank, world_size)

    def test_loader(batch_size: int, rank: int = 0, world_size: int = 1):
        return eval_point_batches(xte, yte, batch_size, rank, world_size)

    return DataBundle(name, "points", len(classes), 3, xtr.shape[-1], len(ytr), len(yte), train_loader, test_loader,
                      list(classes), xtr, ytr, xte, yte)


def _md5_table() -> Optional[Dict[str, str]]:
    return None if os.environ.get("COMHE_MODELNET40_MD5", "").lower() in ("off", "0", "no", "false") else MD5


@DATASETS.register("modelnet40")
def _modelnet40(root: Path, device: torch.device, download: bool, num_points: int = 1024,
                augmentation: str = "pointnet") -> DataBundle:
    """The release; ``augmentation``: ``pointnet`` (rotation, jitter) or ``pointnet2`` (``points.py``)."""
    import_h5py()  # the missing extra is named before anything is downloaded
    folder = ensure(root, download)
    xtr, ytr, xte, yte, names = read_folder(folder, num_points, _md5_table())
    if len(names) != NUM_CLASSES:
        raise DatasetUnavailable(f"{folder / 'shape_names.txt'} lists {len(names)} classes, ModelNet-40 has 40")
    return points_bundle("modelnet40", (xtr, ytr), (xte, yte), names, device, augmentation)


@DATASETS.register("synthetic_modelnet40")
def _synthetic_modelnet40(root: Path, device: torch.device, download: bool, num_points: int = 1024,
                          augmentation: str = "pointnet", num_classes: int = 40, train_per_class: int = 8,
                          test_per_class: int = 4, seed: int = 0) -> DataBundle:
    """Small learnable clouds in the release's layout, in their own folder per parameter set under ``root``,
    written aside and renamed into place (parallel runs never read a half-written set)."""
    import_h5py()
    params = {"num_classes": num_classes, "train_per_class": train_per_class, "test_per_class": test_per_class,
              "seed": seed}
    where = root / f"synthetic-modelnet{num_classes}-{train_per_class}x{test_per_class}-seed{seed}"
    if synthetic_points.read_manifest(where / FOLDER).get("params") != params:
        partial = root / f".{where.name}.partial{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            synthetic_points.write_modelnet40(partial, **params)
        except BaseException:  # a full disk, Ctrl-C: no half-written copy is left behind
            shutil.rmtree(partial, ignore_errors=True)
            raise
        try:
            partial.rename(where)
        except OSError:  # another process got there first; its files are identical
            shutil.rmtree(partial, ignore_errors=True)
    folder = where / FOLDER
    md5 = synthetic_points.read_manifest(folder)["files"]
    xtr, ytr, xte, yte, names = read_folder(folder, num_points, md5)
    return points_bundle("synthetic_modelnet40", (xtr, ytr), (xte, yte), names, device, augmentation)

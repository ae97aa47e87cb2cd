"""``image_folder``: small images in torchvision's ImageFolder layout, decoded once into the CIFAR tensor bundle.

    <data root>/<folder>/<split>/<class>/*.{png,jpg,jpeg}        (split names configurable: CINIC-10 has
                                                                  train/valid/test)

Every image of both splits is decoded once (PIL) into uint8 ``[N, C, H, W]`` arrays, kept in the data root as a
checked cache (``tensor_cache.py``: sha256-verified, rebuilt when any file of the folder changes, written in its
own folder of the data root, never inside the image folder), and then used exactly as CIFAR: the whole set on the
device, batches streamed and augmented there (``streams.TensorLoader``, ``augment.py``). So everything the CIFAR
code path does (the official symmetric-pad crop and flip, ``(x - 127.5) / 128``) applies unchanged.

Classes are the class folders of the train split in sorted order (torchvision's rule), or ``classes`` in the order
given. Images must all have one square size up to 64 x 64 (the crop augmentation and the models take one
``image_size``). Mixed sizes, an empty class, an unreadable image, a missing split or class: ``DatasetUnavailable``
with one line naming the file or folder.

Options for a recipe chosen without the test split and for reduced runs (CI): ``validation_per_class = n`` holds out
n training images per class (a fixed draw, the same for every run and seed) and evaluates on them instead of the
test split; ``train_per_class`` / ``test_per_class`` keep only the first images per class (file order) of what is
left. A run's records hold these options, so a validation or reduced run never passes for a full one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import tensor_cache
from .bundle import DATASETS, LOCATORS, PROBES, DataBundle, DatasetUnavailable, tensor_bundle

EXTENSIONS = (".png", ".jpg", ".jpeg")
MAX_SIZE = 64           # largest side accepted: the whole set lives on the device, as CIFAR does
VALIDATION_SEED = 0     # the held-out draw is fixed: every run and seed sees the same validation images


def scan(top: Path, splits: Sequence[str], classes: Optional[Sequence[str]] = None) -> Tuple[List[str], Dict]:
    """``(classes, {split: [(relative path, label), ...]})`` for the image files under ``top/<split>/<class>/``,
    sorted by class then file name. Raises ``DatasetUnavailable`` for a missing split or class, or an empty class."""
    problem = missing_split(top, splits)
    if problem:
        raise DatasetUnavailable(problem)
    first = top / splits[0]
    if classes is None:
        classes = sorted(p.name for p in first.iterdir() if p.is_dir())
        if not classes:
            raise DatasetUnavailable(f"{first} has no class folders: expected {first}/<class>/*.png|jpg")
    files = {}
    for split in splits:
        entries = []
        for label, name in enumerate(classes):
            folder = top / split / name
            if not folder.is_dir():
                raise DatasetUnavailable(f"class folder {folder} not found (class {label} of {len(classes)}: "
                                         f"every split needs the same class folders)")
            names = sorted(f.name for f in folder.iterdir() if f.suffix.lower() in EXTENSIONS and f.is_file())
            if not names:
                raise DatasetUnavailable(f"empty class folder {folder}: every class needs at least one image "
                                         f"({', '.join(EXTENSIONS)})")
            entries += [(f"{split}/{name}/{n}", label) for n in names]
        files[split] = entries
    return list(classes), files


def _open(path: Path, mode: str):
    """The image at ``path`` converted to ``mode``, or ``DatasetUnavailable`` naming the file."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetUnavailable(f"unreadable image {path}: {' '.join(str(err).split())}") from None


def decode(top: Path, relative: Sequence[str], grayscale: bool) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` (C = 3, or 1 for ``grayscale``) of the images, which must share one square size."""
    mode = "L" if grayscale else "RGB"
    first = _open(top / relative[0], mode)
    size = first.size
    if size[0] != size[1] or size[0] > MAX_SIZE:
        raise DatasetUnavailable(f"{top / relative[0]} is {size[0]}x{size[1]}: image_folder takes square images of "
                                 f"one size up to {MAX_SIZE}x{MAX_SIZE} (resize the folder first)")
    out = np.empty((len(relative), 1 if grayscale else 3, size[1], size[0]), np.uint8)
    for i, rel in enumerate(relative):
        img = first if i == 0 else _open(top / rel, mode)
        if img.size != size:
            raise DatasetUnavailable(f"mixed image sizes: {top / rel} is {img.size[0]}x{img.size[1]}, "
                                     f"{top / relative[0]} is {size[0]}x{size[1]} (every image needs one size)")
        pixels = np.asarray(img, np.uint8)
        out[i] = pixels[None] if grayscale else pixels.transpose(2, 0, 1)
    return out


def load_arrays(root: Path, folder: str, splits: Sequence[str], classes: Optional[Sequence[str]],
                grayscale: bool) -> Tuple[List[str], Dict[str, Tuple[np.ndarray, np.ndarray]]]:
    """Both splits as ``{split: (images uint8 [N, C, H, W], labels int64 [N])}``, from the checked cache in the
    data root when it matches the folder's files, else decoded and cached."""
    top = _folder(root, folder)
    found, files = scan(top, splits, classes)
    key = {"folder": str(top.resolve()), "splits": list(splits), "classes": found, "grayscale": grayscale}

    def build() -> Dict[str, np.ndarray]:
        arrays = {}
        for split in splits:
            arrays[f"{split}/images"] = decode(top, [rel for rel, _ in files[split]], grayscale)
            arrays[f"{split}/labels"] = np.array([label for _, label in files[split]], np.int64)
        sizes = {a.shape[-1] for name, a in arrays.items() if name.endswith("/images")}
        if len(sizes) > 1:
            raise DatasetUnavailable(f"mixed image sizes across the splits of {top} ({sorted(sizes)} pixels): "
                                     "every image needs one size")
        return arrays

    arrays = tensor_cache.cached(root, top.name, key, tensor_cache.fingerprint(top, files), build)
    return found, {s: (arrays[f"{s}/images"], arrays[f"{s}/labels"]) for s in splits}


def _folder(root: Path, folder: str) -> Path:
    return Path(folder).expanduser() if Path(folder).expanduser().is_absolute() else root / folder


def per_class(labels: np.ndarray, keep: int) -> np.ndarray:
    """Indices of the first ``keep`` items of each class, in their order (``keep = 0``: all)."""
    if not keep:
        return np.arange(len(labels))
    rank = np.zeros(len(labels), np.int64)  # position of each item within its class
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    return np.flatnonzero(rank < keep)


def hold_out(labels: np.ndarray, n: int, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(train indices, validation indices)``: ``n`` items per class drawn with a fixed seed go to validation."""
    rng = np.random.default_rng(VALIDATION_SEED)
    held = []
    for c in range(num_classes):
        where = np.flatnonzero(labels == c)
        if n >= len(where):
            raise DatasetUnavailable(f"validation_per_class={n} leaves no training image of class {c} "
                                     f"({len(where)} images)")
        held.append(np.sort(rng.choice(where, n, replace=False)))
    val = np.concatenate(held)
    mask = np.ones(len(labels), bool)
    mask[val] = False
    return np.flatnonzero(mask), val


def folder_bundle(name: str, root: Path, device: torch.device, folder: str, train_split: str, test_split: str,
                  classes: Optional[List[str]], grayscale: bool, validation_per_class: int, train_per_class: int,
                  test_per_class: int) -> DataBundle:
    for key, value in (("validation_per_class", validation_per_class), ("train_per_class", train_per_class),
                       ("test_per_class", test_per_class)):
        if value < 0:
            raise DatasetUnavailable(f"{key} must be >= 0, got {value}")
    splits = [train_split] if validation_per_class else [train_split, test_split]
    found, arrays = load_arrays(root, folder, splits, classes, grayscale)
    xtr, ytr = arrays[train_split]
    if validation_per_class:  # the test split is not even read: a recipe chosen this way never saw it
        train_idx, val_idx = hold_out(ytr, validation_per_class, len(found))
        (xtr, ytr), (xte, yte) = (xtr[train_idx], ytr[train_idx]), (xtr[val_idx], ytr[val_idx])
    else:
        xte, yte = arrays[test_split]
    keep_tr, keep_te = per_class(ytr, train_per_class), per_class(yte, test_per_class)
    return tensor_bundle(name, (xtr[keep_tr], ytr[keep_tr]), (xte[keep_te], yte[keep_te]), len(found), device, found)


def missing(root: Path, folder: str, splits: Sequence[str]) -> Optional[str]:
    """Why the folder cannot be read (one line), or None; reads nothing but directory entries."""
    top = _folder(root, folder)
    if not folder:
        return "image_folder needs data.folder=<folder in the data root> (<folder>/<split>/<class>/*.png|jpg)"
    return missing_split(top, splits)


def missing_split(top: Path, splits: Sequence[str]) -> Optional[str]:
    for split in splits:
        if not (top / split).is_dir():
            found = sorted(p.name for p in top.iterdir() if p.is_dir()) if top.is_dir() else []
            return (f"split folder {top / split} not found (folders there: {', '.join(found) or 'none'}): "
                    f"image_folder reads {top}/<split>/<class>/*.png|jpg (splits {', '.join(splits)})")
    return None


@DATASETS.register("image_folder")
def _image_folder(root: Path, device: torch.device, download: bool, folder: str = "", train_split: str = "train",
                  test_split: str = "test", classes: Optional[List[str]] = None, grayscale: bool = False,
                  validation_per_class: int = 0, train_per_class: int = 0, test_per_class: int = 0) -> DataBundle:
    """folder: in the data root (or absolute); classes: their order (default: sorted folder names)."""
    problem = missing(root, folder, [train_split] if validation_per_class else [train_split, test_split])
    if problem:
        raise DatasetUnavailable(problem)
    return folder_bundle("image_folder", root, device, folder, train_split, test_split, classes, grayscale,
                         validation_per_class, train_per_class, test_per_class)


@LOCATORS.register("image_folder")
def _locate_image_folder(root: Path, download: bool, folder: str = "", train_split: str = "train",
                         test_split: str = "test", validation_per_class: int = 0, **options):
    return missing(root, folder, [train_split] if validation_per_class else [train_split, test_split])


PROBES["image_folder"] = lambda root, folder="", train_split="train", test_split="test", validation_per_class=0, \
    **options: missing(root, folder, [train_split] if validation_per_class else [train_split, test_split])

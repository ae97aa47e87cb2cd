"""Tiny learnable datasets written in the real on-disk formats, so tests run the real loader code end to end.

* ``write_cifar``: ``cifar-10-batches-py/`` or ``cifar-100-python/`` exactly as torchvision (and the official
  code's ``unpickle``) read them: pickled dicts with ``data`` uint8 ``[n, 3072]`` (channel-major: 1024 R, 1024 G,
  1024 B, each row-major), ``labels`` (CIFAR-10) or ``fine_labels`` / ``coarse_labels`` (CIFAR-100) as lists of
  int, plus the meta file. Keys are ``str``: the real archives are Python 2 pickles whose keys load as ``str``
  under ``encoding="latin1"`` (torchvision and the official code) and as ``bytes`` only under ``encoding="bytes"``;
  Python 3 cannot write Python 2 strings, so the ``bytes`` view is not reproduced.
* torchvision checks every CIFAR file against the md5 of the *real* file. Rather than switching that check off,
  ``write_cifar`` records the md5 of each file it wrote in ``SYNTHETIC_MD5.json`` and
  ``cifar_class_with_recorded_md5`` returns a subclass of the real torchvision class whose checksum table is that
  record: torchvision's integrity check runs unchanged and a corrupted file still fails; the batches are then read
  by ``cifar.read_split`` through the restricted unpickler, like the real ones.
* ``write_imagenet_folder``: JPEGs in ``root/imagenet/{train,val}/<wnid>/*.JPEG`` (ImageFolder layout).

Images are learnable: class colour + an oriented sinusoid of class frequency (random phase) + Gaussian noise;
colour survives crops and flips, so a nearest-class-mean classifier is far above chance.
"""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Tuple, Type

import numpy as np

MANIFEST = "SYNTHETIC_MD5.json"
CIFAR_FOLDERS = {10: "cifar-10-batches-py", 100: "cifar-100-python"}
CIFAR10_TRAIN_BATCHES = 5


def make_images(num_classes: int, per_class: int, seed: int = 0, split: str = "train",
                size: int = 32) -> Tuple[np.ndarray, np.ndarray]:
    """Images uint8 ``[num_classes * per_class, 3, size, size]`` and labels int64 ``[N]``, in a shuffled order.

    Class prototypes depend on ``seed`` only, so train and test share them; the draws differ by ``split``.
    """
    proto = np.random.default_rng([seed, 0])
    colour = proto.uniform(48, 208, (num_classes, 3))                       # [K, 3]
    angle = proto.uniform(0, np.pi, num_classes)                            # [K]
    freq = proto.uniform(1.0, 4.0, num_classes) * 2 * np.pi / size        # radians per pixel, [K]
    rng = np.random.default_rng([seed, {"train": 1, "test": 2, "val": 2}[split]])
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))  # [N]
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")  # [S, S]
    along = (np.cos(angle[labels])[:, None, None] * xx + np.sin(angle[labels])[:, None, None] * yy)  # [N, S, S]
    phase = rng.uniform(0, 2 * np.pi, (len(labels), 1, 1))
    wave = 40 * np.sin(freq[labels][:, None, None] * along + phase)        # [N, S, S]
    noise = rng.normal(0, 16, (len(labels), 3, size, size))
    images = colour[labels][:, :, None, None] + wave[:, None] + noise
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels.astype(np.int64)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # 2: readable by any Python, like the original Python 2 pickles


def write_cifar(root, num_classes: int = 10, train_per_class: int = 20, test_per_class: int = 10,
                seed: int = 0) -> Path:
    """Write ``root/cifar-10-batches-py/`` (``num_classes=10``) or ``root/cifar-100-python/`` (100); return it.

    Any ``num_classes <= 10`` (resp. ``<= 100``) uses the CIFAR-10 (resp. CIFAR-100) format. Also writes
    ``SYNTHETIC_MD5.json``: ``{"files": {filename: md5}, "params": {...}}``.
    """
    fmt = 10 if num_classes <= 10 else 100
    if num_classes > 100:
        raise ValueError(f"CIFAR formats hold at most 100 classes, got {num_classes}")
    folder = Path(root) / CIFAR_FOLDERS[fmt]
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"class_{k:03d}" for k in range(num_classes)]
    splits = {"train": make_images(num_classes, train_per_class, seed, "train"),
              "test": make_images(num_classes, test_per_class, seed, "test")}

    def record(split: str, batch_label: str, rows=slice(None)) -> dict:
        images, labels = splits[split][0][rows], splits[split][1][rows]
        out = {"batch_label": batch_label, "data": images.reshape(len(images), -1),
               "filenames": [f"synthetic_{split}_{i}.png" for i in range(len(images))]}
        if fmt == 10:
            out["labels"] = labels.tolist()
        else:
            out["fine_labels"], out["coarse_labels"] = labels.tolist(), (labels // 5).tolist()
        return out

    if fmt == 10:
        chunks = np.array_split(np.arange(len(splits["train"][1])), CIFAR10_TRAIN_BATCHES)
        files = {f"data_batch_{i + 1}": record("train", f"training batch {i + 1} of 5", rows)
                 for i, rows in enumerate(chunks)}
        files["test_batch"] = record("test", "testing batch 1 of 1")
        files["batches.meta"] = {"label_names": names, "num_cases_per_batch": len(chunks[0]), "num_vis": 3072}
    else:
        files = {"train": record("train", "training batch 1 of 1"),
                 "test": record("test", "testing batch 1 of 1"),
                 "meta": {"fine_label_names": names,
                          "coarse_label_names": [f"coarse_{k:02d}" for k in range(-(-num_classes // 5))]}}
    for name, obj in files.items():
        _dump(folder / name, obj)
    manifest = {"files": {name: _md5(folder / name) for name in files},
                "params": {"num_classes": num_classes, "train_per_class": train_per_class,
                           "test_per_class": test_per_class, "seed": seed}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return folder


def read_manifest(folder) -> dict:
    """The ``SYNTHETIC_MD5.json`` of a folder written by ``write_cifar`` or ``synthetic_points.write_modelnet40``
    ({} when there is none)."""
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def cifar_class_with_recorded_md5(base: Type, folder) -> Type:
    """Subclass of torchvision ``CIFAR10``/``CIFAR100`` whose expected md5s are those recorded in ``folder``.

    Only the checksum table changes; the md5 check is torchvision's own code (reading is ``cifar.read_split``).
    """
    md5 = read_manifest(folder)["files"]
    table = {"train_list": [[name, md5[name]] for name, _ in base.train_list],
             "test_list": [[name, md5[name]] for name, _ in base.test_list],
             "meta": {**base.meta, "md5": md5[base.meta["filename"]]}}
    return type(f"Synthetic{base.__name__}", (base,), table)


def write_imagenet_folder(root, num_classes: int = 3, per_class: int = 4, size: int = 40, seed: int = 0) -> Path:
    """Write ``per_class`` JPEGs of ``size x size`` per class to ``root/imagenet/{train,val}/<wnid>/``; return
    ``root/imagenet``. Class folders are named like ImageNet wnids: ``n00000000``, ``n00000001``, ...
    """
    from PIL import Image

    top = Path(root) / "imagenet"
    for split in ("train", "val"):
        images, labels = make_images(num_classes, per_class, seed, split, size)
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = top / split / f"n{label:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{split}_{i:05d}.JPEG", quality=95)
    return top

"""Small learnable point clouds written in the layout of the ModelNet-40 HDF5 release, so that tests and the smoke
profile run the real reader (``modelnet.py``) end to end.

``write_modelnet40(root, ...)`` writes ``root/modelnet40_ply_hdf5_2048/`` as the release has it: ``shape_names.txt``
(the real class names for up to 40 classes), ``train_files.txt`` / ``test_files.txt`` (lines
``data/modelnet40_ply_hdf5_2048/ply_data_<split><i>.h5``, as in the release), five train and two test files with
``data`` float32 ``[n, 2048, 3]`` and ``label`` uint8 ``[n, 1]``. The md5 of every h5 file it wrote is recorded in
``SYNTHETIC_MD5.json`` (with the parameters), and the reader checks the files against that record, so a corrupted
synthetic file fails like a corrupted real one.

Shapes: class ``k`` is the surface of an ellipsoid with semi-axes ``(1, b_k, r_k)`` (x, up, z), the class ratios
spread over ``[0.3, 1]^2`` from a seeded start, each shape's axes jittered by 5 % and its points by Gaussian noise
(sigma 0.01), turned about the up axis (y) by a random angle, centred and scaled into the unit sphere (as the release
is normalised). The ratios survive the training rotations, so a PointNet separates a few classes quickly.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .synthetic import MANIFEST, _md5, read_manifest  # noqa: F401  (read_manifest: also this module's public name)

FOLDER = "modelnet40_ply_hdf5_2048"
POINTS_PER_SHAPE = 2048
TRAIN_FILES, TEST_FILES = 5, 2
MODELNET40_CLASSES = (
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone", "cup", "curtain",
    "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp", "laptop", "mantel", "monitor",
    "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink", "sofa", "stairs", "stool", "table",
    "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox")


def make_clouds(num_classes: int, per_class: int, seed: int = 0, split: str = "train",
                points: int = POINTS_PER_SHAPE):
    """Clouds float32 ``[num_classes * per_class, points, 3]`` in the unit sphere and labels int64, shuffled.

    Class axes depend on ``seed`` only (train and test share them); the shapes differ by ``split``."""
    # Semi-axes (1, b_k, r_k): the up axis b_k and the second horizontal axis r_k (the two horizontal axes swap under
    # the training rotations, so only their ratio tells classes apart), spread over [0.3, 1]^2 by golden-ratio and
    # sqrt(2) sequences from a seeded start: near classes differ by ~0.7 / sqrt(K) in one of the ratios.
    start = np.random.default_rng([seed, 0]).uniform(0, 1, 2)
    k = np.arange(num_classes)
    spread = 0.3 + 0.7 * np.stack([(start[0] + k * 0.6180339887) % 1, (start[1] + k * 0.4142135624) % 1], 1)
    axes = np.concatenate([np.ones((num_classes, 1)), spread], 1)                           # [K, 3]
    rng = np.random.default_rng([seed, {"train": 1, "test": 2}[split]])
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))                  # [S]
    direction = rng.normal(size=(len(labels), points, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)                          # on the unit sphere
    shape_axes = axes[labels] * rng.uniform(0.95, 1.05, (len(labels), 3))                   # [S, 3]
    clouds = direction * shape_axes[:, None, :] + rng.normal(0, 0.01, (len(labels), points, 3))
    angle = rng.uniform(0, 2 * np.pi, len(labels))
    c, s = np.cos(angle), np.sin(angle)
    x, y, z = clouds[..., 0], clouds[..., 1], clouds[..., 2]
    clouds = np.stack([x * c[:, None] - z * s[:, None], y, x * s[:, None] + z * c[:, None]], -1)
    clouds -= clouds.mean(1, keepdims=True)
    clouds /= np.linalg.norm(clouds, axis=-1).max(1)[:, None, None]
    return clouds.astype(np.float32), labels.astype(np.int64)


def write_modelnet40(root, num_classes: int = 40, train_per_class: int = 8, test_per_class: int = 4,
                     seed: int = 0) -> Path:
    """Write ``root/modelnet40_ply_hdf5_2048/`` (see the module docstring) and return it."""
    import h5py  # the `points` extra; modelnet.py has checked it is there

    if not 1 <= num_classes <= 255:
        raise ValueError(f"num_classes must be in 1..255 (labels are uint8), got {num_classes}")
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    names = list(MODELNET40_CLASSES[:num_classes]) + [f"class_{k:03d}" for k in range(40, num_classes)]
    (folder / "shape_names.txt").write_text("".join(f"{n}\n" for n in names))
    files = {}
    for split, per_class, count in (("train", train_per_class, TRAIN_FILES), ("test", test_per_class, TEST_FILES)):
        clouds, labels = make_clouds(num_classes, per_class, seed, split)
        listed = []
        for i, rows in enumerate(np.array_split(np.arange(len(labels)), count)):
            name = f"ply_data_{split}{i}.h5"
            with h5py.File(folder / name, "w") as f:
                f.create_dataset("data", data=clouds[rows])
                f.create_dataset("label", data=labels[rows].astype(np.uint8)[:, None])
            files[name] = _md5(folder / name)
            listed.append(f"data/{FOLDER}/{name}\n")
        (folder / f"{split}_files.txt").write_text("".join(listed))
    params = {"num_classes": num_classes, "train_per_class": train_per_class, "test_per_class": test_per_class,
              "seed": seed}
    (folder / MANIFEST).write_text(json.dumps({"files": files, "params": params}, indent=1))
    return folder

"""ImageNet-2012 from class folders through a ``DataLoader`` (torchvision transforms), and ``synthetic_imagenet``, a
tiny JPEG folder written by ``synthetic.py``."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Dict

import torch

from . import synthetic
from .bundle import DATASETS, LOCATORS, DataBundle, DatasetUnavailable
from .streams import LoaderStream

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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
    loader_args: Dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}

    def train_loader(batch_size: int, seed: int, rank: int = 0, world_size: int = 1, augment: bool = True):
        """An unbounded, resumable stream of batches (``LoaderStream``) over this rank's shard of each epoch."""
        data = train if augment else plain_train
        # DistributedSampler also for one process: the order is a function of (seed, epoch) only.
        sampler: DistributedSampler = DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=True,
                                                         seed=seed, drop_last=True)
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


@LOCATORS.register("imagenet")
def _locate_imagenet(root: Path, download: bool, **options):
    top = root / "imagenet"
    missing = [str(top / split) for split in ("train", "val") if not (top / split).is_dir()]
    if not missing:
        return None
    return (f"{missing[0]} not found: ImageNet-2012 cannot be downloaded automatically; put the class "
            f"folders at {top}/{{train,val}}/<class>/*.JPEG (from image-net.org, after registration)")


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

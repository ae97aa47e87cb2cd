"""image_folder: small folders written in the ImageFolder layout (PNG: exact pixels; JPEG: decoded by PIL), the
checked cache in the data root, the one-line errors, the validation hold-out, and the CIFAR-10 JPEG export."""
import json
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from comhe import data
from comhe.data import imagefolder, tensor_cache
from comhe.data.bundle import DatasetUnavailable
from export_helpers import export_root


def write_folder(top, split_counts, classes=("cat", "dog", "emu"), size=8, ext="png", seed=0, mode="RGB"):
    """``top/<split>/<class>/<i>.<ext>`` of random images; returns ``{split: (uint8 [N, C, H, W], labels)}`` in
    sorted class order then file name (the order image_folder must give)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, per_class in split_counts.items():
        images, labels = [], []
        for label, name in enumerate(sorted(classes)):
            folder = top / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                shape = (size, size) if mode == "L" else (size, size, 3)
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(pixels, mode).save(folder / f"{i:03d}.{ext}")
                images.append(pixels[None] if mode == "L" else pixels.transpose(2, 0, 1))
                labels.append(label)
        out[split] = (np.stack(images), np.array(labels))
    return out


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    return root, write_folder(root / "pets", {"train": 4, "test": 2})


def build(root, **options):
    return data.build("image_folder", root=root, folder="pets", **options)


def test_pixels_labels_and_sorted_classes_match_what_was_written(folder):
    root, written = folder
    b = build(root)
    assert (b.kind, b.num_classes, b.in_channels, b.image_size, b.classes) == ("tensor", 3, 3, 8, ["cat", "dog", "emu"])
    assert b.train_images.dtype == torch.uint8 and (b.num_train, b.num_test) == (12, 6)
    for images, labels, split in ((b.train_images, b.train_labels, "train"), (b.test_images, b.test_labels, "test")):
        np.testing.assert_array_equal(images.numpy(), written[split][0])
        np.testing.assert_array_equal(labels.numpy(), written[split][1])


def test_class_list_sets_the_label_order(folder):
    root, written = folder
    b = build(root, classes=["emu", "cat", "dog"])
    assert b.classes == ["emu", "cat", "dog"]
    np.testing.assert_array_equal(b.train_labels[:4].numpy(), [0] * 4)  # emu's images first, label 0
    np.testing.assert_array_equal(b.train_images[:4].numpy(), written["train"][0][8:12])


def test_streams_and_augments_exactly_as_the_cifar_tensor_bundle(folder):
    root, written = folder
    b = build(root)
    ref = data.tensor_bundle("ref", written["train"], written["test"], 3, torch.device("cpu"))
    for augment in (True, False):
        ours, theirs = b.train_loader(5, seed=3, augment=augment), ref.train_loader(5, seed=3, augment=augment)
        for _ in range(4):
            (x1, y1), (x2, y2) = ours.next_batch(), theirs.next_batch()
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert type(b.train_loader(5, seed=0)) is type(ref.train_loader(5, seed=0))


def test_cache_is_in_the_data_root_checked_and_used(folder, monkeypatch):
    root, written = folder
    build(root)
    files = sorted(p.name for p in (root / tensor_cache.FOLDER).iterdir())
    assert any(f.endswith(".npz") for f in files) and any(f.endswith(".json") for f in files)
    inside = [p for p in (root / "pets").rglob("*") if p.is_file() and p.suffix not in (".png",)]
    assert not inside  # nothing written next to the user's images

    def no_decode(*a, **k):
        raise AssertionError("decoded again although the cache matches")
    monkeypatch.setattr(imagefolder, "decode", no_decode)
    np.testing.assert_array_equal(build(root).train_images.numpy(), written["train"][0])


def test_changed_image_rebuilds_the_cache(folder):
    root, written = folder
    build(root)
    path = root / "pets" / "train" / "dog" / "001.png"
    new = np.full((8, 8, 3), 7, np.uint8)
    Image.fromarray(new).save(path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on a coarse clock
    b = build(root)
    np.testing.assert_array_equal(b.train_images[5].numpy(), new.transpose(2, 0, 1))


def test_added_image_rebuilds_the_cache(folder):
    root, _ = folder
    build(root)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "pets" / "train" / "cat" / "zzz.png")
    assert build(root).num_train == 13


def test_damaged_cache_is_rebuilt_not_trusted(folder):
    root, written = folder
    build(root)
    npz = next((root / tensor_cache.FOLDER).glob("*.npz"))
    raw = bytearray(npz.read_bytes())
    raw[-100] ^= 0xFF
    npz.write_bytes(bytes(raw))
    np.testing.assert_array_equal(build(root).train_images.numpy(), written["train"][0])
    meta = json.loads(next((root / tensor_cache.FOLDER).glob("*.json")).read_text())
    assert meta["sha256"] == tensor_cache._sha256(npz)


def test_jpeg_and_grayscale_folders(tmp_path):
    written = write_folder(tmp_path / "jpg", {"train": 2, "test": 1}, size=16, ext="jpg")
    b = data.build("image_folder", root=tmp_path, folder="jpg")
    diff = np.abs(b.train_images.numpy().astype(int) - written["train"][0].astype(int))
    assert b.image_size == 16 and diff.mean() < 60  # lossy on random noise, but the same images in the same order
    gray = write_folder(tmp_path / "gray", {"train": 2, "test": 1}, ext="png", mode="L")
    g = data.build("image_folder", root=tmp_path, folder="gray", grayscale=True)
    assert g.in_channels == 1
    np.testing.assert_array_equal(g.train_images.numpy(), gray["train"][0])


def test_split_names_are_configurable(tmp_path):
    write_folder(tmp_path / "cinic", {"train": 2, "valid": 1, "test": 1})
    b = data.build("image_folder", root=tmp_path, folder="cinic", test_split="valid")
    assert (b.num_train, b.num_test) == (6, 3)


def test_validation_hold_out_is_fixed_disjoint_and_never_reads_test(folder):
    root, written = folder
    import shutil
    shutil.rmtree(root / "pets" / "test")  # a validation run must not need (or read) the test split
    a, b = build(root, validation_per_class=1), build(root, validation_per_class=1)
    assert (a.num_train, a.num_test) == (9, 3) and torch.equal(a.test_images, b.test_images)
    assert torch.bincount(a.test_labels).tolist() == [1, 1, 1]
    train = {bytes(x) for x in a.train_images.numpy()}
    assert not train & {bytes(x) for x in a.test_images.numpy()}
    assert len(train) + a.num_test == len({bytes(x) for x in written["train"][0]})


def test_per_class_limits_keep_the_first_files(folder):
    root, written = folder
    b = build(root, train_per_class=2, test_per_class=1)
    np.testing.assert_array_equal(b.train_images.numpy(), written["train"][0][[0, 1, 4, 5, 8, 9]])
    assert b.test_labels.tolist() == [0, 1, 2]


def _one_line_error(root, match, **options):
    with pytest.raises(DatasetUnavailable, match=match) as err:
        data.build("image_folder", root=root, **options)
    assert "\n" not in str(err.value)


def test_errors_are_one_line(tmp_path):
    write_folder(tmp_path / "ok", {"train": 1})
    _one_line_error(tmp_path, r"split folder .*test not found", folder="ok")           # missing split
    _one_line_error(tmp_path, r"needs data.folder", folder="")
    write_folder(tmp_path / "mixed", {"train": 1, "test": 1})
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "mixed" / "train" / "dog" / "big.png")
    _one_line_error(tmp_path, r"mixed image sizes: .*big.png is 9x9", folder="mixed")
    write_folder(tmp_path / "empty", {"train": 1, "test": 1})
    for f in (tmp_path / "empty" / "test" / "emu").iterdir():
        f.unlink()
    _one_line_error(tmp_path, r"empty class folder .*test/emu", folder="empty")
    write_folder(tmp_path / "bad", {"train": 1, "test": 1})
    (tmp_path / "bad" / "train" / "cat" / "000.png").write_bytes(b"not a png")
    _one_line_error(tmp_path, r"unreadable image .*cat/000.png", folder="bad")
    write_folder(tmp_path / "huge", {"train": 1, "test": 1}, size=65)
    _one_line_error(tmp_path, r"65x65: image_folder takes square images of one size up to 64x64", folder="huge")
    write_folder(tmp_path / "both", {"train": 1, "test": 1})
    _one_line_error(tmp_path, r"class folder .*train/yak not found", folder="both", classes=["cat", "yak"])
    _one_line_error(tmp_path, r"leaves no training image", folder="ok", validation_per_class=1)


def test_locate_reports_a_missing_folder_without_creating_anything(tmp_path):
    problem, writes = data.locate("image_folder", tmp_path / "root", folder="nothing")
    assert "nothing/train not found" in problem and not writes
    assert data.probe("image_folder", tmp_path, folder="nothing") and not (tmp_path / "root").exists()


# ---- the CIFAR-10 JPEG export beside the checkout (skipped with the reason when absent) --------------------------

@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return export_root(tmp_path_factory)


def test_export_counts_classes_and_channel_means(export):
    b = data.build("cifar10_jpeg_export", root=export)
    assert (b.num_train, b.num_test, b.image_size, b.in_channels) == (50000, 10000, 32, 3)
    assert b.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert torch.bincount(b.train_labels).tolist() == [5000] * 10
    assert torch.bincount(b.test_labels).tolist() == [1000] * 10
    # the export's README: decoded training means 125.27 / 122.93 / 113.86 (original CIFAR-10: 125.3 / 123.0 / 113.9)
    means = b.train_images.float().mean((0, 2, 3)).tolist()
    assert means == pytest.approx([125.27, 122.93, 113.86], abs=0.01)

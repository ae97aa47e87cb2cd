"""Data: official augmentation vs a numpy reference, the resumable sharded stream, on-disk formats, error messages."""
import gzip
import hashlib
import io
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from comhe import data
from comhe.data import synthetic
from comhe.data import cifar, fashion_mnist, imagenet
from comhe.data.augment import AugmentParams, augment_batch, draw_augment_params
from comhe.data.streams import TensorLoader, eval_batches


# ---- independent reference: the official numpy augmentation (rmlin/CoMHE cifar100_input_python.py) -------------

def reference_augment(img_chw: np.ndarray, h: int, v: int, flip: bool, pad: int = 4) -> np.ndarray:
    img = img_chw.transpose(1, 2, 0)                                   # the official code works in HWC
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    crop = padded[h:h + img.shape[0], v:v + img.shape[1], :]
    if flip:
        crop = np.fliplr(crop)
    return crop.transpose(2, 0, 1)


def reference_batch(images: np.ndarray, params: AugmentParams) -> np.ndarray:
    return np.stack([reference_augment(img, int(h), int(v), bool(f))
                     for img, h, v, f in zip(images, params.row_offset, params.col_offset, params.flip)])


def random_images(n, c=3, h=32, w=32, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8))


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28), (2, 9, 13)])
def test_augment_matches_numpy_symmetric_reference_for_every_offset_and_flip(shape):
    # One image under all 9 x 9 x 2 (offset, offset, flip) combinations: exhaustive, not sampled.
    grid = torch.cartesian_prod(torch.arange(9), torch.arange(9), torch.arange(2))
    params = AugmentParams(grid[:, 0], grid[:, 1], grid[:, 2].bool())
    image = random_images(1, *shape)
    batch = image.expand(len(grid), -1, -1, -1).contiguous()
    ours = augment_batch(batch, params).numpy()
    np.testing.assert_array_equal(ours, reference_batch(batch.numpy(), params))


def test_symmetric_padding_repeats_the_edge_pixel_unlike_reflect():
    image = random_images(1, 1, 8, 8)
    zero = AugmentParams(torch.tensor([0]), torch.tensor([0]), torch.tensor([False]))
    out = augment_batch(image, zero)[0, 0]
    # padded rows -4..-1 are original rows 3, 2, 1, 0 (edge included); torch 'reflect' would give 4, 3, 2, 1.
    np.testing.assert_array_equal(out[:4, 4:].numpy(), image[0, 0, [3, 2, 1, 0], :4].numpy())
    reflect = torch.nn.functional.pad(image.float(), (4, 4, 4, 4), mode="reflect")[0, 0, :8, :8]
    assert not torch.equal(out.float(), reflect)


def test_loader_batches_equal_reference_pipeline_with_the_same_draws():
    images, labels = random_images(40), torch.arange(40)
    loader = TensorLoader(images, labels, batch_size=16, seed=3)
    g = torch.Generator().manual_seed(3)                 # the documented stream: randperm, then per-batch draws
    perm = torch.randperm(40, generator=g)
    for step in range(2):
        idx = perm[step * 16:(step + 1) * 16]
        expected = (reference_batch(images[idx].numpy(), draw_augment_params(16, g)).astype(np.float32) - 127.5) / 128
        x, y = loader.next_batch()
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (16, 3, 32, 32)
        np.testing.assert_array_equal(y.numpy(), idx.numpy())
        np.testing.assert_array_equal(x.numpy(), expected)


def test_param_draws_are_uniform_offsets_and_fair_flips():
    params = draw_augment_params(90_000, torch.Generator().manual_seed(0))
    for offsets in (params.row_offset, params.col_offset):
        freq = torch.bincount(offsets, minlength=9).double() / 90_000
        assert len(freq) == 9 and (freq - 1 / 9).abs().max() < 0.006      # ~6 sigma
    assert abs(params.flip.double().mean().item() - 0.5) < 0.006
    assert abs(np.corrcoef(params.row_offset.numpy(), params.col_offset.numpy())[0, 1]) < 0.02


def test_loader_offsets_and_flips_read_back_from_coordinate_images():
    # Channel 0 holds the row index, channel 1 the column index: the output reveals each crop and flip.
    rows, cols = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    images = torch.stack([rows, cols]).to(torch.uint8).expand(500, -1, -1, -1).contiguous()
    loader = TensorLoader(images, torch.zeros(500, dtype=torch.long), batch_size=500, seed=1)
    dy, dx, flips = [], [], []
    for _ in range(8):
        x = (loader.next_batch()[0] * 128 + 127.5).round().long()
        flip = x[:, 1, 16, 16] < x[:, 1, 16, 15]                   # columns run backwards after a flip
        dy.append(x[:, 0, 16, 16] - 12)
        dx.append(torch.where(flip, x[:, 1, 16, 15] - 12, x[:, 1, 16, 16] - 12))
        flips.append(flip)
    for offsets in (torch.cat(dy), torch.cat(dx)):
        assert offsets.min() == 0 and offsets.max() == 8
        assert (torch.bincount(offsets, minlength=9).double() / 4000 - 1 / 9).abs().max() < 0.025
    assert abs(torch.cat(flips).double().mean().item() - 0.5) < 0.04


def epoch_orders(loader, epochs):
    """Label order of each epoch; labels are the image indices."""
    return [torch.cat([loader.next_batch()[1] for _ in range(len(loader))]) for _ in range(epochs)]


def test_permutation_is_new_each_epoch_and_seeded():
    images, labels = random_images(55, 1, 8, 8), torch.arange(55)
    orders = epoch_orders(TensorLoader(images, labels, 10, seed=0), 3)
    assert all(len(o) == 50 and len(set(o.tolist())) == 50 for o in orders)      # drop_last: 5 full batches
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    again = epoch_orders(TensorLoader(images, labels, 10, seed=0), 3)
    assert all(torch.equal(a, b) for a, b in zip(orders, again))
    other = epoch_orders(TensorLoader(images, labels, 10, seed=1), 1)
    assert not torch.equal(orders[0], other[0])


def test_keep_last_batch_covers_every_image():
    loader = TensorLoader(random_images(25, 1, 8, 8), torch.arange(25), 10, drop_last=False, augment=False)
    sizes = [len(loader.next_batch()[1]) for _ in range(3)]
    assert sizes == [10, 10, 5] and loader.epoch == 0
    assert sorted(epoch_orders(loader, 1)[0].tolist()) == list(range(25)) and loader.epoch == 1


def test_resumed_loader_yields_exactly_the_same_batches():
    images, labels = random_images(30), torch.arange(30)
    first = TensorLoader(images, labels, 8, seed=5)
    for _ in range(5):                                   # 3 steps per epoch: the state is mid-epoch 1
        first.next_batch()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)               # a real checkpoint round trip
    expected = [first.next_batch() for _ in range(7)]
    resumed = TensorLoader(images, labels, 8, seed=99)   # the state, not the seed, decides what follows
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert (resumed.epoch, resumed.step) == (1, 2)
    for (x, y), (rx, ry) in zip(expected, (resumed.next_batch() for _ in range(7))):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    with pytest.raises(ValueError, match="global_batch"):
        TensorLoader(images, labels, 4).load_state_dict(first.state_dict())


def test_two_ranks_cover_the_single_rank_batches_disjointly():
    images, labels = random_images(40), torch.arange(40)
    single = TensorLoader(images, labels, 8, seed=2)
    ranks = [TensorLoader(images, labels, 4, seed=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(12):                                  # 5 steps per epoch: crosses two reshuffles
        x, y = single.next_batch()
        (x0, y0), (x1, y1) = (r.next_batch() for r in ranks)
        assert not set(y0.tolist()) & set(y1.tolist())
        assert torch.equal(torch.cat([y0, y1]), y) and torch.equal(torch.cat([x0, x1]), x)
    # The stream is the global one, so a 1-rank state resumes rank 1 of a 2-rank run.
    rank1 = TensorLoader(images, labels, 4, seed=0, rank=1, world_size=2)
    rank1.load_state_dict(single.state_dict())
    assert torch.equal(rank1.next_batch()[1], single.next_batch()[1][4:])
    with pytest.raises(ValueError, match="drop_last"):
        TensorLoader(images, labels, 4, drop_last=False, world_size=2)


def test_eval_batches_in_order_unaugmented_normalised():
    images, labels = random_images(10, 1, 6, 6), torch.arange(10)
    batches = list(eval_batches(images, labels, 4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x = torch.cat([b[0] for b in batches])
    np.testing.assert_array_equal(x.numpy(), (images.numpy().astype(np.float32) - 127.5) / 128)
    assert x.min() >= -127.5 / 128 and x.max() <= 127.5 / 128


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_stream_is_device_independent():
    images, labels = random_images(40), torch.arange(40)
    cpu, gpu = TensorLoader(images, labels, 8, seed=4), TensorLoader(images.cuda(), labels.cuda(), 8, seed=4)
    for _ in range(7):
        (x, y), (gx, gy) = cpu.next_batch(), gpu.next_batch()
        assert gx.is_cuda and torch.equal(gx.cpu(), x) and torch.equal(gy.cpu(), y)


# ---- registry, root, synthetic on-disk formats --------------------------------------------------------------------

def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="cifar100.*fashion_mnist.*imagenet.*synthetic"):
        data.build("cifar1000")


def test_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("COMHE_DATA", str(tmp_path))
    assert data.data_root() == tmp_path and data.data_root("elsewhere").name == "elsewhere"
    data.build("synthetic", train_per_class=1, test_per_class=1)
    assert (tmp_path / "synthetic-cifar10-10c-1x1-seed0" / "cifar-10-batches-py" / "data_batch_5").is_file()


@pytest.mark.parametrize("num_classes,folder,label_key", [(10, "cifar-10-batches-py", "labels"),
                                                          (100, "cifar-100-python", "fine_labels")])
def test_synthetic_cifar_round_trips_through_torchvision(tmp_path, num_classes, folder, label_key):
    bundle = data.build("synthetic", tmp_path, num_classes=num_classes, train_per_class=3, test_per_class=2)
    for split, per_class in (("train", 3), ("test", 2)):
        images, labels = synthetic.make_images(num_classes, per_class, 0, split)
        assert torch.equal(getattr(bundle, f"{split}_images"), torch.from_numpy(images))
        assert torch.equal(getattr(bundle, f"{split}_labels"), torch.from_numpy(labels))
    assert (bundle.kind, bundle.num_classes, bundle.in_channels, bundle.image_size) == ("tensor", num_classes, 3, 32)
    # Independent view of the format, read the way the official code reads it (latin1 unpickling).
    first = "data_batch_1" if num_classes == 10 else "train"
    with open(tmp_path / f"synthetic-cifar{num_classes}-{num_classes}c-3x2-seed0" / folder / first, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    assert entry["data"].dtype == np.uint8 and entry["data"].shape[1] == 3072
    image0 = bundle.train_images[0].numpy()
    np.testing.assert_array_equal(entry["data"][0], np.concatenate([image0[c].ravel() for c in range(3)]))
    assert entry[label_key][0] == bundle.train_labels[0].item()
    if num_classes == 100:
        assert entry["coarse_labels"] == [label // 5 for label in entry["fine_labels"]]


def test_real_torchvision_checksums_still_apply_to_synthetic_files(tmp_path):
    from torchvision.datasets import CIFAR10
    data.build("synthetic", tmp_path, train_per_class=2, test_per_class=1)
    root = tmp_path / "synthetic-cifar10-10c-2x1-seed0"
    with pytest.raises(RuntimeError, match="corrupted"):
        CIFAR10(str(root))                               # the stock class knows the real files' md5s only
    batch = root / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:-1] + b"\x00")
    with pytest.raises(data.DatasetUnavailable, match="test_batch"):
        data.build("synthetic", tmp_path, train_per_class=2, test_per_class=1)


def test_synthetic_sets_with_other_parameters_live_side_by_side(tmp_path):
    small = data.build("synthetic", tmp_path, train_per_class=1, test_per_class=1)
    large = data.build("synthetic", tmp_path, train_per_class=2, test_per_class=1)
    again = data.build("synthetic", tmp_path, train_per_class=1, test_per_class=1)
    assert (small.num_train, large.num_train) == (10, 20) and torch.equal(small.train_images, again.train_images)
    assert not list(tmp_path.glob(".*partial*"))  # written aside, renamed into place


def test_synthetic_cifar_is_learnable_by_nearest_class_mean(tmp_path):
    bundle = data.build("synthetic", tmp_path, num_classes=10, train_per_class=20, test_per_class=10)
    colour = lambda x: x.float().mean(dim=(2, 3))                                   # noqa: E731  [N, 3]
    means = torch.stack([colour(bundle.train_images)[bundle.train_labels == k].mean(0) for k in range(10)])
    predicted = torch.cdist(colour(bundle.test_images), means).argmin(1)
    assert (predicted == bundle.test_labels).float().mean() > 0.8                  # chance is 0.1


# ---- missing and corrupted downloads (no network: urlopen is replaced) --------------------------------------------

@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.mark.parametrize("name,archive,md5,folder", [
    ("cifar10", "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py/"),
    ("cifar100", "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python/")])
def test_offline_missing_cifar_says_which_file_goes_where(tmp_path, offline, name, archive, md5, folder):
    with pytest.raises(data.DatasetUnavailable) as err:
        data.build(name, tmp_path)
    message = str(err.value)
    assert f"put {archive} (md5 {md5}) in {tmp_path}" in message and folder in message and "\n" not in message
    with pytest.raises(data.DatasetUnavailable, match="download=False"):
        data.build(name, tmp_path, download=False)


def test_wrong_md5_archive_is_reported(tmp_path, offline):
    junk = b"an interrupted download"
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(junk)
    with pytest.raises(data.DatasetUnavailable) as err:
        data.build("cifar10", tmp_path)
    assert hashlib.md5(junk).hexdigest() in str(err.value) and "c58f30108f718f92721af3b95e74349a" in str(err.value)


def test_archive_with_matching_md5_is_extracted_and_loaded(tmp_path, offline, monkeypatch):
    from torchvision.datasets import CIFAR10
    folder = synthetic.write_cifar(tmp_path / "src", 10, 2, 1)
    archive = tmp_path / "root" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    cls = synthetic.cifar_class_with_recorded_md5(CIFAR10, folder)
    monkeypatch.setattr(cls, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())
    cifar._ensure_cifar(cls, archive.parent, download=False)
    assert len(cls(str(archive.parent), train=True)) == 20


def test_fashion_mnist_without_files_names_them_and_the_install_command(tmp_path, offline, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "absent")
    with pytest.raises(data.DatasetUnavailable, match=r"`apt-get install dataset-fashion-mnist`.*"
                                                      r"train-images-idx3-ubyte.gz.*in .*/fashion-mnist$"):
        data.build("fashion_mnist", tmp_path)
    assert list(tmp_path.iterdir()) == []                       # no empty FashionMNIST/raw left behind


@pytest.mark.skipif(not fashion_mnist.FASHION_MNIST_SYSTEM_DIR.is_dir(),
                    reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_loads_the_real_data(tmp_path):
    from torchvision.datasets.mnist import read_image_file
    bundle = data.build("fashion_mnist", tmp_path)
    assert bundle.train_images.shape == (60000, 1, 28, 28) and bundle.test_images.shape == (10000, 1, 28, 28)
    assert bundle.train_images.dtype == torch.uint8 and (bundle.num_classes, bundle.in_channels) == (10, 1)
    assert torch.equal(torch.bincount(bundle.train_labels), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(bundle.test_labels), torch.full((10,), 1000))
    raw = tmp_path / "t10k-images-idx3-ubyte"            # torchvision's own IDX parser as the reference
    raw.write_bytes(gzip.open(fashion_mnist.FASHION_MNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").read())
    assert torch.equal(bundle.test_images[:, 0], read_image_file(str(raw)))


# ---- ImageNet layout (DataLoader path) ---------------------------------------------------------------------------

def test_synthetic_imagenet_batches_labels_and_pixels(tmp_path):
    from PIL import Image
    bundle = data.build("synthetic_imagenet", tmp_path, image_size=32, num_classes=3, per_class=4, size=40)
    assert (bundle.kind, bundle.num_classes, bundle.num_train, bundle.num_test) == ("loader", 3, 12, 12)
    x, y = next(iter(bundle.train_loader(4, seed=0)))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    x, y = next(iter(bundle.test_loader(12)))
    files = sorted((tmp_path.glob("synthetic-imagenet-*/imagenet/val/*/*.JPEG")))  # ImageFolder's order
    assert y.tolist() == [int(f.parent.name[1:]) for f in files]
    mean, std = torch.tensor(imagenet.IMAGENET_MEAN)[:, None], torch.tensor(imagenet.IMAGENET_STD)[:, None]
    for image, path in zip(x, files):                    # eval view ~ the JPEG's centre 35x35 (Resize 37, crop 32)
        source = np.asarray(Image.open(path), dtype=np.float64)[2:38, 2:38].reshape(-1, 3).mean(0) / 255
        np.testing.assert_allclose((image.flatten(1) * std + mean).mean(1).numpy(), source, atol=0.03)
    shards = [list(bundle.train_loader(2, seed=0, rank=r, world_size=2).sampler) for r in range(2)]
    assert len(shards[0]) == 6 and not set(shards[0]) & set(shards[1])


def test_imagenet_meta_layout_gives_class_names(tmp_path):
    top = synthetic.write_imagenet_folder(tmp_path, num_classes=2, per_class=2)
    torch.save(({"n00000000": ("tench",), "n00000001": ("goldfish",)}, []), top / "meta.bin")
    bundle = data.build("imagenet", tmp_path, image_size=32, workers=0)
    assert bundle.classes == [("tench",), ("goldfish",)] and bundle.num_train == 4


def test_imagenet_empty_class_folder_is_named(tmp_path):
    top = synthetic.write_imagenet_folder(tmp_path)
    (top / "train" / "n00000007").mkdir()
    with pytest.raises(data.DatasetUnavailable, match=f"empty class folder.*{top / 'train' / 'n00000007'}"):
        data.build("imagenet", tmp_path, image_size=32, workers=0)


def test_imagenet_missing_or_mismatched_splits(tmp_path):
    with pytest.raises(data.DatasetUnavailable, match="imagenet/train not found.*<class>/\\*.JPEG"):
        data.build("imagenet", tmp_path)
    top = synthetic.write_imagenet_folder(tmp_path)
    shutil.rmtree(top / "val" / "n00000001")
    with pytest.raises(data.DatasetUnavailable, match="same class folders"):
        data.build("imagenet", tmp_path, image_size=32, workers=0)

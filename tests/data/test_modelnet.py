"""ModelNet-40: the HDF5 reader on synthetic files written in the release's layout, bad files, the download and
safe extraction from a local archive (no network), the missing extra; and the real release where it is present."""
import os
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from comhe import data
from comhe.data import modelnet, synthetic_points
from comhe.data.bundle import DatasetUnavailable

h5py = pytest.importorskip("h5py")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A small set in the real layout: 5 classes, 4 + 2 shapes per class, 2,048 points each."""
    root = tmp_path_factory.mktemp("modelnet")
    folder = synthetic_points.write_modelnet40(root, num_classes=5, train_per_class=4, test_per_class=2)
    return folder, synthetic_points.read_manifest(folder)["files"]


def copy_of(release, tmp_path) -> Path:
    folder = tmp_path / modelnet.FOLDER
    shutil.copytree(release[0], folder)
    return folder


def test_the_synthetic_files_have_the_release_layout(release):
    folder, _ = release
    assert (folder / "train_files.txt").read_text().splitlines() == [
        f"data/modelnet40_ply_hdf5_2048/ply_data_train{i}.h5" for i in range(5)]
    assert (folder / "test_files.txt").read_text().splitlines() == [
        f"data/modelnet40_ply_hdf5_2048/ply_data_test{i}.h5" for i in range(2)]
    assert (folder / "shape_names.txt").read_text().splitlines() == ["airplane", "bathtub", "bed", "bench",
                                                                    "bookshelf"]
    with h5py.File(folder / "ply_data_train0.h5", "r") as f:
        assert set(f.keys()) == {"data", "label"}
        assert f["data"].dtype == np.float32 and f["data"].shape[1:] == (2048, 3)
        assert f["label"].dtype == np.uint8 and f["label"].shape == (f["data"].shape[0], 1)
        assert np.linalg.norm(f["data"][...], axis=-1).max() <= 1.0 + 1e-6          # in the unit sphere


def test_the_reader_keeps_the_first_1024_points_labels_and_class_names(release):
    folder, md5 = release
    xtr, ytr, xte, yte, names = modelnet.read_folder(folder, 1024, md5)
    files = [folder / f"ply_data_train{i}.h5" for i in range(5)]
    expected_x, expected_y = [], []
    for path in files:                                       # the listed order, read here with plain h5py
        with h5py.File(path, "r") as f:
            expected_x.append(f["data"][:, :1024, :])
            expected_y.append(f["label"][:, 0])
    assert np.array_equal(xtr, np.concatenate(expected_x)) and xtr.dtype == np.float32
    assert np.array_equal(ytr, np.concatenate(expected_y).astype(np.int64)) and ytr.dtype == np.int64
    assert xtr.shape == (20, 1024, 3) and xte.shape == (10, 1024, 3)
    assert sorted(np.bincount(ytr)) == [4] * 5 and sorted(np.bincount(yte)) == [2] * 5
    assert names == ["airplane", "bathtub", "bed", "bench", "bookshelf"]


def test_the_bundle_holds_the_clouds_channels_first_on_the_device(tmp_path):
    bundle = data.build("synthetic_modelnet40", root=tmp_path, num_classes=5, train_per_class=4, test_per_class=2,
                        num_points=256)
    folder = tmp_path / "synthetic-modelnet5-4x2-seed0" / modelnet.FOLDER
    xtr, ytr, xte, yte, names = modelnet.read_folder(folder, 256, synthetic_points.read_manifest(folder)["files"])
    assert bundle.kind == "points" and bundle.num_classes == 5 and bundle.classes == names
    assert (bundle.num_train, bundle.num_test, bundle.in_channels, bundle.image_size) == (20, 10, 3, 256)
    assert torch.equal(bundle.train_images, torch.from_numpy(xtr).transpose(1, 2))
    x, y = next(iter(bundle.test_loader(4)))
    assert torch.equal(x, torch.from_numpy(xte[:4]).transpose(1, 2)) and torch.equal(y, torch.from_numpy(yte[:4]))
    assert data.option_defaults("modelnet40") == {"num_points": 1024, "augmentation": "pointnet"}
    assert data.declared_num_classes("modelnet40", {}) == 40


def test_the_pinned_md5s_and_a_mismatch_names_both_sums(release, tmp_path):
    assert modelnet.MD5["ply_data_train0.h5"] == "3176385ffc31a7b6b5af22191fd920d1"
    assert modelnet.MD5["ply_data_test1.h5"] == "aba4b12a67c34391cc3c015a6f08ed4b"
    assert sorted(modelnet.MD5) == sorted([f"ply_data_train{i}.h5" for i in range(5)] +
                                          [f"ply_data_test{i}.h5" for i in range(2)])
    folder, md5 = release
    with pytest.raises(DatasetUnavailable) as err:       # the synthetic files against the release's sums
        modelnet.read_folder(folder, 1024, modelnet.MD5)
    text = str(err.value)
    assert md5["ply_data_train0.h5"] in text and modelnet.MD5["ply_data_train0.h5"] in text and "\n" not in text


def rewrite(folder: Path, name: str, **datasets):
    with h5py.File(folder / name, "w") as f:
        for key, value in datasets.items():
            f.create_dataset(key, data=value)


@pytest.mark.parametrize("damage, message", [
    (lambda d: rewrite(d, "ply_data_train1.h5", data=np.zeros((3, 2048, 3), np.float32)),
     r"ply_data_train1.h5 has no 'label' dataset \(keys: data\)"),
    (lambda d: rewrite(d, "ply_data_test0.h5", data=np.zeros((3, 2048, 2), np.float32),
                       label=np.zeros((3, 1), np.uint8)),
     r"'data' is float32 \(3, 2048, 2\), expected float \[n, >= 1024, 3\]"),
    (lambda d: rewrite(d, "ply_data_test0.h5", data=np.zeros((3, 512, 3), np.float32),
                       label=np.zeros((3, 1), np.uint8)),
     r"'data' is float32 \(3, 512, 3\)"),
    (lambda d: rewrite(d, "ply_data_train2.h5", data=np.zeros((3, 2048, 3), np.float32),
                       label=np.zeros((2, 1), np.uint8)),
     r"'label' is uint8 \(2, 1\), expected integer \[3, 1\]"),
    (lambda d: rewrite(d, "ply_data_train2.h5", data=np.zeros((3, 2048, 3), np.float32),
                       label=np.full((3, 1), 7, np.uint8)),
     "label 7 outside the 5 classes of shape_names.txt"),
    (lambda d: (d / "ply_data_train3.h5").write_bytes(b"<html>not found</html>"), "is not a readable HDF5 file"),
    (lambda d: (d / "ply_data_test1.h5").unlink(), r"ply_data_test1.h5 \(listed in test_files.txt\) missing"),
    (lambda d: (d / "shape_names.txt").unlink(), "shape_names.txt is missing"),
])
def test_bad_files_give_one_clear_line(release, tmp_path, damage, message):
    folder = copy_of(release, tmp_path)
    damage(folder)
    with pytest.raises(DatasetUnavailable, match=message) as err:
        modelnet.read_folder(folder, 1024, md5=None)
    assert "\n" not in str(err.value)


def test_a_corrupted_synthetic_file_fails_its_recorded_md5(tmp_path):
    data.build("synthetic_modelnet40", root=tmp_path, num_classes=3, train_per_class=2, test_per_class=1)
    path = tmp_path / "synthetic-modelnet3-2x1-seed0" / modelnet.FOLDER / "ply_data_train0.h5"
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetUnavailable, match="ply_data_train0.h5 has md5 .*, expected .*: a corrupted"):
        data.build("synthetic_modelnet40", root=tmp_path, num_classes=3, train_per_class=2, test_per_class=1)


def zip_of(folder: Path, archive: Path, extra=()) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, f"{modelnet.FOLDER}/{path.relative_to(folder)}")
        for name, content in extra:
            zf.writestr(name, content)
    return archive


@pytest.fixture
def release40(tmp_path):
    """A 40-class set (one shape per class and split) zipped as the release archive, in a 'remote' folder."""
    folder = synthetic_points.write_modelnet40(tmp_path / "made", num_classes=40, train_per_class=1,
                                               test_per_class=1)
    remote = tmp_path / "remote"
    remote.mkdir()
    return zip_of(folder, remote / modelnet.ARCHIVE)


def test_download_extract_and_check_from_a_local_archive(release40, tmp_path, monkeypatch):
    monkeypatch.setenv("COMHE_MODELNET40_URL", release40.as_uri())
    monkeypatch.delenv("COMHE_OFFLINE", raising=False)
    root = tmp_path / "data"
    with pytest.raises(DatasetUnavailable, match="has md5 .*, expected 3176385ffc31a7b6b5af22191fd920d1"):
        data.build("modelnet40", root=root)              # downloaded and extracted, then checked: not the release
    assert (root / modelnet.ARCHIVE).read_bytes() == release40.read_bytes()
    assert not list(root.glob(".*partial*"))
    monkeypatch.setenv("COMHE_MODELNET40_MD5", "off")   # a copy the user trusts
    bundle = data.build("modelnet40", root=root, num_points=128)
    assert (bundle.num_classes, bundle.num_train, bundle.num_test) == (40, 40, 40)
    assert bundle.classes[:3] == ["airplane", "bathtub", "bed"] and bundle.train_images.shape == (40, 3, 128)


def test_missing_data_offline_and_a_failed_download_say_where_to_put_the_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("COMHE_OFFLINE", "1")
    with pytest.raises(DatasetUnavailable, match=r"modelnet40_ply_hdf5_2048/ not found in .* downloads are off .*put "
                                                 r"modelnet40_ply_hdf5_2048.zip"):
        data.build("modelnet40", root=tmp_path)
    monkeypatch.delenv("COMHE_OFFLINE")
    monkeypatch.setenv("COMHE_MODELNET40_URL", (tmp_path / "nowhere.zip").as_uri())
    with pytest.raises(DatasetUnavailable, match="could not download .*nowhere.zip.*put modelnet40_ply_hdf5_2048.zip"):
        data.build("modelnet40", root=tmp_path)
    assert not list(tmp_path.iterdir())                  # no half archive left behind


@pytest.mark.parametrize("member", ["../outside.txt", "/abs/outside.txt"])
def test_an_archive_reaching_outside_the_target_is_refused_whole(release, tmp_path, member):
    target = tmp_path / "target"
    target.mkdir()
    zip_of(release[0], target / modelnet.ARCHIVE, extra=[(member, "x")])
    with pytest.raises(DatasetUnavailable, match="unsafe member .*outside.txt"):
        modelnet.ensure(target, download_ok=False)
    assert [p.name for p in target.iterdir()] == [modelnet.ARCHIVE] and not (tmp_path / "outside.txt").exists()


def test_a_symlink_member_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("modelnet40_ply_hdf5_2048/link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DatasetUnavailable, match="a symbolic link"):
        from comhe.data.archives import extract_zip
        extract_zip(archive, tmp_path / "out")


def test_without_h5py_one_line_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)      # `import h5py` now raises ImportError
    with pytest.raises(DatasetUnavailable, match=r"needs h5py: pip install -e '\.\[points\]'"):
        data.build("modelnet40", root=tmp_path)


REAL = Path(os.environ.get("COMHE_DATA", REPO / "data")) / modelnet.FOLDER


@pytest.mark.skipif(not (REAL / "train_files.txt").is_file(), reason=f"the ModelNet-40 release is not at {REAL}")
def test_the_real_release_when_present():
    """9,840 training and 2,468 test shapes, 40 classes, every file with its pinned md5."""
    xtr, ytr, xte, yte, names = modelnet.read_folder(REAL, 1024, modelnet.MD5)
    assert (len(ytr), len(yte), len(names)) == (9840, 2468, 40)
    assert xtr.shape == (9840, 1024, 3) and set(np.unique(ytr)) == set(range(40))
    assert names[0] == "airplane" and names[-1] == "xbox"


def test_the_locator_says_what_is_there_and_dry_run_reports_a_missing_release(release40, tmp_path, monkeypatch,
                                                                           capsys):
    """No release and downloads off: one line before anything runs (``DRY=1``: every run "no data"), nothing
    created; the archive, or downloads on: written on use; the extracted release: read in place."""
    from comhe import run
    root = tmp_path / "data"
    monkeypatch.setenv("COMHE_OFFLINE", "1")
    problem, writes = data.locate("modelnet40", root, num_points=1024, augmentation="pointnet")
    assert "not found in" in problem and "downloads are off (COMHE_OFFLINE is set)" in problem and not writes
    code = run.main(["table10", "--dry-run", f"data_root={root}", "--results", str(tmp_path / "r")])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "  modelnet40-" in line]
    assert code == 0 and len(rows) == 45 and all(line.split()[:2] == ["no", "data"] for line in rows)
    assert "no data for 45 run(s): modelnet40_ply_hdf5_2048/ not found" in out
    assert not root.exists() and not (tmp_path / "r").exists()
    monkeypatch.delenv("COMHE_OFFLINE")
    assert "and download=False" in data.locate("modelnet40", root, download=False)[0]
    assert data.locate("modelnet40", root) == (None, True)            # downloaded on use
    root.mkdir()
    shutil.copy(release40, root / modelnet.ARCHIVE)
    monkeypatch.setenv("COMHE_OFFLINE", "1")
    assert data.locate("modelnet40", root) == (None, True)            # extracted on use, offline too
    modelnet.ensure(root, download_ok=False)
    assert data.locate("modelnet40", root) == (None, False)           # read in place

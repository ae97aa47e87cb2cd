"""Nothing is written where the user did not ask (issue 14, item 2): a mistyped data root creates nothing (not even
the preflight lock) and gets no synthetic data; missing real data is an error before anything is created; a failed
download leaves no folder; Fashion-MNIST's error names the install command; DRY=1 reports missing data per run."""
import gzip
import io
import urllib.error
import urllib.request

import numpy as np
import pytest

from comhe import data, run
from comhe.data import fashion_mnist
from comhe.suite import runner

SMALL_SYNTHETIC = {"num_classes": 4, "train_per_class": 2, "test_per_class": 1}


def tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else None


def test_a_mistyped_data_root_is_refused_and_nothing_is_created(tmp_path):
    typo = tmp_path / "nonexistent" / "sub" / "typo"
    with pytest.raises(data.DatasetUnavailable, match=f"data root {typo} does not exist, nor does {typo.parent}"):
        data.build("synthetic", typo, **SMALL_SYNTHETIC)
    assert tree(tmp_path) == []
    assert data.locate("synthetic", typo)[0].startswith(f"data root {typo} does not exist")


def test_the_runner_refuses_a_mistyped_data_root_before_the_preflight_lock(tmp_path, capsys):
    typo = tmp_path / "nonexistent" / "sub" / "typo"
    code = run.main(["table1", "--profile", "smoke", f"data_root={typo}", "--results", str(tmp_path / "results"),
                     "--no-figures"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"data root {typo} does not exist" in err[0]
    assert not (tmp_path / "nonexistent").exists()


def test_one_new_folder_under_an_existing_parent_is_made_for_data_written_on_use(tmp_path):
    bundle = data.build("synthetic", tmp_path / "data", **SMALL_SYNTHETIC)
    assert bundle.num_train == 8 and (tmp_path / "data").is_dir()


def test_missing_real_data_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("COMHE_OFFLINE", "1")
    root = tmp_path / "data"
    for name in ("cifar100", "imagenet", "fashion_mnist"):
        monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "absent")
        with pytest.raises(data.DatasetUnavailable):
            data.build(name, root)
        assert not root.exists(), name
    plan = runner.make_plan(["table1"], "paper", overrides=[f"data_root={root}"])
    with pytest.raises(data.DatasetUnavailable, match="cifar-100-python missing"):
        runner.preflight(plan.runs)
    assert tree(tmp_path) == []                                   # no lock file, no folder


def test_a_failed_download_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("COMHE_OFFLINE", raising=False)
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "absent")

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    root = tmp_path / "data"
    with pytest.raises(data.DatasetUnavailable) as err:
        data.build("fashion_mnist", root)
    assert "`apt-get install dataset-fashion-mnist`" in str(err.value) and "the download failed" in str(err.value)
    assert "\n" not in str(err.value)
    assert not root.exists()
    root.mkdir()                                                  # an existing root keeps no empty FashionMNIST/raw
    with pytest.raises(data.DatasetUnavailable):
        data.build("fashion_mnist", root)
    assert tree(root) == []
    with pytest.raises(data.DatasetUnavailable):
        data.build("cifar10", tmp_path / "cifar")
    assert not (tmp_path / "cifar").exists()


def _idx_gz(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())
    return buf.getvalue()


def test_fashion_mnist_is_read_from_the_data_root_in_the_debian_format(tmp_path, monkeypatch):
    """The four Debian-named files in <root>/fashion-mnist (where the error says to put them) are read in place."""
    monkeypatch.setenv("COMHE_OFFLINE", "1")
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "absent")
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 255, (6, 28, 28)),
              "train-labels-idx1-ubyte.gz": np.arange(6) % 10,
              "t10k-images-idx3-ubyte.gz": rng.integers(0, 255, (3, 28, 28)), "t10k-labels-idx1-ubyte.gz": [1, 2, 3]}
    for name, array in arrays.items():
        (folder / name).write_bytes(_idx_gz(np.asarray(array)))
    before = tree(tmp_path)
    bundle = data.build("fashion_mnist", tmp_path / "data")
    assert (bundle.num_train, bundle.num_test, bundle.in_channels) == (6, 3, 1)
    assert bundle.train_images[2, 0].tolist() == arrays["train-images-idx3-ubyte.gz"][2].tolist()
    assert bundle.test_labels.tolist() == [1, 2, 3] and tree(tmp_path) == before     # read in place, nothing new
    assert data.locate("fashion_mnist", tmp_path / "data") == (None, False)


def test_dry_run_reports_missing_data_per_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COMHE_OFFLINE", "1")
    code = run.main(["table5", "--dry-run", f"data_root={tmp_path / 'data'}", "--results", str(tmp_path / "r")])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "cifar10-resnet32" in line or "cifar100-resnet32" in line]
    assert code == 0 and len(rows) == 42 and all(line.split()[0:2] == ["no", "data"] for line in rows)
    assert "no data for 21 run(s): cifar-10-batches-py missing" in out
    assert "no data for 21 run(s): cifar-100-python missing" in out
    assert tree(tmp_path) == []

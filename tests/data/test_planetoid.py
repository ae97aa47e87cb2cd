"""Planetoid graphs: the real Cora files (when ../shared/data/planetoid is there) against the published facts, the
synthetic raw files against the truth they were written from and against tkipf/gcn's own assembly steps, and every
bad input (a foreign class in a pickle, a checksum mismatch, a truncated file, a failed or tampered download,
offline) refused with one line and nothing loaded."""
import hashlib
import os
import pickle
import shutil
import urllib.error
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from comhe import data
from comhe.data import pickles, planetoid
from comhe.data import synthetic_planetoid as sp
from run_helpers import REPO

REAL_ROOT = REPO.parent / "shared" / "data"          # ../shared/data, next to the clone (CI) or the worktree
needs_cora = pytest.mark.skipif(not (REAL_ROOT / "planetoid" / "ind.cora.x").is_file(),
                                reason="real Cora files not at ../shared/data/planetoid")


def dense(t: torch.Tensor) -> np.ndarray:
    return t.to_dense().double().numpy()


def reference_adjacency(edges: np.ndarray, n: int) -> np.ndarray:
    """D^-1/2 (A + I) D^-1/2 in float64, dense (Kipf & Welling eq. 2)."""
    a = np.zeros((n, n))
    a[edges[0], edges[1]] = 1.0
    a += np.eye(n)
    d = a.sum(1) ** -0.5
    return d[:, None] * a * d[None, :]


# ---- real Cora ------------------------------------------------------------------------------------------------------

@needs_cora
def test_real_cora_has_the_published_shape_split_and_edges():
    g = data.build("cora", REAL_ROOT)
    assert (g.num_nodes, g.num_features, g.num_classes) == (2708, 1433, 7)
    assert (len(g.train_index), len(g.val_index), len(g.test_index)) == (140, 500, 1000)
    assert g.edges.shape == (2, 10556)                                   # 5,278 undirected edges, no self-loop
    assert torch.equal(g.labels[g.train_index].bincount(), torch.full((7,), 20))   # 20 per class
    assert g.labels.bincount().tolist() == [351, 217, 418, 818, 426, 298, 180]
    assert torch.equal(g.test_index, torch.arange(1708, 2708)) and torch.equal(g.val_index, torch.arange(140, 640))
    assert g.features._nnz() == 49216                                    # binary bag-of-words entries
    assert torch.allclose(torch.sparse.sum(g.features, 1).to_dense(), torch.ones(2708))
    e = g.edges.numpy()
    assert set(zip(e[0], e[1])) == set(zip(e[1], e[0])) and not (e[0] == e[1]).any()
    idx = np.r_[0:60, 1700:1760]                                          # a dense check on a sub-block
    full = reference_adjacency(e, 2708)
    assert np.allclose(dense(g.adjacency)[np.ix_(idx, idx)], full[np.ix_(idx, idx)], atol=1e-7)
    assert np.allclose(dense(g.adjacency).sum(), full.sum(), rtol=1e-6)


@needs_cora
def test_real_cora_matches_the_official_assembly():
    raw = planetoid.read_raw(REAL_ROOT / "planetoid", "cora")
    g = planetoid.assemble(raw, "cora", REAL_ROOT)
    features, labels = official_assembly(raw)
    rows = features.sum(1, keepdims=True)
    assert np.allclose(dense(g.features), features / np.where(rows == 0, 1, rows))
    assert np.array_equal(g.labels.numpy(), labels)


# ---- synthetic raw files ----------------------------------------------------------------------------------------

def official_assembly(raw):
    """tkipf/gcn utils.load_data, step by step in dense numpy (its Citeseer padding included): features, labels."""
    test_idx_reorder = list(raw["test.index"])
    test_idx_range = np.sort(test_idx_reorder)
    tx, ty = raw["tx"].to_dense(), raw["ty"]
    full = np.arange(min(test_idx_reorder), max(test_idx_reorder) + 1)
    tx_extended = np.zeros((len(full), tx.shape[1]))
    tx_extended[test_idx_range - min(test_idx_range), :] = tx
    ty_extended = np.zeros((len(full), ty.shape[1]))
    ty_extended[test_idx_range - min(test_idx_range), :] = ty
    features = np.vstack((raw["allx"].to_dense(), tx_extended))
    features[test_idx_reorder, :] = features[test_idx_range, :]
    labels = np.vstack((raw["ally"], ty_extended))
    labels[test_idx_reorder, :] = labels[test_idx_range, :]
    return features, labels.argmax(1)


@pytest.fixture(scope="module")
def citeseer_like(tmp_path_factory):
    root = tmp_path_factory.mktemp("graphs")
    return root, data.build("synthetic_planetoid", root, num_classes=4, isolated=5, seed=3)


def test_synthetic_raw_files_round_trip_to_the_truth(citeseer_like):
    root, g = citeseer_like
    spec = sp.SyntheticGraph(num_classes=4, isolated=5, seed=3)
    truth = sp.make_graph(spec)
    assert (g.num_nodes, g.num_features, g.num_classes) == (spec.num_nodes, 64, 4)
    rows = truth.features.sum(1, keepdims=True)
    assert np.allclose(dense(g.features), truth.features / np.where(rows == 0, 1, rows))
    assert np.array_equal(g.labels.numpy(), truth.labels)
    e = g.edges.numpy()   # the files add duplicates and self-loops: the loader drops them
    assert {(int(i), int(j)) for i, j in zip(*e) if i < j} == truth.edges and e.shape[1] == 2 * len(truth.edges)
    assert np.allclose(dense(g.adjacency), reference_adjacency(e, g.num_nodes), atol=1e-7)
    assert torch.equal(g.test_index, torch.from_numpy(np.sort(truth.test_order)))
    assert len(g.train_index) == 20 and len(g.val_index) == 500


def test_isolated_test_nodes_are_padded_with_zero_rows_at_their_sorted_positions(citeseer_like):
    root, g = citeseer_like
    truth = sp.make_graph(sp.SyntheticGraph(num_classes=4, isolated=5, seed=3))
    folder = next(root.glob("synthetic-planetoid-4c-*")) / "planetoid"
    raw = planetoid.read_raw(folder, "synthetic")
    assert len(raw["test.index"]) == 60 and raw["tx"].shape[0] == 60    # the isolated ids are in neither
    iso = torch.from_numpy(truth.isolated)
    assert len(iso) == 5 and iso.min() >= 560 and iso.max() < g.num_nodes
    assert dense(g.features)[truth.isolated].sum() == 0 and not set(iso.tolist()) & set(g.test_index.tolist())
    assert not np.isin(g.edges.numpy(), truth.isolated).any()            # no edge: only their self-loop in A_hat
    assert np.allclose(dense(g.adjacency)[truth.isolated][:, truth.isolated], np.eye(5))
    features, labels = official_assembly(raw)                           # tkipf/gcn's padding gives the same
    rows = features.sum(1, keepdims=True)
    assert np.allclose(dense(g.features), features / np.where(rows == 0, 1, rows)) and np.array_equal(
        g.labels.numpy(), labels)


def test_a_zero_feature_row_stays_zero_after_normalisation(citeseer_like):
    _, g = citeseer_like
    last = sp.SyntheticGraph(num_classes=4).num_all - 1                  # the synthetic node without any word
    sums = torch.sparse.sum(g.features, 1).to_dense()
    assert sums[last] == 0 and torch.allclose(sums[:last], torch.ones(last))


# ---- refusals: one line, nothing loaded ---------------------------------------------------------------------------

class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture()
def synthetic_folder(tmp_path):
    folder = tmp_path / "planetoid"
    table = sp.write_planetoid(folder, sp.SyntheticGraph())
    return folder, {k: tuple(v) for k, v in table.items()}


def _plant(folder: Path, table: dict, part: str, payload: bytes) -> dict:
    """Replace one file and give it a matching checksum: only the unpickler stands between it and the loader."""
    name = f"ind.synthetic.{part}"
    (folder / name).write_bytes(payload)
    return {**table, name: (len(payload), hashlib.md5(payload).hexdigest(), planetoid.git_blob_sha1(payload))}


def _one_line_refusal(folder, table, match):
    with pytest.raises(data.DatasetUnavailable, match=match) as err:
        planetoid.load_graph(folder, "synthetic", "cpu", download=False, checksums=table)
    assert "\n" not in str(err.value)
    return str(err.value)


def _call(module: str, name: str, arg: str) -> bytes:
    """A protocol-2 pickle of ``module.name(arg)``."""
    text = arg.encode()
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X" + len(text).to_bytes(4, "little") + text + b"\x85R."


@pytest.mark.parametrize("payload", [
    lambda m: pickle.dumps(_RunsCode(m), protocol=2),
    lambda m: pickle.dumps(OrderedDict(a=1), protocol=2),
    lambda m: pickle.dumps(_RunsCode(m), protocol=5),
    lambda m: _call("builtins", "eval", "__import__('os')"),
    lambda m: _call("numpy", "load", "x.npy"),
], ids=["os.mkdir", "OrderedDict", "os.mkdir-protocol5", "builtins.eval", "numpy.load"])
def test_a_pickle_naming_any_other_class_is_refused(synthetic_folder, tmp_path, payload):
    folder, table = synthetic_folder
    marker = tmp_path / "pwned"
    blob = payload(marker)
    message = _one_line_refusal(folder, _plant(folder, table, "graph", blob), r"ind\.synthetic\.graph names .*"
                                r"which no Planetoid file holds.*refused, nothing loaded")
    assert "allowed: scipy CSR matrices, numpy arrays, dicts of lists" in message and not marker.exists()
    if b"mkdir" in blob:  # the control: an unrestricted unpickler runs it
        pickle.loads(blob)  # noqa: S301 - the point of the test
        assert marker.is_dir()


def test_an_object_array_and_a_foreign_defaultdict_are_refused(synthetic_folder):
    folder, table = synthetic_folder
    obj_array = sp._Pickle2()
    obj_array.glob("numpy.core.multiarray", "_reconstruct")
    obj_array.glob("numpy", "ndarray")
    obj_array.value((0,))
    obj_array.value(b"b")
    obj_array.out += b"\x87R("
    obj_array.value(1)
    obj_array.value((1,))
    obj_array.dtype(b"O8")
    _one_line_refusal(folder, _plant(folder, table, "y", obj_array.done()), r"holds a numpy dtype 'O8'")
    with pytest.raises(pickles.UnsafePickle, match="defaultdict whose default is not list"):
        pickles.safe_loads(b"\x80\x02ccollections\ndefaultdict\ncnumpy\ndtype\n\x85R.")


def test_a_truncated_file_with_a_matching_checksum_is_not_a_readable_pickle(synthetic_folder):
    folder, table = synthetic_folder
    blob = (folder / "ind.synthetic.allx").read_bytes()
    _one_line_refusal(folder, _plant(folder, table, "allx", blob[:len(blob) // 2]),
                      r"ind\.synthetic\.allx is not a readable pickle .*refused, nothing loaded")


@pytest.fixture()
def as_cora(tmp_path, monkeypatch):
    """Synthetic raw files published as 'cora': CHECKSUMS points at them, _fetch serves them (counted)."""
    source = tmp_path / "source"
    table = sp.write_planetoid(source, sp.SyntheticGraph(num_classes=3), name="cora")
    for name, sums in table.items():
        monkeypatch.setitem(planetoid.CHECKSUMS, name, tuple(sums))
    calls = []

    def fetch(url, timeout=60.0):
        calls.append(url)
        return (source / url.rsplit("/", 1)[1]).read_bytes()
    monkeypatch.setattr(planetoid, "_fetch", fetch)
    monkeypatch.delenv("COMHE_OFFLINE", raising=False)
    return tmp_path / "root", source, calls


def test_missing_files_are_downloaded_checked_and_written_once(as_cora):
    root, source, calls = as_cora
    g = data.build("cora", root)
    assert g.num_classes == 3 and len(calls) == 8 and calls[0] == planetoid.URL + "ind.cora.x"
    for part in planetoid.PARTS:
        assert (root / "planetoid" / f"ind.cora.{part}").read_bytes() == (source / f"ind.cora.{part}").read_bytes()
    assert not list((root / "planetoid").glob(".*tmp*"))
    data.build("cora", root)
    assert len(calls) == 8                                               # present and intact: not fetched again


def test_a_tampered_download_is_refused_and_nothing_written(as_cora, monkeypatch):
    root, source, calls = as_cora
    good = planetoid._fetch
    monkeypatch.setattr(planetoid, "_fetch", lambda url, timeout=60.0: good(url)[:-1] + b"!")
    with pytest.raises(data.DatasetUnavailable, match=r"the download of https://github.com/kimiyoung/planetoid/raw/"
                       r"master/data/ind\.cora\.x has md5 \w+, expected \w+ .*nothing was written") as err:
        data.build("cora", root)
    assert "\n" not in str(err.value) and not (root / "planetoid").exists()


@pytest.mark.parametrize("damage, match", [
    (lambda b: b[:len(b) // 2], r"is \d+ bytes, expected \d+ \(truncated\): delete it and rerun"),
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), r"has md5 \w+, expected \w+ \(corrupted or a different file\)"),
], ids=["truncated", "checksum-mismatch"])
def test_a_damaged_file_is_refused_with_one_line_and_left_alone(as_cora, damage, match):
    root, source, calls = as_cora
    data.build("cora", root)
    path = root / "planetoid" / "ind.cora.graph"
    path.write_bytes(damage(path.read_bytes()))
    before = path.read_bytes()
    with pytest.raises(data.DatasetUnavailable, match=match) as err:
        data.build("cora", root)
    assert "\n" not in str(err.value) and "ind.cora.graph" in str(err.value) and path.read_bytes() == before
    assert len(calls) == 8                                               # never re-downloaded over the user's file


def test_a_size_unknown_file_is_still_checked_exactly(monkeypatch):
    payload = b"pubmed allx stand-in"
    monkeypatch.setitem(planetoid.CHECKSUMS, "ind.pubmed.allx", (None, None, planetoid.git_blob_sha1(payload)))
    assert planetoid.problem(payload, planetoid.CHECKSUMS["ind.pubmed.allx"]) is None
    assert "git blob SHA-1" in planetoid.problem(payload[:-1], planetoid.CHECKSUMS["ind.pubmed.allx"])


def test_git_blob_sha1_is_gits():
    """The SHA-1 ``git hash-object`` prints (the ids CHECKSUMS lists): git's empty blob and ``hello``."""
    assert planetoid.git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"   # git's empty blob
    assert planetoid.git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_offline_names_the_missing_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("COMHE_OFFLINE", "1")
    with pytest.raises(data.DatasetUnavailable) as err:
        data.build("citeseer", tmp_path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"ind.citeseer.x is missing from {tmp_path / 'planetoid'} (and 7 "
                                                "more ind.citeseer.* files) and downloads are off")
    assert "download https://github.com/kimiyoung/planetoid/raw/master/data/ind.citeseer.x (31087 bytes, md5 " \
           f"baeb0100b5a8af8d41f928113ce0a4e5) and put it in {tmp_path / 'planetoid'}" in text


def test_a_failed_download_says_what_to_do(as_cora, monkeypatch):
    root, _, _ = as_cora

    def down(url, timeout=60.0):
        raise urllib.error.URLError("no route to host")
    monkeypatch.setattr(planetoid, "_fetch", down)
    with pytest.raises(data.DatasetUnavailable, match=r"could not download .*ind\.cora\.x \(URLError: .*no route to "
                       r"host.*\); download .* and put it in"):
        data.build("cora", root)


def test_probe_reports_missing_data_without_downloading(tmp_path, as_cora):
    root, source, calls = as_cora
    assert data.probe("cora", root).startswith("data missing: 8 of the 8 ind.cora.* files are not in")
    shutil.copytree(source, root / "planetoid")
    assert data.probe("cora", root) is None and calls == []
    assert data.probe("synthetic_planetoid", root) is None and data.task("cora") == "node"
    assert data.task("cifar10") == "image"


def test_synthetic_checksums_catch_a_changed_file(tmp_path):
    data.build("synthetic_planetoid", tmp_path)
    folder = next(tmp_path.glob("synthetic-planetoid-*"))
    target = folder / "planetoid" / "ind.synthetic.ty"
    target.write_bytes(target.read_bytes()[:-2])
    with pytest.raises(data.DatasetUnavailable, match=r"ind\.synthetic\.ty is \d+ bytes, expected \d+ \(truncated\): "
                       f"delete {folder} to rewrite it"):
        data.build("synthetic_planetoid", tmp_path)


def test_the_package_unpickles_only_through_the_restricted_unpickler():
    """Every ``pickle.Unpickler`` subclass in the package restricts ``find_class`` (tests/test_security.py already
    forbids ``pickle.load(s)`` and ``pickle.Unpickler(...)`` calls), and the one we ship answers from ALLOWED only."""
    import ast
    subclasses = []
    for path in (REPO / "comhe").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(b) == "pickle.Unpickler" for b in node.bases):
                methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                subclasses.append((path.name, node.name, {"find_class", "persistent_load"} <= methods))
    assert subclasses == [("pickles.py", "RestrictedUnpickler", True)]
    assert all(module.split(".")[0] in ("scipy", "numpy", "collections", "__builtin__", "builtins")
               for module, _ in pickles.ALLOWED if (module, _) != ("_codecs", "encode"))  # latin-1 text -> bytes
    assert pickles.ALLOWED[("_codecs", "encode")]("\xff", "latin1") == b"\xff"

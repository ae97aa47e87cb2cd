"""Small learnable graphs written in the Planetoid raw format, so tests and the smoke profile run the real loader.

    folder = write_planetoid(root / "planetoid", "synthetic", SyntheticGraph(...))   # the eight ind.* files
    graph = comhe.data.build("synthetic_planetoid", root, isolated=3)                 # Citeseer-like

The files are byte-for-byte the kind Python 2 wrote (protocol 2, ``str`` as SHORT_BINSTRING / BINSTRING, so they
must be read with ``encoding="latin1"``): ``x``, ``tx``, ``allx`` as ``scipy.sparse.csr.csr_matrix`` pickles (int32
index arrays, float32 data), ``y``, ``ty``, ``ally`` as int32 one-hot ``numpy.ndarray`` pickles, ``graph`` as a
``collections.defaultdict(list)``, ``test.index`` as text, in shuffled order. Neither scipy nor Python 2 is needed:
``_Pickle2`` emits the opcodes directly (the pickle module cannot name classes that are not importable).

The graph: a stochastic block model (each node links mostly within its class), bag-of-words features drawn mostly
from the class's own words, one node with no word at all (a zero feature row), a few duplicate neighbour entries
and self-loops (the loader drops them), and with ``isolated > 0`` test-range ids that ``test.index`` and ``tx`` omit
and that have no edge (Citeseer's isolated nodes).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Set, Tuple

import numpy as np
import torch

from .bundle import DATASETS, NODE_DATASETS, DatasetUnavailable
from .planetoid import NUM_VAL, PARTS, git_blob_sha1, load_graph

MANIFEST = "SYNTHETIC_CHECKSUMS.json"
FILE_NAME = "synthetic"   # ind.synthetic.<part>


@dataclass(frozen=True)
class SyntheticGraph:
    num_classes: int = 3
    num_features: int = 64       # above the CoMHE proj_dim defaults (40, 30), so the first layer is projected
    train_per_class: int = 5
    num_extra: int = 40          # nodes in allx beyond train and val (Planetoid's unlabelled-in-split nodes)
    num_test: int = 60
    isolated: int = 0            # test-range ids without features, labels or edges (Citeseer)
    words: int = 8               # words per node
    topic: float = 0.7           # probability that a word comes from the node's class
    degree: float = 3.0          # mean number of links a node draws
    homophily: float = 0.8       # probability that a link stays within the class
    seed: int = 0

    @property
    def num_all(self) -> int:
        return self.num_classes * self.train_per_class + NUM_VAL + self.num_extra

    @property
    def num_nodes(self) -> int:
        return self.num_all + self.num_test + self.isolated


@dataclass
class GraphTruth:
    """What the files encode, for tests: dense features before normalisation, labels, the undirected edges."""
    features: np.ndarray          # float32 [N, F] (0/1)
    labels: np.ndarray            # int64 [N]
    edges: Set[Tuple[int, int]]   # undirected (i < j), no self-loops
    test_order: np.ndarray        # test ids in test.index (file) order
    isolated: np.ndarray          # the padded ids


def make_graph(spec: SyntheticGraph) -> GraphTruth:
    rng = np.random.default_rng(spec.seed)
    k, n = spec.num_classes, spec.num_nodes
    labels = rng.integers(0, k, n)
    labels[:k * spec.train_per_class] = rng.permutation(np.repeat(np.arange(k), spec.train_per_class))
    test_ids = np.arange(spec.num_all, n)
    isolated = np.sort(rng.choice(test_ids, spec.isolated, replace=False)) if spec.isolated else np.zeros(0, int)
    present = np.setdiff1d(np.arange(n), isolated)
    topics = np.array_split(rng.permutation(spec.num_features), k)
    features = np.zeros((n, spec.num_features), np.float32)
    for i in present:
        own = rng.random(spec.words) < spec.topic
        words = np.where(own, rng.choice(topics[labels[i]], spec.words), rng.integers(0, spec.num_features,
                                                                                       spec.words))
        features[i, words] = 1.0
    features[spec.num_all - 1] = 0.0                  # one node without any word: a zero row after normalisation
    features[isolated], labels[isolated] = 0.0, 0      # padded: zero rows, label 0 (argmax of a zero row)
    by_class = [present[labels[present] == c] for c in range(k)]
    edges: Set[Tuple[int, int]] = set()
    for i in present:
        for _ in range(max(1, rng.poisson(spec.degree))):
            pool = by_class[labels[i]] if rng.random() < spec.homophily else present
            j = int(rng.choice(pool))
            if j != i:
                edges.add((int(min(i, j)), int(max(i, j))))
    test_order = rng.permutation(np.setdiff1d(test_ids, isolated))
    return GraphTruth(features, labels, edges, test_order, isolated)


class _Pickle2:
    """Protocol-2 opcodes as Python 2 wrote them (no memo: repeated objects are written again)."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")

    def glob(self, module: str, name: str):
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def value(self, v):
        if v is None:
            self.out += b"N"
        elif isinstance(v, bool):
            self.out += b"\x88" if v else b"\x89"
        elif isinstance(v, (int, np.integer)):
            v = int(v)
            if 0 <= v < 256:
                self.out += b"K" + bytes([v])
            elif 0 <= v < 65536:
                self.out += b"M" + struct.pack("<H", v)
            else:
                self.out += b"J" + struct.pack("<i", v)
        elif isinstance(v, bytes):  # a Python 2 str
            self.out += (b"U" + bytes([len(v)]) if len(v) < 256 else b"T" + struct.pack("<I", len(v))) + v
        elif isinstance(v, tuple):
            if len(v) <= 3:
                for x in v:
                    self.value(x)
                self.out += [b")", b"\x85", b"\x86", b"\x87"][len(v)]
            else:
                self.out += b"("
                for x in v:
                    self.value(x)
                self.out += b"t"
        elif isinstance(v, np.ndarray):
            self.array(v)
        else:
            raise TypeError(f"cannot write {type(v).__name__}")

    def dtype(self, code: bytes):
        self.glob("numpy", "dtype")
        self.value((code, 0, 1))
        self.out += b"R"
        self.value((3, b"<", None, None, None, -1, -1, 0))
        self.out += b"b"

    def array(self, a: np.ndarray):
        code = {np.dtype(np.int32): b"i4", np.dtype(np.float32): b"f4"}[a.dtype]
        self.glob("numpy.core.multiarray", "_reconstruct")
        self.glob("numpy", "ndarray")
        self.value((0,))
        self.value(b"b")
        self.out += b"\x87R("  # TUPLE3: _reconstruct(ndarray, (0,), 'b'); REDUCE; MARK of the state tuple
        self.value(1)
        self.value(tuple(int(s) for s in a.shape))
        self.dtype(code)
        self.value(False)
        self.value(np.ascontiguousarray(a).astype("<" + code.decode()).tobytes())
        self.out += b"tb"

    def csr(self, dense: np.ndarray):
        nz = [np.flatnonzero(row) for row in dense]
        indptr = np.concatenate([[0], np.cumsum([len(c) for c in nz])]).astype(np.int32)
        indices = np.concatenate(nz or [np.zeros(0, dtype=np.int64)]).astype(np.int32)
        self.glob("scipy.sparse.csr", "csr_matrix")
        self.out += b")\x81}("  # EMPTY_TUPLE, NEWOBJ, EMPTY_DICT, MARK
        for key, v in ((b"format", b"csr"), (b"_shape", tuple(int(s) for s in dense.shape)), (b"indptr", indptr),
                       (b"_cs_matrix__has_sorted_indices", True), (b"indices", indices), (b"maxprint", 50),
                       (b"data", dense[dense != 0].astype(np.float32))):
            self.value(key)
            self.value(v)
        self.out += b"ub"  # SETITEMS, BUILD

    def graph(self, neighbours: Dict[int, list]):
        self.glob("collections", "defaultdict")
        self.glob("__builtin__", "list")
        self.out += b"\x85R("  # TUPLE1, REDUCE: defaultdict(list); MARK of its items
        for node, adjacent in neighbours.items():
            self.value(node)
            self.out += b"]("
            for j in adjacent:
                self.value(j)
            self.out += b"e"
        self.out += b"u"

    def done(self) -> bytes:
        return bytes(self.out + b".")


def _pickle(kind: str, value) -> bytes:
    p = _Pickle2()
    write: Dict[str, Callable] = {"csr": p.csr, "array": p.array, "graph": p.graph}
    write[kind](value)
    return p.done()


def raw_files(spec: SyntheticGraph) -> Dict[str, bytes]:
    """The eight files' bytes, by part name."""
    truth = make_graph(spec)
    one_hot = np.eye(spec.num_classes, dtype=np.int32)[truth.labels]
    n_train, n_all = spec.num_classes * spec.train_per_class, spec.num_all
    rng = np.random.default_rng([spec.seed, 1])
    neighbours: Dict[int, list] = {i: [] for i in range(spec.num_nodes)}
    for i, j in sorted(truth.edges):
        neighbours[i].append(j)
        neighbours[j].append(i)
    for i in rng.choice(n_all, 3, replace=False):  # the loader must drop duplicates and self-loops
        neighbours[int(i)] += [int(i)] + neighbours[int(i)][:1]
    order = truth.test_order
    return {"x": _pickle("csr", truth.features[:n_train]), "y": _pickle("array", one_hot[:n_train]),
            "allx": _pickle("csr", truth.features[:n_all]), "ally": _pickle("array", one_hot[:n_all]),
            "tx": _pickle("csr", truth.features[order]), "ty": _pickle("array", one_hot[order]),
            "graph": _pickle("graph", neighbours), "test.index": "".join(f"{i}\n" for i in order).encode()}


def write_planetoid(folder: Path, spec: SyntheticGraph, name: str = FILE_NAME) -> Dict[str, list]:
    """Write ``folder/ind.<name>.<part>`` and ``folder/SYNTHETIC_CHECKSUMS.json`` (size, md5, git blob SHA-1 of each
    file, and the spec); returns the checksum table."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = {}
    for part, payload in raw_files(spec).items():
        (folder / f"ind.{name}.{part}").write_bytes(payload)
        table[f"ind.{name}.{part}"] = [len(payload), hashlib.md5(payload).hexdigest(), git_blob_sha1(payload)]
    (folder / MANIFEST).write_text(json.dumps({"files": table, "spec": asdict(spec)}, indent=1))
    return table


def recorded_checksums(folder: Path) -> Dict[str, tuple]:
    path = Path(folder) / MANIFEST
    files = json.loads(path.read_text())["files"] if path.is_file() else {}
    return {k: tuple(v) for k, v in files.items()}


@DATASETS.register("synthetic_planetoid")
def _synthetic_planetoid(root: Path, device: torch.device, download: bool, num_classes: int = 3,
                         num_features: int = 64, train_per_class: int = 5, num_test: int = 60, isolated: int = 0,
                         seed: int = 0):
    """A small graph in the raw Planetoid format in its own folder per parameter set under ``root``, written aside
    and renamed into place (parallel runs never read a half-written one), then read by the real loader."""
    spec = SyntheticGraph(num_classes=num_classes, num_features=num_features, train_per_class=train_per_class,
                          num_test=num_test, isolated=isolated, seed=seed)
    if min(num_classes, num_features, train_per_class, num_test) < 1 or isolated < 0:
        raise ValueError(f"synthetic_planetoid needs positive sizes and isolated >= 0, got {spec}")
    where = root / (f"synthetic-planetoid-{num_classes}c-{num_features}f-{train_per_class}x{num_test}-"
                    f"{isolated}i-seed{seed}")
    manifest = where / "planetoid" / MANIFEST
    if not manifest.is_file() or json.loads(manifest.read_text()).get("spec") != asdict(spec):
        partial = root / f".{where.name}.partial{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        write_planetoid(partial / "planetoid", spec)
        try:
            partial.rename(where)  # atomic; another process's identical copy wins if it got there first
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
    checksums = recorded_checksums(where / "planetoid")
    if len(checksums) != len(PARTS):
        raise DatasetUnavailable(f"{where / 'planetoid' / MANIFEST} is incomplete: delete {where} to rewrite it")
    graph = load_graph(where / "planetoid", FILE_NAME, device, download=False, checksums=checksums)
    graph.name = "synthetic_planetoid"
    return graph


NODE_DATASETS.add("synthetic_planetoid")

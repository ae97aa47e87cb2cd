"""Planetoid citation graphs (Cora, Citeseer, Pubmed) in their raw format, for GCN node classification.

    graph = comhe.data.build("cora")        # GraphBundle: row-normalised features, labels, public split, A_hat

Files: ``<data root>/planetoid/ind.<name>.{x,y,tx,ty,allx,ally,graph,test.index}``, the public Planetoid split
(Yang et al. 2016) as ``kimiyoung/planetoid`` publishes them and ``tkipf/gcn`` reads them. Missing files are
downloaded from ``URL`` on first use, each one checked (size, git blob SHA-1 and md5 where known: ``CHECKSUMS``)
before it is written, atomically. Every file, downloaded or not, is checked before it is read, and read with
``pickles.RestrictedUnpickler`` (no scipy, no networkx; a pickle naming any other class is refused).

Assembly, as ``tkipf/gcn``'s ``load_data`` (docs/reference.md §2b): node ``i < len(allx)`` has row ``i`` of ``allx``
/ ``ally``; node ``test.index[j]`` has row ``j`` of ``tx`` / ``ty``; ids in the test range that ``test.index`` does
not list (Citeseer's isolated nodes) get zero rows ("padded at their sorted positions"). Labels are the one-hot
rows' argmax (0 for a zero row, as the official code). Split: train = the first ``len(y)`` nodes (20 per class), val
= the next 500, test = the sorted ``test.index``. Features are row-normalised (a zero row stays zero). The
adjacency is the symmetric graph of ``graph`` without duplicates and self-loops; ``A_hat = D^-1/2 (A + I) D^-1/2``
with D the degrees of ``A + I``. Deviation: a self-loop in a raw file would count twice in ``tkipf/gcn`` (A_ii = 1,
plus I); here it counts once (Cora has none).
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .bundle import DATASETS, LOCATORS, NODE_DATASETS, PROBES, WRITE, DatasetUnavailable, offline
from .pickles import CSRMatrix, UnsafePickle, safe_loads

PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")
URL = "https://github.com/kimiyoung/planetoid/raw/master/data/"
NUM_VAL = 500
GRAPHS: List[str] = ["cora", "citeseer", "pubmed"]
# file -> (size in bytes, md5, git blob SHA-1); None where not known. kimiyoung/planetoid data/ at commit af6abf4,
# byte-identical to tkipf/gcn gcn/data/.
CHECKSUMS: Dict[str, Tuple[Optional[int], Optional[str], str]] = {
    "ind.citeseer.allx": (595021, "28486b4b9c4ee076b4eee2febd89ba86", "592091071ac35b78599c722d0e60b1c655711728"),
    "ind.citeseer.ally": (55623, "f0df7e5f859245e32987bfd224d01657", "7503f81a0b6ac1cc21cb5a97073542a6b1dfe99c"),
    "ind.citeseer.graph": (61987, "5f88483d5f5cc2b26b987bbbfb695005", "a01dca663d0103c130f525017a4a9c313037e286"),
    "ind.citeseer.test.index": (5000, "70af39d4dff8aaa5c63f8dc526b16534", "62d9e3d5ed53c66b069125af98529d76c70d9b3e"),
    "ind.citeseer.tx": (260321, "c25ab826a7e95c0922ab625de705f7df", "b2aff18aa1fc6f4f5e8c64db7643b59b24e42584"),
    "ind.citeseer.ty": (24135, "356894a73b7a7eff43c3580f2fcf92a4", "3795f79df0cd1123f4478b77c148a5fbacc4cefb"),
    "ind.citeseer.x": (31087, "baeb0100b5a8af8d41f928113ce0a4e5", "f094104a66f2689ffbd01085fe6a856689e9db9e"),
    "ind.citeseer.y": (3014, "8b99f50aa950fbbf9a7a2b71ff9cac97", "e857ac49b611da98e101a068cf4855350274f68a"),
    "ind.cora.allx": (257305, "c9083193a57057dd1238321e140194d7", "44d53b1fece343538e45592caac521d73c6f98d6"),
    "ind.cora.ally": (47959, "125d70817fe1fdbfdcad991995e81579", "04fbd0b083d09341fcf16b395c642329637f0542"),
    "ind.cora.graph": (59847, "b37c419cec179f45834467630c278e4c", "4d3bf85dfc8b1c105a2c995597a1b3eed6947925"),
    "ind.cora.test.index": (5000, "9b822cae1d01f41e8bf8782e20367c0e", "ded8092db4cd767a367eebe09003b954a5316f24"),
    "ind.cora.tx": (148025, "b29c36916768e1d2f55391c1aa9317ac", "6e856d777401ee15dc8619db76c97d0a40ba2d60"),
    "ind.cora.ty": (28135, "48bf43f54fa5b86089a4bd0299795f10", "da1734ab670b5c8ecee78a9c30b35566df916f4b"),
    "ind.cora.x": (22119, "190831eee19d8f330d89d94b40a65c5a", "c4a91d008245403e7f26aa616b437191509793c0"),
    "ind.cora.y": (4054, "78344284e3ff7fd24eb9c307d51351eb", "58e30ef120d3553cfaac33ff28c6b5436dbef661"),
    "ind.pubmed.allx": (None, None, "3b86bccf08111c37c632a9dd8ab63db25ea76361"),
    "ind.pubmed.ally": (224739, "ab5def164b4c5b33e215b6397a84ee4b", "4c8bcdc80882dd225fe4dd4fafd723baa616ac97"),
    "ind.pubmed.graph": (471808, "601ee2ffa59197989ff7267383a4ea46", "76eb87e628a6b9d43fc31ea42c8c6c8f3e52b404"),
    "ind.pubmed.test.index": (6000, "57cdfacfa20179b9b92e077fba394d1c", "41f6befcb7750cc4858cb852f2b349a9598cb2f4"),
    "ind.pubmed.tx": (405505, "30d5abd15cf10e46ebd9514b256e0347", "eee4f3c988fde0da87a9ec7b01ca5e7863c1b1f1"),
    "ind.pubmed.ty": (12135, "3082e367753e3a81c457f644316ca17d", "225a0bb9bb6430e3925d04688daf6a0da964c07a"),
    "ind.pubmed.x": (23172, "2e93a89281c7597939cfb24976696f54", "16c0eca8d2b3297014ff80327416f9332eda10d7"),
    "ind.pubmed.y": (854, "520bb2899bb8fb705181b8e34a973573", "e86670576c85340eeb2271b3c918bfa89322b2cf"),
}
Checksums = Dict[str, Tuple[Optional[int], Optional[str], str]]


@dataclass
class GraphBundle:
    """One graph ready for full-batch training (``comhe.train.node_engine``); tensors on one device."""
    name: str
    num_classes: int
    num_features: int
    num_nodes: int
    features: Tensor       # sparse COO float32 [N, F], coalesced, rows normalised to sum 1
    adjacency: Tensor      # sparse COO float32 [N, N], coalesced: D^-1/2 (A + I) D^-1/2
    labels: Tensor         # int64 [N]
    train_index: Tensor    # int64 node ids of the public split
    val_index: Tensor
    test_index: Tensor
    edges: Tensor          # int64 [2, E]: the directed edges of A (both directions, no self-loops, no duplicates)
    kind: str = "graph"

    def to(self, device) -> "GraphBundle":
        moved: Dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        return GraphBundle(**{k: v.to(device) if isinstance(v, Tensor) else v for k, v in moved.items()})  # type: ignore[arg-type]


# --- files: checks, download, atomic writes ------------------------------------------------------------------------

def git_blob_sha1(payload: bytes) -> str:
    """The SHA-1 git gives a file's content (``git hash-object``): exact even where size and md5 are unknown."""
    return hashlib.sha1(b"blob %d\0" % len(payload) + payload).hexdigest()


def problem(payload: bytes, expected: Tuple[Optional[int], Optional[str], str]) -> Optional[str]:
    """Why ``payload`` is not the expected file (a phrase), or None when size, md5 and SHA-1 all match."""
    size, md5, sha1 = expected
    if size is not None and len(payload) != size:
        return f"is {len(payload)} bytes, expected {size} ({'truncated' if len(payload) < size else 'too long'})"
    if md5 is not None and hashlib.md5(payload).hexdigest() != md5:
        return f"has md5 {hashlib.md5(payload).hexdigest()}, expected {md5} (corrupted or a different file)"
    if git_blob_sha1(payload) != sha1:
        return f"has git blob SHA-1 {git_blob_sha1(payload)}, expected {sha1} (corrupted or a different file)"
    return None


def _fetch(url: str, timeout: float = 60.0) -> bytes:
    """The body at ``url`` (GitHub redirects /raw/ to raw.githubusercontent.com); tests replace this function."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - a fixed https URL
        return response.read()


def _atomic_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _where(file: str, folder: Path, expected) -> str:
    size, md5, _ = expected
    known = ", ".join(x for x in (f"{size} bytes" if size else "", f"md5 {md5}" if md5 else "") if x)
    return f"download {URL}{file}{f' ({known})' if known else ''} and put it in {folder}"


def ensure_files(folder: Path, name: str, download: bool = True, checksums: Optional[Checksums] = None) -> None:
    """Every raw file of graph ``name`` present in ``folder`` and intact, downloading missing ones (``URL``).

    ``checksums``: the table to check against (default ``CHECKSUMS``; a synthetic graph passes the one recorded
    when it was written, and is never downloaded). A file that fails its check is never overwritten (it may be the
    user's): the message says to delete it. Raises ``DatasetUnavailable`` with one line naming the first bad or
    missing file and where to put it."""
    synthetic = checksums is not None
    table = CHECKSUMS if checksums is None else checksums
    files = [f"ind.{name}.{part}" for part in PARTS]
    unknown = [f for f in files if f not in table]
    if unknown:
        raise DatasetUnavailable(f"no checksum known for {unknown[0]} (graphs: {', '.join(GRAPHS)})")

    def fix(file: str) -> str:
        return f"delete {folder.parent} to rewrite it" if synthetic else _where(file, folder, table[file])

    for file in files:
        path = folder / file
        if path.is_file():
            why = problem(path.read_bytes(), table[file])
            if why:
                again = "" if synthetic else "delete it and rerun to download it again, or "
                raise DatasetUnavailable(f"{path} {why}: {again}{fix(file)}")
            continue
        missing = [f for f in files if not (folder / f).is_file()]
        more = f" (and {len(missing) - 1} more ind.{name}.* files)" if len(missing) > 1 else ""
        if synthetic or not download or offline():
            why = "it was written by the synthetic generator" if synthetic else "download=False" if not download \
                else "downloads are off (COMHE_OFFLINE is set)"
            raise DatasetUnavailable(f"{file} is missing from {folder}{more} and {why}: {fix(file)}")
        try:
            payload = _fetch(URL + file)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise DatasetUnavailable(f"could not download {URL}{file} ({type(err).__name__}: {err}); "
                                     f"{fix(file)}") from None
        why = problem(payload, table[file])
        if why:
            raise DatasetUnavailable(f"the download of {URL}{file} {why}; nothing was written: {fix(file)}")
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, payload)


# --- reading and assembly ------------------------------------------------------------------------------------------

def _test_index(path: Path, payload: bytes) -> np.ndarray:
    try:
        ids = np.array([int(line) for line in payload.decode("ascii").split()], dtype=np.int64)
    except (UnicodeDecodeError, ValueError):
        raise DatasetUnavailable(f"{path} is not a list of node ids, one per line") from None
    if not len(ids) or ids.min() < 0 or len(np.unique(ids)) != len(ids):
        raise DatasetUnavailable(f"{path} lists no node, a negative node id or a node twice")
    return ids


def read_raw(folder: Path, name: str) -> Dict[str, Any]:
    """The eight files parsed (CSR matrices, int arrays, the neighbour dict, the test ids), checked for type."""
    out: Dict[str, Any] = {}
    kinds = {"x": CSRMatrix, "tx": CSRMatrix, "allx": CSRMatrix, "y": np.ndarray, "ty": np.ndarray,
             "ally": np.ndarray, "graph": dict}
    for part in PARTS:
        path = folder / f"ind.{name}.{part}"
        payload = path.read_bytes()
        if part == "test.index":
            out[part] = _test_index(path, payload)
            continue
        try:
            value = safe_loads(payload)
        except UnsafePickle as err:
            raise DatasetUnavailable(f"{path} {err}; refused, nothing loaded") from None
        if not isinstance(value, kinds[part]) or (part.endswith("y") and np.ndim(value) != 2):  # type: ignore[arg-type]
            raise DatasetUnavailable(f"{path} holds a {type(value).__name__}, expected a {kinds[part].__name__}")
        out[part] = value
    return out


def _stack_rows(allx: CSRMatrix, tx: CSRMatrix, test_ids: np.ndarray, num_nodes: int):
    """COO ``(rows, cols, values)`` of the ``[num_nodes, F]`` feature matrix: allx rows first, tx row j at node
    ``test_ids[j]``, zero rows elsewhere."""
    rows = np.concatenate([allx.rows(), test_ids[tx.rows()]])
    return rows, np.concatenate([allx.indices, tx.indices]), np.concatenate([allx.data, tx.data]).astype(np.float64)


def _sparse(rows, cols, values, shape) -> Tensor:
    index = torch.from_numpy(np.stack([rows, cols]).astype(np.int64))
    return torch.sparse_coo_tensor(index, torch.from_numpy(values.astype(np.float32)), shape,
                                   check_invariants=False).coalesce()


def assemble(raw: Dict[str, Any], name: str, where: Path) -> GraphBundle:
    """The graph as ``tkipf/gcn`` builds it (module docstring), from ``read_raw``'s output."""
    allx, tx, x, test_ids = raw["allx"], raw["tx"], raw["x"], raw["test.index"]
    ally, ty, y = raw["ally"], raw["ty"], raw["y"]
    n_all, n_feat = allx.shape
    if not (tx.shape[1] == x.shape[1] == n_feat and len(test_ids) == tx.shape[0] == len(ty) and len(ally) == n_all
            and ally.shape[1] == ty.shape[1] == y.shape[1] and test_ids.min() >= n_all
            and len(y) + NUM_VAL <= n_all):
        raise DatasetUnavailable(f"the ind.{name}.* files in {where} do not fit together (shapes allx {allx.shape}, "
                                 f"tx {tx.shape}, ally {ally.shape}, ty {ty.shape}, test.index {len(test_ids)})")
    num_nodes = int(test_ids.max()) + 1
    rows, cols, values = _stack_rows(allx, tx, test_ids, num_nodes)
    row_sum = np.bincount(rows, weights=values, minlength=num_nodes)
    scale = np.divide(1.0, row_sum, out=np.zeros_like(row_sum), where=row_sum != 0)
    features = _sparse(rows, cols, values * scale[rows], (num_nodes, n_feat))
    one_hot = np.zeros((num_nodes, ally.shape[1]))
    one_hot[:n_all], one_hot[test_ids] = ally, ty
    labels = torch.from_numpy(one_hot.argmax(1))
    edges = _edges(raw["graph"], num_nodes, name, where)
    test_sorted = torch.from_numpy(np.sort(test_ids))
    return GraphBundle(name, ally.shape[1], n_feat, num_nodes, features, normalized_adjacency(edges, num_nodes),
                       labels, torch.arange(len(y)), torch.arange(len(y), len(y) + NUM_VAL), test_sorted, edges)


def _edges(graph: dict, num_nodes: int, name: str, where: Path) -> Tensor:
    """``[2, E]`` directed edges of the symmetric graph, duplicates and self-loops removed, sorted by (row, col)."""
    if not all(isinstance(k, int) and isinstance(v, list) and all(isinstance(j, int) for j in v)
               for k, v in graph.items()):
        raise DatasetUnavailable(f"{where / f'ind.{name}.graph'} is not a dict of int node -> list of int neighbours")
    src = np.array([k for k, v in graph.items() for _ in v], dtype=np.int64)
    dst = np.array([j for v in graph.values() for j in v], dtype=np.int64)
    if len(src) and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= num_nodes):
        raise DatasetUnavailable(f"{where / f'ind.{name}.graph'} names nodes outside 0..{num_nodes - 1}")
    pairs = np.concatenate([np.stack([src, dst]), np.stack([dst, src])], axis=1)
    pairs = pairs[:, pairs[0] != pairs[1]]
    keys = np.unique(pairs[0] * num_nodes + pairs[1])
    return torch.from_numpy(np.stack([keys // num_nodes, keys % num_nodes]))


def normalized_adjacency(edges: Tensor, num_nodes: int) -> Tensor:
    """``D^-1/2 (A + I) D^-1/2`` as a coalesced sparse COO ``[N, N]``; ``edges``: ``[2, E]`` without self-loops."""
    loops = torch.arange(num_nodes).expand(2, num_nodes)
    index = torch.cat([edges, loops], dim=1)
    degree = torch.bincount(index[0], minlength=num_nodes).double()
    values = (degree[index[0]] * degree[index[1]]).rsqrt().float()
    return torch.sparse_coo_tensor(index, values, (num_nodes, num_nodes), check_invariants=False).coalesce()


def load_graph(folder: Path, name: str, device, download: bool = True,
               checksums: Optional[Checksums] = None) -> GraphBundle:
    """Check (download) the files of graph ``name`` in ``folder``, read and assemble them, move them to ``device``."""
    ensure_files(folder, name, download, checksums)
    return assemble(read_raw(folder, name), name, folder).to(device)


def _register(name: str) -> None:
    @DATASETS.register(name)
    def build(root: Path, device: torch.device, download: bool) -> GraphBundle:
        return load_graph(root / "planetoid", name, device, download)
    build.__doc__ = f"Planetoid {name} from {{root}}/planetoid/ind.{name}.* (downloaded and checked on first use)."
    NODE_DATASETS.add(name)
    PROBES[name] = lambda root: probe_files(root / "planetoid", name)

    @LOCATORS.register(name)
    def locate(root: Path, download: bool):
        """Present and intact: read in place (None); missing: downloaded on use (``WRITE``), or, with downloads off,
        the one line ``ensure_files`` gives (which file, why it is not fetched, where to put it)."""
        why = probe_files(root / "planetoid", name)
        if why is None or not why.startswith("data missing"):
            return why
        if download:
            return WRITE
        try:  # raises before any network access: download=False, or COMHE_OFFLINE set (then "downloads are off")
            ensure_files(root / "planetoid", name, download=offline())
        except DatasetUnavailable as err:
            return str(err)
        return None


def probe_files(folder: Path, name: str) -> Optional[str]:
    """Why graph ``name`` cannot be read from ``folder`` now (missing or failing files), without downloading."""
    files = [f"ind.{name}.{part}" for part in PARTS]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        return (f"data missing: {len(missing)} of the 8 ind.{name}.* files are not in {folder} (the first run "
                f"downloads them from {URL}, or put them there)")
    try:
        ensure_files(folder, name, download=False)
    except DatasetUnavailable as err:
        return f"data unusable: {err}"
    return None


for _name in GRAPHS:
    _register(_name)

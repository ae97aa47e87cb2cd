"""A restricted unpickler for the Planetoid raw files and the CIFAR python batches: it rebuilds CSR matrices, numpy
arrays and dicts of lists, and refuses every other class, so a pickle fetched from the internet can never run code.

    obj = safe_load(path)        # CSRMatrix | numpy.ndarray | dict | ... ; UnsafePickle / ValueError otherwise

The raw files are Python 2 pickles (protocol 2, read with ``encoding="latin1"``) of ``scipy.sparse.csr_matrix``,
``numpy.ndarray`` and ``collections.defaultdict(list)``. Neither scipy nor numpy's own reconstruction code runs
here: every global a pickle names is looked up in ``ALLOWED``, which maps the few names these files use onto inert
stand-ins (``_CSRStub``, ``_ArrayStub``, ``_DTypeStub``, ``dict``, ``list``), and only after loading are the stubs
turned into plain numpy arrays through ``numpy.frombuffer`` with a dtype from a fixed list of numeric types (no
object arrays: those would unpickle arbitrary objects). A name not in ``ALLOWED``, a persistent id, or a stub in an
unexpected state raises ``UnsafePickle`` before any object of the file is returned.

The work is bounded too: a file is read up to ``MAX_BYTES``; converting the loaded objects visits each one once
(an object the pickle shares through its memo stays shared, never copied), at most ``MAX_OBJECTS`` containers
(``MAX_ITEMS`` items) nested at most ``MAX_DEPTH`` deep; every failure is one ``UnsafePickle`` line, never a
``RecursionError`` or a hang.
``_codecs.encode(text, "latin1")`` is allowed: it is how Python 3 writes ``bytes`` in a protocol-2 pickle (the
synthetic CIFAR batches), and it only turns a string into bytes.
"""
from __future__ import annotations

import io
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

# Numeric dtypes a Planetoid array may have (numpy type codes without byte order).
NUMERIC = {"b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8"}
MAX_BYTES = 1 << 30        # a pickle file: the largest the project reads (CIFAR-100's train batch) is 155 MB
MAX_DEPTH = 64             # container nesting: Planetoid and CIFAR files nest 3 levels
MAX_OBJECTS = 5_000_000    # containers in one file (PubMed's graph dict holds 19,717 lists)
MAX_ITEMS = 50_000_000     # items in them (CIFAR-100's train batch: 150,000; PubMed's graph: 108,365)


class UnsafePickle(ValueError):
    """The pickle names a class or holds a value a Planetoid file never does; nothing of it was returned."""


@dataclass(frozen=True)
class CSRMatrix:
    """A compressed-sparse-row matrix as scipy stores it: row ``i`` holds ``data[indptr[i]:indptr[i+1]]`` at the
    columns ``indices[indptr[i]:indptr[i+1]]``. ``indptr``: int ``[rows + 1]``; ``indices``: int ``[nnz]``;
    ``data``: ``[nnz]``."""
    shape: Tuple[int, int]
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray

    def rows(self) -> np.ndarray:
        """The row of every stored entry, int64 ``[nnz]``."""
        return np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))

    def to_dense(self) -> np.ndarray:
        out = np.zeros(self.shape, dtype=np.float64)
        np.add.at(out, (self.rows(), self.indices), self.data)
        return out


class _CSRStub:
    """Stands in for ``scipy.sparse.csr_matrix`` (created by NEWOBJ, filled by BUILD with scipy's ``__dict__``)."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise UnsafePickle(f"holds a csr_matrix with state of type {type(state).__name__}")
        self.state = state


class _NDArrayType:
    """Stands in for the class ``numpy.ndarray``, passed to ``_reconstruct``; never instantiated by a pickle."""

    def __init__(self, *args):
        raise UnsafePickle("calls numpy.ndarray directly")


class _ArrayStub:
    """What ``numpy.core.multiarray._reconstruct`` returns here; BUILD gives it numpy's array state."""

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickle("holds a numpy array with an unexpected state")
        self.state = state[1:] if len(state) == 5 else state  # (shape, dtype, is_fortran, raw bytes)


class _DTypeStub:
    """Stands in for ``numpy.dtype(code, align, copy)``; BUILD gives it the byte order."""

    def __init__(self, code, align=0, copy=1):
        if not isinstance(code, str) or code not in NUMERIC:
            raise UnsafePickle(f"holds a numpy dtype {code!r} (only numeric dtypes are read)")
        self.code, self.order = code, "<"

    def __setstate__(self, state):
        # (version, byte order, sub-array, names, fields, itemsize, alignment, flags[, metadata])
        if not isinstance(state, tuple) or len(state) < 5 or any(x is not None for x in state[2:5]):
            raise UnsafePickle("holds a structured or sub-array numpy dtype")
        if state[1] not in ("<", ">", "|", "="):
            raise UnsafePickle(f"holds a numpy dtype with byte order {state[1]!r}")
        self.order = "<" if state[1] in ("|", "=") else state[1]


def _reconstruct(subtype, shape, code):
    if subtype is not _NDArrayType:
        raise UnsafePickle("reconstructs a numpy array of a class other than numpy.ndarray")
    return _ArrayStub()


def _encode(text, encoding="utf-8", *rest):
    """``_codecs.encode``, for a ``str`` and latin-1 only: Python 3's protocol-2 spelling of a ``bytes`` object."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or rest:
        raise UnsafePickle("calls _codecs.encode on something other than latin-1 text")
    return text.encode("latin-1")


def _defaultdict(factory=None, *rest):
    if factory is not list or rest:
        raise UnsafePickle("holds a defaultdict whose default is not list")
    return {}  # SETITEMS fills it; a plain dict reads the same


# The only globals a Planetoid or CIFAR pickle may name: (module, name) -> the inert stand-in the unpickler uses.
ALLOWED: Dict[Tuple[str, str], Any] = {
    ("scipy.sparse.csr", "csr_matrix"): _CSRStub, ("scipy.sparse._csr", "csr_matrix"): _CSRStub,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct, ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDArrayType, ("numpy", "dtype"): _DTypeStub,
    ("collections", "defaultdict"): _defaultdict, ("__builtin__", "list"): list, ("builtins", "list"): list,
    ("_codecs", "encode"): _encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` answers from ``ALLOWED`` only (Python docs, "Restricting
    Globals"); persistent ids are refused."""

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickle(f"names {module}.{name}, which no Planetoid file holds, nor any CIFAR batch (allowed: "
                               "scipy CSR matrices, numpy arrays, dicts of lists)") from None

    def persistent_load(self, pid):
        raise UnsafePickle("uses a persistent id")


def _as_bytes(raw) -> bytes:
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, str):  # a Python 2 str read with encoding="latin1": latin-1 gives the bytes back
        return raw.encode("latin-1")
    raise UnsafePickle(f"holds array data of type {type(raw).__name__}")


def _array(stub: _ArrayStub) -> np.ndarray:
    shape, dtype, fortran, raw = stub.state
    if not isinstance(dtype, _DTypeStub) or not isinstance(shape, tuple) or \
            not all(isinstance(n, int) and n >= 0 for n in shape):
        raise UnsafePickle("holds a numpy array with an unexpected shape or dtype")
    data = _as_bytes(raw)
    kind = np.dtype(dtype.order + dtype.code if dtype.code != "b1" else "?")
    count = math.prod(shape)  # Python integers: a crafted shape cannot overflow into a small count
    if len(data) != count * kind.itemsize:
        raise UnsafePickle(f"holds a numpy array of shape {shape} with {len(data)} bytes of data")
    array = np.frombuffer(data, kind).reshape(shape, order="F" if fortran else "C")
    return array.astype(kind.newbyteorder("="), copy=True)  # native order, writable, no view on the pickle


def _csr(stub: _CSRStub, budget: "_Budget") -> CSRMatrix:
    state = stub.state
    if state.get("format", "csr") != "csr" or not {"_shape", "indptr", "indices", "data"} <= set(state):
        raise UnsafePickle(f"holds a sparse matrix without CSR fields (keys {sorted(state)})")
    shape = state["_shape"]
    parts = [materialize(state[k], budget) for k in ("indptr", "indices", "data")]
    if not (isinstance(shape, tuple) and len(shape) == 2 and all(isinstance(n, int) and n >= 0 for n in shape)
            and all(isinstance(p, np.ndarray) and p.ndim == 1 for p in parts)):
        raise UnsafePickle("holds a CSR matrix with a malformed shape or index arrays")
    indptr, indices, data = parts
    if indptr.dtype.kind not in "iu" or indices.dtype.kind not in "iu":
        raise UnsafePickle("holds a CSR matrix with non-integer indices")
    ok = (len(indptr) == shape[0] + 1 and indptr[0] == 0 and np.all(np.diff(indptr) >= 0)
          and indptr[-1] == len(indices) == len(data)
          and (len(indices) == 0 or (indices.min() >= 0 and indices.max() < shape[1])))
    if not ok:
        raise UnsafePickle(f"holds a CSR matrix of shape {shape} whose index arrays are inconsistent")
    return CSRMatrix(shape, indptr.astype(np.int64), indices.astype(np.int64), data)


def materialize(obj, budget: Optional["_Budget"] = None):
    """Stubs -> ``CSRMatrix`` / ``numpy.ndarray``, through dicts, lists and tuples. Each object is converted once
    (``budget.done``, by identity): a pickle that refers to one list twice through its memo gets one converted list
    referred to twice, not two copies, so 40 levels of ``[prev, prev]`` cost 40 conversions, not 2^40. Nesting past
    ``MAX_DEPTH`` or more than ``MAX_OBJECTS`` containers is refused (``UnsafePickle``), before Python's own recursion
    limit could be reached."""
    budget = budget or _Budget()
    key = id(obj)
    if key in budget.done:
        return budget.done[key]
    if isinstance(obj, _CSRStub):
        out = _csr(obj, budget) if hasattr(obj, "state") else _fail("holds a csr_matrix without state")
    elif isinstance(obj, _ArrayStub):
        out = _array(obj) if hasattr(obj, "state") else _fail("holds a numpy array without state")
    elif isinstance(obj, (_DTypeStub, _NDArrayType)) or obj is _NDArrayType or callable(obj):
        raise UnsafePickle(f"holds a bare {getattr(obj, '__name__', type(obj).__name__)} object")
    elif isinstance(obj, (dict, list, tuple)):
        budget.enter(len(obj))
        try:
            if isinstance(obj, dict):
                out = {materialize(k, budget): materialize(v, budget) for k, v in obj.items()}
            elif isinstance(obj, list):
                out = [materialize(v, budget) for v in obj]
            else:
                out = tuple(materialize(v, budget) for v in obj)
        finally:
            budget.depth -= 1
    else:
        return obj
    budget.done[key] = out
    budget.keep.append(obj)  # alive until the end, so no id() is reused by another object
    return out


class _Budget:
    """The work ``materialize`` may do on one pickle: containers visited, and how deep."""

    def __init__(self) -> None:
        self.done: Dict[int, Any] = {}
        self.keep: list = []
        self.depth = self.containers = self.items = 0

    def enter(self, size: int) -> None:
        self.depth += 1
        self.containers += 1
        self.items += size
        if self.depth > MAX_DEPTH:
            raise UnsafePickle(f"nests containers deeper than {MAX_DEPTH} levels (a Planetoid or CIFAR file nests 3)")
        if self.containers > MAX_OBJECTS or self.items > MAX_ITEMS:
            raise UnsafePickle(f"holds more than {MAX_OBJECTS:,} containers or {MAX_ITEMS:,} items in them")


def _fail(message: str):
    raise UnsafePickle(message)


def safe_loads(payload: bytes):
    """Unpickle ``payload`` (latin-1 strings, as the Python 2 originals need) with ``RestrictedUnpickler``."""
    try:
        return materialize(RestrictedUnpickler(io.BytesIO(payload), encoding="latin1").load())
    except UnsafePickle:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, OverflowError, RecursionError) as err:  # a damaged or truncated file
        raise UnsafePickle(f"is not a readable pickle ({type(err).__name__}: {err})") from None


def safe_load(path: Path):
    """``safe_loads`` of a file of at most ``MAX_BYTES``."""
    with open(path, "rb") as f:
        payload = f.read(MAX_BYTES + 1)
    if len(payload) > MAX_BYTES:
        raise UnsafePickle(f"is larger than {MAX_BYTES >> 20} MiB, more than any file this project reads")
    return safe_loads(payload)

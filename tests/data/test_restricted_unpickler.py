"""``pickles.safe_loads`` on Planetoid-style pickles crafted opcode by opcode (``synthetic_planetoid._Pickle2``, the
writer of the synthetic raw files): a well-formed array or CSR matrix reads back exactly; every malformed one is
refused with its one-line reason, before any array is built from it."""
import numpy as np
import pytest

from comhe.data import pickles
from comhe.data.synthetic_planetoid import _Pickle2


def array_pickle(shape, raw, code=b"f8", dtype_state=(3, b"<", None, None, None, -1, -1, 0), fortran=False) -> bytes:
    """numpy's own protocol-2 layout of an array (as ``_Pickle2.array``), every field chosen by the test."""
    p = _Pickle2()
    p.glob("numpy.core.multiarray", "_reconstruct")
    p.glob("numpy", "ndarray")
    p.value((0,))
    p.value(b"b")
    p.out += b"\x87R("
    p.value(1)
    p.value(shape)
    p.glob("numpy", "dtype")
    p.value((code, 0, 1))
    p.out += b"R"
    p.value(dtype_state)
    p.out += b"b"
    p.value(fortran)
    p.value(raw)
    p.out += b"tb"
    return p.done()


def csr_pickle(items) -> bytes:
    p = _Pickle2()
    p.glob("scipy.sparse.csr", "csr_matrix")
    p.out += b")\x81}("
    for key, value in items:
        p.value(key)
        p.value(value)
    p.out += b"ub"
    return p.done()


def test_well_formed_arrays_read_back_exactly_in_either_memory_order(tmp_path):
    values = np.arange(6, dtype="<f8")
    assert np.array_equal(pickles.safe_loads(array_pickle((2, 3), values.tobytes())), values.reshape(2, 3))
    fortran = pickles.safe_loads(array_pickle((2, 3), values.tobytes(), fortran=True))
    assert np.array_equal(fortran, values.reshape(2, 3, order="F")) and fortran.flags.writeable
    (tmp_path / "ind.cora.y").write_bytes(array_pickle((3,), np.array([1, -2, 3], "<i4").tobytes(), code=b"i4"))
    assert pickles.safe_load(tmp_path / "ind.cora.y").tolist() == [1, -2, 3]


@pytest.mark.parametrize("pickle_bytes, why", [
    (array_pickle((2, 3), b"\0" * 8), "holds a numpy array of shape (2, 3) with 8 bytes of data"),
    (array_pickle((2, -3), b""), "holds a numpy array with an unexpected shape or dtype"),  # J: a signed int
    (array_pickle((2,), None), "holds array data of type NoneType"),
    (array_pickle((1,), b"\0" * 8, dtype_state=(3, b"<", None, (b"a",), None, -1, -1, 0)),
     "holds a structured or sub-array numpy dtype"),
    (array_pickle((1,), b"\0" * 8, dtype_state=(3, b"!", None, None, None, -1, -1, 0)),
     "holds a numpy dtype with byte order '!'"),
    (b"\x80\x02cnumpy\ndtype\n.", "holds a bare _DTypeStub object"),
    (b"\x80\x02U\x03abcQ.", "uses a persistent id"),
    (csr_pickle([(b"format", b"csc"), (b"_shape", (1, 1))]), "holds a sparse matrix without CSR fields "
                                                             "(keys ['_shape', 'format'])"),
    (csr_pickle([(b"_shape", (2,)), (b"indptr", np.array([0, 0, 0], np.int32)),
                 (b"indices", np.zeros(0, np.int32)), (b"data", np.zeros(0, np.float32))]),
     "holds a CSR matrix with a malformed shape or index arrays"),
    (csr_pickle([(b"_shape", (1, 1)), (b"indptr", np.array([0, 1], np.int32)),
                 (b"indices", np.zeros(1, np.float32)), (b"data", np.ones(1, np.float32))]),
     "holds a CSR matrix with non-integer indices"),
    (csr_pickle([(b"_shape", (1, 1)), (b"indptr", np.array([0, 1], np.int32)),
                 (b"indices", np.array([1], np.int32)), (b"data", np.ones(1, np.float32))]),
     "holds a CSR matrix of shape (1, 1) whose index arrays are inconsistent"),
])
def test_a_malformed_pickle_is_refused_with_its_reason(pickle_bytes, why):
    with pytest.raises(pickles.UnsafePickle) as err:
        pickles.safe_loads(pickle_bytes)
    assert str(err.value) == why


def test_a_csr_matrix_reads_back_as_its_dense_matrix():
    dense = np.array([[0, 2.5, 0], [0, 0, 0], [1, 0, 4]], np.float32)
    csr = pickles.safe_loads(csr_pickle([(b"format", b"csr"), (b"_shape", (3, 3)),
                                         (b"indptr", np.array([0, 1, 1, 3], np.int32)),
                                         (b"indices", np.array([1, 0, 2], np.int32)),
                                         (b"data", np.array([2.5, 1, 4], np.float32))]))
    assert csr.shape == (3, 3) and csr.rows().tolist() == [0, 2, 2]
    assert np.array_equal(csr.to_dense(), dense)

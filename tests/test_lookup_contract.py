"""Forward lookup contract: every kernel returns exactly W[ids]."""

from __future__ import annotations

import importlib
import sys
import tracemalloc
import zlib

import numpy as np
import pytest

import kernels
from conftest import (
    EXPECTED_KERNEL_NAMES,
    IDS_DTYPES,
    SENTINEL,
    assert_bitwise_equal,
    dtype_id,
    make_weights,
    random_ids,
    sentinel_like,
    shared_weights,
)

# --------------------------------------------------------------------------
# registry / module structure
# --------------------------------------------------------------------------


def test_registry_holds_exactly_the_five_kernels():
    assert set(kernels.KERNELS) == EXPECTED_KERNEL_NAMES
    assert isinstance(kernels.KERNELS, dict)


def test_kernel_name_attribute_matches_registry_key(kernel_name):
    assert kernels.KERNELS[kernel_name].name == kernel_name


def test_each_kernel_is_a_submodule_whose_KERNEL_is_the_registry_entry(kernel_name):
    mod = importlib.import_module(f"kernels.{kernel_name}")
    assert getattr(kernels, kernel_name) is mod
    assert mod.KERNEL is kernels.KERNELS[kernel_name]
    assert callable(mod.lookup)
    assert callable(mod.lookup_grad)


def test_from_import_of_kernel_module_works(kernel_name):
    ns = {}
    exec(f"from kernels import {kernel_name} as m", ns)
    assert ns["m"] is sys.modules[f"kernels.{kernel_name}"]


def test_all_entry_points_give_the_same_bits(kernel_name, rng):
    W = make_weights(20, 6, np.float32)
    ids = rng.integers(0, 20, size=(4, 5))
    expected = W[ids]
    k = kernels.KERNELS[kernel_name]
    mod = importlib.import_module(f"kernels.{kernel_name}")
    results = {
        "k(W, ids)": k(W, ids),
        "k.lookup": k.lookup(W, ids),
        "module.lookup": mod.lookup(W, ids),
        "kernels.lookup(kernel=name)": kernels.lookup(W, ids, kernel=kernel_name),
        "kernels.lookup(kernel=Kernel)": kernels.lookup(W, ids, kernel=k),
    }
    for what, got in results.items():
        assert_bitwise_equal(got, expected, what)


def test_dispatch_default_kernel_is_numpy_take():
    # The kernels are distinguishable through their documented differences:
    # numpy_take keeps -0.0 and does not spread inf; the one-hot kernels don't.
    W = make_weights(6, 3, np.float64)
    W[1, 0] = -0.0
    W[4, 2] = np.inf
    ids = np.array([1, 0, 4, 5])
    got = kernels.lookup(W, ids)
    assert_bitwise_equal(got, W[ids])
    assert_bitwise_equal(got, kernels.lookup(W, ids, kernel="numpy_take"))


def test_dispatch_accepts_every_kernel_name_and_object(kernel, rng):
    W = make_weights(9, 4, np.float64)
    ids = rng.integers(0, 9, size=11)
    assert_bitwise_equal(kernels.lookup(W, ids, kernel=kernel.name), W[ids])
    assert_bitwise_equal(kernels.lookup(W, ids, kernel=kernel), W[ids])


# --------------------------------------------------------------------------
# the big matrix: kernel x weight dtype x ids dtype x ids shape x V
# --------------------------------------------------------------------------

IDS_SHAPES = [(), (0,), (2, 0, 3), (50,), (2, 3, 4)]


@pytest.mark.parametrize("V", [1, 7, 100_000])
@pytest.mark.parametrize("shape", IDS_SHAPES, ids=lambda s: "shape" + repr(s).replace(" ", ""))
def test_every_kernel_equals_fancy_indexing_bitwise(kernel, wdtype, ids_dtype, shape, V):
    D = 8 if V < 100_000 else 3
    W = shared_weights(V, D, wdtype)
    rng = np.random.default_rng(zlib.crc32(repr((shape, V, ids_dtype.name)).encode()))
    ids = random_ids(rng, shape, V, ids_dtype)
    got = kernel(W, ids)
    assert got.shape == shape + (D,)
    assert_bitwise_equal(got, W[ids])


@pytest.mark.parametrize("ids_dtype", IDS_DTYPES, ids=dtype_id)
def test_numpy_integer_scalar_ids_give_one_row(kernel, wdtype, ids_dtype):
    W = make_weights(7, 5, wdtype)
    scalar = np.dtype(ids_dtype).type(3)
    got = kernel(W, scalar)
    assert_bitwise_equal(got, W[3])
    got0d = kernel(W, np.array(6, dtype=ids_dtype))
    assert_bitwise_equal(got0d, W[6])


# --------------------------------------------------------------------------
# layouts
# --------------------------------------------------------------------------


def _layouts(dtype):
    base = make_weights(60, 10, dtype, seed=3)
    ro = base.copy()
    ro.flags.writeable = False
    return {
        "c_contiguous": base,
        "column_slice": base[:, ::2],
        "row_slice": base[::3],
        "negative_rows": base[::-1],
        "negative_columns": base[:, ::-1],
        "both_sliced": base[1::2, 1::3],
        "fortran": np.asfortranarray(base),
        "transpose_of_DV": make_weights(10, 60, dtype, seed=4).T,
        "read_only": ro,
        "broadcast_stride0_rows": np.broadcast_to(base[5], (60, 10)),
    }


LAYOUT_NAMES = list(_layouts(np.float32))


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_every_weights_layout_gives_fancy_indexing_bits(kernel, wdtype, layout, rng):
    W = _layouts(wdtype)[layout]
    W_before = W.copy()
    ids = rng.integers(0, W.shape[0], size=(5, 7)).astype(np.int32)
    assert_bitwise_equal(kernel(W, ids), W[ids])
    assert_bitwise_equal(W, W_before, "weights after the call")  # not modified


def test_read_only_weights_work_with_out(kernel, wdtype, rng):
    W = make_weights(30, 4, wdtype)
    W.flags.writeable = False
    ids = rng.integers(0, 30, size=13)
    out = sentinel_like((13, 4), wdtype)
    res = kernel(W, ids, out=out)
    assert res is out
    assert_bitwise_equal(out, W[ids])


def test_weights_are_not_modified(kernel, wdtype, rng):
    W = make_weights(40, 6, wdtype)
    before = W.copy()
    kernel(W, rng.integers(0, 40, size=100))
    assert_bitwise_equal(W, before, "weights after the call")


NONCONTIG_IDS = {
    "step2": lambda a: a[::2],
    "reversed": lambda a: a[::-1],
    "transposed_2d": lambda a: a[:60].reshape(6, 10).T,
    "column_of_2d": lambda a: a[:60].reshape(10, 6)[:, 2],
    "strided_3d": lambda a: a[:120].reshape(4, 5, 6)[::2, ::-1, 1::2],
    "big_endian": lambda a: a.astype(a.dtype.newbyteorder(">")),
}


@pytest.mark.parametrize("ids_dtype", [np.int64, np.uint8, np.int32], ids=dtype_id)
@pytest.mark.parametrize("view", list(NONCONTIG_IDS))
def test_non_contiguous_ids_give_fancy_indexing_bits(kernel, wdtype, ids_dtype, view, rng):
    W = make_weights(25, 5, wdtype)
    base = rng.integers(0, 25, size=200).astype(ids_dtype)
    ids = NONCONTIG_IDS[view](base)
    assert_bitwise_equal(kernel(W, ids), W[ids])


@pytest.mark.parametrize(
    "ids",
    [[3], [0, 6, 2, 2], [[1, 2], [3, 4], [5, 6]], 4, 0, [[[0]]]],
    ids=repr,
)
def test_python_int_and_list_ids_work(kernel, wdtype, ids):
    W = make_weights(7, 5, wdtype)
    assert_bitwise_equal(kernel(W, ids), W[np.asarray(ids)])


def test_empty_python_list_ids_give_empty_result(kernel, wdtype):
    # np.asarray([]) is float64, but an empty list of ints is still a list of
    # ints; numpy's own W[[]] returns shape (0, D).
    W = make_weights(7, 5, wdtype)
    assert_bitwise_equal(kernel(W, []), W[[]])


# --------------------------------------------------------------------------
# out=
# --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(), (0,), (17,), (3, 4, 2)], ids=repr)
def test_out_is_filled_and_returned_as_the_same_object(kernel, wdtype, shape, rng):
    W = make_weights(11, 6, wdtype)
    ids = rng.integers(0, 11, size=shape)
    out = sentinel_like(shape + (6,), wdtype)
    res = kernel(W, ids, out=out)
    assert res is out
    assert_bitwise_equal(out, W[ids])


def test_out_works_through_every_entry_point(kernel_name, wdtype, rng):
    W = make_weights(11, 6, wdtype)
    ids = rng.integers(0, 11, size=(5, 3))
    k = kernels.KERNELS[kernel_name]
    mod = importlib.import_module(f"kernels.{kernel_name}")
    calls = [
        lambda o: k(W, ids, out=o),
        lambda o: k.lookup(W, ids, out=o),
        lambda o: mod.lookup(W, ids, out=o),
        lambda o: kernels.lookup(W, ids, kernel=kernel_name, out=o),
    ]
    for call in calls:
        out = sentinel_like((5, 3, 6), wdtype)
        assert call(out) is out
        assert_bitwise_equal(out, W[ids])


def test_without_out_result_is_a_fresh_array(kernel, wdtype, rng):
    W = make_weights(11, 6, wdtype)
    ids = rng.integers(0, 11, size=9)
    r1 = kernel(W, ids)
    r2 = kernel(W, ids)
    assert not np.shares_memory(r1, W)
    assert not np.shares_memory(r1, r2)
    r1[...] = SENTINEL  # writeable, and writing it does not touch W
    assert_bitwise_equal(r2, W[ids])


# --------------------------------------------------------------------------
# duplicates, degenerate sizes
# --------------------------------------------------------------------------


def test_duplicate_ids_repeat_the_row(kernel, wdtype):
    W = make_weights(5, 4, wdtype)
    ids = np.array([2, 2, 2, 0, 2, 4, 4], dtype=np.int64)
    got = kernel(W, ids)
    assert_bitwise_equal(got, W[ids])
    for i in (0, 1, 2, 4):
        assert_bitwise_equal(got[i], W[2])


@pytest.mark.parametrize("shape", [(0,), (6,), (2, 3)], ids=repr)
def test_zero_width_embeddings_give_zero_width_result(kernel, wdtype, shape):
    W = np.empty((5, 0), dtype=wdtype)
    ids = np.arange(int(np.prod(shape))).reshape(shape) % 5
    got = kernel(W, ids)
    assert got.shape == shape + (0,)
    assert got.dtype == wdtype


@pytest.mark.parametrize("shape", [(0,), (2, 0, 3)], ids=repr)
def test_empty_vocab_with_empty_ids_gives_empty_result(kernel, wdtype, shape):
    W = np.empty((0, 4), dtype=wdtype)
    got = kernel(W, np.zeros(shape, dtype=np.int64))
    assert got.shape == shape + (4,)
    assert got.dtype == wdtype


def test_empty_vocab_and_zero_width_with_empty_ids(kernel, wdtype):
    W = np.empty((0, 0), dtype=wdtype)
    got = kernel(W, np.zeros((0,), dtype=np.int32))
    assert got.shape == (0, 0)
    assert got.dtype == wdtype


# --------------------------------------------------------------------------
# large inputs (parallel paths)
# --------------------------------------------------------------------------


def _large_case(kernel_name, wdtype, ids_dtype=np.int64):
    V = 50 if kernel_name == "onehot_dense" else 1000
    W = shared_weights(V, 16, wdtype, seed=7)
    ids = np.random.default_rng(8).integers(0, V, size=300_000).astype(ids_dtype)
    return W, ids


def test_large_input_equals_fancy_indexing_bitwise(kernel_name, wdtype):
    W, ids = _large_case(kernel_name, wdtype)
    k = kernels.KERNELS[kernel_name]
    assert_bitwise_equal(k(W, ids), W[ids])


def test_large_input_with_out_and_3d_int32_ids(kernel_name):
    W, ids = _large_case(kernel_name, np.float32, np.int32)
    ids = ids.reshape(100, 50, 60)
    k = kernels.KERNELS[kernel_name]
    out = sentinel_like(ids.shape + (16,), np.float32)
    assert k(W, ids, out=out) is out
    assert_bitwise_equal(out, W[ids])


def test_large_non_contiguous_weights_and_ids(kernel_name):
    V = 50 if kernel_name == "onehot_dense" else 1000
    base = make_weights(2 * V, 32, np.float64, seed=9)
    W = base[::-2, ::2]
    ids = np.random.default_rng(10).integers(0, V, size=600_000)[::2]
    k = kernels.KERNELS[kernel_name]
    assert_bitwise_equal(k(W, ids), W[ids])


def test_c_contiguous_table_is_not_copied(kernel, rng):
    """Observable via tracemalloc: numpy reports its buffer allocations there.

    A lookup of a handful of rows from a 51 MB table must not allocate anything
    close to the table's size (a copy of W would)."""
    W = shared_weights(100_000, 64, np.float64, seed=11)
    ids = rng.integers(0, 100_000, size=10)
    kernel(W, ids)  # warm-up (JIT compilation, caches)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        got = kernel(W, ids)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_bitwise_equal(got, W[ids])
    assert peak - base < W.nbytes // 2, (
        f"lookup of 10 rows allocated {peak - base} bytes at peak; "
        f"the table is {W.nbytes} bytes (was it copied?)"
    )


@pytest.mark.parametrize("shape, dtype", [((1000, 64), np.float32), ((3, 5), np.float64),
                                          ((0, 64), np.float32), (7, np.int32), ((), np.float32)])
@pytest.mark.parametrize("align", [64, 4096])
def test_aligned_empty_is_an_empty_array_starting_on_the_boundary(shape, dtype, align):
    a = kernels.aligned_empty(shape, dtype, align=align)
    want = (shape,) if isinstance(shape, int) else shape
    assert a.shape == want and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    assert a.size == 0 or a.ctypes.data % align == 0  # NumPy gives empty slices no offset
    a[...] = 1
    assert (a == 1).all()


def test_aligned_empty_refuses_what_np_empty_refuses_and_alignments_not_powers_of_two():
    for align in (0, -64, 48):
        with pytest.raises(ValueError, match="power of two"):
            kernels.aligned_empty((4, 4), align=align)
    with pytest.raises(ValueError, match="negative"):
        kernels.aligned_empty((-1, 4))
    with pytest.raises(TypeError):
        kernels.aligned_empty((4, 4), "not a dtype")


def test_a_gather_of_an_aligned_table_equals_the_numpy_one():
    rng = np.random.default_rng(3)
    W = rng.standard_normal((20_000, 16), dtype=np.float32)  # beyond L2: the prefetching loops
    A = kernels.aligned_empty(W.shape)
    A[...] = W
    ids = rng.integers(0, W.shape[0], 5000)
    offsets = np.arange(0, 5000, 5)
    for name in kernels.KERNELS:
        np.testing.assert_array_equal(kernels.lookup(A, ids, kernel=name), W[ids])
        np.testing.assert_array_equal(kernels.lookup_bag(A, ids, offsets, kernel=name),
                                      kernels.lookup_bag(W, ids, offsets, kernel=name))


@pytest.mark.parametrize("dtype, D", [(np.float32, 8), (np.float32, 16), (np.float64, 8),
                                      (np.float32, 64)])
def test_compiled_lookups_prefetch_rows_of_every_length_beyond_l2(monkeypatch, dtype, D):
    """The compiled lookups prefetch ahead whenever the table does not fit in L2, one-line rows
    included, and none within it (numba_gather PREFETCH_DISTANCE ids, kernels._cpu
    .prefetch_distance; cython_gather copy_prefetch_distance, up to 24 rows and about 8 KB);
    the rows are W[ids] either way."""
    from kernels import _cpu, _cython_gather

    seen = []
    real = _cython_gather.gather
    monkeypatch.setattr(_cython_gather, "gather",
                        lambda W, ids, out, nthreads, prefetch=0, *rest:
                        (seen.append(prefetch), real(W, ids, out, nthreads, prefetch, *rest))[1])
    rng = np.random.default_rng(D)
    W = rng.standard_normal((100, D)).astype(dtype)
    ids = rng.integers(0, 100, 500)
    for l2, beyond in ((W.nbytes - 1, True), (W.nbytes, False)):
        monkeypatch.setattr(_cpu, "L2_BYTES", l2)
        want = _cpu.PREFETCH_DISTANCE if beyond else 0
        assert _cpu.prefetch_distance(W) == want
        rows = min(24, 8192 // (D * W.itemsize)) if beyond else 0
        assert _cpu.copy_prefetch_distance(W) == rows
        seen.clear()
        got = kernels.lookup(W, ids, kernel="cython_gather")
        assert seen == [rows], (l2, seen)
        assert_bitwise_equal(got, W[ids], f"cython D={D} beyond L2={beyond}")
        assert_bitwise_equal(kernels.lookup(W, ids, kernel="numba_gather"), W[ids],
                             f"numba D={D} beyond L2={beyond}")


@pytest.mark.parametrize("n", [50, 300_000])  # one thread, two
@pytest.mark.parametrize("fmt", ["float32", "float16", "int8", "int4"])
def test_cython_lookups_check_their_ids_in_the_kernel_threads(monkeypatch, n, fmt):
    """cython_gather's lookups, of float and low-precision tables alike, leave the shared bounds
    pass to the kernel (each thread checks the ids it then copies or decodes: Kernel
    lookup_checks_ids); the shared pass runs only to name a bad id, nothing written. Other
    kernels keep the shared pass."""
    from kernels import _validate

    calls = []
    real = _validate.any_out_of_range
    monkeypatch.setattr(_validate, "any_out_of_range",
                        lambda ids, V: (calls.append(len(ids)), real(ids, V))[1])
    rng = np.random.default_rng(n)
    W = rng.standard_normal((100, 16)).astype(np.float32)
    T = W if fmt == "float32" else kernels.quantize(W, fmt)
    want = W if fmt == "float32" else T.dequantize()
    ids = rng.integers(0, 100, n)
    assert_bitwise_equal(kernels.lookup(T, ids, kernel="cython_gather"), want[ids], "cython")
    assert calls == []
    kernels.lookup(T, ids, kernel="numpy_take")
    assert calls == [n]
    calls.clear()
    for at in (0, n // 2 + 1, n - 1):  # the first thread's share, the second's, the last id
        bad = ids.copy()
        bad[at] = 100
        out = sentinel_like((n, 16), np.float32)
        with pytest.raises(IndexError, match=rf"id 100 at position \({at},\)"):
            kernels.lookup(T, bad, kernel="cython_gather", out=out)
        assert (out == SENTINEL).all()
    assert calls == [n] * 3

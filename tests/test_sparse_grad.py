"""Sparse gradients (issue 11): lookup_grad(..., sparse=True) and lookup_bag_grad(..., sparse=True)
return a kernels.SparseGrad, for every kernel and both dtypes.

* to_dense() is the same kernel's dense gradient bit for bit (lookups and every bag layout and
  mode); rows are the sorted unique int64 ids hit, padding left out; for bags with
  per_sample_weights their gradient is the dense path's, bit for bit;
* the compiled pair gives the same bits as each other, on 1 and 2 threads, on large calls;
* nothing grows with vocab_size: vocab_size = 10**12 with a few ids works in little memory;
* to_scipy() and to_torch() round trips; against torch's nn.Embedding(sparse=True) and
  nn.EmbeddingBag(sparse=True) gradients, coalesced;
* every bad input raises what the dense path raises, and leaves the inputs unchanged; out= with
  sparse=True is refused; the SparseGrad constructor checks its arguments.
"""
from __future__ import annotations

import sys
import threading
import tracemalloc

import numpy as np
import pytest

import kernels
from conftest import assert_bitwise_equal, assert_untouched, make_weights, outcome, sentinel_like
from kernels import SparseGrad
from test_bags import (
    BACKWARD,
    BAD_INPUTS,
    CASE_PARAMS,
    MODE_PARAMS,
    assert_grad_within_bound,
    bags_1d,
    grad_out,
    grad_terms,
    parallel_bags,
    require,
    run_backward,
    table,
)
from test_errors import BAD_GRAD_DTYPES, BAD_GRAD_SHAPES, NON_INTEGER_IDS, OUT_OF_RANGE

COMPILED_PAIR = ("numba_gather", "cython_gather")
NOT_BITWISE = {"onehot_dense"}
"""Kernels whose sparse gradient is their dense one only within the summation bound, not bit for
bit: onehot_dense's one-hot block has len(rows) rows instead of vocab_size, so BLAS takes another
routine for it (gemv when one row is hit) and the chunks (sized by the block's row count) differ."""
HUGE_V = 10**12


def sparse_grad(kernel_name, grad, ids, V, **kw):
    return kernels.lookup_grad(grad, ids, V, sparse=True, kernel=kernel_name, **kw)


def assert_is_sparse_grad_of(sg, ids, V, D, dtype, pad=None):
    """sg is a SparseGrad (V, D) of dtype whose rows are the sorted unique int64 ids (padding
    left out)."""
    assert isinstance(sg, SparseGrad)
    flat = np.asarray(ids).astype(np.int64).reshape(-1)
    want = np.unique(flat if pad is None else flat[flat != pad])
    assert sg.rows.dtype == np.int64 and sg.rows.ndim == 1
    np.testing.assert_array_equal(sg.rows, want)
    assert np.all(np.diff(sg.rows) > 0)
    assert sg.values.shape == (want.shape[0], D) and sg.values.dtype == dtype
    assert (sg.vocab_size, sg.dim, sg.dtype, sg.nnz) == (V, D, np.dtype(dtype), want.shape[0])


# --------------------------------------------------------------------------
# 1. lookups: the dense gradient, bit for bit
# --------------------------------------------------------------------------


def _zipf(n, V, seed):
    return (np.random.default_rng(seed).zipf(1.2, n) - 1) % V


LAYOUTS = {
    # label: (ids, V, D)
    "uniform": (np.random.default_rng(0).integers(0, 100, 5000), 100, 8),
    "heavy_duplicates_zipf": (_zipf(20_000, 1000, 1), 1000, 16),
    "all_one_id": (np.full(3000, 3, np.int32), 5, 7),
    "ids_2d": (np.random.default_rng(2).integers(0, 40, (30, 7)), 40, 5),
    "ids_int32": (np.random.default_rng(3).integers(0, 60, 999).astype(np.int32), 60, 33),
    "ids_uint8": (np.random.default_rng(4).integers(0, 256, 700).astype(np.uint8), 300, 4),
    "ids_uint64": (np.random.default_rng(5).integers(0, 90, 400).astype(np.uint64), 90, 3),
    "ids_list": ([4, 1, 4, 0, 1, 4], 6, 2),
    "ids_scalar": (np.int64(2), 5, 3),
    "few_ids_large_V": (np.array([99_999, 7, 50_000, 7, 0]), 100_000, 4),
    "wide_rows": (np.random.default_rng(6).integers(0, 20, 300), 20, 257),
    "D_0": (np.array([3, 1, 3]), 5, 0),
    "strided_ids": (np.random.default_rng(7).integers(0, 50, 2000)[::3], 50, 6),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_to_dense_is_the_kernels_dense_gradient_bit_for_bit(kernel_name, wdtype, layout):
    ids, V, D = LAYOUTS[layout]
    grad = np.random.default_rng(9).standard_normal(np.shape(ids) + (D,)).astype(wdtype)
    sg = sparse_grad(kernel_name, grad, ids, V)
    assert_is_sparse_grad_of(sg, ids, V, D, wdtype)
    if kernel_name in NOT_BITWISE:
        kernels.LOOKUP_GRAD.assert_matches(sg.to_dense(), grad, ids, V)
        return
    dense = kernels.lookup_grad(grad, ids, V, kernel=kernel_name)
    assert_bitwise_equal(sg.to_dense(), dense, f"{kernel_name} sparse vs dense")
    assert_bitwise_equal(sg.values, dense[sg.rows], "values vs the dense rows")


def test_every_entry_point_gives_the_same_sparse_gradient(kernel_name, wdtype):
    ids, V, D = LAYOUTS["heavy_duplicates_zipf"]
    grad = np.random.default_rng(1).standard_normal((len(ids), D)).astype(wdtype)
    k = kernels.KERNELS[kernel_name]
    module = sys.modules[f"kernels.{kernel_name}"]
    first = k.lookup_grad(grad, ids, V, sparse=True)
    for other in (module.lookup_grad(grad, ids, V, sparse=True),
                  kernels.lookup_grad(grad, ids, V, sparse=True, kernel=k),
                  kernels.lookup_grad(grad, ids, V, sparse=np.bool_(True), kernel=kernel_name)):
        assert_bitwise_equal(other.rows, first.rows, "rows")
        assert_bitwise_equal(other.values, first.values, "values")


def test_sparse_false_is_the_dense_gradient(kernel_name, wdtype):
    ids, V, D = LAYOUTS["uniform"]
    grad = np.ones((len(ids), D), wdtype)
    dense = kernels.lookup_grad(grad, ids, V, kernel=kernel_name)
    for flag in (False, np.bool_(False)):
        assert_bitwise_equal(kernels.lookup_grad(grad, ids, V, kernel=kernel_name, sparse=flag),
                             dense)


@pytest.mark.parametrize("shape", [(0,), (2, 0, 3)], ids=repr)
@pytest.mark.parametrize("V", [0, 7, HUGE_V])
def test_empty_ids_give_nnz_0(kernel_name, wdtype, shape, V):
    sg = sparse_grad(kernel_name, np.ones(shape + (4,), wdtype), np.zeros(shape, np.int64), V)
    assert_is_sparse_grad_of(sg, [], V, 4, wdtype)
    assert sg.nnz == 0 and sg.values.shape == (0, 4)
    if V < HUGE_V:
        assert_bitwise_equal(sg.to_dense(), np.zeros((V, 4), wdtype))


def test_negative_zero_contributions_keep_the_dense_bits(kernel_name, wdtype):
    """A row whose contributions are all -0.0 and one with +0.0 and -0.0: whatever sign of zero
    the kernel's dense path gives, the sparse one gives too."""
    grad = np.array([[-0.0, 0.0], [-0.0, -0.0], [0.0, -0.0], [-0.0, 1.0]], wdtype)
    ids = np.array([1, 1, 3, 4])
    sg = sparse_grad(kernel_name, grad, ids, 6)
    dense = kernels.lookup_grad(grad, ids, 6, kernel=kernel_name)
    if kernel_name in NOT_BITWISE:
        dense[dense == 0] = 0.0  # BLAS may add a +0.0 or not: -0.0 only as +0.0
        sg.values[sg.values == 0] = 0.0
    assert_bitwise_equal(sg.to_dense(), dense)


def test_auto_gives_the_chosen_kernels_sparse_gradient(wdtype):
    ids, V, D = LAYOUTS["heavy_duplicates_zipf"]
    grad = np.random.default_rng(3).standard_normal((len(ids), D)).astype(wdtype)
    sg = kernels.lookup_grad(grad, ids, V, sparse=True, kernel="auto")
    chosen = kernels.for_call(kernels.LOOKUP_GRAD, V, D, len(ids),
                              kernels.FORMATS[np.dtype(wdtype).name])
    assert_bitwise_equal(sg.to_dense(), chosen.lookup_grad(grad, ids, V))


# --------------------------------------------------------------------------
# 2. bags: the dense bag gradient, bit for bit
# --------------------------------------------------------------------------


def run_sparse_backward(k, case, G, W, mode, psw=None):
    return k.lookup_bag_grad(G, case.ids, case.offsets, case.V, weights=W, sparse=True,
                             **case.kwargs(mode, psw))


def max_rows(case, W):
    """The rows the max backward sends gradient to: the arg-max rows, found independently
    (torch's rule: the first non-padding row, replaced by each later one strictly greater)."""
    rows = set()
    flat = case.flat_ids
    for b in range(case.B):
        pos = case.kept_positions(b)
        for col in range(case.D):
            best = None
            for p in pos:
                if best is None or W[flat[p], col] > W[flat[best], col]:
                    best = p
            if best is not None:
                rows.add(int(flat[best]))
    return np.array(sorted(rows), np.int64)


@pytest.mark.parametrize("case", CASE_PARAMS)
@pytest.mark.parametrize("mode,weighted", MODE_PARAMS)
def test_bag_to_dense_is_the_kernels_dense_bag_gradient_bit_for_bit(kernel_name, wdtype, mode,
                                                                     weighted, case):
    k = require(kernel_name, mode, wdtype, op=BACKWARD)
    W = table(case, wdtype)
    psw = case.weights(wdtype) if weighted else None
    G = grad_out(case, wdtype)
    sparse = run_sparse_backward(k, case, G, W, mode, psw)
    dense = run_backward(k, case, G, W, mode, psw)
    if weighted:
        (sg, dpsw), (dW, dpsw_dense) = sparse, dense
        assert_bitwise_equal(dpsw, dpsw_dense, "d per_sample_weights, sparse vs dense")
    else:
        sg, dW = sparse, dense
    if mode == "max":
        assert isinstance(sg, SparseGrad)
        np.testing.assert_array_equal(sg.rows, max_rows(case, W))
    else:
        assert_is_sparse_grad_of(sg, case.ids, case.V, case.D, wdtype, pad=case.pad_row)
    assert sg.shape == (case.V, case.D)
    if kernel_name in NOT_BITWISE:
        ref = kernels.LOOKUP_BAG_GRAD.reference(G, case.ids, case.offsets, case.V, weights=W,
                                                **case.kwargs(mode, psw))
        assert_grad_within_bound(sg.to_dense(), ref, *grad_terms(case, G, W, mode, psw))
    else:
        assert_bitwise_equal(sg.to_dense(), dW, f"{kernel_name} {mode} sparse vs dense")


def test_bag_padding_rows_are_absent(kernel_name, wdtype):
    case = bags_1d("padding", [4, 0, 6, 3], V=20, D=3, padding_idx=-2, padding_per_bag=2,
                   all_padding=[3])
    assert (case.flat_ids == 18).sum() >= 7
    for mode in ("sum", "mean", "sqrtn", "max"):
        if mode not in kernels.KERNELS[kernel_name].bag_modes:
            continue
        W = table(case, wdtype)
        sg = run_sparse_backward(kernels.KERNELS[kernel_name], case, grad_out(case, wdtype), W,
                                 mode)
        assert 18 not in sg.rows


@pytest.mark.parametrize("mode", ["sum", "mean", "max", "sqrtn"])
def test_an_unimplemented_bag_mode_is_refused_as_the_dense_path_refuses_it(kernel_name, wdtype,
                                                                        mode):
    k = kernels.KERNELS[kernel_name]
    W = make_weights(4, 3, wdtype)

    def call(sparse):
        return k.lookup_bag_grad(np.ones((2, 3), wdtype), [1, 2, 3], [0, 1], 4, mode=mode,
                                 weights=W, sparse=sparse)

    dense, sparse = outcome(lambda: call(False)), outcome(lambda: call(True))
    if mode in k.bag_modes:
        assert dense[0] is None and sparse[0] is None
    else:
        assert dense[0] is NotImplementedError and sparse == dense


def test_bag_gradient_vocab_size_defaults_to_the_table_rows(kernel_name, wdtype):
    case = bags_1d("default_V", [3, 2, 4], V=12, D=5)
    W = table(case, wdtype)
    G = grad_out(case, wdtype)
    k = kernels.KERNELS[kernel_name]
    a = k.lookup_bag_grad(G, case.ids, case.offsets, weights=W, sparse=True)
    b = k.lookup_bag_grad(G, case.ids, case.offsets, 12, sparse=True)
    assert a.vocab_size == 12
    assert_bitwise_equal(a.values, b.values)


@pytest.mark.parametrize("mode,weighted", MODE_PARAMS)
def test_bag_auto_gives_a_correct_sparse_gradient(wdtype, mode, weighted):
    case = bags_1d("auto", np.random.default_rng(3).integers(0, 9, 200), V=300, D=16)
    W = table(case, wdtype)
    psw = case.weights(wdtype) if weighted else None
    G = grad_out(case, wdtype)
    kw = case.kwargs(mode, psw)
    got = kernels.lookup_bag_grad(G, case.ids, case.offsets, case.V, weights=W, sparse=True,
                                  kernel="auto", **kw)
    sg = got[0] if weighted else got
    ref = kernels.LOOKUP_BAG_GRAD.reference(G, case.ids, case.offsets, case.V, weights=W, **kw)
    assert np.allclose(sg.to_dense(), ref, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------
# 3. the compiled pair: the same bits, any thread count, on large calls
# --------------------------------------------------------------------------


@pytest.mark.parametrize("V,D", [(1000, 16), (200_000, 33), (HUGE_V, 8)], ids=str)
def test_compiled_pair_agree_bitwise_for_one_and_two_threads(wdtype, V, D):
    n = 300_000
    ids = _zipf(n, min(V, 500_000), 11) * (V // min(V, 500_000))  # heavy duplicates
    grad = np.random.default_rng(12).standard_normal((n, D)).astype(wdtype)
    results = {}
    for name in COMPILED_PAIR:
        for threads in (1, 2):
            with kernels.num_threads(threads):
                results[name, threads] = sparse_grad(name, grad, ids, V)
    (first, sg0), *rest = results.items()
    assert_is_sparse_grad_of(sg0, ids, V, D, wdtype)
    for key, sg in rest:
        assert_bitwise_equal(sg.rows, sg0.rows, f"rows {key} vs {first}")
        assert_bitwise_equal(sg.values, sg0.values, f"values {key} vs {first}")
    if V < HUGE_V:
        with kernels.num_threads(2):
            dense = kernels.lookup_grad(grad, ids, V, kernel=COMPILED_PAIR[0])
        assert_bitwise_equal(sg0.values, dense[sg0.rows], "sparse vs dense")


@pytest.mark.parametrize("mode,weighted", MODE_PARAMS)
def test_compiled_pair_agree_bitwise_on_large_bags(wdtype, mode, weighted):
    case, W, psw, G = parallel_bags(15_000, 5000, 16, wdtype, weighted)  # ~300k ids
    results = {}
    for name in COMPILED_PAIR:
        k = require(name, mode, wdtype, op=BACKWARD)
        for threads in (1, 2):
            with kernels.num_threads(threads):
                got = run_sparse_backward(k, case, G, W, mode, psw)
            results[name, threads] = got[0] if weighted else got
    (first, sg0), *rest = results.items()
    for key, sg in rest:
        assert_bitwise_equal(sg.rows, sg0.rows, f"rows {key} vs {first}")
        assert_bitwise_equal(sg.values, sg0.values, f"values {key} vs {first}")
    dense = run_backward(kernels.KERNELS[COMPILED_PAIR[0]], case, G, W, mode, psw)
    assert_bitwise_equal(sg0.to_dense(), dense[0] if weighted else dense, "sparse vs dense")


def test_two_threads_computing_sparse_gradients_at_once_get_the_sequential_results(wdtype):
    ids, V, D = LAYOUTS["heavy_duplicates_zipf"]
    grads = [np.random.default_rng(s).standard_normal((len(ids), D)).astype(wdtype)
             for s in range(4)]
    names = COMPILED_PAIR + ("numpy_take", "onehot_sparse")
    want = [sparse_grad(name, g, ids, V) for name, g in zip(names, grads)]
    got = [None] * 4

    def run(i):
        for _ in range(5):
            got[i] = sparse_grad(names[i], grads[i], ids, V)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w, g in zip(want, got):
        assert_bitwise_equal(g.rows, w.rows)
        assert_bitwise_equal(g.values, w.values)


def test_ids_rewritten_after_the_bounds_check_give_an_error_not_a_row_out_of_range():
    """What the shared path does with ids another thread changed between the check and
    np.unique's copy (a race a test cannot time): the rows are checked again."""
    from kernels._sparse import unique_rows

    for compiled in (False, True):
        for bad in ([-1, 3], [3, 5], [7], [2, 9, 1]):
            with pytest.raises(RuntimeError, match="another thread changed ids"):
                unique_rows(np.array(bad), 5, compiled)
        rows, slot = unique_rows(np.array([4, 0, 4], np.int32), 5, compiled)
        assert rows.dtype == slot.dtype == np.int64
        assert rows.tolist() == [0, 4] and slot.tolist() == [1, 0, 1]


@pytest.mark.parametrize("vocab_size", [1, 2, 255, 2048, 2049, 10**6, 10**7, 2**40, 2**63 - 1])
def test_the_compiled_radix_sort_gives_np_unique_rows_and_slots(vocab_size):
    """Every digit-pass count (0 ... 6 passes), duplicates, ids at both ends of the range."""
    from kernels._optim_numba import sort_ids
    from kernels._sparse import unique_rows

    rng = np.random.default_rng(vocab_size % 1000)
    ids = rng.integers(0, vocab_size, size=5000, dtype=np.int64)
    ids[:3] = [0, vocab_size - 1, 0]
    ids[3:200] = ids[200:397]
    want_rows, want_slot = np.unique(ids, return_inverse=True)
    rows, slot = unique_rows(ids, vocab_size, compiled=True)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(slot, want_slot)
    _, starts, pos = sort_ids(ids.astype(np.int32) if vocab_size < 2**31 else ids, vocab_size)
    np.testing.assert_array_equal(pos, np.argsort(ids, kind="stable"))
    np.testing.assert_array_equal(np.diff(starts), np.bincount(want_slot))


# --------------------------------------------------------------------------
# 4. nothing proportional to vocab_size
# --------------------------------------------------------------------------

HUGE_IDS = np.array([HUGE_V - 1, 3, 10**11, 3, 0, HUGE_V - 1, 123_456_789_012])
LITTLE_MEMORY = 1 << 20
"""Bytes a call on HUGE_IDS may allocate at its peak (tracemalloc sees NumPy's allocations)."""


def peak_bytes(fn):
    fn()  # warm: compiled code, caches
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_vocab_size_10_12_lookup_grad_takes_little_memory(kernel_name, wdtype):
    grad = np.random.default_rng(0).standard_normal((len(HUGE_IDS), 8)).astype(wdtype)
    sg, peak = peak_bytes(lambda: sparse_grad(kernel_name, grad, HUGE_IDS, HUGE_V))
    assert peak < LITTLE_MEMORY, f"{peak} bytes at the peak"
    np.testing.assert_array_equal(sg.rows, np.unique(HUGE_IDS))
    small = kernels.lookup_grad(grad, np.searchsorted(sg.rows, HUGE_IDS), sg.nnz,
                                kernel=kernel_name)
    assert_bitwise_equal(sg.values, small, "the same sums as a table of the rows hit")


def test_vocab_size_10_12_with_auto():
    grad = np.ones((len(HUGE_IDS), 4), np.float32)
    sg, peak = peak_bytes(lambda: kernels.lookup_grad(grad, HUGE_IDS, HUGE_V, sparse=True,
                                                      kernel="auto"))
    assert peak < LITTLE_MEMORY, f"{peak} bytes at the peak"
    assert sg.values[np.searchsorted(sg.rows, 3), 0] == 2.0


@pytest.mark.parametrize("mode,weighted", MODE_PARAMS)
def test_vocab_size_10_12_bags_take_little_memory(kernel_name, wdtype, mode, weighted):
    """The table of a max or weighted backward is needed: a broadcast row stands for it (its
    arg-max is then the first id of each bag)."""
    k = require(kernel_name, mode, wdtype, op=BACKWARD)
    offsets = np.array([0, 3, 3, 5])
    G = np.random.default_rng(1).standard_normal((4, 6)).astype(wdtype)
    W = np.broadcast_to(np.arange(6, dtype=wdtype), (HUGE_V, 6))
    psw = np.linspace(0.5, 2, len(HUGE_IDS)).astype(wdtype) if weighted else None

    def call():
        return k.lookup_bag_grad(G, HUGE_IDS, offsets, HUGE_V, mode=mode, per_sample_weights=psw,
                                 padding_idx=3, weights=W, sparse=True)

    got, peak = peak_bytes(call)
    assert peak < LITTLE_MEMORY, f"{peak} bytes at the peak"
    sg = got[0] if weighted else got
    want = [0, HUGE_V - 1] if mode == "max" else np.unique(HUGE_IDS[HUGE_IDS != 3])
    np.testing.assert_array_equal(sg.rows, want)


# --------------------------------------------------------------------------
# 5. to_dense, to_scipy, to_torch
# --------------------------------------------------------------------------


def small_sparse_grad(kernel_name, dtype, V=40, D=5, n=300, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, n)
    grad = rng.standard_normal((n, D)).astype(dtype)
    return sparse_grad(kernel_name, grad, ids, V), grad, ids


def test_to_dense_writes_into_out(kernel_name, wdtype):
    sg = small_sparse_grad(kernel_name, wdtype)[0]
    out = sentinel_like((40, 5), wdtype)
    assert sg.to_dense(out=out) is out
    assert_bitwise_equal(out, sg.to_dense())


@pytest.mark.parametrize("case", ["shape", "dtype", "fortran", "read_only", "list",
                                  "overlaps_values"])
def test_to_dense_refuses_a_bad_out_before_writing(wdtype, case):
    sg = small_sparse_grad("numpy_take", wdtype)[0]
    other = np.float64 if wdtype == np.float32 else np.float32
    ro = sentinel_like((40, 5), wdtype)
    ro.flags.writeable = False
    holder = sentinel_like((40, 5), wdtype)
    holder[:sg.nnz] = sg.values
    sg_in_holder = SparseGrad(sg.rows, holder[:sg.nnz], 40)
    out = {"shape": sentinel_like((41, 5), wdtype), "dtype": sentinel_like((40, 5), other),
           "fortran": np.asfortranarray(sentinel_like((40, 5), wdtype)), "read_only": ro,
           "list": [[0.0] * 5] * 40, "overlaps_values": holder}[case]
    if case == "overlaps_values":
        sg = sg_in_holder
    before = np.array(out, copy=True)
    with pytest.raises(ValueError):
        sg.to_dense(out=out)
    if case != "list":
        assert_bitwise_equal(np.asarray(out), before, "out after the error")


def test_to_scipy_round_trips(kernel_name, wdtype):
    import scipy.sparse as sp

    sg = small_sparse_grad(kernel_name, wdtype)[0]
    csr = sg.to_scipy()
    assert isinstance(csr, sp.csr_array)
    assert csr.shape == (40, 5) and csr.dtype == wdtype
    assert csr.nnz == sg.nnz * sg.dim
    assert_bitwise_equal(csr.toarray(), sg.to_dense(), "to_scipy().toarray()")
    csr.data[:] = 0  # a copy: the SparseGrad keeps its values
    assert np.any(sg.values != 0)


def test_to_scipy_of_an_empty_gradient():
    sg = SparseGrad(np.zeros(0, np.int64), np.zeros((0, 3), np.float32), 4)
    assert sg.to_scipy().nnz == 0 and sg.to_scipy().shape == (4, 3)


def test_to_torch_round_trips_coalesced(kernel_name, wdtype):
    torch = pytest.importorskip("torch")
    sg = small_sparse_grad(kernel_name, wdtype)[0]
    t = sg.to_torch()
    assert t.is_sparse and t.is_coalesced()
    assert tuple(t.shape) == (40, 5) and t.sparse_dim() == 1 and t.dense_dim() == 1
    assert t.dtype == getattr(torch, np.dtype(wdtype).name)
    np.testing.assert_array_equal(t.indices().numpy(), sg.rows[None, :])
    assert_bitwise_equal(t.values().numpy(), sg.values, "to_torch().values()")
    assert_bitwise_equal(t.to_dense().numpy(), sg.to_dense(), "to_torch().to_dense()")
    assert_bitwise_equal(t.coalesce().values().numpy(), sg.values, "after coalesce()")
    t.values().zero_()  # a copy: the SparseGrad keeps its values
    assert np.any(sg.values != 0)


def test_to_torch_of_an_empty_gradient_and_huge_vocab_size():
    torch = pytest.importorskip("torch")
    sg = sparse_grad("numpy_take", np.ones((0, 3), np.float64), np.zeros(0, np.int64), HUGE_V)
    t = sg.to_torch()
    assert t.is_coalesced() and t._nnz() == 0 and tuple(t.shape) == (HUGE_V, 3)
    assert t.dtype == torch.float64


def test_to_torch_without_torch_raises_import_error_saying_so(monkeypatch):
    sg = small_sparse_grad("numpy_take", np.float32)[0]
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(ImportError, match=r"to_torch\(\) needs PyTorch"):
        sg.to_torch()


def within_summation_bound(ours, theirs, grad, ids, rows):
    """Both sums within the recursive-summation bound of the float64 sum: |ours - theirs| <=
    2 k eps sum|g| per element (k contributions)."""
    flat = np.asarray(ids).reshape(-1)
    g = np.asarray(grad).reshape(flat.shape[0], -1).astype(np.float64)
    slot = np.searchsorted(rows, flat)
    mag = np.zeros((rows.shape[0], g.shape[1]))
    np.add.at(mag, slot, np.abs(g))
    count = np.bincount(slot, minlength=rows.shape[0])[:, None]
    eps = float(np.finfo(np.asarray(grad).dtype).eps)
    assert np.all(np.abs(ours.astype(np.float64) - theirs) <= 2 * count * eps * mag)


def test_agrees_with_torch_embedding_sparse_gradient(kernel_name, wdtype):
    torch = pytest.importorskip("torch")
    V, D, shape = 500, 12, (64, 20)
    rng = np.random.default_rng(5)
    ids = _zipf(int(np.prod(shape)), V, 6).reshape(shape)  # heavy duplicates
    grad = rng.standard_normal(shape + (D,)).astype(wdtype)
    emb = torch.nn.Embedding(V, D, sparse=True).to(getattr(torch, np.dtype(wdtype).name))
    emb(torch.as_tensor(ids)).backward(torch.as_tensor(grad))
    theirs = emb.weight.grad.coalesce()
    sg = sparse_grad(kernel_name, grad, ids, V)
    np.testing.assert_array_equal(theirs.indices().numpy()[0], sg.rows)
    within_summation_bound(sg.values, theirs.values().numpy(), grad, ids, sg.rows)
    back = SparseGrad(theirs.indices().numpy()[0], theirs.values().numpy(), V).to_torch()
    assert back.is_coalesced() and torch.equal(back.to_dense(), theirs.to_dense())


@pytest.mark.parametrize("padding_idx", [None, 4, -1], ids=str)
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_agrees_with_torch_embedding_bag_sparse_gradient(kernel_name, wdtype, mode, padding_idx):
    torch = pytest.importorskip("torch")
    V, D = 300, 9
    lengths = np.random.default_rng(7).integers(0, 12, 400)
    case = bags_1d("torch", lengths, V=V, D=D, seed=8, padding_idx=padding_idx,
                   padding_per_bag=2 if padding_idx is not None else 0, all_padding=[3])
    G = grad_out(case, wdtype)
    tdtype = getattr(torch, np.dtype(wdtype).name)
    bag = torch.nn.EmbeddingBag(V, D, mode=mode, sparse=True, padding_idx=padding_idx).to(tdtype)
    out = bag(torch.as_tensor(case.ids), torch.as_tensor(np.asarray(case.offsets, np.int64)))
    out.backward(torch.as_tensor(G))
    theirs = bag.weight.grad.coalesce()
    t_rows, t_values = theirs.indices().numpy()[0], theirs.values().numpy()
    assert case.pad_row not in t_rows  # torch leaves padding out too
    k = require(kernel_name, mode, wdtype, op=BACKWARD)
    sg = run_sparse_backward(k, case, G, None, mode)
    np.testing.assert_array_equal(t_rows, sg.rows)
    # both within (k + 2) eps sum|c g| of the float64 sum: k contributions, c's rounding
    mag = kernels.LOOKUP_BAG_GRAD.reference(np.abs(G), case.ids, case.offsets, V,
                                            **case.kwargs(mode))[sg.rows]
    kept = case.flat_ids[case.flat_ids != case.pad_row] if padding_idx is not None \
        else case.flat_ids
    count = np.bincount(kept, minlength=V)[sg.rows][:, None]
    tol = 2 * (count + 2) * float(np.finfo(wdtype).eps) * mag
    assert np.all(np.abs(sg.values.astype(np.float64) - t_values) <= tol), "ours vs torch's"


# --------------------------------------------------------------------------
# 6. bad input: the dense path's error, inputs unchanged; out= refused
# --------------------------------------------------------------------------


def _grad_cases():
    """(label, grad, ids, vocab_size) of bad lookup_grad calls, from tests/test_errors.py."""
    cases = []
    for label, ids in NON_INTEGER_IDS.items():
        cases.append((f"ids_{label}", np.ones(np.shape(ids) + (3,)), ids, 5))
    for label, (ids, V, _, _) in OUT_OF_RANGE.items():
        cases.append((f"range_{label}", np.ones(np.shape(ids) + (3,), np.float32), ids, V))
    for dt in BAD_GRAD_DTYPES:
        cases.append((f"grad_{dt}", np.ones((3, 2), dt), np.array([0, 1, 2]), 5))
    for label, (ids_shape, grad_shape) in BAD_GRAD_SHAPES.items():
        cases.append((f"shape_{label}", np.ones(grad_shape), np.zeros(ids_shape, np.int64), 5))
    for V in (3.0, "3", None, 3.5, True, -1, 2**63):
        cases.append((f"vocab_size_{V!r}", np.ones((2, 2)), np.array([0, 1]), V))
    cases.append(("grad_big_endian", np.ones((2, 2), ">f8"), np.array([0, 1]), 3))
    cases.append(("grad_list_of_ints", [[1, 2]], np.array([0]), 3))
    return cases


GRAD_CASES = _grad_cases()


@pytest.mark.parametrize("label,grad,ids,V", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_bad_lookup_grad_input_raises_the_dense_paths_error(kernel_name, label, grad, ids, V):
    before = [np.array(x, copy=True) for x in (grad, ids)]
    dense = outcome(lambda: kernels.lookup_grad(grad, ids, V, kernel=kernel_name))
    sparse = outcome(lambda: kernels.lookup_grad(grad, ids, V, kernel=kernel_name, sparse=True))
    assert dense[0] is not None, "test bug: the dense call succeeded"
    assert sparse == dense
    for x, b in zip((grad, ids), before):
        np.testing.assert_array_equal(np.asarray(x), b)


def test_bad_lookup_grad_input_with_auto_raises_the_dense_paths_error():
    for label, grad, ids, V in GRAD_CASES:
        dense = outcome(lambda: kernels.lookup_grad(grad, ids, V, kernel="auto"))
        sparse = outcome(lambda: kernels.lookup_grad(grad, ids, V, kernel="auto", sparse=True))
        assert sparse == dense, label


BAG_GRAD_CASES = [pytest.param(c, id=c.label) for c in BAD_INPUTS]


@pytest.mark.parametrize("case", BAG_GRAD_CASES)
def test_bad_bag_grad_input_raises_the_dense_paths_error(kernel_name, case):
    """Every bad bag call of tests/test_bags.py, as a backward call (forward-only arguments are
    dropped): the sparse path's outcome is the dense path's."""
    args = case.arguments()
    if case.op != BACKWARD:
        args = dict(grad_out=np.ones((3, 3), np.float32), ids=args["ids"],
                    offsets=args["offsets"], vocab_size=6,
                    **{a: v for a, v in case.changes
                       if a in ("mode", "per_sample_weights", "padding_idx",
                                "include_last_offset", "weights")})
        args.setdefault("weights", np.asarray(case.arguments()["weights"]))
    snapshot = {a: np.array(v, copy=True) for a, v in args.items()
                if isinstance(v, np.ndarray)}
    k = kernels.KERNELS[kernel_name]
    dense = outcome(lambda: k.lookup_bag_grad(**args))
    sparse = outcome(lambda: k.lookup_bag_grad(**args, sparse=True))
    top = outcome(lambda: kernels.lookup_bag_grad(**args, sparse=True, kernel=kernel_name))
    if dense[0] is None:
        assert sparse[0] is None and top[0] is None
    else:
        assert sparse == dense and top == dense
    for a, v in snapshot.items():
        assert args[a].dtype == v.dtype and args[a].tobytes() == v.tobytes(), a


def test_out_with_sparse_raises_value_error_and_leaves_out_untouched(kernel_name, wdtype):
    k = kernels.KERNELS[kernel_name]
    grad = np.ones((3, 2), wdtype)
    ids = np.array([0, 1, 1])
    W = make_weights(4, 2, wdtype)
    calls = [
        lambda out: k.lookup_grad(grad, ids, 4, sparse=True, out=out),
        lambda out: kernels.lookup_grad(grad, ids, 4, sparse=True, kernel=kernel_name, out=out),
        lambda out: kernels.lookup_grad(grad, ids, 4, sparse=True, kernel="auto", out=out),
        lambda out: k.lookup_bag_grad(grad, ids, [0, 1, 1], 4, sparse=True, out=out),
        lambda out: kernels.lookup_bag_grad(grad, ids, [0, 1, 1], weights=W, sparse=True,
                                            kernel="auto", out=out),
    ]
    for call in calls:
        out = sentinel_like((4, 2), wdtype)
        with pytest.raises(ValueError, match="out= cannot be used with sparse=True"):
            call(out)
        assert_untouched(out)


@pytest.mark.parametrize("flag", [1, 0, "yes", None, 1.0], ids=repr)
def test_sparse_must_be_a_bool(kernel_name, flag):
    k = kernels.KERNELS[kernel_name]
    ids = np.array([0, 1])
    with pytest.raises(TypeError, match="sparse must be a bool"):
        k.lookup_grad(np.ones((2, 2)), ids, 3, sparse=flag)
    with pytest.raises(TypeError, match="sparse must be a bool"):
        k.lookup_bag_grad(np.ones((1, 2)), ids, [0], 3, sparse=flag)


# --------------------------------------------------------------------------
# 7. SparseGrad itself
# --------------------------------------------------------------------------


def test_constructor_keeps_valid_arguments():
    values = np.arange(6, dtype=np.float32).reshape(3, 2)
    sg = SparseGrad(np.array([0, 4, 9]), values, 10)
    assert sg.rows.dtype == np.int64 and sg.values is values and sg.vocab_size == 10
    assert (sg.dim, sg.dtype, sg.nnz, sg.shape) == (2, np.float32, 3, (10, 2))
    expected = np.zeros((10, 2), np.float32)
    expected[[0, 4, 9]] = values
    assert_bitwise_equal(sg.to_dense(), expected)
    assert SparseGrad([], np.zeros((0, 5)), 0).nnz == 0
    assert SparseGrad(np.array([2], np.uint8), [[1.0]], np.int64(3)).rows.dtype == np.int64


def test_repr_is_short_and_names_the_sizes():
    sg = SparseGrad(np.array([1, 2]), np.zeros((2, 7)), HUGE_V)
    r = repr(sg)
    assert r == f"SparseGrad(vocab_size={HUGE_V}, dim=7, nnz=2, dtype=float64)"


BAD_CONSTRUCTIONS = {
    # label: (rows, values, vocab_size, exception, message fragment)
    "rows_float": (np.array([0.0, 1.0]), np.zeros((2, 2)), 5, TypeError,
                   "rows must have an integer"),
    "rows_2d": (np.array([[0, 1]]), np.zeros((2, 2)), 5, ValueError, "rows must be 1-D"),
    "rows_unsorted": (np.array([2, 1]), np.zeros((2, 2)), 5, ValueError, "sorted and strictly"),
    "rows_repeated": (np.array([1, 1]), np.zeros((2, 2)), 5, ValueError, "sorted and strictly"),
    "rows_negative": (np.array([-1, 1]), np.zeros((2, 2)), 5, ValueError,
                      r"rows must lie within \[0, vocab_size\) = \[0, 5\), got -1"),
    "rows_at_vocab_size": (np.array([1, 5]), np.zeros((2, 2)), 5, ValueError, "got 5"),
    "rows_uint64_huge": (np.array([2**64 - 1], np.uint64), np.zeros((1, 2)), 5, ValueError,
                         "rows must lie within"),
    "values_int": (np.array([0, 1]), np.zeros((2, 2), np.int64), 5, TypeError,
                   "values must be float32 or float64"),
    "values_float16": (np.array([0, 1]), np.zeros((2, 2), np.float16), 5, TypeError,
                       "values must be float32 or float64"),
    "values_big_endian": (np.array([0, 1]), np.zeros((2, 2), ">f4"), 5, TypeError, "values must"),
    "values_1d": (np.array([0, 1]), np.zeros(2), 5, ValueError,
                  r"values must have shape \(len\(rows\), dim\) = \(2, dim\), got \(2,\)"),
    "values_rows_mismatch": (np.array([0, 1]), np.zeros((3, 2)), 5, ValueError, "values must have"),
    "vocab_size_negative": (np.array([0]), np.zeros((1, 2)), -1, ValueError, "vocab_size must be"),
    "vocab_size_float": (np.array([0]), np.zeros((1, 2)), 5.0, TypeError, "vocab_size must be"),
    "vocab_size_bool": (np.array([0]), np.zeros((1, 2)), True, TypeError, "vocab_size must be"),
}


@pytest.mark.parametrize("label", list(BAD_CONSTRUCTIONS))
def test_constructor_validates_its_arguments(label):
    rows, values, V, exc, match = BAD_CONSTRUCTIONS[label]
    with pytest.raises(exc, match=match):
        SparseGrad(rows, values, V)

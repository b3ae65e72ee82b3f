"""Backward contract: lookup_grad(grad, ids, V) scatter-adds grad rows into a
fresh (V, D) zero table; duplicates accumulate; `out` is overwritten."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import kernels
from conftest import (
    IDS_DTYPES,
    assert_bitwise_equal,
    assert_grad_close,
    dtype_id,
    grad_reference,
    random_ids,
    sentinel_like,
)


def _grad(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def test_duplicate_ids_accumulate_three_times_the_row(kernel, wdtype):
    g = np.array([0.1, -2.5, 3.0, 1e-3], dtype=wdtype)
    grad = np.stack([g, g, g])
    got = kernel.lookup_grad(grad, [1, 1, 1], 3)
    expected = np.zeros((3, 4), dtype=wdtype)
    expected[1] = 3 * g  # round(3g) == (g + g) + g == g + (g + g)
    assert_bitwise_equal(got, expected)


def test_duplicate_ids_with_different_rows_sum_them(kernel, wdtype, rng):
    grad = _grad(rng, (5, 6), wdtype)
    ids = np.array([2, 0, 2, 2, 0])
    got = kernel.lookup_grad(grad, ids, 4)
    assert_grad_close(got, grad, ids, 4)
    ref, _, _ = grad_reference(grad, ids, 4)
    assert np.all(got[[1, 3]] == 0)
    # really a sum, not "last write wins" or "first write wins"
    assert not np.allclose(got[2], grad[3]) and not np.allclose(got[2], grad[0])
    np.testing.assert_allclose(got[2], ref[2], rtol=1e-5)


@pytest.mark.parametrize("ids_dtype", IDS_DTYPES, ids=dtype_id)
def test_uniform_ids_within_summation_bound(kernel, wdtype, ids_dtype, rng):
    V, n, D = 100, 5000, 8
    ids = random_ids(rng, (n,), V, ids_dtype)
    grad = _grad(rng, (n, D), wdtype)
    assert_grad_close(kernel.lookup_grad(grad, ids, V), grad, ids, V)


def test_zipf_ids_within_summation_bound(kernel, wdtype):
    V, n, D = 1000, 50_000, 16
    ids = np.random.default_rng(0).zipf(1.1, n) % V
    grad = _grad(np.random.default_rng(1), (n, D), wdtype)
    assert_grad_close(kernel.lookup_grad(grad, ids, V), grad, ids, V)


def test_all_ids_equal_within_summation_bound(kernel, wdtype, rng):
    V, n, D = 5, 10_000, 8
    ids = np.full(n, 3, dtype=np.int32)
    grad = _grad(rng, (n, D), wdtype)
    got = kernel.lookup_grad(grad, ids, V)
    assert_grad_close(got, grad, ids, V)
    assert np.all(got[[0, 1, 2, 4]] == 0)


@pytest.mark.parametrize("shape", [(0,), (2, 0, 3)], ids=repr)
def test_empty_ids_give_zero_table(kernel, wdtype, shape):
    grad = np.ones(shape + (4,), dtype=wdtype)
    got = kernel.lookup_grad(grad, np.zeros(shape, dtype=np.int64), 7)
    assert_bitwise_equal(got, np.zeros((7, 4), dtype=wdtype))


def test_empty_ids_with_out_overwrite_it_with_zeros(kernel, wdtype):
    out = sentinel_like((7, 4), wdtype)
    res = kernel.lookup_grad(np.ones((0, 4), wdtype), np.zeros(0, np.int8), 7, out=out)
    assert res is out
    assert_bitwise_equal(out, np.zeros((7, 4), dtype=wdtype))


@pytest.mark.parametrize("ids", [np.int64(2), np.array(2, dtype=np.uint8), 2], ids=repr)
def test_0d_ids_put_the_grad_row_in_place(kernel, wdtype, ids, rng):
    g = _grad(rng, (5,), wdtype)
    got = kernel.lookup_grad(g, ids, 4)
    expected = np.zeros((4, 5), dtype=wdtype)
    expected[2] = g
    assert_bitwise_equal(got, expected)


def test_vocab_size_one(kernel, wdtype, rng):
    grad = _grad(rng, (300, 3), wdtype)
    ids = np.zeros(300, dtype=np.uint16)
    got = kernel.lookup_grad(grad, ids, 1)
    assert got.shape == (1, 3)
    assert_grad_close(got, grad, ids, 1)


@pytest.mark.parametrize("dt", [np.float32, np.float64], ids=dtype_id)
def test_distinct_ids_are_exact(kernel, dt, rng):
    """float64 (spec) and float32 (each row receives a single contribution, so
    a scatter has nothing to round) are exact with distinct ids."""
    V, D = 200, 7
    ids = rng.permutation(V)[:150].reshape(10, 15)
    grad = _grad(rng, (10, 15, D), dt)
    expected = np.zeros((V, D), dtype=dt)
    expected[ids.reshape(-1)] = grad.reshape(-1, D)
    got = kernel.lookup_grad(grad, ids, V)
    assert got.dtype == dt and got.shape == (V, D)
    assert np.array_equal(got, expected), "distinct ids must be an exact scatter"


def test_results_are_deterministic_bitwise(kernel_name, wdtype):
    k = kernels.KERNELS[kernel_name]
    V = 50 if kernel_name == "onehot_dense" else 1000
    n = 300_000
    ids = np.random.default_rng(0).zipf(1.1, n) % V
    grad = _grad(np.random.default_rng(2), (n, 16), wdtype)
    a = k.lookup_grad(grad, ids, V)
    b = k.lookup_grad(grad, ids, V)
    assert_bitwise_equal(b, a, "second call vs first call")
    assert_grad_close(a, grad, ids, V)


def test_large_uniform_input_within_bound(kernel_name, wdtype):
    k = kernels.KERNELS[kernel_name]
    V = 50 if kernel_name == "onehot_dense" else 1000
    rng = np.random.default_rng(5)
    ids = rng.integers(0, V, size=(300, 1000)).astype(np.int32)
    grad = _grad(rng, (300, 1000, 16), wdtype)
    assert_grad_close(k.lookup_grad(grad, ids, V), grad, ids, V)


def test_out_is_overwritten_not_accumulated_and_returned(kernel, wdtype, rng):
    V, D = 9, 5
    ids = rng.integers(0, 6, size=40)  # rows 6..8 receive nothing
    grad = _grad(rng, (40, D), wdtype)
    fresh = kernel.lookup_grad(grad, ids, V)
    out = sentinel_like((V, D), wdtype)
    res = kernel.lookup_grad(grad, ids, V, out=out)
    assert res is out
    assert_bitwise_equal(out, fresh, "out vs fresh result")
    assert np.all(out[6:] == 0)
    # calling again with the same out must give the same bits (no accumulation)
    kernel.lookup_grad(grad, ids, V, out=out)
    assert_bitwise_equal(out, fresh, "out after a second call")


def test_out_works_through_every_entry_point(kernel_name, wdtype, rng):
    k = kernels.KERNELS[kernel_name]
    mod = importlib.import_module(f"kernels.{kernel_name}")
    ids = rng.integers(0, 6, size=(4, 5))
    grad = _grad(rng, (4, 5, 3), wdtype)
    expected = k.lookup_grad(grad, ids, 6)
    assert_grad_close(expected, grad, ids, 6)
    calls = {
        "method": lambda o: k.lookup_grad(grad, ids, 6, out=o),
        "module": lambda o: mod.lookup_grad(grad, ids, 6, out=o),
        "dispatch": lambda o: kernels.lookup_grad(grad, ids, 6, kernel=kernel_name, out=o),
        "dispatch_object": lambda o: kernels.lookup_grad(grad, ids, 6, kernel=k, out=o),
    }
    for what, call in calls.items():
        out = sentinel_like((6, 3), wdtype)
        assert call(out) is out, what
        assert_bitwise_equal(out, expected, what)
    for what, got in {
        "module": mod.lookup_grad(grad, ids, 6),
        "dispatch": kernels.lookup_grad(grad, ids, 6, kernel=kernel_name),
    }.items():
        assert_bitwise_equal(got, expected, what)


def test_dispatch_default_is_numpy_take(wdtype, rng):
    ids = rng.integers(0, 6, size=100)
    grad = _grad(rng, (100, 3), wdtype)
    assert_bitwise_equal(
        kernels.lookup_grad(grad, ids, 6),
        kernels.lookup_grad(grad, ids, 6, kernel="numpy_take"),
    )


@pytest.mark.parametrize("V", [np.int64(6), np.uint8(6), np.int32(6)], ids=repr)
def test_numpy_integer_vocab_size_is_accepted(kernel, V, rng):
    ids = rng.integers(0, 6, size=10)
    grad = _grad(rng, (10, 2), np.float64)
    got = kernel.lookup_grad(grad, ids, V)
    assert_grad_close(got, grad, ids, 6)


def test_zero_vocab_with_empty_ids(kernel, wdtype):
    got = kernel.lookup_grad(np.ones((0, 3), wdtype), np.zeros(0, np.int64), 0)
    assert got.shape == (0, 3) and got.dtype == wdtype


def test_zero_width_grad(kernel, wdtype):
    got = kernel.lookup_grad(np.ones((4, 0), wdtype), np.array([0, 1, 1, 2]), 3)
    assert got.shape == (3, 0) and got.dtype == wdtype


GRAD_LAYOUTS = {
    "column_slice": lambda g: g[:, ::2],
    "reversed_rows": lambda g: g[::-1],
    "fortran": np.asfortranarray,
    "both_negative": lambda g: g[::-1, ::-2],
}


@pytest.mark.parametrize("layout", list(GRAD_LAYOUTS))
def test_non_contiguous_grad_and_ids(kernel, wdtype, layout, rng):
    base = _grad(rng, (60, 8), wdtype)
    grad = GRAD_LAYOUTS[layout](base)
    ids = rng.integers(0, 10, size=120).astype(np.int16)[::2]
    assert_grad_close(kernel.lookup_grad(grad, ids, 10), grad, ids, 10)


def test_read_only_grad_and_ids_work_and_are_not_modified(kernel, wdtype, rng):
    grad = _grad(rng, (30, 4), wdtype)
    ids = rng.integers(0, 7, size=30)
    grad.flags.writeable = False
    ids.flags.writeable = False
    g0, i0 = grad.copy(), ids.copy()
    assert_grad_close(kernel.lookup_grad(grad, ids, 7), grad, ids, 7)
    assert_bitwise_equal(grad, g0, "grad")
    assert np.array_equal(ids, i0)


def test_empty_python_list_ids_give_zero_table(kernel, wdtype):
    # like numpy's W[[]], an empty list of ids is an empty set of positions
    got = kernel.lookup_grad(np.ones((0, 3), wdtype), [], 4)
    assert_bitwise_equal(got, np.zeros((4, 3), wdtype))


@pytest.mark.parametrize("ids", [[0, 2, 2], [[1], [1]], 1], ids=repr)
def test_python_ids_work(kernel, wdtype, ids, rng):
    a = np.asarray(ids)
    grad = _grad(rng, a.shape + (3,), wdtype)
    assert_grad_close(kernel.lookup_grad(grad, ids, 4), grad, a, 4)


def test_every_kernel_gives_the_same_gradient_within_bound(wdtype):
    rng = np.random.default_rng(9)
    ids = rng.integers(0, 30, size=(20, 30))
    grad = _grad(rng, (20, 30, 6), wdtype)
    results = {name: k.lookup_grad(grad, ids, 30) for name, k in kernels.KERNELS.items()}
    for name, got in results.items():
        try:
            assert_grad_close(got, grad, ids, 30)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


def test_backward_is_the_adjoint_of_forward(kernel, rng):
    """<lookup(W, ids), G> == <W, lookup_grad(G, ids, V)> (float64)."""
    V, D = 40, 5
    W = rng.standard_normal((V, D))
    ids = rng.integers(0, V, size=(7, 9))
    G = rng.standard_normal((7, 9, D))
    lhs = float(np.sum(kernel(W, ids) * G))
    rhs = float(np.sum(W * kernel.lookup_grad(G, ids, V)))
    assert abs(lhs - rhs) <= 1e-9 * (1 + abs(lhs))

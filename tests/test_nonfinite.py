"""Documented differences between the kernels for non-finite weights and -0.0.

* numpy_take, numba_gather, cython_gather: exactly W[ids], bit for bit,
  including inf, nan (with its payload) and -0.0.
* onehot_sparse: inf/nan only where W[ids] has them; -0.0 comes back as +0.0.
* onehot_dense: onehot @ W, so a non-finite W[r, c] reaches every output row
  of the (small, single-block) input through 0 * inf = nan; -0.0 -> +0.0.
"""

from __future__ import annotations

import numpy as np
import pytest

import kernels
from conftest import GATHER_KERNEL_NAMES, ONEHOT_KERNEL_NAMES, assert_bitwise_equal, make_weights

# onehot_dense's matmul warns about the 0 * inf it computes; that is the point.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

UINT = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}


def _nan_with_payload(dtype, negative=False, signaling=False):
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        bits = (0x7F800001 if signaling else 0x7FC00123) | (0x80000000 if negative else 0)
    else:
        bits = (0x7FF0000000000001 if signaling else 0x7FF8000000000123) | (
            0x8000000000000000 if negative else 0
        )
    return np.array([bits], dtype=UINT[dtype]).view(dtype)[0]


def _weights_with_specials(dtype):
    W = make_weights(12, 6, dtype, seed=21)
    W[1, 0] = np.inf
    W[2, 1] = -np.inf
    W[3, 2] = _nan_with_payload(dtype)
    W[4, 3] = _nan_with_payload(dtype, negative=True)
    W[5, 4] = _nan_with_payload(dtype, signaling=True)
    W[6, 5] = -0.0
    W[7, :] = -0.0
    W[8, 0] = np.finfo(dtype).max
    W[9, 1] = np.finfo(dtype).smallest_subnormal
    W[10, 2] = -np.finfo(dtype).smallest_subnormal
    return W


@pytest.mark.parametrize("name", GATHER_KERNEL_NAMES)
def test_gather_kernels_copy_inf_nan_and_negative_zero_bitwise(name, wdtype, rng):
    W = _weights_with_specials(wdtype)
    ids = np.concatenate([np.arange(12), rng.integers(0, 12, size=40)]).reshape(4, 13)
    assert_bitwise_equal(kernels.KERNELS[name](W, ids), W[ids])


@pytest.mark.parametrize("name", GATHER_KERNEL_NAMES)
def test_gather_kernels_copy_specials_bitwise_on_the_parallel_path(name, wdtype):
    W = _weights_with_specials(wdtype)
    ids = np.random.default_rng(3).integers(0, 12, size=300_000)
    out = np.empty((300_000, 6), wdtype)
    assert kernels.KERNELS[name](W, ids, out=out) is out
    assert_bitwise_equal(out, W[ids])


@pytest.mark.parametrize("name", GATHER_KERNEL_NAMES)
def test_gather_kernels_keep_negative_zero(name, wdtype):
    W = make_weights(4, 3, wdtype)
    W[2] = -0.0
    got = kernels.KERNELS[name](W, [2, 0, 2])
    assert np.all(np.signbit(got[[0, 2]]))
    assert_bitwise_equal(got, W[[2, 0, 2]])


@pytest.mark.parametrize("name", ONEHOT_KERNEL_NAMES)
def test_onehot_kernels_return_positive_zero_for_negative_zero(name, wdtype, rng):
    W = make_weights(10, 5, wdtype, seed=2)
    W[3] = -0.0
    W[6, 1] = -0.0
    ids = np.array([3, 6, 0, 3, 9, 6, 6])
    got = kernels.KERNELS[name](W, ids)
    expected = W[ids] + wdtype.type(0.0)  # -0.0 + 0.0 == +0.0, everything else unchanged
    assert np.any(np.signbit(W[ids]) & (W[ids] == 0))  # the test really has -0.0 in W[ids]
    assert_bitwise_equal(got, expected)
    assert not np.any(np.signbit(got[W[ids] == 0]))


def test_onehot_sparse_has_non_finite_values_only_where_the_gather_has_them(wdtype, rng):
    W = _weights_with_specials(wdtype)
    W[7, :] = 1.5  # no -0.0 here: that difference is tested separately
    W[6, 5] = 2.5
    ids = np.concatenate([np.arange(12), rng.integers(0, 12, size=40)]).reshape(13, 4)
    got = kernels.KERNELS["onehot_sparse"](W, ids)
    ref = W[ids]
    assert got.shape == ref.shape and got.dtype == ref.dtype
    assert np.array_equal(np.isnan(got), np.isnan(ref)), "NaN pattern differs from W[ids]"
    assert np.array_equal(np.isposinf(got), np.isposinf(ref)), "+inf pattern differs"
    assert np.array_equal(np.isneginf(got), np.isneginf(ref)), "-inf pattern differs"
    finite = np.isfinite(ref)
    assert_bitwise_equal(got[finite], ref[finite], "finite entries")


def test_onehot_sparse_does_not_spread_from_rows_that_are_not_gathered(wdtype):
    W = make_weights(8, 4, wdtype)
    W[5, 2] = np.inf
    W[6, 1] = np.nan
    ids = np.array([0, 1, 2, 3, 7, 4])
    got = kernels.KERNELS["onehot_sparse"](W, ids)
    assert np.all(np.isfinite(got))
    assert_bitwise_equal(got, W[ids])


DENSE = "onehot_dense"


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan], ids=["inf", "-inf", "nan"])
def test_onehot_dense_non_finite_in_ungathered_row_turns_whole_column_nan(wdtype, value):
    W = make_weights(8, 4, wdtype)
    W[5, 2] = value
    ids = np.array([0, 1, 2, 3, 7, 4, 0])  # row 5 is never gathered
    got = kernels.KERNELS[DENSE](W, ids)
    assert np.all(np.isnan(got[:, 2])), got[:, 2]
    others = [0, 1, 3]
    assert_bitwise_equal(
        np.ascontiguousarray(got[:, others]), W[ids][:, others], "unaffected columns"
    )


@pytest.mark.parametrize("sign", [1, -1], ids=["inf", "-inf"])
def test_onehot_dense_inf_in_gathered_row_spreads_nan_to_the_other_rows(wdtype, sign):
    W = make_weights(8, 4, wdtype)
    W[5, 1] = sign * np.inf
    ids = np.array([0, 5, 2, 5, 7])
    got = kernels.KERNELS[DENSE](W, ids)
    from_r = ids == 5
    # rows gathered from other rows: 1 * W[j, 1] + 0 * inf = nan
    assert np.all(np.isnan(got[~from_r, 1])), got[:, 1]
    # rows gathered from row 5 itself: 1 * inf + 0 * (finite) = inf (IEEE)
    assert np.all(got[from_r, 1] == sign * np.inf), got[:, 1]
    others = [0, 2, 3]
    assert_bitwise_equal(
        np.ascontiguousarray(got[:, others]), W[ids][:, others], "unaffected columns"
    )


def test_onehot_dense_nan_in_gathered_row_turns_whole_column_nan(wdtype):
    W = make_weights(8, 4, wdtype)
    W[5, 3] = np.nan
    ids = np.array([5, 0, 5, 6])
    got = kernels.KERNELS[DENSE](W, ids)
    assert np.all(np.isnan(got[:, 3]))
    assert_bitwise_equal(np.ascontiguousarray(got[:, :3]), W[ids][:, :3], "unaffected columns")


def test_onehot_dense_opposite_infinities_make_whole_column_nan(wdtype):
    W = make_weights(8, 4, wdtype)
    W[2, 0] = np.inf
    W[6, 0] = -np.inf
    got = kernels.KERNELS[DENSE](W, np.array([2, 6, 1]))
    assert np.all(np.isnan(got[:, 0]))


def test_onehot_dense_single_gathered_row_keeps_its_inf(wdtype):
    """If the only gathered row is the inf row, there is nothing to spread to."""
    W = make_weights(8, 4, wdtype)
    W[5, 1] = np.inf
    got = kernels.KERNELS[DENSE](W, np.array([5, 5]))
    assert np.all(got[:, 1] == np.inf)
    assert_bitwise_equal(np.ascontiguousarray(got[:, [0, 2, 3]]), W[[5, 5]][:, [0, 2, 3]])


def test_gathers_do_not_spread_where_onehot_dense_does(wdtype):
    """The same input, side by side: the documented difference is real."""
    W = make_weights(8, 4, wdtype)
    W[5, 2] = np.inf
    ids = np.array([0, 1, 5])
    dense = kernels.KERNELS[DENSE](W, ids)
    assert np.isnan(dense[0, 2]) and np.isnan(dense[1, 2])
    for name in GATHER_KERNEL_NAMES + ["onehot_sparse"]:
        got = kernels.KERNELS[name](W, ids)
        assert np.all(np.isfinite(got[:2])), name
        assert got[2, 2] == np.inf, name

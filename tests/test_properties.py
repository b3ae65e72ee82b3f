"""Property tests: for random ids dtypes, shapes, values (in and out of range),
vocab sizes, widths and weight dtypes, every kernel either equals W[ids] bit for
bit, or raises the same IndexError naming the first offending id."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kernels
from conftest import (
    IDS_DTYPES,
    SENTINEL,
    assert_bitwise_equal,
    assert_grad_close,
    expected_index_message,
    first_out_of_range,
)

SETTINGS = settings(
    max_examples=400,
    deadline=None,
    database=None,  # leave no .hypothesis/ directory in the repo
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def cases(draw):
    ids_dtype = np.dtype(draw(st.sampled_from(IDS_DTYPES)))
    V = draw(st.integers(1, 50))
    D = draw(st.integers(0, 5))
    wdtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    info = np.iinfo(ids_dtype)
    hi_valid = min(V, int(info.max) + 1) - 1
    valid = st.integers(0, hi_valid)
    invalid = st.one_of(
        st.integers(max(int(info.min), -3), -1) if info.min < 0 else st.nothing(),
        st.integers(V, min(int(info.max), V + 3)) if info.max >= V else st.nothing(),
        st.sampled_from(sorted({int(info.min), int(info.max)} - set(range(0, V)))),
    )
    # mostly valid ids; an out-of-range one in roughly a third of the elements
    elements = st.one_of(valid, valid, invalid)
    ids = draw(hnp.arrays(ids_dtype, shape, elements=elements))
    weights = draw(
        hnp.arrays(
            wdtype,
            (V, D),
            elements=st.floats(
                allow_nan=False, allow_infinity=False, width=8 * wdtype.itemsize
            ).map(lambda x: x + 0.0),  # -0.0 -> +0.0 (documented difference)
        )
    )
    layout = draw(st.sampled_from(["c", "f", "reversed"]))
    if layout == "f":
        weights = np.asfortranarray(weights)
    elif layout == "reversed":
        weights = weights[::-1].copy()[::-1]
    use_out = draw(st.booleans())
    return ids, weights, use_out


@SETTINGS
@given(cases())
def test_every_kernel_equals_fancy_indexing_or_raises_the_same_index_error(case):
    ids, W, use_out = case
    V, D = W.shape
    bad = first_out_of_range(ids, V)
    if bad is None:
        expected = W[ids]
        for name, k in kernels.KERNELS.items():
            out = np.full(ids.shape + (D,), SENTINEL, W.dtype) if use_out else None
            got = k(W, ids, out=out)
            if use_out:
                assert got is out
            assert_bitwise_equal(got, expected, name)
    else:
        msg = expected_index_message(ids, V)
        for name, k in kernels.KERNELS.items():
            out = np.full(ids.shape + (D,), SENTINEL, W.dtype)
            try:
                k(W, ids, out=out)
            except IndexError as e:
                assert str(e) == msg, f"{name}: {e}"
            else:
                raise AssertionError(f"{name} did not raise IndexError for {ids!r}")
            assert np.all(out == SENTINEL), f"{name} wrote to out before raising"


@SETTINGS
@given(cases())
def test_every_kernel_gradient_is_within_bound_or_raises_the_same_index_error(case):
    ids, W, _ = case
    V, D = W.shape
    rng = np.random.default_rng(ids.size * 31 + V * 7 + D)
    grad = rng.standard_normal(ids.shape + (D,)).astype(W.dtype)
    bad = first_out_of_range(ids, V)
    if bad is None:
        for name, k in kernels.KERNELS.items():
            got = k.lookup_grad(grad, ids, V)
            try:
                assert_grad_close(got, grad, ids, V)
            except AssertionError as e:
                raise AssertionError(f"{name}: {e}") from None
    else:
        msg = expected_index_message(ids, V)
        for name, k in kernels.KERNELS.items():
            out = np.full((V, D), SENTINEL, W.dtype)
            try:
                k.lookup_grad(grad, ids, V, out=out)
            except IndexError as e:
                assert str(e) == msg, f"{name}: {e}"
            else:
                raise AssertionError(f"{name} did not raise IndexError for {ids!r}")
            assert np.all(out == SENTINEL), f"{name} wrote to out before raising"

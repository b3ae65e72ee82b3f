"""Property tests: for random ids dtypes, shapes, values (in and out of range),
vocab sizes, widths and weight dtypes, every kernel either equals W[ids] bit for
bit, or raises the same IndexError naming the first offending id."""

from __future__ import annotations

import numpy as np
import pytest
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


@st.composite
def aliased_calls(draw):
    """A forward or backward call whose inputs and output are views of one byte buffer, at
    random offsets: sometimes overlapping (the call must refuse, writing nothing), sometimes
    not (the call must give the same result as on private copies)."""
    kernel = draw(st.sampled_from(sorted(kernels.KERNELS) + ["auto"]))
    backward = draw(st.booleans())
    V, D, n = draw(st.integers(1, 6)), draw(st.integers(1, 4)), draw(st.integers(1, 8))
    ids_dtype = np.dtype(draw(st.sampled_from([np.int32, np.int64])))
    fdtype = np.dtype(np.float32)
    sizes = {"ids": n * ids_dtype.itemsize, "src": (n if backward else V) * D * 4,
             "out": (V if backward else n) * D * 4}
    total = sum(sizes.values()) + 64
    offsets = {k: draw(st.integers(0, (total - s) // 8)) * 8 for k, s in sizes.items()}
    return kernel, backward, V, D, n, ids_dtype, fdtype, sizes, offsets, total, draw(
        st.integers(0, 2**32 - 1))


def _overlap(a, b, sizes, offsets):
    return offsets[a] < offsets[b] + sizes[b] and offsets[b] < offsets[a] + sizes[a]


@SETTINGS
@given(aliased_calls())
def test_aliased_inputs_and_output_are_refused_or_computed_as_on_copies(case):
    kernel, backward, V, D, n, ids_dtype, fdtype, sizes, offsets, total, seed = case
    rng = np.random.default_rng(seed)
    buf = np.zeros(total, np.uint8)
    view = lambda name, dtype, shape: buf[offsets[name]:offsets[name] + sizes[name]].view(dtype).reshape(shape)  # noqa: E731
    src_values = rng.integers(-8, 8, (n if backward else V, D)).astype(fdtype)
    ids_values = rng.integers(0, V, n).astype(ids_dtype)
    src = view("src", fdtype, src_values.shape)
    src[...] = src_values
    ids = view("ids", ids_dtype, (n,))
    ids[...] = ids_values  # written last: ids wins where src and ids overlap
    out = view("out", fdtype, (V, D) if backward else (n, D))
    src_copy, ids_copy = src.copy(), ids.copy()
    if backward:
        want = kernels.lookup_grad(src_copy, ids_copy, V) if ids_copy.max() < V else None
        call = lambda: kernels.lookup_grad(src, ids, V, kernel=kernel, out=out)  # noqa: E731
    else:
        want = kernels.lookup(src_copy, ids_copy) if ids_copy.max() < V and ids_copy.min() >= 0 else None
        call = lambda: kernels.lookup(src, ids, kernel=kernel, out=out)  # noqa: E731
    if want is None:  # src overlapping ids put a float's bytes into an id: out of range
        return
    before = buf.copy()
    if _overlap("out", "ids", sizes, offsets) or _overlap("out", "src", sizes, offsets):
        with pytest.raises(ValueError, match="out must not overlap"):
            call()
        assert (buf == before).all(), "a refused call wrote into the buffer"
    else:
        got = call()
        assert got is out
        assert_grad_close(out, src_copy, ids_copy, V) if backward else assert_bitwise_equal(out, want)

"""Validation contract: identical error types/messages from every kernel,
forward and backward, raised before anything is written to `out`."""

from __future__ import annotations

import importlib
import re

import numpy as np
import pytest

import kernels
from conftest import (
    EXPECTED_KERNEL_NAMES,
    SENTINEL,
    assert_bitwise_equal,
    assert_untouched,
    index_error_message,
    make_weights,
    sentinel_like,
)

ENTRY_POINTS = ["kernel_call", "module_function", "dispatch"]


@pytest.fixture(params=ENTRY_POINTS)
def fwd(request, kernel_name):
    """forward(W, ids, out=None) through one of the public entry points."""
    k = kernels.KERNELS[kernel_name]
    mod = importlib.import_module(f"kernels.{kernel_name}")
    if request.param == "kernel_call":
        return lambda W, ids, out=None: k(W, ids, out=out)
    if request.param == "module_function":
        return lambda W, ids, out=None: mod.lookup(W, ids, out=out)
    return lambda W, ids, out=None: kernels.lookup(W, ids, kernel=kernel_name, out=out)


@pytest.fixture(params=ENTRY_POINTS)
def bwd(request, kernel_name):
    """backward(grad, ids, V, out=None) through one of the public entry points."""
    k = kernels.KERNELS[kernel_name]
    mod = importlib.import_module(f"kernels.{kernel_name}")
    if request.param == "kernel_call":
        return lambda g, ids, V, out=None: k.lookup_grad(g, ids, V, out=out)
    if request.param == "module_function":
        return lambda g, ids, V, out=None: mod.lookup_grad(g, ids, V, out=out)
    return lambda g, ids, V, out=None: kernels.lookup_grad(
        g, ids, V, kernel=kernel_name, out=out
    )


# --------------------------------------------------------------------------
# unknown kernel names
# --------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["numpy-take", "NUMPY_TAKE", "torch", ""])
def test_unknown_kernel_name_raises_value_error_naming_it_and_the_valid_names(bad):
    W = make_weights(5, 2, np.float64)
    for call in (
        lambda: kernels.lookup(W, [1], kernel=bad),
        lambda: kernels.lookup_grad(np.ones((1, 2)), [1], 5, kernel=bad),
    ):
        with pytest.raises(ValueError) as ei:
            call()
        msg = str(ei.value)
        assert repr(bad) in msg or (bad and bad in msg), msg
        for name in EXPECTED_KERNEL_NAMES:
            assert name in msg, f"valid name {name!r} not listed in: {msg}"


def test_unknown_kernel_name_leaves_out_untouched():
    W = make_weights(5, 2, np.float64)
    out = sentinel_like((1, 2), np.float64)
    with pytest.raises(ValueError):
        kernels.lookup(W, [1], kernel="nope", out=out)
    assert_untouched(out)


# --------------------------------------------------------------------------
# ids dtype
# --------------------------------------------------------------------------

NON_INTEGER_IDS = {
    "float64": np.array([0.0, 1.0]),
    "float32": np.array([0.0, 1.0], dtype=np.float32),
    "float16": np.array([0.0, 1.0], dtype=np.float16),
    "bool": np.array([True, False]),
    "object_of_ints": np.array([0, 1], dtype=object),
    "complex": np.array([0, 1], dtype=np.complex128),
    "str": np.array(["0", "1"]),
    "python_float_list": [0.0, 1.0],
    "python_bool_list": [True, False],
    "float64_scalar": np.float64(1.0),
    "bool_scalar": np.bool_(True),
    "float_0d": np.array(1.0),
}


def _ids_shape(ids):
    return np.shape(ids)


@pytest.mark.parametrize("case", list(NON_INTEGER_IDS))
def test_non_integer_ids_raise_type_error_forward(fwd, wdtype, case):
    ids = NON_INTEGER_IDS[case]
    W = make_weights(5, 3, wdtype)
    out = sentinel_like(_ids_shape(ids) + (3,), wdtype)
    with pytest.raises(TypeError) as ei:
        fwd(W, ids, out=out)
    msg = str(ei.value)
    assert "ids" in msg and "integer" in msg, msg
    assert_untouched(out)


@pytest.mark.parametrize("case", list(NON_INTEGER_IDS))
def test_non_integer_ids_raise_type_error_backward(bwd, wdtype, case):
    ids = NON_INTEGER_IDS[case]
    grad = np.ones(_ids_shape(ids) + (3,), dtype=wdtype)
    out = sentinel_like((5, 3), wdtype)
    with pytest.raises(TypeError) as ei:
        bwd(grad, ids, 5, out=out)
    msg = str(ei.value)
    assert "ids" in msg and "integer" in msg, msg
    assert_untouched(out)


# --------------------------------------------------------------------------
# ids out of range
# --------------------------------------------------------------------------


def _bad_3d():
    a = np.zeros((2, 3, 4), dtype=np.int32)
    a[1, 0, 2] = 7
    a[1, 2, 3] = -1
    return a


def _transposed():
    base = np.array([[0, 9], [-1, 0]], dtype=np.int64)
    return base.T  # C order of the view: 0, -1, 9, 0 -> -1 at (0, 1)


OUT_OF_RANGE = {
    # name: (ids, V, value, pos)
    "equal_to_V": ([0, 7], 7, 7, (1,)),
    "negative_one": ([-1], 7, -1, (0,)),
    "first_negative_then_large": ([3, -2, 9], 7, -2, (1,)),
    "first_large_then_negative": ([3, 9, -2], 7, 9, (1,)),
    "3d_position": (_bad_3d(), 7, 7, (1, 0, 2)),
    "0d_array": (np.array(7), 7, 7, ()),
    "numpy_scalar_negative": (np.int64(-1), 7, -1, ()),
    "python_int": (7, 7, 7, ()),
    "python_int_negative": (-3, 7, -3, ()),
    "python_nested_list": ([[0, 1], [8, 0]], 7, 8, (1, 0)),
    "uint64_2pow63": (np.array([1, 2**63], dtype=np.uint64), 5, 2**63, (1,)),
    "uint64_max": (np.array([2**64 - 1], dtype=np.uint64), 5, 2**64 - 1, (0,)),
    "int64_min": (np.array([0, -(2**63)], dtype=np.int64), 5, -(2**63), (1,)),
    "int64_max": (np.array([2**63 - 1], dtype=np.int64), 5, 2**63 - 1, (0,)),
    "int8_min": (np.array([1, -128], dtype=np.int8), 100, -128, (1,)),
    "int8_max": (np.array([127], dtype=np.int8), 100, 127, (0,)),
    "uint8_255_with_V_255": (np.array([254, 255], dtype=np.uint8), 255, 255, (1,)),
    "uint16_max": (np.array([65535], dtype=np.uint16), 1000, 65535, (0,)),
    "uint32_max": (np.array([0, 2**32 - 1], dtype=np.uint32), 1000, 2**32 - 1, (1,)),
    "int16_negative": (np.array([[0], [-32768]], dtype=np.int16), 9, -32768, (1, 0)),
    "vocab_size_zero": (np.array([0], dtype=np.int64), 0, 0, (0,)),
    "transposed_ids_c_order_of_view": (_transposed(), 5, -1, (0, 1)),
    "reversed_ids": (np.array([9, 0, 0, -1])[::-1], 5, -1, (0,)),
    "big_endian_ids": (np.array([1, 6], dtype=">i4"), 5, 6, (1,)),
}


@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_out_of_range_id_raises_index_error_naming_the_first_one(fwd, wdtype, case):
    ids, V, value, pos = OUT_OF_RANGE[case]
    W = make_weights(V, 3, wdtype)
    out = sentinel_like(np.shape(ids) + (3,), wdtype)
    with pytest.raises(IndexError) as ei:
        fwd(W, ids, out=out)
    assert str(ei.value) == index_error_message(value, pos, V)
    assert_untouched(out)


@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_out_of_range_id_raises_index_error_in_backward(bwd, wdtype, case):
    ids, V, value, pos = OUT_OF_RANGE[case]
    grad = np.ones(np.shape(ids) + (3,), dtype=wdtype)
    out = sentinel_like((V, 3), wdtype)
    with pytest.raises(IndexError) as ei:
        bwd(grad, ids, V, out=out)
    assert str(ei.value) == index_error_message(value, pos, V)
    assert_untouched(out)


def test_negative_ids_never_wrap_around(kernel, wdtype):
    W = make_weights(4, 2, wdtype)
    for bad in ([-1], [0, -4], np.array([-1], dtype=np.int8)):
        with pytest.raises(IndexError):
            kernel(W, bad)
        with pytest.raises(IndexError):
            kernel.lookup_grad(np.ones((len(bad), 2), dtype=wdtype), bad, 4)


_ID_DTYPES = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)


@pytest.mark.parametrize("dtype", _ID_DTYPES, ids=lambda d: np.dtype(d).name)
def test_the_shared_bounds_pass_agrees_with_python_ints_at_every_width_boundary(dtype):
    """kernels._bounds.any_out_of_range checks ids narrower than 64 bits in their own width (an
    unsigned maximum while V <= 2**(bits - 1), the minimum's sign above that): at each side of
    those boundaries, for the extreme values of the dtype, at every position of short and
    vectorized lengths, it says what Python's integers say."""
    from kernels._bounds import any_out_of_range

    info = np.iinfo(dtype)
    top = int(info.max)
    half = 1 << (8 * np.dtype(dtype).itemsize - 1)
    values = sorted({int(info.min), int(info.min) + 1, -1 if info.min < 0 else 0, 0, 1,
                     half // 2, half - 1, min(half, top), min(half + 1, top), top - 1, top})
    vocab_sizes = sorted({v for v in (0, 1, 2, half - 1, half, half + 1, top, top + 1, top + 2,
                                      2**31, 2**32 + 1, 2**63 - 1) if 0 <= v <= 2**63 - 1})
    seen = set()
    for V in vocab_sizes:
        good = [x for x in values if 0 <= x < V]
        fill = good[0] if good else None
        for n in (1, 7, 33, 100):
            for x in values:
                for pos in {0, n // 2, n - 1}:
                    if fill is None and n > 1:
                        continue
                    ids = np.full(n, fill if fill is not None else x, dtype=dtype)
                    ids[pos] = x
                    want = not 0 <= x < V
                    assert any_out_of_range(ids, V) is want, (dtype, V, n, pos, x)
                    seen.add((V, want))
        assert any_out_of_range(np.zeros(0, dtype), V) is False
    assert {want for _, want in seen} == {True, False}


LARGE_BAD_POSITIONS = {
    # positions -> values; the first (lowest) position must be reported
    "only_last": {299_999: 1000},
    "early_and_late": {5: -5, 250_000: 1000},
    "both_in_second_half": {160_000: 1001, 290_000: -1},
    "late_negative_then_later_large": {200_000: -7, 200_001: 5000},
}


@pytest.mark.parametrize("case", list(LARGE_BAD_POSITIONS))
def test_large_input_reports_first_bad_id_and_leaves_out_untouched(kernel_name, case):
    k = kernels.KERNELS[kernel_name]
    V = 50 if kernel_name == "onehot_dense" else 1000
    W = make_weights(V, 16, np.float32)
    ids = np.random.default_rng(1).integers(0, V, size=300_000)
    bad = LARGE_BAD_POSITIONS[case]
    for p, v in bad.items():
        assert not 0 <= v < V
        ids[p] = v
    first = min(bad)
    expected = index_error_message(int(ids[first]), (first,), V)
    out = sentinel_like((300_000, 16), np.float32)
    with pytest.raises(IndexError) as ei:
        k(W, ids, out=out)
    assert str(ei.value) == expected
    assert_untouched(out)

    grad = np.ones((300_000, 16), dtype=np.float32)
    gout = sentinel_like((V, 16), np.float32)
    with pytest.raises(IndexError) as ei:
        k.lookup_grad(grad, ids, V, out=gout)
    assert str(ei.value) == expected
    assert_untouched(gout)


# --------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------

BAD_NDIM_WEIGHTS = {
    "1d": np.ones(5),
    "3d": np.ones((5, 2, 3)),
    "0d": np.array(1.0),
    "1d_float32": np.ones(5, dtype=np.float32),
}


@pytest.mark.parametrize("case", list(BAD_NDIM_WEIGHTS))
def test_weights_not_2d_raise_value_error(fwd, case):
    W = BAD_NDIM_WEIGHTS[case]
    with pytest.raises(ValueError, match="2-D"):
        fwd(W, np.array([0, 0]))


BAD_DTYPE_WEIGHTS = ["int32", "int64", "uint8", "float16", "complex64", "complex128", "bool"]


@pytest.mark.parametrize("dt", BAD_DTYPE_WEIGHTS)
def test_weights_with_wrong_dtype_raise_type_error(fwd, dt):
    W = np.ones((5, 3), dtype=dt)
    out = sentinel_like((2, 3), np.float64)
    with pytest.raises(TypeError, match="float32 or float64"):
        fwd(W, np.array([0, 1]), out=out)
    assert_untouched(out)


# --------------------------------------------------------------------------
# bad out (forward)
# --------------------------------------------------------------------------


def _bad_forward_outs(W, ids):
    n, D = ids.shape[0], W.shape[1]
    dt = W.dtype
    other = np.float64 if dt == np.float32 else np.float32
    ro = sentinel_like((n, D), dt)
    ro.flags.writeable = False
    wide = sentinel_like((n, 2 * D), dt)
    return {
        "python_list": [[SENTINEL] * D for _ in range(n)],
        "shape_rows_plus_one": sentinel_like((n + 1, D), dt),
        "shape_cols_plus_one": sentinel_like((n, D + 1), dt),
        "shape_flat": sentinel_like((n * D,), dt),
        "shape_transposed": sentinel_like((D, n), dt),
        "shape_extra_axis": sentinel_like((1, n, D), dt),
        "dtype_other_float": sentinel_like((n, D), other),
        "dtype_int": np.full((n, D), 12345, dtype=np.int64),
        "fortran_order": np.asfortranarray(sentinel_like((n, D), dt)),
        "column_strided": wide[:, ::2],
        "row_reversed": sentinel_like((n, D), dt)[::-1],
        "read_only": ro,
    }


BAD_OUT_CASES = list(_bad_forward_outs(np.ones((10, 4)), np.zeros(6, dtype=np.int64)))


def assert_rejected_out_untouched(out, shape):
    """A rejected `out` (an array, or a nested list standing in for one) still holds SENTINEL."""
    if isinstance(out, np.ndarray):
        assert_untouched(out)
    else:
        assert out == np.full(shape, SENTINEL).tolist()


@pytest.mark.parametrize("case", BAD_OUT_CASES)
def test_bad_out_raises_value_error_and_is_untouched(fwd, wdtype, case):
    W = make_weights(10, 4, wdtype)
    ids = np.array([1, 2, 3, 4, 5, 6])
    out = _bad_forward_outs(W, ids)[case]
    with pytest.raises(ValueError):
        fwd(W, ids, out=out)
    assert_rejected_out_untouched(out, (6, 4))


def test_out_with_wrong_shape_for_0d_ids_raises_value_error(fwd, wdtype):
    W = make_weights(10, 4, wdtype)
    out = sentinel_like((1, 4), wdtype)
    with pytest.raises(ValueError):
        fwd(W, np.int64(3), out=out)
    assert_untouched(out)


def test_fortran_out_for_3d_ids_raises_value_error(fwd, wdtype):
    W = make_weights(10, 4, wdtype)
    ids = np.zeros((2, 3, 5), dtype=np.int32)
    out = np.asfortranarray(sentinel_like((2, 3, 5, 4), wdtype))
    with pytest.raises(ValueError):
        fwd(W, ids, out=out)
    assert_untouched(out)


@pytest.mark.parametrize("where", ["head", "tail", "same_rows_as_ids"])
def test_out_overlapping_weights_raises_value_error(fwd, wdtype, where):
    W = make_weights(10, 4, wdtype)
    before = W.copy()
    ids = np.array([9, 8, 7])
    out = {"head": W[:3], "tail": W[7:], "same_rows_as_ids": W[7:10]}[where]
    assert out.flags.c_contiguous and out.flags.writeable
    with pytest.raises(ValueError):
        fwd(W, ids, out=out)
    assert_bitwise_equal(W, before, "weights (overlapping out must not be written)")


def test_out_that_is_the_whole_weights_table_raises_value_error(fwd, wdtype):
    W = make_weights(4, 3, wdtype)
    before = W.copy()
    with pytest.raises(ValueError):
        fwd(W, np.array([3, 2, 1, 0]), out=W)
    assert_bitwise_equal(W, before, "weights")


# --------------------------------------------------------------------------
# backward: grad, vocab_size, out
# --------------------------------------------------------------------------

BAD_GRAD_DTYPES = ["int32", "int64", "float16", "complex128", "bool"]


@pytest.mark.parametrize("dt", BAD_GRAD_DTYPES)
def test_grad_with_wrong_dtype_raises_type_error(bwd, dt):
    grad = np.ones((3, 2), dtype=dt)
    out = sentinel_like((5, 2), np.float64)
    with pytest.raises(TypeError):
        bwd(grad, np.array([0, 1, 2]), 5, out=out)
    assert_untouched(out)


BAD_GRAD_SHAPES = {
    # name: (ids shape, grad shape)
    "fewer_rows": ((5,), (4, 3)),
    "more_rows": ((5,), (6, 3)),
    "grad_1d": ((5,), (5,)),
    "grad_extra_axis": ((5,), (5, 1, 3)),
    "ids_2d_grad_flat": ((2, 3), (6, 3)),
    "ids_2d_grad_transposed": ((2, 3), (3, 2, 3)),
    "ids_0d_grad_2d": ((), (1, 3)),
    "ids_0d_grad_0d": ((), ()),
    "ids_empty_grad_nonempty": ((0,), (1, 3)),
}


@pytest.mark.parametrize("case", list(BAD_GRAD_SHAPES))
def test_grad_shape_not_ids_shape_plus_D_raises_value_error(bwd, wdtype, case):
    ids_shape, grad_shape = BAD_GRAD_SHAPES[case]
    ids = np.zeros(ids_shape, dtype=np.int64)
    grad = np.ones(grad_shape, dtype=wdtype)
    D = grad_shape[-1] if grad_shape else 1
    out = sentinel_like((5, D), wdtype)
    with pytest.raises(ValueError):
        bwd(grad, ids, 5, out=out)
    assert_untouched(out)


@pytest.mark.parametrize("V", [3.0, "3", None, np.float64(3.0), 3.5], ids=repr)
def test_non_integer_vocab_size_raises_type_error(bwd, V):
    with pytest.raises(TypeError):
        bwd(np.ones((2, 2)), np.array([0, 1]), V)


@pytest.mark.parametrize("V", [-1, -100, np.int64(-2)], ids=repr)
def test_negative_vocab_size_raises_value_error(bwd, V):
    with pytest.raises(ValueError):
        bwd(np.ones((0, 2)), np.zeros((0,), dtype=np.int64), V)


def _bad_backward_outs(V, D, dt):
    other = np.float64 if dt == np.float32 else np.float32
    ro = sentinel_like((V, D), dt)
    ro.flags.writeable = False
    return {
        "python_list": [[SENTINEL] * D for _ in range(V)],
        "shape_rows_plus_one": sentinel_like((V + 1, D), dt),
        "shape_cols_plus_one": sentinel_like((V, D + 1), dt),
        "shape_transposed": sentinel_like((D, V), dt),
        "shape_flat": sentinel_like((V * D,), dt),
        "dtype_other_float": sentinel_like((V, D), other),
        "dtype_int": np.full((V, D), 12345, dtype=np.int64),
        "fortran_order": np.asfortranarray(sentinel_like((V, D), dt)),
        "column_strided": sentinel_like((V, 2 * D), dt)[:, ::2],
        "read_only": ro,
    }


@pytest.mark.parametrize("case", list(_bad_backward_outs(5, 3, np.float64)))
def test_bad_grad_out_raises_value_error_and_is_untouched(bwd, wdtype, case):
    out = _bad_backward_outs(5, 3, wdtype)[case]
    grad = np.ones((4, 3), dtype=wdtype)
    with pytest.raises(ValueError):
        bwd(grad, np.array([0, 1, 1, 4]), 5, out=out)
    assert_rejected_out_untouched(out, (5, 3))


def test_grad_out_overlapping_grad_raises_value_error(bwd, wdtype):
    grad = make_weights(8, 3, wdtype)
    before = grad.copy()
    out = grad[:5]
    with pytest.raises(ValueError):
        bwd(grad, np.array([0, 1, 2, 3, 4, 0, 1, 2]), 5, out=out)
    assert_bitwise_equal(grad, before, "grad (overlapping out must not be written)")


def test_every_kernel_raises_the_same_messages(wdtype):
    """Cross-check: the five kernels produce identical (type, message) pairs."""
    W = make_weights(6, 2, wdtype)
    cases = [
        lambda k: k(W, np.array([0, 6])),
        lambda k: k(W, np.array([0.0])),
        lambda k: k(W[0], np.array([0])),
        lambda k: k(W.astype(np.int32), np.array([0])),
        lambda k: k.lookup_grad(np.ones((2, 2), wdtype), np.array([0, -1]), 6),
        lambda k: k.lookup_grad(np.ones((2, 2), wdtype), np.array([True, False]), 6),
    ]
    for i, case in enumerate(cases):
        seen = {}
        for name, k in kernels.KERNELS.items():
            try:
                case(k)
            except Exception as e:  # noqa: BLE001 - we compare what is raised
                seen[name] = (type(e), str(e))
            else:
                seen[name] = (None, "no exception")
        assert len(set(seen.values())) == 1, f"case {i}: kernels disagree: {seen}"
        assert next(iter(seen.values()))[0] is not None


def test_index_error_message_contains_no_numpy_scalar_repr(kernel):
    W = make_weights(3, 2, np.float64)
    for ids in (np.array([5], dtype=np.int64), np.array([2**63], dtype=np.uint64), np.int32(9)):
        with pytest.raises(IndexError) as ei:
            kernel(W, ids)
        assert not re.search(r"np\.|int64\(|uint64\(|int32\(", str(ei.value)), str(ei.value)

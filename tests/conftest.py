"""Shared fixtures and helpers for the `kernels` contract test suite.

The suite checks the public contract of the package (see the spec in the
package docs): five embedding-lookup kernels that all compute ``W[ids]``
(forward) and a scatter-add of ``grad`` rows (backward), with identical
validation and error messages.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import kernels
from kernels import _registry as kernels_registry
from kernels._ops import LOOKUP_GRAD

KERNEL_NAMES = sorted(kernels.KERNELS)
EXPECTED_KERNEL_NAMES = {
    "onehot_dense",
    "onehot_sparse",
    "numpy_take",
    "numba_gather",
    "cython_gather",
}
GATHER_KERNEL_NAMES = sorted(kernels_registry.names(family="gather"))
ONEHOT_KERNEL_NAMES = sorted(kernels_registry.names(family="onehot"))
COMPILED_KERNEL_NAMES = sorted(kernels_registry.names(compiled=True))

FLOAT_DTYPES = [np.float32, np.float64]
IDS_DTYPES = [
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
]

SENTINEL = 12345.0


def dtype_id(dt) -> str:
    return np.dtype(dt).name


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture(params=KERNEL_NAMES)
def kernel_name(request) -> str:
    return request.param


@pytest.fixture
def kernel(kernel_name):
    return kernels.KERNELS[kernel_name]


@pytest.fixture(params=GATHER_KERNEL_NAMES)
def gather_kernel(request):
    return kernels.KERNELS[request.param]


@pytest.fixture(params=FLOAT_DTYPES, ids=dtype_id)
def wdtype(request):
    return np.dtype(request.param)


@pytest.fixture(params=IDS_DTYPES, ids=dtype_id)
def ids_dtype(request):
    return np.dtype(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def restore_num_threads():
    """Restore the process-wide thread count after a test that changes it."""
    before = kernels.get_num_threads()
    yield before
    kernels.set_num_threads(before)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def make_weights(V: int, D: int, dtype, seed: int = 0) -> np.ndarray:
    """A fresh C-contiguous (V, D) table of distinct finite values, no -0.0."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((V, D)).astype(dtype)
    w[w == 0] = 1.0  # no zeros at all -> no sign-of-zero questions
    return w


@functools.lru_cache(maxsize=None)
def _cached_weights(V: int, D: int, dtype_name: str, seed: int) -> np.ndarray:
    w = make_weights(V, D, np.dtype(dtype_name), seed)
    w.flags.writeable = False
    return w


def shared_weights(V: int, D: int, dtype, seed: int = 0) -> np.ndarray:
    """A cached *read-only* table (cheap for large V). Do not write to it."""
    return _cached_weights(V, D, np.dtype(dtype).name, seed)


def random_ids(rng, shape, V: int, dtype) -> np.ndarray:
    """ids of the given dtype/shape with values in [0, min(V, dtype max + 1)).

    When there are at least two elements, the smallest and the largest
    representable valid id are placed first and last (in C order).
    """
    dtype = np.dtype(dtype)
    hi = min(V, int(np.iinfo(dtype).max) + 1)
    ids = rng.integers(0, hi, size=shape).astype(dtype)
    if ids.size >= 2:
        flat = ids.reshape(-1)
        flat[0] = 0
        flat[-1] = hi - 1
    return ids


def _uint_view(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_bitwise_equal(got, expected, what: str = "result") -> None:
    """Assert shape, dtype and every bit are equal; report the first mismatch."""
    expected = np.asarray(expected)
    assert isinstance(got, np.ndarray), f"{what}: expected an ndarray, got {type(got)!r}"
    assert got.shape == expected.shape, (
        f"{what}: shape {got.shape} != expected {expected.shape}"
    )
    assert got.dtype == expected.dtype, (
        f"{what}: dtype {got.dtype} != expected {expected.dtype}"
    )
    g = _uint_view(got)
    e = _uint_view(expected)
    if not np.array_equal(g, e):
        bad = np.argwhere(g != e)
        idx = tuple(int(i) for i in bad[0])
        raise AssertionError(
            f"{what}: {len(bad)} of {g.size} elements differ bitwise; first at "
            f"index {idx}: got {got[idx]!r} (bits {int(g[idx]):#x}), "
            f"expected {expected[idx]!r} (bits {int(e[idx]):#x})"
        )


def first_out_of_range(ids, V: int):
    """(value, position) of the first id (C order) outside [0, V), or None."""
    ids = np.asarray(ids)
    for pos in np.ndindex(ids.shape):
        v = int(ids[pos])
        if not 0 <= v < V:
            return v, tuple(int(p) for p in pos)
    return None


def index_error_message(value: int, pos: tuple, V: int) -> str:
    return (
        f"id {value} at position {pos} is out of range for vocab_size {V} "
        f"(valid ids are 0 <= id < {V})"
    )


def expected_index_message(ids, V: int) -> str:
    found = first_out_of_range(ids, V)
    assert found is not None, "test bug: all ids are in range"
    return index_error_message(found[0], found[1], V)


def outcome(fn):
    """(exception type, message) of calling fn, or (None, None) if it returned."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the type and message are what is compared
        return type(e), str(e)
    return None, None


def sentinel_like(shape, dtype) -> np.ndarray:
    return np.full(shape, SENTINEL, dtype=dtype)


def assert_untouched(out: np.ndarray) -> None:
    assert np.all(out == SENTINEL), (
        "out was written to although the call raised "
        f"({int(np.count_nonzero(out != SENTINEL))} elements changed)"
    )


def grad_reference(grad, ids, V):
    """The operation's float64 reference scatter-add, the count k of contributions
    per row and the float64 scatter of |grad| (for the error bound)."""
    ref, absref, counts = LOOKUP_GRAD.reference(grad, ids, V)
    return ref, counts, absref


def assert_grad_close(got, grad, ids, V) -> None:
    """|got - ref| <= k * eps(dtype) * sum_k |grad_k| elementwise (worst-case
    recursive summation bound, the operation's own reference); rows with no
    contribution must be exactly 0."""
    grad = np.asarray(grad)
    D = grad.shape[-1]
    assert isinstance(got, np.ndarray)
    assert got.shape == (V, D), f"shape {got.shape} != {(V, D)}"
    assert got.dtype == grad.dtype, f"dtype {got.dtype} != {grad.dtype}"
    ref, counts, absref = grad_reference(grad, ids, V)
    bound = counts[:, None] * float(np.finfo(grad.dtype).eps) * absref
    err = np.abs(got.astype(np.float64) - ref)
    bad = ~(err <= bound)  # also catches NaN
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(
            f"{int(bad.sum())} gradient entries exceed the summation bound; first "
            f"at {idx}: got {got[idx]!r}, float64 reference {ref[idx]!r}, "
            f"|err| {err[idx]!r} > bound {bound[idx]!r} (k={int(counts[idx[0]])})"
        )


@pytest.fixture(params=[0, 1, 2], ids=["portable", "avx2", "avx512"])
def cython_isa(request):
    """cython_gather's run-time dispatched loops (low-precision decoding, float32 bags of 16, 64
    and 128 values) limited to the portable ones, AVX2 or AVX-512 (where the CPU has
    them; a level the CPU lacks falls back to the one below)."""
    from kernels import _cython_gather

    _cython_gather.set_isa(request.param)
    yield request.param
    _cython_gather.set_isa(2)

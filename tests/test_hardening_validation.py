"""Inputs users hit in real programs: out over the ids, subclassed outputs, tensor-like ids with
"auto", ids lists NumPy cannot type, huge vocab sizes. Each is refused (or accepted) the same
way by every kernel and by "auto", before anything is written."""
from __future__ import annotations

import numpy as np
import pytest

import kernels
from conftest import KERNEL_NAMES, outcome

ALL = KERNEL_NAMES + ["auto"]


@pytest.mark.parametrize("kernel", ALL)
def test_out_overlapping_the_ids_is_refused_before_anything_is_written(kernel):
    buf = np.zeros(256, np.float32)
    out = buf.reshape(64, 4)
    ids = buf.view(np.int64)[:64]
    ids[:] = np.arange(64) % 8
    before = buf.copy()
    with pytest.raises(ValueError, match="out must not overlap ids"):
        kernels.lookup(np.full((8, 4), 1e30, np.float32), ids, kernel=kernel, out=out)
    assert (buf.view(np.uint32) == before.view(np.uint32)).all()


@pytest.mark.parametrize("kernel", ALL)
def test_gradient_out_overlapping_the_ids_is_refused_before_anything_is_written(kernel):
    buf = np.zeros(128, np.float64)
    ids = buf[:64].view(np.int64)
    ids[:] = np.arange(64) % 8
    dW = buf[32:64].reshape(8, 4)  # the second half of the ids
    before = buf.copy()
    with pytest.raises(ValueError, match="out must not overlap ids"):
        kernels.lookup_grad(np.ones((64, 4)), ids, 8, kernel=kernel, out=dW)
    assert (buf.view(np.uint64) == before.view(np.uint64)).all()


@pytest.mark.parametrize("kernel", ALL)
def test_a_masked_array_as_out_is_refused_up_front(kernel):
    W = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = np.ma.masked_array(np.full((2, 3), 7, np.float32))
    with pytest.raises(ValueError, match="plain numpy.ndarray, got the subclass MaskedArray"):
        kernels.lookup(W, [0, 1], kernel=kernel, out=out)
    assert (out.data == 7).all()
    dW = np.ma.masked_array(np.full((4, 3), 7, np.float32))
    with pytest.raises(ValueError, match="plain numpy.ndarray, got the subclass MaskedArray"):
        kernels.lookup_grad(np.ones((2, 3), np.float32), [0, 1], 4, kernel=kernel, out=dW)
    assert (dW.data == 7).all()


class _TensorLike:
    """What torch tensors look like to NumPy: __array__, and `size` a method, not a number."""

    def __init__(self, a):
        self._a = np.asarray(a)

    def size(self, dim=None):
        return self._a.shape if dim is None else self._a.shape[dim]

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)


def test_auto_accepts_tensor_like_ids_as_the_named_kernels_do():
    W = np.arange(40, dtype=np.float32).reshape(10, 4)
    ids = _TensorLike([[3, 1], [9, 0]])
    want = W[np.asarray(ids)]
    for kernel in ALL:
        assert (kernels.lookup(W, ids, kernel=kernel) == want).all(), kernel
    G = np.ones((2, 2, 4), np.float32)
    ref = kernels.lookup_grad(G, np.asarray(ids), 10)
    for kernel in ALL:
        assert (kernels.lookup_grad(G, ids, 10, kernel=kernel) == ref).all(), kernel


@pytest.mark.parametrize("ids", [[np.int64(1), np.uint64(3)], [[1], [np.uint64(2)]]],
                         ids=["int64-and-uint64", "nested"])
def test_lists_of_integer_scalars_numpy_types_as_float_are_accepted(ids):
    W = np.arange(40, dtype=np.float32).reshape(10, 4)
    want = W[np.array(ids, dtype=object).astype(np.int64)]
    for kernel in ALL:
        assert (kernels.lookup(W, ids, kernel=kernel) == want).all(), kernel


@pytest.mark.parametrize("ids,message", [
    ([1, 2**63], "id 9223372036854775808 at position (1,) is out of range for vocab_size 10"),
    ([1, 2**64 + 5], "id 18446744073709551621 at position (1,) is out of range"),
    ([np.int64(1), np.uint64(2**63)], "id 9223372036854775808 at position (1,) is out of range"),
    ([-2**70, 1], "id -1180591620717411303424 at position (0,) is out of range"),
])
def test_ids_beyond_int64_are_named_with_their_real_value(ids, message):
    W = np.ones((10, 4), np.float32)
    outcomes = {k: outcome(lambda k=k: kernels.lookup(W, ids, kernel=k)) for k in ALL}
    for k, (etype, text) in outcomes.items():
        assert etype is IndexError and message in text, (k, etype, text)


def test_a_list_with_a_float_names_the_element():
    W = np.ones((10, 4), np.float32)
    for kernel in ALL:
        with pytest.raises(TypeError, match=r"float 1\.5 at position \(1,\)"):
            kernels.lookup(W, [np.uint64(1), 1.5], kernel=kernel)


@pytest.mark.parametrize("vocab_size", [2**63, 2**64, 10**30])
def test_a_vocab_size_no_array_can_hold_is_a_clear_value_error(vocab_size):
    for kernel in ALL:
        with pytest.raises(ValueError, match=r"vocab_size must be at most 2\*\*63 - 1"):
            kernels.lookup_grad(np.ones((1, 2), np.float32), [0], vocab_size, kernel=kernel)


def test_fastest_refuses_a_format_it_has_no_measurement_rule_for():
    with pytest.raises(ValueError, match="unknown table format"):
        kernels.fastest(100, 8, dtype=np.float16)
    with pytest.raises(TypeError, match="vocab_size must be an integer"):
        kernels.fastest(True, 8)


def _peak_bytes(fn):
    import tracemalloc

    fn()  # compile (Numba specializes on the layout), first touch
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kernel", [k for k in KERNEL_NAMES if k != "onehot_dense"] + ["auto"])
def test_a_lookup_of_a_strided_or_broadcast_table_allocates_about_its_output_not_the_table(kernel):
    big = np.random.default_rng(0).standard_normal((200_000, 128)).astype(np.float32)
    column_slice = big[:, ::2]  # 51 MB that np.take or scipy would copy whole
    broadcast = np.broadcast_to(np.arange(64, dtype=np.float32)[None], (3_000_000_000, 64))
    ids = np.array([[1, 2], [3, 199_999]])
    for W, want in ((column_slice, column_slice[ids]), (broadcast, broadcast[ids])):
        got = kernels.lookup(W, ids, kernel=kernel)
        assert (got == want).all()
        assert _peak_bytes(lambda: kernels.lookup(W, ids, kernel=kernel)) < 2**20, kernel


def test_the_dense_one_hot_on_a_strided_table_allocates_its_one_hot_block_only():
    big = np.random.default_rng(0).standard_normal((200_000, 128)).astype(np.float32)
    W = big[:, ::2]
    ids = np.array([1, 2, 3, 199_999])
    assert (kernels.lookup(W, ids, kernel="onehot_dense") == W[ids]).all()
    block = ids.size * W.shape[0] * 4
    assert _peak_bytes(lambda: kernels.lookup(W, ids, kernel="onehot_dense")) < block + 2**20


@pytest.mark.parametrize("bad", [True, False, np.True_])
def test_a_bool_is_not_a_thread_count(bad, restore_num_threads):
    with pytest.raises(TypeError, match="must be an integer"):
        kernels.set_num_threads(bad)
    with pytest.raises(TypeError, match="must be an integer"):
        with kernels.num_threads(bad):
            pass


def test_auto_accepts_torch_tensors_as_the_named_kernels_do():
    torch = pytest.importorskip("torch")
    W = np.arange(40, dtype=np.float32).reshape(10, 4)
    ids = torch.tensor([[3, 1], [9, 0]])
    want = W[ids.numpy()]
    for kernel in ALL:
        assert (kernels.lookup(W, ids, kernel=kernel) == want).all(), kernel
        got = kernels.lookup_grad(torch.ones(2, 2, 4), ids, 10, kernel=kernel)
        assert got.sum() == 16 and got[3].sum() == 4, kernel

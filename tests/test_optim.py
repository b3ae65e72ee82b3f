"""kernels.optim: each optimizer against torch's own (and FBGEMM's rowwise Adagrad), state
round trips, errors that change nothing, and threads.

Tolerance against torch (float32 tables, N(0, 1) weights and gradients, 20 steps): every element
within 1e-5 + 1e-5 * |torch's|. The difference is float rounding only: we sum a row's duplicates by
the kernel's rule (float64 rounded once in the compiled kernels), torch sums them in float32 (its
SGD does not even coalesce). Rows no id
touched are compared bit for bit with the starting table, in ours and in torch's.
"""
from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest

import kernels
import kernels.optim as ko

RTOL = ATOL = 1e-5
V, D = 200, 16
HOT = 40
"""Ids are drawn from the first HOT rows: 192 ids per batch on 40 rows, heavy duplicates; the
other V - HOT rows are never touched."""
STEPS = 20


def batches(seed, steps=STEPS, shape=(32, 6), dtype=np.float32, hot=HOT, dim=D):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        ids = rng.integers(0, hot, size=shape)
        yield ids, rng.standard_normal(shape + (dim,)).astype(dtype)


def table(seed=0, dtype=np.float32, vocab=V, dim=D):
    return np.random.default_rng(seed).standard_normal((vocab, dim)).astype(dtype)


def bits(a):
    a = np.asarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64).copy()


def snapshot(opt):
    snap = {"weights": bits(opt.weights)}
    for k, v in opt.state.items():
        snap[k] = bits(v) if isinstance(v, np.ndarray) else v
    return snap


def assert_unchanged(opt, snap):
    now = snapshot(opt)
    assert now.keys() == snap.keys()
    for k in snap:
        np.testing.assert_array_equal(now[k], snap[k], err_msg=k)


def sparse_grad(grad, ids, vocab_size, kernel="numpy_take"):
    """The coalesced gradient of a lookup, as step_sparse takes it."""
    return kernels.lookup_grad(grad, ids, vocab_size, sparse=True, kernel=kernel)


# -- against torch ------------------------------------------------------------------------------

OURS = {
    "SGD": lambda W, **kw: ko.SGD(W, lr=0.1, **kw),
    "Adagrad": lambda W, **kw: ko.Adagrad(W, lr=0.1, **kw),
    "Adagrad_init": lambda W, **kw: ko.Adagrad(W, lr=0.05, eps=1e-6,
                                               initial_accumulator_value=0.5, **kw),
    "SparseAdam": lambda W, **kw: ko.SparseAdam(W, lr=0.01, **kw),
    "SparseAdam_betas": lambda W, **kw: ko.SparseAdam(W, lr=0.02, betas=(0.5, 0.9), eps=1e-6, **kw),
}

ALL = {**OURS, "RowwiseAdagrad": lambda W, **kw: ko.RowwiseAdagrad(W, lr=0.1, weight_decay=0.01,
                                                                  **kw)}


def torch_optimizer(torch, name, params):
    return {
        "SGD": lambda: torch.optim.SGD(params, lr=0.1),
        "Adagrad": lambda: torch.optim.Adagrad(params, lr=0.1),
        "Adagrad_init": lambda: torch.optim.Adagrad(params, lr=0.05, eps=1e-6,
                                                    initial_accumulator_value=0.5),
        "SparseAdam": lambda: torch.optim.SparseAdam(params, lr=0.01),
        "SparseAdam_betas": lambda: torch.optim.SparseAdam(params, lr=0.02, betas=(0.5, 0.9),
                                                           eps=1e-6),
    }[name]()


def assert_close_to_torch(ours, theirs, W0, touched, dtype):
    rtol = RTOL if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol)
    untouched = ~touched
    np.testing.assert_array_equal(bits(ours[untouched]), bits(W0[untouched]))
    np.testing.assert_array_equal(bits(theirs[untouched]), bits(W0[untouched]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(OURS))
def test_step_matches_torch_sparse_embedding_for_20_steps(name, dtype):
    torch = pytest.importorskip("torch")
    W0 = table(1, dtype)
    W = W0.copy()
    opt = OURS[name](W)
    emb = torch.nn.Embedding(V, D, sparse=True, dtype=torch.float64 if dtype == np.float64
                             else torch.float32)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(W0))
    topt = torch_optimizer(torch, name, emb.parameters())
    touched = np.zeros(V, bool)
    for ids, G in batches(2, dtype=dtype):
        opt.step(ids, G)
        topt.zero_grad()
        (emb(torch.from_numpy(ids)) * torch.from_numpy(G)).sum().backward()
        topt.step()
        touched[ids.reshape(-1)] = True
    assert_close_to_torch(W, emb.weight.detach().numpy(), W0, touched, dtype)
    tstate = topt.state[emb.weight]
    if name.startswith("Adagrad"):
        np.testing.assert_allclose(opt.state["sum"], tstate["sum"].numpy(), rtol=1e-5)
    if name.startswith("SparseAdam"):
        assert opt.state["step"] == tstate["step"] == STEPS
        np.testing.assert_allclose(opt.state["exp_avg"], tstate["exp_avg"].numpy(),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(opt.state["exp_avg_sq"], tstate["exp_avg_sq"].numpy(),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode,padding_idx,psw",
                         [("sum", None, False), ("mean", None, False), ("sum", 3, False),
                          ("mean", 3, False), ("sum", None, True)])
@pytest.mark.parametrize("name", ["SGD", "Adagrad", "SparseAdam"])
def test_step_bag_matches_torch_embedding_bag_for_20_steps(name, mode, padding_idx, psw):
    torch = pytest.importorskip("torch")
    W0 = table(3)
    W = W0.copy()
    opt = OURS[name](W)
    bag = torch.nn.EmbeddingBag(V, D, mode=mode, sparse=True, padding_idx=padding_idx)
    with torch.no_grad():
        bag.weight.copy_(torch.from_numpy(W0))
    topt = torch_optimizer(torch, name, bag.parameters())
    rng = np.random.default_rng(4)
    touched = np.zeros(V, bool)
    for _ in range(STEPS):
        n = 150
        ids = rng.integers(0, HOT, size=n)
        offsets = np.sort(rng.integers(0, n, size=24))
        offsets[0] = 0  # some bags are empty (equal offsets)
        B = offsets.shape[0]
        G = rng.standard_normal((B, D)).astype(np.float32)
        w = rng.standard_normal(n).astype(np.float32) if psw else None
        opt.step_bag(ids, offsets, G, mode=mode, padding_idx=padding_idx, per_sample_weights=w)
        topt.zero_grad()
        out = bag(torch.from_numpy(ids), torch.from_numpy(offsets),
                  per_sample_weights=None if w is None else torch.from_numpy(w))
        (out * torch.from_numpy(G)).sum().backward()
        topt.step()
        touched[ids[ids != (padding_idx if padding_idx is not None else -1)]] = True
    assert_close_to_torch(W, bag.weight.detach().numpy(), W0, touched, np.float32)


def test_step_bag_max_matches_torch_embedding_bag_dense_sgd():
    torch = pytest.importorskip("torch")
    W0 = table(5)
    W = W0.copy()
    opt = ko.SGD(W, lr=0.1)
    bag = torch.nn.EmbeddingBag(V, D, mode="max")  # torch refuses sparse=True for max
    with torch.no_grad():
        bag.weight.copy_(torch.from_numpy(W0))
    topt = torch.optim.SGD(bag.parameters(), lr=0.1)
    rng = np.random.default_rng(6)
    for _ in range(STEPS):
        ids = rng.integers(0, HOT, size=(20, 5))
        G = rng.standard_normal((20, D)).astype(np.float32)
        opt.step_bag(ids, None, G, mode="max")
        topt.zero_grad()
        (bag(torch.from_numpy(ids)) * torch.from_numpy(G)).sum().backward()
        topt.step()
    np.testing.assert_allclose(W, bag.weight.detach().numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(bits(W[HOT:]), bits(W0[HOT:]))


# -- RowwiseAdagrad against FBGEMM's formula ------------------------------------------------------

def rowwise_adagrad_float64(W, momentum, rows, g, lr, eps, wd):
    """FBGEMM's CPU EXACT_ROWWISE_ADAGRAD (split_weight_update_cpu, weight_decay_mode 1 = L2),
    transcribed in float64 for the coalesced gradient g of the sorted unique rows."""
    for i, r in enumerate(rows):
        gd = g[i] + wd * W[r]
        momentum[r] += np.sum(gd * gd) / W.shape[1]
        multiplier = lr / (np.sqrt(momentum[r]) + eps)
        correction = 1.0 - multiplier * wd
        W[r] = correction * W[r] - g[i] * multiplier


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_rowwise_adagrad_matches_fbgemm_formula_in_float64(weight_decay):
    W0 = table(7)
    W = W0.copy()
    opt = ko.RowwiseAdagrad(W, lr=0.1, eps=1e-8, weight_decay=weight_decay)
    W64 = W0.astype(np.float64)
    m64 = np.zeros(V)
    for ids, G in batches(8):
        opt.step(ids, G)
        flat = ids.reshape(-1)
        rows = np.unique(flat)
        g = np.zeros((rows.shape[0], D))
        np.add.at(g, np.searchsorted(rows, flat), G.reshape(-1, D).astype(np.float64))
        rowwise_adagrad_float64(W64, m64, rows, g, 0.1, 1e-8, weight_decay)
    np.testing.assert_allclose(W, W64, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(opt.state["momentum"], m64, rtol=1e-5)
    np.testing.assert_array_equal(bits(W[HOT:]), bits(W0[HOT:]))
    assert (opt.state["momentum"][HOT:] == 0).all()


def test_rowwise_adagrad_matches_fbgemm_cpu_op():
    """FBGEMM's own table-batched CPU op with EXACT_ROWWISE_ADAGRAD (one table, sum bags),
    when fbgemm_gpu imports; skipped otherwise. weight_decay = 0 only: FBGEMM's float32 CPU
    path ignores weight_decay (see kernels.optim)."""
    torch = pytest.importorskip("torch")
    try:
        import fbgemm_gpu  # noqa: F401
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, \
            PoolingMode
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import ComputeDevice, \
            SplitTableBatchedEmbeddingBagsCodegen
    except Exception as e:  # noqa: BLE001 (any failure to load the optional peer skips)
        pytest.skip(f"fbgemm_gpu not usable: {e!r}")
    W0 = table(9)
    W = W0.copy()
    opt = ko.RowwiseAdagrad(W, lr=0.1, eps=1e-8)
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        [(V, D, EmbeddingLocation.HOST, ComputeDevice.CPU)],
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD, learning_rate=0.1, eps=1e-8,
        pooling_mode=PoolingMode.SUM)
    with torch.no_grad():
        tbe.split_embedding_weights()[0].copy_(torch.from_numpy(W0))
    rng = np.random.default_rng(10)
    for _ in range(STEPS):
        ids = rng.integers(0, HOT, size=(24, 6))
        G = rng.standard_normal((24, D)).astype(np.float32)
        opt.step_bag(ids, None, G)
        out = tbe(torch.from_numpy(ids.reshape(-1)), torch.arange(0, 24 * 6 + 1, 6))
        out.backward(torch.from_numpy(G))
    theirs = tbe.split_embedding_weights()[0].detach().numpy()
    np.testing.assert_allclose(W, theirs, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(opt.state["momentum"],
                               tbe.split_optimizer_states()[0][0].numpy(), rtol=1e-5)
    np.testing.assert_array_equal(bits(theirs[HOT:]), bits(W0[HOT:]))


# -- the three calls agree ----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ALL))
def test_step_sparse_of_the_coalesced_gradient_equals_step(name):
    make = ALL[name]
    a, b = make(table(11)), make(table(11))
    for ids, G in batches(12, steps=5):
        a.step(ids, G)
        b.step_sparse(sparse_grad(G, ids, V, kernel=a.kernel))
    assert_unchanged(a, snapshot(b))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(ALL))
def test_the_fused_step_gives_the_bits_of_the_compiled_coalesced_gradient_then_the_update(
        name, dtype):
    """step / step_bag with a compiled (or the auto) kernel group the ids by row and update each
    row from its summed gradient in one pass; step_sparse of cython_gather's SparseGrad is the
    unfused form. Lookups and every bag mode but max, with weights, with and without padding;
    thread counts 1 and 2."""
    make = ALL[name]
    rng = np.random.default_rng(32)
    for threads in (1, kernels._threads.MAX_THREADS):
        for kernel in ("auto", "numba_gather", "cython_gather"):
            a, b = make(table(33, dtype), kernel=kernel), make(table(33, dtype))
            with kernels.num_threads(threads):
                for ids, G in batches(34, steps=4, shape=(3000,), dtype=dtype):
                    a.step(ids, G)
                    b.step_sparse(sparse_grad(G, ids, V, kernel="cython_gather"))
                    offsets = np.sort(rng.integers(0, ids.shape[0], 700))
                    offsets[0] = 0
                    psw = rng.standard_normal(ids.shape[0]).astype(dtype)
                    Gb = G[:700]
                    for mode, w, pad in (("sum", None, 3), ("sum", None, None),
                                         ("mean", psw, 3), ("sqrtn", psw, None)):
                        a.step_bag(ids, offsets, Gb, mode=mode, per_sample_weights=w,
                                   padding_idx=pad)
                        sg = kernels.lookup_bag_grad(
                            Gb, ids, offsets, V, mode=mode, per_sample_weights=w,
                            padding_idx=pad, weights=b.weights, sparse=True,
                            kernel="cython_gather")
                        b.step_sparse(sg[0] if isinstance(sg, tuple) else sg)
            assert_unchanged(a, snapshot(b))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_bag_reads_a_gradient_of_strided_rows_in_place_with_the_same_bits(dtype):
    """grad_out as kernels.torch's fused bags receive it, one table's columns of a concatenated
    output's gradient, or reversed, or every other row: the same bits as its contiguous copy."""
    rng = np.random.default_rng(8)
    ids = rng.integers(0, HOT, 600)
    offsets = np.sort(rng.integers(0, 600, 90))
    offsets[0] = 0
    wide = rng.standard_normal((180, 3 * D)).astype(dtype)
    for G in (wide[:90, D:2 * D], wide[:90, :D][::-1], wide[::2, 2 * D:]):
        for kernel in ("auto", "numba_gather", "cython_gather"):
            for name in ("SGD", "Adagrad"):
                a = getattr(ko, name)(table(9, dtype), 0.1, kernel=kernel)
                b = getattr(ko, name)(table(9, dtype), 0.1, kernel=kernel)
                a.step_bag(ids, offsets, G, mode="mean")
                b.step_bag(ids, offsets, np.ascontiguousarray(G), mode="mean")
                a.step_bag(ids, offsets, G)
                b.step_bag(ids, offsets, np.ascontiguousarray(G))
                assert_unchanged(a, snapshot(b))


def test_the_fused_step_never_reads_or_writes_outside_its_arrays_on_ids_it_was_not_given():
    """_optim_numba.fused_step trusts its caller's checks, but reads each id and bag bound once
    and guards it: ids that changed after the check (here: never checked) raise the RuntimeError
    of a changed input before any thread updates a row, and bounds that are not a valid
    partition (decreasing, past the ids) give rows of G clamped into [0, B), never a read
    outside G; whatever the thread count and however the rows hash to the threads."""
    from kernels import _optim_numba

    rng = np.random.default_rng(5)
    G = rng.standard_normal((8, D)).astype(np.float32)
    for threads in (1, kernels._threads.MAX_THREADS):
        with kernels.num_threads(threads):
            for bad in (-1, V, 2**40):
                W = table(6)
                before = bits(W)
                ids = rng.integers(0, V, 5000)
                ids[rng.integers(0, 5000)] = bad
                with pytest.raises(RuntimeError, match="another thread changed ids"):
                    _optim_numba.fused_step(_optim_numba.SGD, W, G, ids, (0.5,),
                                            offsets=np.arange(0, 5001, 625))
                np.testing.assert_array_equal(bits(W), before)
            W, ref = table(7), table(7)
            ids = np.arange(0, 2 * V, 2) % V  # every row, twice; rows hash to both threads
            offsets = np.array([0, 3, -7, 50, 50, 2, 40, 60, 150])  # 200 ids
            _optim_numba.fused_step(_optim_numba.SGD, W, G, ids, (0.5,), offsets=offsets)
            bag = np.zeros(ids.shape[0], np.int64)  # _group's walk over the bounds, b <= 7
            for p in range(ids.shape[0]):
                b = bag[p - 1] if p else 0
                while b < 7 and offsets[b + 1] <= p:
                    b += 1
                bag[p] = b
            g = np.zeros((V, D))
            np.add.at(g, ids, G[bag].astype(np.float64))
            np.testing.assert_array_equal(W, ref - np.float32(0.5) * g.astype(np.float32))


@pytest.mark.parametrize("name", sorted(ALL))
def test_empty_batch_changes_no_row(name):
    make = ALL[name]
    opt = make(table(13))
    snap = snapshot(opt)
    opt.step(np.zeros((0, 3), np.int64), np.zeros((0, 3, D), np.float32))
    if "step" in snap:  # torch's SparseAdam counts a step with an empty gradient too
        assert opt.state["step"] == snap["step"] + 1
        snap["step"] += 1
    assert_unchanged(opt, snap)


def test_a_step_allocates_nothing_proportional_to_the_vocabulary():
    W = np.zeros((1_000_000, 8), np.float32)  # 32 MB
    opts = [ko.SGD(W, 0.1), ko.Adagrad(W, 0.1), ko.RowwiseAdagrad(W, 0.1), ko.SparseAdam(W, 0.1)]
    rng = np.random.default_rng(14)
    ids = rng.integers(0, 1_000_000, size=2048)
    G = rng.standard_normal((2048, 8)).astype(np.float32)
    for opt in opts:
        opt.step(ids, G)  # warm up
        tracemalloc.start()
        try:
            opt.step(ids, G)
            opt.step_bag(ids, np.arange(0, 2048, 8), G[:256], mode="mean")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2 * 2**20, (type(opt).__name__, peak)


# -- state_dict ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ALL))
def test_a_fresh_optimizer_loaded_with_state_dict_continues_identically(name):
    make = ALL[name]
    a = make(table(15))
    data = list(batches(16, steps=10))
    for ids, G in data[:5]:
        a.step(ids, G)
    sd = a.state_dict()
    b = make(a.weights.copy())
    b.load_state_dict(sd)
    for k, v in sd["state"].items():  # a deep copy: changing it changes neither optimizer
        if isinstance(v, np.ndarray):
            v[...] = 7
    for ids, G in data[5:]:
        a.step(ids, G)
        b.step(ids, G)
    assert_unchanged(a, snapshot(b))


def test_load_state_dict_restores_hyperparameters():
    a = ko.SparseAdam(table(), lr=0.5, betas=(0.8, 0.9), eps=1e-3)
    b = ko.SparseAdam(table(), lr=0.01)
    b.load_state_dict(a.state_dict())
    assert (b.lr, b.betas, b.eps) == (0.5, (0.8, 0.9), 1e-3)


# -- errors change nothing ----------------------------------------------------------------------

def _bad_calls(opt):
    W = opt.weights
    ids = np.array([[1, 2], [3, 4]])
    G = np.ones((2, 2, D), W.dtype)
    good = sparse_grad(G, ids, V)
    sd = opt.state_dict()

    def wrong_shape_state():
        s = opt.state_dict()
        for k, v in s["state"].items():
            if isinstance(v, np.ndarray):
                s["state"][k] = v[:-1]
        return s

    def wrong_dtype_state():
        s = opt.state_dict()
        for k, v in s["state"].items():
            if isinstance(v, np.ndarray):
                s["state"][k] = v.astype(np.float64)
        return s

    def extra_key():
        s = opt.state_dict()
        s["state"]["bogus"] = np.zeros(3)
        return s

    def bad_lr():
        s = opt.state_dict()
        s["hyperparameters"]["lr"] = float("nan")
        return s

    class Fake:
        def __init__(self, rows, values, vocab_size):
            self.rows, self.values, self.vocab_size = rows, values, vocab_size

    rows = np.array([1, 3], np.int64)
    vals = np.ones((2, D), W.dtype)
    return [
        (IndexError, lambda: opt.step(np.array([[1, 2], [3, V]]), G)),
        (IndexError, lambda: opt.step(np.array([[1, 2], [-1, 4]]), G)),
        (TypeError, lambda: opt.step(ids.astype(float), G)),
        (ValueError, lambda: opt.step(ids, np.ones((2, 3, D), W.dtype))),
        (ValueError, lambda: opt.step(ids, np.ones((2, 2, D + 1), W.dtype))),
        (TypeError, lambda: opt.step(ids, np.ones((2, 2, D), np.float16))),
        (TypeError, lambda: opt.step(ids, G.astype(np.float64))),
        (IndexError, lambda: opt.step_bag(np.array([1, 2, V + 5]), [0, 1], G[0])),
        (ValueError, lambda: opt.step_bag(ids.reshape(-1), [0, 2], G[:1, 0])),
        (ValueError, lambda: opt.step_bag(ids.reshape(-1), [0, 2], G[0], mode="median")),
        (ValueError, lambda: opt.step_bag(ids.reshape(-1), [0, 3, 2], G[0, :3])),
        (ValueError, lambda: opt.step_sparse(Fake(good.rows, good.values, V + 1))),
        (ValueError, lambda: opt.step_sparse(Fake(rows, np.ones((2, D + 1), W.dtype), V))),
        (TypeError, lambda: opt.step_sparse(Fake(rows, vals.astype(np.float64), V))),
        (ValueError, lambda: opt.step_sparse(Fake(rows[::-1].copy(), vals, V))),
        (ValueError, lambda: opt.step_sparse(Fake(np.array([1, 1]), vals, V))),
        (ValueError, lambda: opt.step_sparse(Fake(np.array([1, V]), vals, V))),
        (ValueError, lambda: opt.step_sparse(Fake(np.array([-1, 2]), vals, V))),
        (ValueError, lambda: opt.step_sparse(Fake(rows.astype(np.int32), vals, V))),
        (TypeError, lambda: opt.step_sparse(object())),
        (ValueError, lambda: opt.step_sparse(Fake(rows, W[:2], V))),
        (ValueError, lambda: opt.load_state_dict(wrong_shape_state())
         if any(isinstance(v, np.ndarray) for v in sd["state"].values())
         else opt.load_state_dict({"state": {}})),
        (ValueError, lambda: opt.load_state_dict(wrong_dtype_state())
         if any(isinstance(v, np.ndarray) for v in sd["state"].values())
         else opt.load_state_dict({})),
        (ValueError, lambda: opt.load_state_dict(extra_key())),
        (ValueError, lambda: opt.load_state_dict(bad_lr())),
        (ValueError, lambda: opt.load_state_dict({"state": sd["state"]})),
    ]


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_bad_input_raises_and_leaves_table_and_state_bitwise_unchanged(name):
    make = ALL[name]
    opt = make(table(17))
    for ids, G in batches(18, steps=3):
        opt.step(ids, G)
    snap = snapshot(opt)
    for error, call in _bad_calls(opt):
        with pytest.raises(error):
            call()
        assert_unchanged(opt, snap)
    if "step" in snap:
        sd = opt.state_dict()
        sd["state"]["step"] = -1
        with pytest.raises(ValueError, match="step"):
            opt.load_state_dict(sd)
        assert_unchanged(opt, snap)


@pytest.mark.parametrize("make", [ko.SGD, ko.Adagrad, ko.RowwiseAdagrad, ko.SparseAdam])
def test_construction_refuses_bad_tables_and_hyperparameters(make):
    W = table()
    for lr in (float("nan"), float("inf"), -0.1):
        with pytest.raises(ValueError, match="lr"):
            make(W, lr)
    for lr in ("0.1", None, True):
        with pytest.raises(TypeError, match="lr"):
            make(W, lr)
    ro = W.copy()
    ro.flags.writeable = False
    for bad in (ro, W[:, ::2], np.asfortranarray(W), W[0]):
        with pytest.raises(ValueError, match="weights"):
            make(bad, 0.1)
    for bad in (W.astype(np.float16), W.astype(np.int64), W.tolist(), np.ma.masked_array(W)):
        with pytest.raises(TypeError, match="weights"):
            make(bad, 0.1)
    with pytest.raises(ValueError, match="unknown kernel"):
        make(W, 0.1, kernel="nope")
    if make is not ko.SGD:
        for eps in (0.0, -1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match="eps"):
                make(W, 0.1, eps=eps)
    make(W, 0.0)  # lr = 0 is allowed (torch allows it)


def test_construction_refuses_bad_betas_and_decays():
    W = table()
    for betas in ((1.0, 0.9), (0.9, 1.0), (-0.1, 0.9), (float("nan"), 0.9)):
        with pytest.raises(ValueError, match="betas"):
            ko.SparseAdam(W, 0.1, betas=betas)
    with pytest.raises(TypeError, match="betas"):
        ko.SparseAdam(W, 0.1, betas=0.9)
    with pytest.raises(ValueError, match="weight_decay"):
        ko.RowwiseAdagrad(W, 0.1, weight_decay=-1.0)
    with pytest.raises(ValueError, match="initial_accumulator_value"):
        ko.Adagrad(W, 0.1, initial_accumulator_value=-1.0)


# -- threads ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["SGD", "Adagrad", "SparseAdam"])
def test_two_threads_stepping_two_tables_equal_sequential(name):
    big = dict(vocab=5000, dim=32)
    data = [list(batches(s, steps=15, shape=(4096,), hot=3000, dim=32)) for s in (19, 20)]
    seq = [OURS[name](table(21 + i, **big)) for i in range(2)]
    for opt, d in zip(seq, data):
        for ids, G in d:
            opt.step(ids, G)
    par = [OURS[name](table(21 + i, **big)) for i in range(2)]
    barrier = threading.Barrier(2)
    errors = []

    def run(opt, d):
        try:
            barrier.wait()
            for ids, G in d:
                opt.step(ids, G)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(o, d)) for o, d in zip(par, data)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for a, b in zip(seq, par):
        assert_unchanged(a, snapshot(b))


def test_stepping_a_table_another_thread_is_stepping_raises_and_changes_nothing():
    W = table()
    opt = ko.Adagrad(W, 0.1)
    other = ko.SGD(W, 0.1)  # a second optimizer bound to the same array
    ids, G = next(batches(22))
    opt.step(ids, G)
    snap = snapshot(opt)
    opt._claim()  # as if a step of opt were running in another thread
    try:
        results = []

        def run():
            for call in (lambda: opt.step(ids, G), lambda: other.step(ids, G),
                         lambda: opt.step_bag(ids, None, G[:, 0]),
                         lambda: opt.step_sparse(sparse_grad(G, ids, V)),
                         lambda: opt.load_state_dict(opt.state_dict())):
                try:
                    call()
                    results.append(None)
                except RuntimeError as e:
                    results.append(str(e))

        t = threading.Thread(target=run)
        t.start()
        t.join()
        assert len(results) == 5 and all(r and "another thread" in r for r in results), results
        assert_unchanged(opt, snap)
    finally:
        opt._release()
    opt.step(ids, G)  # free again
    other.step(ids, G)


def test_racing_steps_on_one_table_either_complete_or_raise():
    W0 = table(23, vocab=2000, dim=32)
    W = W0.copy()
    opt = ko.SGD(W, 0.1)
    data = [list(batches(s, steps=60, shape=(2048,), hot=2000, dim=32)) for s in (24, 25)]
    done = [[], []]
    errors = []
    barrier = threading.Barrier(2)

    def run(i):
        barrier.wait()
        for ids, G in data[i]:
            try:
                opt.step(ids, G)
                done[i].append((ids, G))
            except RuntimeError as e:
                assert "another thread" in str(e)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    expected = W0.astype(np.float64)
    for ids, G in done[0] + done[1]:
        np.add.at(expected, ids, -0.1 * G.astype(np.float64))
    np.testing.assert_allclose(W, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(ALL))
def test_updates_are_the_same_bits_for_any_thread_count(name, dtype):
    """Large enough that the update runs its parallel path (2 threads where there are 2 cores)."""
    make = ALL[name]
    big = dict(vocab=50_000, dim=24)
    data = list(batches(26, steps=3, shape=(60_000,), hot=50_000, dim=24, dtype=dtype))
    results = []
    for n in (1, kernels._threads.MAX_THREADS):
        opt = make(table(27, dtype, **big))
        with kernels.num_threads(n):
            for ids, G in data:
                opt.step(ids, G)
        results.append(snapshot(opt))
    assert_unchanged(opt, results[0])


def test_step_takes_ids_as_every_lookup_does():
    """Lists, any integer dtype, non-contiguous and 0-d ids: the same update as int64 ids."""
    G = np.random.default_rng(28).standard_normal((4, D)).astype(np.float32)
    ref = ko.Adagrad(table(29), 0.1)
    ref.step(np.array([3, 1, 3, 7]), G)
    for ids in ([3, 1, 3, 7], np.array([3, 1, 3, 7], np.uint64), np.array([3, 1, 3, 7], np.int8),
                np.array([3, 0, 1, 0, 3, 0, 7, 0])[::2]):
        opt = ko.Adagrad(table(29), 0.1)
        opt.step(ids, G)
        assert_unchanged(opt, snapshot(ref))
    one = ko.SGD(table(29), 0.1)
    one.step(np.int64(5), G[0])
    np.testing.assert_array_equal(one.weights[5], table(29)[5] - np.float32(0.1) * G[0])


@pytest.mark.parametrize("name", sorted(ALL))
def test_kernel_picks_the_sparse_backward_and_the_compiled_pair_agree_bitwise(name):
    make = ALL[name]
    snaps = {}
    for k in sorted(kernels.KERNELS):
        opt = make(table(30), kernel=k)
        for ids, G in batches(31, steps=5):
            opt.step(ids, G)
            opt.step_bag(ids, None, G[:, 0], mode="mean")
        snaps[k] = snapshot(opt)
    for k in ("cython_gather", "onehot_sparse"):
        for key in snaps[k]:
            np.testing.assert_array_equal(snaps[k][key], snaps["numba_gather"][key], err_msg=k)
    ref = snaps["numba_gather"]["weights"].view(np.float32)
    for k, snap in snaps.items():
        np.testing.assert_allclose(snap["weights"].view(np.float32), ref, rtol=RTOL, atol=ATOL,
                                   err_msg=k)


def test_kernel_is_checked_at_construction_and_used_by_step():
    W = table()
    assert ko.SGD(W, 0.1).kernel == "auto"
    assert ko.SGD(W, 0.1, kernel=kernels.KERNELS["cython_gather"]).kernel.name == "cython_gather"
    with pytest.raises(ValueError, match="unknown kernel"):
        ko.Adagrad(W, 0.1, kernel="cuda")


@pytest.mark.parametrize("name", ["Adagrad", "RowwiseAdagrad", "SparseAdam"])
def test_a_replaced_state_array_is_refused_before_any_write_and_load_restores_it(name):
    opt = ALL[name](table(32))
    ids, G = next(batches(33))
    opt.step(ids, G)
    sd = opt.state_dict()
    key = next(k for k, v in opt.state.items() if isinstance(v, np.ndarray))
    for bad in (np.zeros(3, np.float32), opt.state[key][:-1], opt.state[key].astype(np.float64)):
        opt.state[key] = bad
        W = bits(opt.weights)
        with pytest.raises(RuntimeError, match="replaced"):
            opt.step(ids, G)
        np.testing.assert_array_equal(bits(opt.weights), W)
    del opt.state[key]
    with pytest.raises(RuntimeError, match="keys"):
        opt.step(ids, G)
    opt.load_state_dict(sd)
    opt.step(ids, G)
    with pytest.raises(AttributeError):
        opt.weights = table(34)

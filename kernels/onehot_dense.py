"""The Dense-layer view: onehot(ids, V) @ W with BLAS, in chunks of bounded memory.

The one-hot block for a chunk of m ids is m x V; chunks are sized so that it never exceeds
MEMORY_BUDGET bytes (a single row may exceed it when V alone is larger). Differences from a gather,
by construction (IEEE arithmetic, 0 * inf = nan): if W[r, c] is inf, column c of every output row
of the chunk that was not gathered from row r is NaN (rows gathered from r keep the inf); a NaN in
W[r, c], or an inf in a row not gathered, or +inf and -inf in one column, turn all of column c of
the chunk NaN. And -0.0 comes back as +0.0 (W[j] + 0 * W[other] rounds -0.0 to +0.0).

Bags: the multi-hot block (bags x V, each id's factor c = per_sample_weights or 1 over the mode's
divisor) @ W, chunked by bags under the same budget; max is not a matmul (NotImplementedError
naming the kernels that have it). Backward: the expanded rows c * G[bag] through onehot.T @ rows.

float16 / bfloat16 tables: the same products over blocks of the table's rows converted to float32
(exactly; each block within MEMORY_BUDGET), the one-hot columns split alike and the blocks'
products added in order: a lookup is table.dequantize()[ids] (with the differences above), a bag
is within the summation bound. int8 / int4 rows are not a matrix: not registered (the
registry's NotImplementedError names the kernels that have them).

Backward: onehot.T @ grad, chunked the same way. A float32 gradient is multiplied in float64
(one-hot block, grad chunk and the running sum) and rounded to float32 once at the end: BLAS
sums in its own blocked order, so the result is not bitwise the id-order sum of the compiled
kernels, but its error is within eps32 * sum|g| + a float64 rounding per contribution (an
sgemm over 1e6 equal contributions was off by 1.5e-4 relative here).
"""
import numpy as np

from kernels import _bag_math as bm
from kernels._formats import FLOAT, HALF
from kernels._kernel import Kernel, bag_grad_by_scatter
from kernels._ops import LOOKUP, LOOKUP_BAG, LOOKUP_BAG_GRAD, LOOKUP_GRAD
from kernels._validate import private_ids

MEMORY_BUDGET = 256 * 2**20
"""The most bytes one one-hot block may take: the kernel works in chunks of ids below it."""

ONEHOT_MAX_BYTES = 2**30
"""Benchmark budget: the one-hot input of a whole call, n * V * itemsize, at most 1 GiB."""
DENSE_MAX_MACS = 10**11
"""Benchmark budget: at most 1e11 multiply-adds a call. The largest case the suite runs, V =
10_000 and D = 512 at n = 16_384, has 8.4e10 and took 0.8-1.9 s a call on a 2-vCPU VM."""


def chunk_rows(vocab_size, itemsize, budget=None):
    """How many ids one one-hot block may hold within the memory budget (at least one)."""
    budget = MEMORY_BUDGET if budget is None else budget
    return max(1, budget // max(1, vocab_size * itemsize))


def onehot(ids, vocab_size, dtype):
    """The (len(ids), vocab_size) one-hot matrix of 1-D ids."""
    block = np.zeros((ids.shape[0], vocab_size), dtype)
    block[np.arange(ids.shape[0]), ids] = 1
    return block


def _gather(W, ids, out):
    V = W.shape[0]
    ids = private_ids(ids, V)
    step = chunk_rows(V, W.itemsize)
    for start in range(0, ids.shape[0], step):
        stop = min(start + step, ids.shape[0])
        np.matmul(onehot(ids[start:stop], V, W.dtype), W, out=out[start:stop])


def _scatter_add(G, ids, dW, zeroed):
    V = dW.shape[0]
    ids = private_ids(ids, V)
    dtype = np.float64  # float32 is summed in float64 too, and rounded once at the end
    acc = dW if G.dtype == dtype else np.empty(dW.shape, dtype)
    step = chunk_rows(V, np.dtype(dtype).itemsize)
    for start in range(0, ids.shape[0], step):
        stop = min(start + step, ids.shape[0])
        block_t = onehot(ids[start:stop], V, dtype).T
        g = G[start:stop].astype(dtype, copy=False)
        if start == 0:
            np.matmul(block_t, g, out=acc)
        else:
            acc += block_t @ g
    if acc is not dW:
        dW[...] = acc


def _bag(W, ids, offsets, mode, psw, pad, out):
    """multihot(bags) @ W, chunks of bags whose (bags, V) block fits MEMORY_BUDGET; the block
    holds each id's factor c (per_sample_weights or 1, over the mode's divisor), summed where an
    id repeats in a bag. Padding ids contribute nothing."""
    V = W.shape[0]
    ids = private_ids(ids, V)
    c = bm.coefficients(ids, offsets, mode, psw, pad).astype(W.dtype)
    bag = bm.bag_of_ids(offsets)
    B = offsets.shape[0] - 1
    step = chunk_rows(V, W.itemsize)
    for b0 in range(0, B, step):
        b1 = min(B, b0 + step)
        i0, i1 = offsets[b0], offsets[b1]
        block = np.zeros((b1 - b0, V), W.dtype)
        np.add.at(block, (bag[i0:i1] - b0, ids[i0:i1]), c[i0:i1])
        np.matmul(block, W, out=out[b0:b1])


def _float32_blocks(W):
    """(v0, W[v0:v0 + k] as float32): the rows of a float16 / bfloat16 table in blocks of at
    most MEMORY_BUDGET bytes of float32."""
    step = chunk_rows(W.shape[1], 4)
    for v0 in range(0, W.shape[0], step):
        yield v0, W[v0 : v0 + step].astype(np.float32)


def _multihot_product(W, ids, offsets, c, out):
    """out = multihot(bags, factors c) @ W for a float16 / bfloat16 table: for each float32
    block of W's rows, the (bags, block rows) multi-hot block times it, chunked by bags within
    MEMORY_BUDGET, added to the previous blocks' products."""
    B = offsets.shape[0] - 1
    bag = bm.bag_of_ids(offsets)
    for k, (v0, Wc) in enumerate(_float32_blocks(W)):
        v1 = v0 + Wc.shape[0]
        inside = (ids >= v0) & (ids < v1)
        step = chunk_rows(v1 - v0, 4)
        for b0 in range(0, B, step):
            b1 = min(B, b0 + step)
            i0, i1 = offsets[b0], offsets[b1]
            sel = inside[i0:i1]
            block = np.zeros((b1 - b0, v1 - v0), np.float32)
            np.add.at(block, (bag[i0:i1][sel] - b0, ids[i0:i1][sel] - v0), c[i0:i1][sel])
            if k == 0:
                np.matmul(block, Wc, out=out[b0:b1])
            else:
                out[b0:b1] += block @ Wc


def _gather_half(W, ids, out):
    ids = private_ids(ids, W.shape[0])
    n = ids.shape[0]
    _multihot_product(W, ids, np.arange(n + 1), np.ones(n, np.float32), out)


def _bag_half(W, ids, offsets, mode, psw, pad, out):
    ids = private_ids(ids, W.shape[0])
    c = bm.coefficients(ids, offsets, mode, psw, pad).astype(np.float32)
    _multihot_product(W, ids, offsets, c, out)


def over_budget(op, vocab_size, dim, n_ids, itemsize=4):
    """Why a call of these sizes is beyond what benchmarks and scripts run (a sentence), or None:
    the one definition of the dense one-hot's limits (ONEHOT_MAX_BYTES, DENSE_MAX_MACS). For
    bags, n_ids is the number of rows of the multi-hot block (the number of bags)."""
    onehot_bytes = n_ids * vocab_size * itemsize
    if onehot_bytes > ONEHOT_MAX_BYTES:
        return (
            f"onehot_dense: the one-hot input of {n_ids} rows (ids, or bags) x {vocab_size} is "
            f"{onehot_bytes / 2**30:.1f} GiB > {ONEHOT_MAX_BYTES / 2**30:.0f} GiB budget"
        )
    macs = n_ids * vocab_size * dim
    if macs > DENSE_MAX_MACS:
        return f"onehot_dense: {macs:.2g} multiply-adds > {DENSE_MAX_MACS:.0e} budget"
    return None


def scratch_bytes(op, vocab_size, dim, n_ids, itemsize=4):
    """One one-hot block, plus (backward) the product added into dW after the first chunk."""
    block = min(n_ids, chunk_rows(vocab_size, itemsize)) * vocab_size * itemsize
    return block + (vocab_size * dim * itemsize if op is LOOKUP_GRAD else 0)


KERNEL = Kernel(
    "onehot_dense",
    "dense one-hot block @ W (BLAS), chunked",
    {(LOOKUP, FLOAT): _gather, (LOOKUP_GRAD, FLOAT): _scatter_add,
     (LOOKUP_BAG, FLOAT): _bag, (LOOKUP_BAG_GRAD, FLOAT): bag_grad_by_scatter(_scatter_add),
     (LOOKUP, HALF): _gather_half, (LOOKUP_BAG, HALF): _bag_half},
    compiled=False,
    family="onehot",
    colour="#d62728",
    over_budget=over_budget,
    scratch_bytes=scratch_bytes,
    bag_modes=("sum", "mean", "sqrtn"),
)
lookup = KERNEL.lookup
lookup_grad = KERNEL.lookup_grad
lookup_bag = KERNEL.lookup_bag
lookup_bag_grad = KERNEL.lookup_bag_grad

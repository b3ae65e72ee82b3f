"""The Dense-layer view: onehot(ids, V) @ W with BLAS, in chunks of bounded memory.

The one-hot block for a chunk of m ids is m x V; chunks are sized so that it never exceeds
MEMORY_BUDGET bytes (a single row may exceed it when V alone is larger). Differences from a gather,
by construction (IEEE arithmetic, 0 * inf = nan): if W[r, c] is inf, column c of every output row
of the chunk that was not gathered from row r is NaN (rows gathered from r keep the inf); a NaN in
W[r, c], or an inf in a row not gathered, or +inf and -inf in one column, turn all of column c of
the chunk NaN. And -0.0 comes back as +0.0 (W[j] + 0 * W[other] rounds -0.0 to +0.0).

Backward: onehot.T @ grad, chunked the same way. A float32 gradient is multiplied in float64
(one-hot block, grad chunk and the running sum) and rounded to float32 once at the end: BLAS
sums in its own blocked order, so the result is not bitwise the id-order sum of the compiled
kernels, but its error is within eps32 * sum|g| + a float64 rounding per contribution (an
sgemm over 1e6 equal contributions was off by 1.5e-4 relative here).
"""
import numpy as np

from kernels._kernel import Kernel

MEMORY_BUDGET = 256 * 2**20


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
    step = chunk_rows(V, W.itemsize)
    for start in range(0, ids.shape[0], step):
        stop = min(start + step, ids.shape[0])
        np.matmul(onehot(ids[start:stop], V, W.dtype), W, out=out[start:stop])


def _scatter_add(G, ids, dW, zeroed):
    V = dW.shape[0]
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


KERNEL = Kernel("onehot_dense", _gather, _scatter_add, "dense one-hot block @ W (BLAS), chunked")
lookup = KERNEL.lookup
lookup_grad = KERNEL.lookup_grad

"""The Dense-layer view with a sparse one-hot: a scipy CSR matrix (ones, ids, arange) @ W.

Each output row is 1 * W[j], so non-finite weights do not spread; -0.0 comes back as +0.0
(scipy accumulates into a zeroed row: 0.0 + -0.0 is +0.0).
"""
import numpy as np
import scipy.sparse as sp

from kernels._kernel import Kernel


def onehot(ids, vocab_size, dtype):
    """The (len(ids), vocab_size) one-hot matrix of 1-D ids, as a CSR array."""
    n = ids.shape[0]
    return sp.csr_array(
        (np.ones(n, dtype), ids, np.arange(n + 1, dtype=ids.dtype)), shape=(n, vocab_size)
    )


def _gather(W, ids, out):
    out[...] = onehot(ids, W.shape[0], W.dtype) @ W


def _scatter_add(G, ids, dW, zeroed):
    dW[...] = onehot(ids, dW.shape[0], G.dtype).T @ G


KERNEL = Kernel("onehot_sparse", _gather, _scatter_add, "scipy CSR one-hot @ W")
lookup = KERNEL.lookup
lookup_grad = KERNEL.lookup_grad

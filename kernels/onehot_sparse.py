"""The Dense-layer view with a sparse one-hot: a scipy CSR matrix (ones, ids, arange) @ W.

Each output row is 1 * W[j], so non-finite weights do not spread; -0.0 comes back as +0.0
(scipy accumulates into a zeroed row: 0.0 + -0.0 is +0.0).
"""
import numpy as np
import scipy.sparse as sp

from kernels._formats import FLOAT
from kernels._kernel import Kernel
from kernels._ops import LOOKUP, LOOKUP_GRAD


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


def _scratch_bytes(op, vocab_size, dim, n_ids, itemsize):
    """The CSR matrix (values, int64 indices, indptr) and scipy's freshly allocated result,
    copied into the output afterwards."""
    result = vocab_size * dim * itemsize if op is LOOKUP_GRAD else n_ids * dim * itemsize
    return n_ids * (itemsize + 16) + result


KERNEL = Kernel(
    "onehot_sparse",
    "scipy CSR one-hot @ W",
    {(LOOKUP, FLOAT): _gather, (LOOKUP_GRAD, FLOAT): _scatter_add},
    compiled=False,
    family="onehot",
    colour="#ff7f0e",
    scratch_bytes=_scratch_bytes,
)
lookup = KERNEL.lookup
lookup_grad = KERNEL.lookup_grad

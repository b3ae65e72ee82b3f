"""The Dense-layer view with a sparse one-hot: a scipy CSR matrix (ones, ids, arange) @ W.

Each output row is 1 * W[j], so non-finite weights do not spread; -0.0 comes back as +0.0
(scipy accumulates into a zeroed row: 0.0 + -0.0 is +0.0).

Backward: onehot.T @ grad. scipy adds each row's contributions in id order in the product's
dtype, so a float32 gradient is computed in float64 and rounded once: every row is the float64
sum in id order rounded to float32, the same bits as the compiled kernels (a float32 product
summed 1e6 equal values with an error of 1%). When V exceeds the number of ids, only the rows
that are hit take part (the float64 result then has at most n rows, not V).

Bags: the CSR matrix (c, ids, offsets) @ W, c = per_sample_weights (or 1) divided by the mode's
divisor: exactly the Dense layer on a weighted multi-hot input. max is not a product
(NotImplementedError naming the kernels that have it). Backward: the expanded rows c * G[bag]
through the one-hot transpose product above.

The ids are copied and checked again before scipy sees them (it does not bounds-check CSR
indices). A table that is not C-contiguous (a column slice, a broadcast table) is never copied:
the product runs over the rows the ids use. float16 and bfloat16 tables take that path too, the
rows used converted to float32 (exactly) for a float32 product: a lookup is then
table.dequantize()[ids] (up to -0.0 -> +0.0). int8 / int4 rows are not a matrix: not
registered (the registry's NotImplementedError names the kernels that have them).
"""
import numpy as np
import scipy.sparse as sp

from kernels import _bag_math as bm
from kernels._formats import FLOAT, HALF
from kernels._kernel import Kernel, bag_grad_by_scatter
from kernels._ops import LOOKUP, LOOKUP_BAG, LOOKUP_BAG_GRAD, LOOKUP_GRAD
from kernels._validate import private_ids


def onehot(ids, vocab_size, dtype):
    """The (len(ids), vocab_size) one-hot matrix of 1-D ids, as a CSR array."""
    n = ids.shape[0]
    return sp.csr_array(
        (np.ones(n, dtype), ids, np.arange(n + 1, dtype=ids.dtype)), shape=(n, vocab_size)
    )


def _gather(W, ids, out):
    V = W.shape[0]
    ids = private_ids(ids, V)
    if W.flags.c_contiguous and W.dtype == out.dtype:
        out[...] = onehot(ids, V, W.dtype) @ W
        return
    # scipy would copy the whole table into a contiguous one: take the product over the rows
    # the ids use (the same one nonzero per output row, so the same bits), memory ~ the output;
    # a float16 / bfloat16 table's rows converted to float32 on the way.
    rows, slot = np.unique(ids, return_inverse=True)
    out[...] = onehot(slot.astype(ids.dtype, copy=False), rows.shape[0], out.dtype) @ \
        W[rows].astype(out.dtype, copy=False)


def _scatter_add(G, ids, dW, zeroed):
    V = dW.shape[0]
    ids = private_ids(ids, V)
    if G.dtype != np.float32:
        dW[...] = onehot(ids, V, G.dtype).T @ G
        return
    n = ids.shape[0]
    G64 = G.astype(np.float64)
    if V <= n:
        dW[...] = onehot(ids, V, np.float64).T @ G64
        return
    hit = np.zeros(V, np.bool_)
    hit[ids] = True
    rows = np.flatnonzero(hit)
    slot = np.cumsum(hit, dtype=np.intp) - 1  # row -> its index among the rows hit
    if not zeroed:
        dW.fill(0)
    dW[rows] = onehot(slot[ids], rows.shape[0], np.float64).T @ G64


def multihot(ids, offsets, coefficients, vocab_size, dtype):
    """The (B, vocab_size) CSR matrix of bags: row b holds coefficient c at column id for each
    id of bag b (duplicates stay separate entries; the product adds them)."""
    return sp.csr_array((coefficients.astype(dtype), ids, offsets),
                        shape=(offsets.shape[0] - 1, vocab_size))


def _bag(W, ids, offsets, mode, psw, pad, out):
    """CSR (c, ids, offsets) @ W: the bag as a Dense layer on its weighted multi-hot row, where
    c is the per-id factor (w or 1, divided by the mode's divisor); padding ids left out."""
    V = W.shape[0]
    ids = private_ids(ids, V)
    ids, offsets, c = bm.without_padding(ids, offsets, pad,
                                         bm.coefficients(ids, offsets, mode, psw, pad))
    if W.flags.c_contiguous and W.dtype == out.dtype:
        out[...] = multihot(ids, offsets, c, V, W.dtype) @ W
        return
    rows, slot = np.unique(ids, return_inverse=True)
    out[...] = multihot(slot.astype(ids.dtype, copy=False), offsets, c, rows.shape[0],
                        out.dtype) @ W[rows].astype(out.dtype, copy=False)


def _scratch_bytes(op, vocab_size, dim, n_ids, itemsize):
    """The CSR matrix (values, int64 indices, indptr) and scipy's freshly allocated result,
    copied into the output afterwards."""
    result = vocab_size * dim * itemsize if op is LOOKUP_GRAD else n_ids * dim * itemsize
    return n_ids * (itemsize + 16) + result


KERNEL = Kernel(
    "onehot_sparse",
    "scipy CSR one-hot @ W",
    {(LOOKUP, FLOAT): _gather, (LOOKUP_GRAD, FLOAT): _scatter_add,
     (LOOKUP_BAG, FLOAT): _bag, (LOOKUP_BAG_GRAD, FLOAT): bag_grad_by_scatter(_scatter_add),
     (LOOKUP, HALF): _gather, (LOOKUP_BAG, HALF): _bag},
    compiled=False,
    family="onehot",
    colour="#ff7f0e",
    scratch_bytes=_scratch_bytes,
    bag_modes=("sum", "mean", "sqrtn"),
)
lookup = KERNEL.lookup
lookup_grad = KERNEL.lookup_grad
lookup_bag = KERNEL.lookup_bag
lookup_bag_grad = KERNEL.lookup_bag_grad

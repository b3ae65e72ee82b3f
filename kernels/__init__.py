"""The embedding lookup W[ids] and its gradient, five ways behind one interface.

    import kernels
    out = kernels.lookup(W, ids, kernel="numba_gather")
    dW = kernels.lookup_grad(grad, ids, vocab_size, kernel="cython_gather")
    g = kernels.lookup_grad(grad, ids, vocab_size, sparse=True)  # a SparseGrad: rows hit only
    bags = kernels.lookup_bag(W, ids, offsets, mode="mean", kernel="cython_gather")
    T = kernels.quantize(W, "int8")                 # a low-precision table (inference)
    out = kernels.lookup(T, ids)                    # float32, dequantized in the gather

`kernels.KERNELS` maps each name to its Kernel (callable as the lookup); each kernel is also a
module of the same name (`from kernels import numba_gather; numba_gather.lookup(W, ids)`).
Operations (`kernels.OPERATIONS`) and table formats (`kernels.FORMATS`) are declared once each;
a kernel registers the (operation, format) pairs it implements.
"""
from __future__ import annotations

import numpy as np

from kernels import cython_gather, numba_gather, numpy_take, onehot_dense, onehot_sparse
from kernels._cpu import aligned_empty
from kernels._formats import FORMATS, Format
from kernels._kernel import Kernel
from kernels._ops import LOOKUP, LOOKUP_BAG, LOOKUP_BAG_GRAD, LOOKUP_GRAD, OPERATIONS, Operation
from kernels._registry import KERNELS, get_kernel, kernels_implementing, register
from kernels._sparse import SparseGrad
from kernels._tables import BFloat16Table, Float16Table, Int4Table, Int8Table, Table, \
    from_keras_int8, quantize
from kernels._threads import get_num_threads, num_threads, set_num_threads
from kernels._validate import check_vocab_size, check_weights, float_array, refuse_table
from kernels.decisions import Decision, explain, fastest, for_call
from kernels.decisions import reload as reload_measurements

for _module in (onehot_dense, onehot_sparse, numpy_take, numba_gather, cython_gather):
    register(_module.KERNEL)

__all__ = [
    "aligned_empty",
    "KERNELS",
    "OPERATIONS",
    "FORMATS",
    "Kernel",
    "Operation",
    "Format",
    "Decision",
    "SparseGrad",
    "Table",
    "Float16Table",
    "BFloat16Table",
    "Int8Table",
    "Int4Table",
    "quantize",
    "from_keras_int8",
    "lookup",
    "lookup_grad",
    "lookup_bag",
    "lookup_bag_grad",
    "get_kernel",
    "kernels_implementing",
    "get_num_threads",
    "set_num_threads",
    "num_threads",
    "fastest",
    "explain",
    "reload_measurements",
]


def _n_ids(ids) -> int:
    if type(ids) is np.ndarray:
        return ids.size
    try:
        return np.asarray(ids).size
    except (ValueError, TypeError):
        return 0  # the kernel's own checks name the problem


def lookup(weights, ids, *, kernel: str | Kernel = "numpy_take", out: np.ndarray | None = None,
           out_dtype=None) -> np.ndarray:
    """Return weights[ids], shape ids.shape + (dim,), computed by the named kernel.

    weights: a 2-D float32/float64 array, or a low-precision table (kernels.quantize), whose
    lookup returns float32 (float16 with out_dtype=np.float16).
    kernel="auto" takes the kernel measured fastest for these sizes (kernels.fastest)."""
    if kernel == "auto":
        W, fmt, (V, D) = check_weights(weights)
        k = for_call(LOOKUP, V, D, _n_ids(ids), fmt)
        return k.lookup(weights if fmt.quantized else W, ids, out=out, out_dtype=out_dtype)
    return get_kernel(kernel).lookup(weights, ids, out=out, out_dtype=out_dtype)


def lookup_grad(grad, ids, vocab_size: int, *, sparse: bool = False,
                kernel: str | Kernel = "numpy_take", out: np.ndarray | None = None):
    """Return dW of shape (vocab_size, dim): dW[ids[k]] += grad[k] for every k (out is overwritten).

    sparse=True returns a SparseGrad instead: the sorted unique ids (`rows`) and their summed
    gradients (`values`), computed by the kernel's own scatter-add (so `to_dense()` equals its
    dense result bit for bit; onehot_dense: within the summation bound) with nothing allocated
    in proportion to vocab_size; no out= then.
    kernel="auto" takes the kernel measured fastest for the (dense) backward at these sizes."""
    if kernel == "auto":
        G, fmt = float_array(grad, "grad")  # the checks in the order every kernel makes them
        V = check_vocab_size(vocab_size)
        D = G.shape[-1] if G.ndim else 0
        k = for_call(LOOKUP_GRAD, V, D, _n_ids(ids), fmt)
        return k.lookup_grad(G, ids, V, sparse=sparse, out=out)
    return get_kernel(kernel).lookup_grad(grad, ids, vocab_size, sparse=sparse, out=out)


def _n_bags(ids, offsets, include_last_offset) -> int:
    """The number of bags of a call, as far as it can be told without checking (0 if not)."""
    try:
        if offsets is None:
            return np.shape(ids)[0]  # 2-D ids (B, N)
        return len(offsets) - bool(include_last_offset)
    except (TypeError, ValueError, IndexError):
        return 0  # the kernel's own checks name the problem


def _bag_kernel(op, V, D, n_ids, n_bags, fmt, mode) -> Kernel:
    """The kernel "auto" runs for a bag call: fastest for its sizes, its bag length
    (n_ids // n_bags) and among the kernels that have its mode."""
    return for_call(op, V, D, n_ids, fmt, bag_length=n_ids // max(1, n_bags), mode=mode)


def lookup_bag(weights, ids, offsets=None, *, mode: str = "sum", per_sample_weights=None,
               padding_idx: int | None = None, include_last_offset: bool = False,
               kernel: str | Kernel = "numpy_take", out: np.ndarray | None = None,
               out_dtype=None) -> np.ndarray:
    """Pooled lookups (torch's EmbeddingBag): out[b] = the reduction of the rows of bag b.

    ids are 1-D with `offsets` (B bag starts, or B + 1 bounds with include_last_offset=True) or
    2-D (B, N) with offsets=None. mode: "sum", "mean", "max" or "sqrtn" (sum / sqrt(sum of
    squared weights), as TF's combiner). per_sample_weights (one per id, the table's dtype) weight
    sum, mean (sum(w e) / sum(w)) and sqrtn. Ids equal to padding_idx (negative: from the end)
    are left out. A bag with no id, or a divisor of 0, is zeros. Returns (B, dim).
    weights may be a low-precision table (kernels.quantize): the bags are then float32 sums of
    its dequantized rows (per_sample_weights float32), float16 with out_dtype=np.float16."""
    if kernel == "auto":
        W, fmt, (V, D) = check_weights(weights)  # every kernel's first check
        kernel = _bag_kernel(LOOKUP_BAG, V, D, _n_ids(ids),
                             _n_bags(ids, offsets, include_last_offset), fmt, mode)
        if not fmt.quantized:
            weights = W
    return get_kernel(kernel).lookup_bag(
        weights, ids, offsets, mode=mode, per_sample_weights=per_sample_weights,
        padding_idx=padding_idx, include_last_offset=include_last_offset, out=out,
        out_dtype=out_dtype)


def lookup_bag_grad(grad_out, ids, offsets=None, vocab_size: int | None = None, *,
                    mode: str = "sum", per_sample_weights=None, padding_idx: int | None = None,
                    include_last_offset: bool = False, weights=None, sparse: bool = False,
                    kernel: str | Kernel = "numpy_take", out: np.ndarray | None = None):
    """The gradient of lookup_bag with respect to the table: dW (vocab_size, dim), each
    non-padding id's row receiving its bag's grad_out row times d out / d row (w or 1 for sum,
    divided by the divisor for mean and sqrtn; max sends each column to its bag's arg-max row,
    the first on ties). `weights` (the forward's table) is needed for mode="max" and with
    per_sample_weights; then (dW, the gradient of per_sample_weights) is returned. vocab_size
    defaults to len(weights). sparse=True returns a SparseGrad in place of dW (padding ids left
    out; for max only the arg-max rows), as lookup_grad(sparse=True) does."""
    refuse_table(weights)
    if kernel == "auto":
        try:  # sizes only: the kernel makes every check, in its own order
            G, fmt = float_array(grad_out, "grad_out")
            V = check_vocab_size(np.shape(weights)[0] if vocab_size is None else vocab_size)
        except (TypeError, ValueError, IndexError):
            from kernels.decisions import DEFAULT_KERNEL

            kernel = DEFAULT_KERNEL  # whose checks then name the problem
        else:
            D, B = (G.shape[-1], G.shape[0]) if G.ndim else (0, 0)
            kernel = _bag_kernel(LOOKUP_BAG_GRAD, V, D, _n_ids(ids), B, fmt, mode)
            grad_out = G
    return get_kernel(kernel).lookup_bag_grad(
        grad_out, ids, offsets, vocab_size, mode=mode, per_sample_weights=per_sample_weights,
        padding_idx=padding_idx, include_last_offset=include_last_offset, weights=weights,
        sparse=sparse, out=out)

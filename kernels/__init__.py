"""The embedding lookup W[ids] and its gradient, five ways behind one interface.

    import kernels
    out = kernels.lookup(W, ids, kernel="numba_gather")
    dW = kernels.lookup_grad(grad, ids, vocab_size, kernel="cython_gather")

`kernels.KERNELS` maps each name to its Kernel (callable as the lookup); each kernel is also a
module of the same name (`from kernels import numba_gather; numba_gather.lookup(W, ids)`).
Operations (`kernels.OPERATIONS`) and table formats (`kernels.FORMATS`) are declared once each;
a kernel registers the (operation, format) pairs it implements.
"""
from __future__ import annotations

import numpy as np

from kernels import cython_gather, numba_gather, numpy_take, onehot_dense, onehot_sparse
from kernels._formats import FORMATS, Format
from kernels._kernel import Kernel
from kernels._ops import LOOKUP, LOOKUP_GRAD, OPERATIONS, Operation
from kernels._registry import KERNELS, get_kernel, kernels_implementing, register
from kernels._threads import get_num_threads, num_threads, set_num_threads
from kernels._validate import check_vocab_size, check_weights, float_array
from kernels.decisions import Decision, explain, fastest, for_call
from kernels.decisions import reload as reload_measurements

for _module in (onehot_dense, onehot_sparse, numpy_take, numba_gather, cython_gather):
    register(_module.KERNEL)

__all__ = [
    "KERNELS",
    "OPERATIONS",
    "FORMATS",
    "Kernel",
    "Operation",
    "Format",
    "Decision",
    "lookup",
    "lookup_grad",
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


def lookup(weights, ids, *, kernel: str | Kernel = "numpy_take", out: np.ndarray | None = None
           ) -> np.ndarray:
    """Return weights[ids], shape ids.shape + (dim,), computed by the named kernel.

    kernel="auto" takes the kernel measured fastest for these sizes (kernels.fastest)."""
    if kernel == "auto":
        W, fmt = check_weights(weights)
        V, D = W.shape
        return for_call(LOOKUP, V, D, _n_ids(ids), fmt).lookup(W, ids, out=out)
    return get_kernel(kernel).lookup(weights, ids, out=out)


def lookup_grad(grad, ids, vocab_size: int, *, kernel: str | Kernel = "numpy_take",
                out: np.ndarray | None = None) -> np.ndarray:
    """Return dW of shape (vocab_size, dim): dW[ids[k]] += grad[k] for every k (out is overwritten).

    kernel="auto" takes the kernel measured fastest for the backward at these sizes."""
    if kernel == "auto":
        G, fmt = float_array(grad, "grad")  # the checks in the order every kernel makes them
        V = check_vocab_size(vocab_size)
        D = G.shape[-1] if G.ndim else 0
        k = for_call(LOOKUP_GRAD, V, D, _n_ids(ids), fmt)
        return k.lookup_grad(G, ids, V, out=out)
    return get_kernel(kernel).lookup_grad(grad, ids, vocab_size, out=out)

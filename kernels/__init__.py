"""The embedding lookup W[ids] and its gradient, five ways behind one interface.

    import kernels
    out = kernels.lookup(W, ids, kernel="numba_gather")
    dW = kernels.lookup_grad(grad, ids, vocab_size, kernel="cython_gather")

`kernels.KERNELS` maps each name to its Kernel (callable as the lookup); each kernel is also a
module of the same name (`from kernels import numba_gather; numba_gather.lookup(W, ids)`).
"""
import numpy as np

from kernels import cython_gather, numba_gather, numpy_take, onehot_dense, onehot_sparse
from kernels._kernel import Kernel
from kernels._threads import get_num_threads, num_threads, set_num_threads
from kernels._validate import _float_array, check_vocab_size, check_weights
from kernels.fastest import fastest, for_call
from kernels.fastest import reload as reload_measurements

KERNELS = {
    m.KERNEL.name: m.KERNEL
    for m in (onehot_dense, onehot_sparse, numpy_take, numba_gather, cython_gather)
}

__all__ = [
    "KERNELS",
    "Kernel",
    "lookup",
    "lookup_grad",
    "get_num_threads",
    "set_num_threads",
    "num_threads",
    "fastest",
    "reload_measurements",
]


def get_kernel(kernel):
    """The Kernel for a name or a Kernel; ValueError for an unknown name ("auto" is resolved by
    lookup and lookup_grad, which know the sizes)."""
    if isinstance(kernel, Kernel):
        return kernel
    try:
        return KERNELS[kernel]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown kernel {kernel!r}; choose 'auto' or one of {', '.join(sorted(KERNELS))}"
        ) from None


def _n_ids(ids):
    return ids.size if type(ids) is np.ndarray else int(np.size(ids))


def lookup(weights, ids, *, kernel="numpy_take", out=None):
    """Return weights[ids], shape ids.shape + (dim,), computed by the named kernel.

    kernel="auto" takes the kernel measured fastest for these sizes (kernels.fastest)."""
    if kernel == "auto":
        W = check_weights(weights)
        V, D = W.shape
        return for_call(V, D, _n_ids(ids), W.dtype.char, False).lookup(W, ids, out=out)
    return get_kernel(kernel).lookup(weights, ids, out=out)


def lookup_grad(grad, ids, vocab_size, *, kernel="numpy_take", out=None):
    """Return dW of shape (vocab_size, dim): dW[ids[k]] += grad[k] for every k (out is overwritten).

    kernel="auto" takes the kernel measured fastest for the backward at these sizes."""
    if kernel == "auto":
        G = _float_array(grad, "grad")  # the checks in the order every kernel makes them
        V = check_vocab_size(vocab_size)
        k = for_call(V, G.shape[-1] if G.ndim else 0, _n_ids(ids), G.dtype.char, True)
        return k.lookup_grad(G, ids, V, out=out)
    return get_kernel(kernel).lookup_grad(grad, ids, vocab_size, out=out)

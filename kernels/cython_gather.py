"""Cython gather: OpenMP prange over chunks of ids, one memcpy per row (serial for small calls).

Rows are copied with constant-size memcpy for the common row sizes (inlined as vector moves),
and prefetched a few ids ahead when the table does not fit in L2 (measured: it helps beyond L2
and costs where the table is cached). Tables whose rows are not contiguous take an element loop.

Backward: rows of dW split among threads, as in numba_gather (deterministic, no atomics).
Built without OpenMP (a compiler lacking it), the same code runs on one thread.
"""
import numpy as np

from kernels import _cython_gather as _core
from kernels import _threads
from kernels._cpu import L2_BYTES
from kernels._kernel import Kernel

PARALLEL_MIN_BYTES = 256 * 2**10
"""Calls that move fewer output bytes run serially: starting threads costs more than they save."""


def _threads_for(nbytes):
    return 1 if nbytes < PARALLEL_MIN_BYTES else _threads.get_num_threads()


PREFETCH_DISTANCE = 12
"""How many ids ahead rows are prefetched (when the table does not fit in L2)."""


def _gather(W, ids, out):
    prefetch = PREFETCH_DISTANCE if W.shape[0] * abs(W.strides[0]) > L2_BYTES else 0
    _core.gather(W, ids, out, _threads_for(out.nbytes), prefetch)


def _scatter_add(G, ids, dW, zeroed):
    if not G.flags.c_contiguous:
        G = np.ascontiguousarray(G)
    _core.scatter_add(G, ids, dW, zeroed, _threads_for(G.nbytes + (0 if zeroed else dW.nbytes)))


KERNEL = Kernel("cython_gather", _gather, _scatter_add, "Cython OpenMP prange, memcpy per row")
lookup = KERNEL.lookup
lookup_grad = KERNEL.lookup_grad


def threads_used(weights, ids):
    """Run the forward gather and return how many threads did work in it."""
    from kernels._validate import lookup_args

    W, flat, out2d, _ = lookup_args(weights, ids, None)
    if not out2d.size:
        return 0
    return _core.gather(W, flat, out2d, _threads_for(out2d.nbytes), 0)

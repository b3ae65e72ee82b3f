"""Numba gather: one llvm.memcpy per row, a serial path for small calls, chunked prange for
large ones, rows prefetched a few ids ahead when the table does not fit in L2. Tables whose rows
are not contiguous take an element loop.

Backward: rows of dW are split among threads; each thread zeroes its rows and scans every id,
adding only those in its range. No atomics, no sort, and the same sum order every call
(bitwise deterministic).

Every loop reads each id once (load_id) and checks it against V before use: ids rewritten by
another thread during a call can give wrong rows or a RuntimeError, never an access outside W,
out or dW.

Threads: the threading layer is chosen and started under a lock before the first parallel call
(omp, then tbb, then workqueue); under workqueue, which aborts the process when two Python threads
enter it at once, parallel calls are serialized. numba.set_num_threads is restored after each
parallel call (the caller's own Numba thread count is left as it was). One thread (small calls,
num_threads(1), a forked child where OpenMP is unsafe: see kernels._threads) runs the plain njit
loops and never enters a parallel function.
"""
import contextlib
import threading

import numba
import numpy as np
from numba import njit, prange

from kernels._cpu import prefetch_distance
from kernels._kernel import Kernel
from kernels._numba_intrinsics import copy_row, load_id, prefetch_row, zero_rows
from kernels._threads import ids_changed_error, openmp_threads, threads_for
from kernels._validate import lookup_args

# The workqueue layer aborts the process when two Python threads enter a parallel region at once.
numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]

_layer = None  # Numba's threading layer, once started by _start_layer
_serialize = contextlib.nullcontext()  # a lock around parallel calls under workqueue
_start_lock = threading.Lock()


def _start_layer():
    """Start Numba's threading layer (once, under a lock) and decide whether calls serialize.

    Done before the first parallel call, not after it: Python threads making their first
    parallel calls at once would otherwise all enter an unserialized workqueue layer."""
    global _layer, _serialize
    with _start_lock:
        if _layer is None:
            numba.get_num_threads()  # starts the layer (no parallel region runs)
            layer = numba.threading_layer()
            if layer == "workqueue":
                _serialize = threading.Lock()
            _layer = layer
    return _layer


def _numba_threads(n):
    """The thread count to run with: n, or 1 where a parallel region must not start."""
    if n == 1:
        return 1
    if (_layer or _start_layer()) == "omp":
        return openmp_threads(n)  # 1 in a forked child where libgomp is unsafe
    return n


def _run_parallel(fn, *args):
    """Call a prange kernel whose last argument is its thread count (> 1), leaving Numba's own
    thread count for this Python thread as it was."""
    previous = numba.get_num_threads()
    numba.set_num_threads(args[-1])  # thread-local to the calling Python thread
    try:
        with _serialize:
            return fn(*args)
    finally:
        numba.set_num_threads(previous)


@njit(cache=True, nogil=True)
def _gather_rows(W, ids, out, lo, hi, contiguous_rows, prefetch):
    """Copy rows lo..hi-1; return how many ids were outside [0, V) (each copied row 0)."""
    V = W.shape[0]
    bad = 0
    if contiguous_rows:
        for i in range(lo, hi):
            if prefetch and i + prefetch < hi:
                prefetch_row(W, ids[i + prefetch])  # a prefetch never faults, whatever the id
            j = load_id(ids, i)
            if j < 0 or j >= V:
                bad += 1
                j = 0
            copy_row(out, i, W, j)
    else:
        D = W.shape[1]
        for i in range(lo, hi):
            j = load_id(ids, i)
            if j < 0 or j >= V:
                bad += 1
                j = 0
            for k in range(D):
                out[i, k] = W[j, k]
    return bad


@njit(parallel=True, cache=True, nogil=True)
def _gather_parallel(W, ids, out, contiguous_rows, prefetch, nthreads):
    n = ids.shape[0]
    worker = np.full(nthreads, -1, np.int64)
    bad = 0
    for c in prange(nthreads):
        bad += _gather_rows(W, ids, out, n * c // nthreads, n * (c + 1) // nthreads,
                            contiguous_rows, prefetch)
        worker[c] = numba.get_thread_id()
    return len(set(worker)), bad


@njit(cache=True, nogil=True)
def _scatter_rows(G, ids, dW, zeroed, r0, r1):
    """dW[r0:r1] = the contributions to those rows, added in id order. Returns 1 if an id
    outside [0, V) was read, else 0."""
    D = G.shape[1]
    V = dW.shape[0]
    bad = 0
    if not zeroed and r1 > r0:
        zero_rows(dW, r0, r1)
    for i in range(ids.shape[0]):
        j = load_id(ids, i)
        if r0 <= j < r1:
            for k in range(D):
                dW[j, k] += G[i, k]
        elif j < 0 or j >= V:
            bad = 1
    return bad


@njit(parallel=True, cache=True, nogil=True)
def _scatter_parallel(G, ids, dW, zeroed, nthreads):
    V = dW.shape[0]
    bad = 0
    for c in prange(nthreads):
        bad += _scatter_rows(G, ids, dW, zeroed, V * c // nthreads, V * (c + 1) // nthreads)
    return bad


def _gather_threads(W, ids, out):
    nthreads = _numba_threads(threads_for(out.nbytes))
    contiguous_rows = W.strides[1] == W.itemsize
    prefetch = prefetch_distance(W) if contiguous_rows else 0
    if nthreads == 1:
        used, bad = 1, _gather_rows(W, ids, out, 0, ids.shape[0], contiguous_rows, prefetch)
    else:
        used, bad = _run_parallel(_gather_parallel, W, ids, out, contiguous_rows, prefetch,
                                  nthreads)
    if bad:
        raise ids_changed_error(W.shape[0])
    return used


def _gather(W, ids, out):
    _gather_threads(W, ids, out)


def _scatter_add(G, ids, dW, zeroed):
    nthreads = _numba_threads(threads_for(G.nbytes + (0 if zeroed else dW.nbytes)))
    if nthreads == 1:
        bad = _scatter_rows(G, ids, dW, zeroed, 0, dW.shape[0])
    else:
        bad = _run_parallel(_scatter_parallel, G, ids, dW, zeroed, nthreads)
    if bad:
        raise ids_changed_error(dW.shape[0])


KERNEL = Kernel("numba_gather", _gather, _scatter_add, "Numba row loops, chunked prange")
lookup = KERNEL.lookup
lookup_grad = KERNEL.lookup_grad


def threads_used(weights, ids):
    """Run the forward gather and return how many threads did work in it."""
    W, flat, out2d, _ = lookup_args(weights, ids, None)
    return _gather_threads(W, flat, out2d) if out2d.size else 0

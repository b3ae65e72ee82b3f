"""Cython gather: OpenMP prange over chunks of ids, a row copied at a time (serial for small
calls).

Rows of a multiple of 32 bytes are copied in 32-byte vectors (unrolled for the common sizes),
every line of a row prefetched some 8 KB of rows ahead when the table does not fit in L2
(kernels._cpu.copy_prefetch_distance; it costs where the table is cached); other rows with a
memcpy per row. Tables whose rows are not contiguous take an element loop.

Backward: rows of dW split among threads, as in numba_gather (deterministic, no atomics). A
float32 gradient row is the float64 sum of its contributions in id order, rounded once to
float32 (the same bits as numba_gather, for any thread count); float64 rows are summed in id
order.
Built without OpenMP (a compiler lacking it), the same code runs on one thread. One thread
starts no OpenMP region; in a forked child where OpenMP is unsafe every call runs on one thread
(kernels._threads explains the rule).
"""
import numpy as np

from kernels import _cython_gather as _core
from kernels._validate import MODE_CODES, IdsOutOfRange, any_out_of_range
from kernels._cpu import bag_prefetch, copy_prefetch_distance, decode_prefetch, stream_output
from kernels._formats import FLOAT, LOW_PRECISION
from kernels._numba_lowp import CODES, storage
from kernels._kernel import Kernel, bag_grad_by_scatter
from kernels._ops import LOOKUP, LOOKUP_BAG, LOOKUP_BAG_GRAD, LOOKUP_GRAD
from kernels._threads import openmp_threads, threads_for


def _threads(nbytes):
    n = threads_for(nbytes)
    return n if n == 1 else openmp_threads(n)


def _bags_of_one(ids, offsets, out):
    """Whether a bag call's bags hold one id each (no offsets, as many bags as ids): the
    kernel's own loop for them, and the lookup's prefetch distance."""
    return offsets is None and ids.shape[0] == out.shape[0]


def _gather(W, ids, out, check_ids=False):
    _core.gather(W, ids, out, _threads(out.nbytes), copy_prefetch_distance(W),
                 stream_output(out, W), check_ids)


def _scatter_add(G, ids, dW, zeroed):
    if not G.flags.c_contiguous:
        G = np.ascontiguousarray(G)
    _core.scatter_add(G, ids, dW, zeroed, _threads(G.nbytes + (0 if zeroed else dW.nbytes)))


def _bag(W, ids, offsets, mode, psw, pad, out, check_ids=False):
    if W.strides[1] != W.itemsize:  # rows not contiguous: bag a compact copy of the rows used
        if check_ids and any_out_of_range(ids, W.shape[0]):
            raise IdsOutOfRange()
        rows, slot = np.unique(ids, return_inverse=True)
        hit = np.flatnonzero(rows == pad)
        W, ids, pad = np.ascontiguousarray(W[rows]), slot.astype(ids.dtype), \
            (int(hit[0]) if hit.size else -1)
    _core.bag(W, ids, offsets, MODE_CODES[mode], psw, pad, out,
              _threads(ids.shape[0] * W.shape[1] * W.itemsize + out.nbytes),
              bag_prefetch(W, single=_bags_of_one(ids, offsets, out)),
              check_ids, stream_output(out, W))


def _decoding_gather(code):
    """The lookup function of a low-precision format (_numba_lowp.CODES): rows decoded straight
    into out."""

    def gather(W, ids, out, check_ids=False):
        S = storage(W)
        # every row length gains from prefetch here, as in the bags: measured at V = 2e6,
        # n = 65,536, 2 threads, none / 16 ahead: int8 D = 64 1.07 / 0.37 ms, int4 D = 128
        # 4.78 / 0.77 ms (the lookup's former 128-byte minimum left both unprefetched)
        _core.decode_gather(code, S, ids, out, _threads(out.nbytes),
                            decode_prefetch(S), stream_output(out, S), check_ids)

    return gather


def _decoding_bag(code):
    """The lookup_bag function of a low-precision format: each row decoded, then pooled as a
    float32 table's."""

    def bag(W, ids, offsets, mode, psw, pad, out, check_ids=False):
        S = storage(W)
        _core.decode_bag(code, S, ids, offsets, MODE_CODES[mode], psw, pad, out,
                         _threads(ids.shape[0] * S.shape[1] * S.itemsize + out.nbytes),
                         decode_prefetch(S, bag=not _bags_of_one(ids, offsets, out)),
                         check_ids,
                         stream_output(out, S))

    return bag


KERNEL = Kernel(
    "cython_gather",
    "Cython OpenMP prange, memcpy per row",
    {(LOOKUP, FLOAT): _gather, (LOOKUP_GRAD, FLOAT): _scatter_add,
     (LOOKUP_BAG, FLOAT): _bag, (LOOKUP_BAG_GRAD, FLOAT): bag_grad_by_scatter(_scatter_add),
     **{(LOOKUP, fmt): _decoding_gather(CODES[fmt.name]) for fmt in LOW_PRECISION},
     **{(LOOKUP_BAG, fmt): _decoding_bag(CODES[fmt.name]) for fmt in LOW_PRECISION}},
    compiled=True,
    family="gather",
    colour="#2ca02c",
    bag_checks_ids=True,
    lookup_checks_ids=FLOAT + LOW_PRECISION,
    bag_offsets_in_place=True,
)
lookup = KERNEL.lookup
lookup_grad = KERNEL.lookup_grad
lookup_bag = KERNEL.lookup_bag
lookup_bag_grad = KERNEL.lookup_bag_grad


def threads_used(weights, ids):
    """Run the forward gather and return how many threads did work in it."""
    W, _, flat, out2d, _ = LOOKUP.prepare(weights, ids, None)
    if not out2d.size:
        return 0
    return _core.gather(W, flat, out2d, _threads(out2d.nbytes), 0)

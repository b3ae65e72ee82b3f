"""NumPy fancy indexing in its fastest measured form.

Forward: `np.take(W, ids, axis=0, out=out, mode="clip")`. The shared check has already proved every
id in range, so "clip" never clips; the default mode="raise" buffers the output when `out` is
given and was measured slower (see README, "Choosing the NumPy form").
Backward: a stable sort of the ids, then np.add.reduceat over runs of equal ids: duplicates
accumulate in id order, as np.add.at does, and it was measured 1.2-3.7x faster than np.add.at
(README, "Choosing the NumPy form").
Bags: the rows gathered as above (padding ids left out), scaled by per_sample_weights, summed by
np.add.reduceat over the bags (empty bags, whose reduceat value would be another bag's row,
written as zeros), divided by the mode's divisor; max by np.fmax.reduceat plus torch's NaN and
first-occurrence rule (kernels._bag_math.max_positions).
A table that is not C-contiguous is never copied: the forward then indexes it (`W[ids]`, one
temporary of the output's size), since np.take would first copy the whole table.
"""
import numpy as np

from kernels import _bag_math as bm
from kernels._formats import FLOAT
from kernels._kernel import Kernel, bag_grad_by_scatter
from kernels._ops import LOOKUP, LOOKUP_BAG, LOOKUP_BAG_GRAD, LOOKUP_GRAD


def _gather(W, ids, out):
    if W.flags.c_contiguous:
        np.take(W, ids, axis=0, out=out, mode="clip")
    else:
        # np.take copies a non-contiguous table whole (a column slice of a 2e6 x 128 table:
        # +488 MB a call); fancy indexing reads only the rows asked for.
        out[...] = W[ids]


def _scatter_add(G, ids, dW, zeroed):
    if not zeroed:
        dW.fill(0)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_ids[1:] != sorted_ids[:-1])))
    dW[sorted_ids[starts]] = np.add.reduceat(G[order], starts, axis=0)


def _bag(W, ids, offsets, mode, psw, pad, out):
    if mode == "max":
        bm.bag_max(W, ids, offsets, pad, out)
        return
    count, d = bm.divisors(ids, offsets, mode, psw, pad)
    if pad >= 0:
        keep = ids != pad
        if not keep.all():
            offsets = np.concatenate(([0], np.cumsum(keep)))[offsets]
            ids = ids[keep]
            psw = None if psw is None else psw[keep]
    rows = np.empty((ids.shape[0], W.shape[1]), W.dtype)
    _gather(W, ids, rows)
    if psw is not None:
        rows *= psw[:, None]
    if count.all() and ids.shape[0]:
        np.add.reduceat(rows, offsets[:-1], axis=0, out=out)
    else:
        out[...] = bm.segment_sum(rows, offsets)
    if mode != "sum":
        dd = d.astype(W.dtype)[:, None]
        np.divide(out, dd, out=out, where=dd != 0)
        out[d == 0] = 0


KERNEL = Kernel(
    "numpy_take",
    "NumPy np.take(mode='clip') / sort + np.add.reduceat",
    {(LOOKUP, FLOAT): _gather, (LOOKUP_GRAD, FLOAT): _scatter_add,
     (LOOKUP_BAG, FLOAT): _bag, (LOOKUP_BAG_GRAD, FLOAT): bag_grad_by_scatter(_scatter_add)},
    compiled=False,
    family="gather",
    colour="#7f7f7f",
)
lookup = KERNEL.lookup
lookup_grad = KERNEL.lookup_grad
lookup_bag = KERNEL.lookup_bag
lookup_bag_grad = KERNEL.lookup_bag_grad

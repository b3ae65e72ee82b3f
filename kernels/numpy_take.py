"""NumPy fancy indexing in its fastest measured form.

Forward: `np.take(W, ids, axis=0, out=out, mode="clip")`. The shared check has already proved every
id in range, so "clip" never clips; the default mode="raise" buffers the output when `out` is
given and was measured slower (see README, "Choosing the NumPy form").
Backward: a stable sort of the ids, then np.add.reduceat over runs of equal ids: duplicates
accumulate in id order, as np.add.at does, and it was measured 1.2-3.7x faster than np.add.at
(README, "Choosing the NumPy form").
Bags: the rows gathered as above (padding ids left out), scaled by per_sample_weights, summed per
bag as a (bags, length, D) block over its middle axis, one block per bag length, divided by the
mode's divisor; max by np.fmax.reduceat plus torch's NaN and
first-occurrence rule (kernels._bag_math.max_positions).
A table that is not C-contiguous is never copied: the forward then indexes it (`W[ids]`, one
temporary of the output's size), since np.take would first copy the whole table.

Low-precision tables (every format of kernels.quantize): the packed rows are gathered with
np.take in blocks of PACKED_BLOCK_BYTES and dequantized by the table class's own rule
(kernels._tables: float32(q) * scale, rounded, + bias, rounded; NumPy has no cheap fused
multiply-add, and this unfused form is the package's definition), so a lookup equals
table.dequantize()[ids] bit for bit. Bags of float16 and bfloat16 rows sum those float32 rows
exactly as float32 tables' rows are summed; int8 and int4 bags are summed as torch's quantized
bag ops sum them, acc = fma(scale, q, acc + bias) row after row, the fused multiply-add
emulated exactly in float64 (kernels._bag_math.fma32); max takes the gathered dequantized rows
of the non-padding ids.
"""
import numpy as np

from kernels import _bag_math as bm
from kernels._formats import FLOAT, LOW_PRECISION
from kernels._tables import TABLE_CLASSES
from kernels._kernel import Kernel, bag_grad_by_scatter
from kernels._ops import LOOKUP, LOOKUP_BAG, LOOKUP_BAG_GRAD, LOOKUP_GRAD


def _gather(W, ids, out):
    if W.flags.c_contiguous:
        np.take(W, ids, axis=0, out=out, mode="clip")
    else:
        # np.take copies a non-contiguous table whole (a column slice of a 2e6 x 128 table:
        # +488 MB a call); fancy indexing reads only the rows asked for.
        out[...] = W[ids]


PACKED_BLOCK_BYTES = 2**16
"""Packed rows gathered at a time before dequantizing them into the output (stays in L2)."""


def _packed_gather(fmt):
    """The lookup function of a low-precision format: gather packed rows, dequantize."""
    dequantize = TABLE_CLASSES[fmt.name]._dequantize_rows

    def gather(W, ids, out):
        step = max(1, PACKED_BLOCK_BYTES // max(1, W.strides[0]))
        for start in range(0, ids.shape[0], step):
            rows = np.take(W, ids[start : start + step], axis=0, mode="clip")
            dequantize(rows, out[start : start + step])

    gather.__name__ = f"_gather_{fmt.name}"
    return gather


def _scatter_add(G, ids, dW, zeroed):
    if not zeroed:
        dW.fill(0)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_ids[1:] != sorted_ids[:-1])))
    dW[sorted_ids[starts]] = np.add.reduceat(G[order], starts, axis=0)


def _bag_sums(W, ids, offsets, psw, out, gather, codes=None):
    """out[b] = the (weighted) sum of bag b's rows. Bags are grouped by length; a group of c bags
    of length L is gathered as one (c * L, D) block and summed as (c, L, D) over axis 1, which
    NumPy adds row after row (measured 2.5-11.6x faster than np.add.reduceat over axis 0 at
    D = 64 and 7x at D = 256, 1.3x slower at D = 16: python -m tools.numpy_forms --bags).
    With `codes` (a rowwise-quantized table's Table._codes) the packed rows are gathered and
    summed as torch sums them (kernels._bag_math.quantized_bag_sum)."""
    D = out.shape[1]
    lengths = np.diff(offsets)
    if lengths.shape[0] and lengths.min() == lengths.max():  # one length: no grouping
        groups = [(int(lengths[0]), None)]
    else:
        order = np.argsort(lengths, kind="stable")
        cuts = np.flatnonzero(np.diff(lengths[order])) + 1
        groups = [(int(lengths[g[0]]), g) for g in np.split(order, cuts)]
    for L, bags in groups:
        target = out if bags is None else np.empty((bags.shape[0], D), out.dtype)
        if L == 0:
            target.fill(0)
        else:
            pos = None if bags is None else (offsets[bags][:, None] + np.arange(L)).reshape(-1)
            sel = ids if pos is None else ids[pos]
            w = None if psw is None else (psw if pos is None else psw[pos])
            if codes is not None:
                q, scale, bias = codes(np.take(W, sel, axis=0, mode="clip"), D)
                c = target.shape[0]
                target[...] = bm.quantized_bag_sum(
                    q.reshape(c, L, D), scale.reshape(c, L), bias.reshape(c, L),
                    None if w is None else w.reshape(c, L))
            else:
                rows = np.empty((sel.shape[0], D), out.dtype)
                gather(W, sel, rows)
                if w is not None:
                    rows *= w[:, None]
                rows.reshape(target.shape[0], L, D).sum(axis=1, out=target)
        if bags is not None:
            out[bags] = target


def _bag_function(gather, codes=None):
    """The lookup_bag function over rows that `gather` writes (a float table's, or a
    low-precision table's dequantized ones); sums of a rowwise-quantized table's rows go through
    `codes` (_bag_sums)."""

    def bag(W, ids, offsets, mode, psw, pad, out):
        if mode == "max":
            if gather is _gather:
                bm.bag_max(W, ids, offsets, pad, out)
            else:
                kept, kept_offsets, _ = bm.without_padding(ids, offsets, pad)
                rows = np.empty((kept.shape[0], out.shape[1]), out.dtype)
                gather(W, kept, rows)
                bm.bag_max(rows, np.arange(kept.shape[0]), kept_offsets, -1, out)
            return
        if mode != "sum":
            count, d = bm.divisors(ids, offsets, mode, psw, pad)
        _bag_sums(W, *bm.without_padding(ids, offsets, pad, psw), out, gather, codes)
        if mode != "sum":
            dd = d.astype(out.dtype)[:, None]
            np.divide(out, dd, out=out, where=dd != 0)
            out[d == 0] = 0

    return bag


_bag = _bag_function(_gather)
_PACKED = {fmt: _packed_gather(fmt) for fmt in LOW_PRECISION}


KERNEL = Kernel(
    "numpy_take",
    "NumPy np.take(mode='clip') / sort + np.add.reduceat",
    {(LOOKUP, FLOAT): _gather, (LOOKUP_GRAD, FLOAT): _scatter_add,
     (LOOKUP_BAG, FLOAT): _bag, (LOOKUP_BAG_GRAD, FLOAT): bag_grad_by_scatter(_scatter_add),
     **{(LOOKUP, fmt): fn for fmt, fn in _PACKED.items()},
     **{(LOOKUP_BAG, fmt): _bag_function(fn, getattr(TABLE_CLASSES[fmt.name], "_codes", None))
        for fmt, fn in _PACKED.items()}},
    compiled=False,
    family="gather",
    colour="#7f7f7f",
)
lookup = KERNEL.lookup
lookup_grad = KERNEL.lookup_grad
lookup_bag = KERNEL.lookup_bag
lookup_bag_grad = KERNEL.lookup_bag_grad

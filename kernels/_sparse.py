"""Sparse gradients: the rows a backward touches, coalesced, and nothing the size of the table.

`lookup_grad(..., sparse=True)` and `lookup_bag_grad(..., sparse=True)` return a `SparseGrad`:
`rows`, the sorted unique ids that receive a gradient, and `values`, one summed row each. The
same path serves every kernel:

1. `rows, slot`: the sorted unique ids and each id's index among them (np.unique for the NumPy
   and one-hot kernels; a compiled radix sort, O(n) per 8-11 bits of vocab_size - 1, for
   numba_gather and cython_gather), independent of vocab_size;
2. the kernel's own scatter-add (its lookup_grad function) adds grad row k into values[slot[k]],
   a zeroed (len(rows), D) array, exactly as its dense backward adds it into dW[ids[k]].

slot is ids renumbered by an increasing map, so each row receives the same contributions in the
same order as in the dense backward and each kernel's summation rule carries over: float32 rows
the float64 sum in id order rounded once (numba_gather, cython_gather, onehot_sparse), float64
rows in id order, numpy_take's stable sort + reduceat. For those four `to_dense()` equals the
kernel's dense lookup_grad bit for bit, for any thread count (and the compiled pair equal each
other). onehot_dense is the exception: its one-hot block has len(rows) rows instead of
vocab_size, and BLAS picks its routine by shape (gemv when one row is hit, gemm otherwise) while
the kernel sizes its chunks by the row count, so its sums are grouped differently: within the
summation bound of its dense result, not bitwise (measured: 2 of 37,504 elements differ at
V = 1e5, n = 5,000, float64).

Bags: the rows c * G[bag] of the non-padding ids (kernels._bag_math.expanded_rows) go through
the same two steps; padding ids are left out. mode="max": the rows are the arg-max rows of
(bag, column) pairs (ids of a bag that are the maximum of no column receive nothing and are not
listed); their gradients are added in bag order, as the dense max backward adds them.

Memory: ids, slot and the expanded rows (n or n x D), values (len(rows) x D); nothing grows with
vocab_size, so vocab_size = 10**12 with a few ids costs what the few ids cost. `to_dense()` and
`to_scipy()` (CSR keeps vocab_size + 1 row pointers) are the exceptions, by their nature.
"""
from __future__ import annotations

import numpy as np

from kernels import _bag_math as bm
from kernels._kernel import run_grad
from kernels._ops import LOOKUP_BAG_GRAD, LOOKUP_GRAD
from kernels._threads import ids_changed_error
from kernels._validate import check_out, check_vocab_size, float_array

_INT64 = np.dtype(np.int64)


class SparseGrad:
    """A (vocab_size, dim) gradient that is zero outside `rows`.

    - `rows`: int64 (nnz,), sorted, strictly increasing, within [0, vocab_size);
    - `values`: (nnz, dim) float32 or float64, values[i] the whole gradient of row rows[i];
    - `vocab_size`: the table's number of rows.

    The layout of torch's coalesced hybrid COO gradient (one sparse dimension, rows of D
    values) and of TF's IndexedSlices. `nnz` counts stored rows (as torch's `_nnz()` does for
    it), not stored elements."""

    __slots__ = ("rows", "values", "vocab_size")

    def __init__(self, rows, values, vocab_size):
        V = check_vocab_size(vocab_size)
        r = rows if type(rows) is np.ndarray else np.asarray(rows)
        if r.dtype.kind == "f" and r.size == 0 and not isinstance(rows, np.ndarray):
            r = r.astype(_INT64)  # [] holds no floats
        if r.dtype.kind not in "iu":
            raise TypeError(f"rows must have an integer dtype, got {r.dtype}")
        if r.ndim != 1:
            raise ValueError(f"rows must be 1-D, got shape {r.shape}")
        if r.size:
            if r.size > 1 and not (r[1:] > r[:-1]).all():
                raise ValueError("rows must be sorted and strictly increasing (each row once)")
            lo, hi = int(r[0]), int(r[-1])
            if lo < 0 or hi >= V:
                bad = lo if lo < 0 else hi
                raise ValueError(f"rows must lie within [0, vocab_size) = [0, {V}), got {bad}")
        r = np.ascontiguousarray(r, dtype=_INT64)
        v, _ = float_array(values, "values")
        if v.ndim != 2 or v.shape[0] != r.shape[0]:
            raise ValueError(f"values must have shape (len(rows), dim) = ({r.shape[0]}, dim), "
                             f"got {v.shape}")
        self.rows = r
        self.values = v
        self.vocab_size = V

    @classmethod
    def _trusted(cls, rows, values, vocab_size):
        """A SparseGrad of arrays this module built (already valid): no checks."""
        self = object.__new__(cls)
        self.rows, self.values, self.vocab_size = rows, values, vocab_size
        return self

    @property
    def dim(self) -> int:
        return self.values.shape[1]

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    @property
    def nnz(self) -> int:
        """The number of rows stored."""
        return self.rows.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.vocab_size, self.dim)

    def to_dense(self, out=None) -> np.ndarray:
        """The (vocab_size, dim) array: zeros, with `rows` set to `values`; written into `out`
        (checked as every kernel checks its out) if given."""
        shape = (self.vocab_size, self.dim)
        if out is None:
            out = np.zeros(shape, self.dtype)
        else:
            out = check_out(out, shape, self.dtype, ((self.values, "values"),
                                                     (self.rows, "rows")))
            out.fill(0)
        out[self.rows] = self.values
        return out

    def to_scipy(self):
        """A scipy.sparse.csr_array of shape (vocab_size, dim) holding every element of the
        stored rows (zeros included); its row pointers take vocab_size + 1 integers."""
        import scipy.sparse as sp

        U, D = self.values.shape
        counts = np.zeros(self.vocab_size, np.int64)
        counts[self.rows] = D
        indptr = np.concatenate(([0], np.cumsum(counts)))
        indices = np.tile(np.arange(D, dtype=np.int64), U)
        data = np.ascontiguousarray(self.values).reshape(-1).copy()
        return sp.csr_array((data, indices, indptr), shape=(self.vocab_size, D))

    def to_torch(self):
        """A coalesced torch.sparse_coo_tensor of shape (vocab_size, dim): indices (1, nnz)
        = rows, values (nnz, dim), as nn.Embedding(sparse=True)'s gradient after .coalesce().
        Copies the arrays; torch checks the indices (O(nnz)), so rows changed after
        construction give an error, not a corrupt tensor. Needs torch (ImportError otherwise)."""
        try:
            import torch
        except ImportError as e:
            raise ImportError(
                "SparseGrad.to_torch() needs PyTorch (pip install torch); to_dense() and "
                "to_scipy() do not"
            ) from e
        indices = torch.from_numpy(self.rows.copy()).reshape(1, -1)
        values = torch.from_numpy(np.array(self.values, order="C", copy=True))
        return torch.sparse_coo_tensor(indices, values, (self.vocab_size, self.dim),
                                       is_coalesced=True, check_invariants=True)

    def __repr__(self) -> str:
        return (f"SparseGrad(vocab_size={self.vocab_size}, dim={self.dim}, nnz={self.nnz}, "
                f"dtype={self.dtype})")


def wanted(sparse, out) -> bool:
    """Whether a backward call asks for a SparseGrad: sparse must be a bool, and out= (a dense
    result's destination) cannot go with sparse=True."""
    if not isinstance(sparse, (bool, np.bool_)):
        raise TypeError(f"sparse must be a bool, got {sparse!r}")
    if sparse and out is not None:
        raise ValueError("out= cannot be used with sparse=True (it returns a SparseGrad, whose "
                         "to_dense(out=) writes a dense array)")
    return bool(sparse)


def unique_rows(ids, vocab_size, compiled=False):
    """(rows, slot): the sorted unique ids as int64 and each id's index among them, from a
    private copy of ids: np.unique's (compiled=False, the NumPy reference) or the compiled radix
    sort of kernels._optim_numba.sort_ids (6-7x faster than np.unique at n = 16,384: 0.09-0.15
    against 0.69-0.71 ms, V = 1e3 ... 2**40). Checked again: ids another thread rewrote after the
    bounds check give an error, never a row out of range."""
    if compiled:
        from kernels._optim_numba import sort_ids

        rows, starts, pos = sort_ids(ids, vocab_size)
        slot = np.empty(pos.shape[0], _INT64)
        slot[pos] = np.repeat(np.arange(rows.shape[0], dtype=_INT64), np.diff(starts))
        return rows, slot
    rows, slot = np.unique(ids, return_inverse=True)
    if rows.shape[0] and not (0 <= rows[0] and rows[-1] < vocab_size):
        raise ids_changed_error(vocab_size)
    return rows.astype(_INT64, copy=False), np.ascontiguousarray(slot.reshape(-1), dtype=_INT64)


def coalesce(kernel, scatter, G, ids, vocab_size) -> SparseGrad:
    """The SparseGrad of grad rows G (n, D) added at checked ids (n,) by `scatter`, the kernel's
    lookup_grad function: rows = unique ids, values = the scatter of G at their slots."""
    rows, slot = unique_rows(ids, vocab_size, kernel.compiled)
    values = np.zeros((rows.shape[0], G.shape[1]), G.dtype)
    run_grad(scatter, G, slot, values, True)
    return SparseGrad._trusted(rows, values, vocab_size)


def lookup_grad(kernel, grad, ids, vocab_size) -> SparseGrad:
    """Kernel.lookup_grad(..., sparse=True): the SparseGrad of dW[ids[k]] += grad[k]."""
    _, G, fmt, _, flat, V = LOOKUP_GRAD.check(grad, ids, vocab_size)
    scatter = kernel.function(LOOKUP_GRAD, fmt)
    if kernel.compiled:  # each row summed from G's rows in id order: the scatter's bits
        from kernels._optim_numba import coalesced

        return SparseGrad._trusted(*coalesced(G, flat, V), V)
    return coalesce(kernel, scatter, G, flat, V)


def lookup_bag_grad(kernel, grad_out, ids, offsets, vocab_size, mode, per_sample_weights,
                    padding_idx, include_last_offset, weights):
    """Kernel.lookup_bag_grad(..., sparse=True): the SparseGrad of the bag backward (with
    per_sample_weights, (SparseGrad, their gradient))."""
    G, fmt, _, flat, off, mode, psw, pad, W, V = LOOKUP_BAG_GRAD.check(
        grad_out, ids, offsets, vocab_size, mode, per_sample_weights, padding_idx,
        include_last_offset, weights)
    kernel._bag_function(LOOKUP_BAG_GRAD, fmt, mode)  # the dense path's NotImplementedError
    D = G.shape[1]
    if mode == "max":
        hit, k, b = bm.max_routes(W, flat, off, pad)
        rows, slot = unique_rows(hit, V, kernel.compiled)
        values = np.zeros((rows.shape[0], D), G.dtype)
        np.add.at(values, (slot, k), G[b, k])  # bag order, as _bag_math.max_grad
        sg = SparseGrad._trusted(rows, values, V)
    elif kernel.compiled:  # each row summed from G's rows: no (n, D) expanded array
        from kernels._optim_numba import coalesced

        kept, off_kept, coef = bm.kept_entries(flat, off, mode, psw, pad)
        rows, values = coalesced(G, np.ascontiguousarray(kept), V, bm.bag_of_ids(off_kept),
                                 coef)
        sg = SparseGrad._trusted(rows, values, V)
    else:
        E, ids_kept = bm.expanded_rows(G, flat, off, mode, psw, pad)
        sg = coalesce(kernel, kernel.function(LOOKUP_GRAD, fmt), E, ids_kept, V)
    if psw is None:
        return sg
    return sg, bm.psw_grad(G, W, flat, off, mode, psw, pad).reshape(np.shape(ids))

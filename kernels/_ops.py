"""Operations, declared once each: argument checks and output allocation (`prepare`), the
reference implementation that tests and benchmarks both check against, the bytes one call must
move (the one formula for GB/s everywhere), and the asv benchmark that measures it (for
kernels.fastest).

A kernel implements an operation for a table format with a function that receives what
`prepare` returns (checked arrays, never empty) and writes the result in place.
"""
from __future__ import annotations

import numpy as np

from kernels._validate import check_ids, check_out, check_vocab_size, check_weights, float_array

_CHUNK_BYTES = 2**20
"""Reference checks work in chunks this big, so checking a large result stays cheap in memory."""


def _bits(a):
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


class Operation:
    """One operation that kernels implement (per table format)."""

    name: str
    title: str
    benchmark: str
    """The asv benchmark (module.Class.method) whose times decide kernel="auto" for it."""

    def moved_bytes(self, n_ids: int, vocab_size: int, dim: int, itemsize: int = 4) -> int:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<operation {self.name}>"


class Lookup(Operation):
    """out = weights[ids]: shape ids.shape + (dim,), the format's output dtype."""

    name = "lookup"
    title = "Forward: W[ids]"
    benchmark = "bench_lookup.Lookup.time_lookup"

    @staticmethod
    def prepare(weights, ids, out):
        """Check a call; return (W, format, flat_ids, out2d, result). The kernel's function is
        called as fn(W, flat_ids, out2d) when out2d is not empty."""
        W, fmt = check_weights(weights)
        V, D = W.shape
        a, flat = check_ids(ids, V)
        shape = a.shape + (D,)
        if out is None:
            result = np.empty(shape, W.dtype)
        else:
            result = check_out(out, shape, W.dtype, ((W, "weights"), (a, "ids")))
        return W, fmt, flat, result.reshape(flat.shape[0], D), result

    @staticmethod
    def moved_bytes(n_ids, vocab_size, dim, itemsize=4):
        """Read n rows of W, write n output rows: 2*n*D*itemsize."""
        return 2 * n_ids * dim * itemsize

    @staticmethod
    def reference(weights, ids):
        """W[ids], computed by NumPy's fancy indexing."""
        return np.asarray(weights)[np.asarray(ids)]

    @staticmethod
    def assert_matches(got, weights, ids, what="lookup"):
        """got must equal W[ids] bit for bit (shape ids.shape + (D,)); checked in small chunks."""
        W = np.asarray(weights)
        ids = np.asarray(ids)
        expected_shape = ids.shape + (W.shape[1],)
        if got.shape != expected_shape or got.dtype != W.dtype:
            raise AssertionError(
                f"{what}: got shape {got.shape} dtype {got.dtype}, "
                f"expected {expected_shape} {W.dtype}"
            )
        flat = ids.reshape(-1)
        got2d = got.reshape(flat.shape[0], W.shape[1])
        step = max(1, _CHUNK_BYTES // max(1, W.shape[1] * W.itemsize))
        for start in range(0, flat.shape[0], step):
            rows = got2d[start : start + step]
            want = W[flat[start : start + step]]
            bad = np.flatnonzero((_bits(rows) != _bits(want)).any(axis=1))
            if bad.size:
                i = start + int(bad[0])
                raise AssertionError(
                    f"{what}: {bad.size}+ output rows differ from W[ids]; first: row {i} "
                    f"(id {int(flat[i])}) = {got2d[i][:4]}..., expected {W[flat[i]][:4]}..."
                )


class LookupGrad(Operation):
    """dW (vocab_size, dim) with dW[ids[k]] += grad[k] for every k, every other row zero."""

    name = "lookup_grad"
    title = "Backward: scatter-add of grad rows"
    benchmark = "bench_grad.LookupGrad.time_lookup_grad"

    @staticmethod
    def prepare(grad, ids, vocab_size, out):
        """Check a call; return (G2d, format, flat_ids, dW, dW_is_zeroed). The kernel's
        function is called as fn(G2d, flat_ids, dW, zeroed) when G2d and dW are not empty; it
        must write all of dW (rows no id hits end up zero; `zeroed` says dW already is)."""
        G, fmt = float_array(grad, "grad")
        V = check_vocab_size(vocab_size)
        ids_shape = np.shape(ids)
        if G.ndim != len(ids_shape) + 1 or G.shape[:-1] != ids_shape:
            raise ValueError(
                f"grad must have shape ids.shape + (dim,) = {ids_shape} + (dim,), got {G.shape}"
            )
        D = G.shape[-1]
        a, flat = check_ids(ids, V)
        G2 = G.reshape(flat.shape[0], D)
        if out is None:
            return G2, fmt, flat, np.zeros((V, D), G.dtype), True
        dW = check_out(out, (V, D), G.dtype, ((G, "grad"), (a, "ids")))
        return G2, fmt, flat, dW, False

    @staticmethod
    def moved_bytes(n_ids, vocab_size, dim, itemsize=4):
        """Read n rows of grad, read and write n rows of dW, zero the V rows of dW:
        (3*n*D + V*D)*itemsize."""
        return (3 * n_ids * dim + vocab_size * dim) * itemsize

    @staticmethod
    def reference(grad, ids, vocab_size):
        """(ref, magnitude, counts): the float64 scatter-add, the float64 scatter-add of |grad|
        and how many ids hit each row. Summing k contributions in any order in grad's dtype stays
        within k * eps * magnitude of ref (the worst-case bound `assert_matches` checks)."""
        grad = np.asarray(grad)
        ids = np.asarray(ids)
        D = grad.shape[-1]
        flat = ids.reshape(-1).astype(np.int64)
        g = grad.reshape(flat.shape[0], D).astype(np.float64)
        ref = np.zeros((vocab_size, D))
        mag = np.zeros((vocab_size, D))
        np.add.at(ref, flat, g)
        np.add.at(mag, flat, np.abs(g))
        return ref, mag, np.bincount(flat, minlength=vocab_size)

    @staticmethod
    def assert_matches(got, grad, ids, vocab_size, what="lookup_grad"):
        """got must be the scatter-add of grad's rows: each element within the bound of
        `reference` of the float64 sum (NaN fails), rows no id hits exactly +0.0. Works in
        chunks of columns, so checking a (1e6, 512) gradient stays cheap in memory."""
        G = np.asarray(grad)
        D = G.shape[-1]
        if got.shape != (vocab_size, D) or got.dtype != G.dtype:
            raise AssertionError(
                f"{what}: got {got.shape} {got.dtype}, expected {(vocab_size, D)} {G.dtype}"
            )
        flat = np.asarray(ids).reshape(-1)
        G2 = G.reshape(flat.shape[0], D)
        hit_ids, slot, counts = np.unique(flat, return_inverse=True, return_counts=True)
        eps = float(np.finfo(G.dtype).eps)
        cols = max(1, _CHUNK_BYTES // max(1, 8 * hit_ids.size))
        for c0 in range(0, D, cols):
            c1 = min(D, c0 + cols)
            ref = np.zeros((hit_ids.size, c1 - c0))
            mag = np.zeros_like(ref)
            g = G2[:, c0:c1].astype(np.float64)
            np.add.at(ref, slot, g)
            np.add.at(mag, slot, np.abs(g))
            err = np.abs(got[hit_ids, c0:c1] - ref)
            bad = ~(err <= counts[:, None] * eps * mag)  # NaN is bad too
            if bad.any():
                r, c = (int(x) for x in np.argwhere(bad)[0])
                raise AssertionError(
                    f"{what}: dW[{int(hit_ids[r])}, {c0 + c}] = {got[hit_ids[r], c0 + c]!r}, "
                    f"float64 reference {ref[r, c]!r} ({int(counts[r])} contributions)"
                )
        hit = np.zeros(vocab_size, bool)
        hit[hit_ids] = True
        step = max(1, _CHUNK_BYTES // max(1, D * G.itemsize))
        for r0 in range(0, vocab_size, step):
            block = got[r0 : r0 + step][~hit[r0 : r0 + step]]
            if block.size and (_bits(block) != 0).any():
                rows = np.flatnonzero(~hit[r0 : r0 + step])
                r = r0 + int(rows[np.flatnonzero((_bits(block) != 0).any(axis=1))[0]])
                raise AssertionError(
                    f"{what}: dW[{r}] is hit by no id but is not +0.0: {got[r][:4]}..."
                )


LOOKUP = Lookup()
LOOKUP_GRAD = LookupGrad()

OPERATIONS: dict[str, Operation] = {op.name: op for op in (LOOKUP, LOOKUP_GRAD)}
"""Every operation by name, in the order reports show them."""


def operation_named(op) -> Operation:
    """The Operation of a name or an Operation; ValueError naming the known ones otherwise."""
    if isinstance(op, Operation):
        return op
    try:
        return OPERATIONS[op]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown operation {op!r}; known operations: {', '.join(OPERATIONS)}"
        ) from None

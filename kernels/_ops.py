"""Operations, declared once each: argument checks and output allocation (`prepare`), the
reference implementation that tests and benchmarks both check against, the bytes one call must
move (the one formula for GB/s everywhere), and the asv benchmark that measures it (for
kernels.fastest).

A kernel implements an operation for a table format with a function that receives what
`prepare` returns (checked arrays, never empty) and writes the result in place.

Low-precision tables (kernels.quantize): the forward functions receive W = the table's storage
`packed` ((V, D) float16 / bfloat16, or (V, row_bytes) uint8 rows of int8 / int4), D from the
output's columns (out2d.shape[1], out.shape[1]), and write float32 into a float32 output: the
dequantized values (kernels._tables) for a lookup, and for a bag the dequantized rows (times
their float32 per_sample_weights) summed in float32 in bag order, row after row. A float16
result (out_dtype=np.float16) is cast once from a float32 scratch by the Kernel method, never by
a kernel function.
"""
from __future__ import annotations

import numpy as np

from kernels._cpu import empty_output
from kernels._formats import format_named
from kernels._tables import Table
from kernels._validate import check_bags, check_ids, check_mode, check_out, check_out_dtype, \
    check_padding_idx, check_per_sample_weights, check_vocab_size, check_weights, float_array, \
    plain_bag_args, refuse_table

_CHUNK_BYTES = 2**20
"""Reference checks work in chunks this big, so checking a large result stays cheap in memory."""


def _bits(a):
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def _values(weights):
    """The float table a reference reads: a low-precision table's dequantized values."""
    return weights.dequantize() if isinstance(weights, Table) else np.asarray(weights)


def _exact_rowwise(weights):
    """(s * q + b exactly in float64, |s q| + |b|) of an int8 or int4 table, else None: what
    its bags sum (kernels._bag_math.quantized_bag_sum) before their roundings."""
    codes = getattr(type(weights), "_codes", None)
    if codes is None or not isinstance(weights, Table):
        return None
    q, scale, bias = codes(weights.packed, weights.shape[1])
    qs = q.astype(np.float64) * scale
    return qs + bias, np.abs(qs) + np.abs(bias)


def _row_bytes(dim, itemsize, fmt):
    """(bytes read per row, bytes written per output row): fmt's row bytes and its float
    output when a format is given, else itemsize per value both ways."""
    if fmt is None:
        return dim * itemsize, dim * itemsize
    fmt = format_named(fmt)
    return fmt.row_bytes(dim), dim * fmt.out_dtype.itemsize


class Operation:
    """One operation that kernels implement (per table format)."""

    name: str
    title: str
    benchmark: str
    """The asv benchmark (module.Class.method) whose times decide kernel="auto" for it."""
    extra_param: str | None = None
    """The benchmark's parameter after (kernel, vocab_size, dim) that decision rows also key on
    ("bag_length" for bags), or None."""
    format_benchmark: str | None = None
    """The asv benchmark (module.Class.method, parameters format, kernel, vocab_size, dim) whose
    times give the decision rows of the low-precision formats, or None."""
    format_benchmark_n_ids = 65_536
    """The ids of one call of format_benchmark (bags: in bags of FORMAT_BAG_LENGTH)."""

    def moved_bytes(self, n_ids: int, vocab_size: int, dim: int, itemsize: int = 4) -> int:
        """The bytes one call must move at least; forward operations also take fmt= (a
        Format or its name): rows read at fmt.row_bytes(dim), output written in its float."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<operation {self.name}>"


class Lookup(Operation):
    """out = weights[ids]: shape ids.shape + (dim,), the format's output dtype."""

    name = "lookup"
    title = "Forward: W[ids]"
    benchmark = "bench_lookup.Lookup.time_lookup"
    format_benchmark = "bench_formats.LowPrecision.time_lookup"

    @staticmethod
    def prepare(weights, ids, out, out_dtype=None, self_checked=()):
        """Check a call; return (W, format, flat_ids, out2d, result), out2d and result of the
        output dtype (check_out_dtype). The kernel's function is called as fn(W, flat_ids,
        out2d) when out2d is not empty (float16: through a float32 scratch, see the module).
        For a format in self_checked the ids' bounds are left to that function, called with
        check_ids=True (kernels._validate.IdsOutOfRange)."""
        W, fmt, (V, D) = check_weights(weights)
        dtype = fmt.out_dtype if out_dtype is None else check_out_dtype(out_dtype, fmt)
        a, flat = check_ids(ids, V, fmt not in self_checked)
        shape = a.shape + (D,)
        if out is None:
            result = empty_output(shape, dtype, W)
        else:
            result = check_out(out, shape, dtype, ((W, "weights"), (a, "ids")))
        return W, fmt, flat, result.reshape(flat.shape[0], D), result

    @staticmethod
    def moved_bytes(n_ids, vocab_size, dim, itemsize=4, fmt=None):
        """Read n rows of W, write n output rows: 2*n*D*itemsize; with fmt, n rows of
        fmt.row_bytes(D) read and n float rows written."""
        read, write = _row_bytes(dim, itemsize, fmt)
        return n_ids * (read + write)

    @staticmethod
    def reference(weights, ids):
        """W[ids], computed by NumPy's fancy indexing (a table's dequantized values)."""
        return _values(weights)[np.asarray(ids)]

    @staticmethod
    def assert_matches(got, weights, ids, what="lookup"):
        """got must equal W[ids] bit for bit (shape ids.shape + (D,); a table: its dequantized
        values, float32); checked in small chunks."""
        W = _values(weights)
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
    def check(grad, ids, vocab_size):
        """The checks of a call, without its (V, D) output: (G, G2d, format, ids array,
        flat_ids, V). The sparse gradient (kernels._sparse) runs exactly these."""
        G, fmt = float_array(grad, "grad")
        V = check_vocab_size(vocab_size)
        ids_shape = np.shape(ids)
        if G.ndim != len(ids_shape) + 1 or G.shape[:-1] != ids_shape:
            raise ValueError(
                f"grad must have shape ids.shape + (dim,) = {ids_shape} + (dim,), got {G.shape}"
            )
        a, flat = check_ids(ids, V)
        return G, G.reshape(flat.shape[0], G.shape[-1]), fmt, a, flat, V

    @classmethod
    def prepare(cls, grad, ids, vocab_size, out):
        """Check a call; return (G2d, format, flat_ids, dW, dW_is_zeroed). The kernel's
        function is called as fn(G2d, flat_ids, dW, zeroed) when G2d and dW are not empty; it
        must write all of dW (rows no id hits end up zero; `zeroed` says dW already is)."""
        G, G2, fmt, a, flat, V = cls.check(grad, ids, vocab_size)
        D = G2.shape[1]
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


def _bag_args(weights_or_fmt, ids, offsets, mode, per_sample_weights, padding_idx,
              include_last_offset, vocab_size, bounds=True, private_offsets=True):
    mode = check_mode(mode)
    ids, off, B = check_bags(ids, offsets, include_last_offset, private_offsets)
    a, flat = check_ids(ids, vocab_size, bounds)
    pad = check_padding_idx(padding_idx, vocab_size)
    psw = check_per_sample_weights(per_sample_weights, a.shape, weights_or_fmt, mode)
    return a, flat, off, B, mode, psw, pad


class LookupBag(Operation):
    """out[b] = the reduction (sum, mean, max, sqrtn) of the rows of bag b, optionally weighted
    per id, padding ids left out: shape (B, dim), the table's dtype (kernels.lookup_bag)."""

    name = "lookup_bag"
    title = "Bags: pooled W[ids] per bag (EmbeddingBag)"
    benchmark = "bench_bags.Bags.time_bag"
    extra_param = "bag_length"
    format_benchmark = "bench_formats.LowPrecision.time_bag"
    format_bag_length = 8
    """The bag length of format_benchmark's bags."""
    benchmark_n_ids = 32_768
    """The ids of one call of the bag benchmarks (all bags together: B = n / bag_length), read by
    benchmarks/common.py and the decision table alike. Half the roofline script's 65,536: a bag
    benchmark process spends most of its time checking the kernel against the float64
    reference, which scales with n."""

    @staticmethod
    def prepare(weights, ids, offsets, mode, per_sample_weights, padding_idx,
                include_last_offset, out, out_dtype=None, bounds=True, private_offsets=True):
        """Check a call; return (W, format, flat_ids, offsets, mode, psw, pad, out). offsets are
        B + 1 private int64 bounds (private_offsets=False: check_bags' offsets in place, or
        None for 2-D ids and equal-length bags), psw a flat array or None, pad the padding row
        or -1, out of the output dtype (check_out_dtype). The kernel's function is called as
        fn(W, flat_ids, offsets, mode, psw, pad, out) when out and ids are not empty and must
        write every row of out (zeros for a bag with no id). bounds=False leaves the ids' bounds
        to a kernel function called with check_ids=True (kernels._validate.IdsOutOfRange)."""
        if not (bounds or private_offsets):
            plain = plain_bag_args(weights, ids, offsets, mode, per_sample_weights,
                                   padding_idx, include_last_offset, out, out_dtype)
            if plain is not None:
                return plain
        W, fmt, (V, D) = check_weights(weights)
        dtype = fmt.out_dtype if out_dtype is None else check_out_dtype(out_dtype, fmt)
        a, flat, off, B, mode, psw, pad = _bag_args(
            fmt, ids, offsets, mode, per_sample_weights, padding_idx, include_last_offset, V,
            bounds, private_offsets)
        shape = (B, D)
        if out is None:
            return W, fmt, flat, off, mode, psw, pad, empty_output(shape, dtype, W)
        inputs = ((W, "weights"), (a, "ids"), (psw, "per_sample_weights"))
        return W, fmt, flat, off, mode, psw, pad, check_out(out, shape, dtype, inputs)

    @staticmethod
    def moved_bytes(n_ids, vocab_size, dim, itemsize=4, bag_length=1, fmt=None):
        """Read n rows, write n / bag_length output rows (with fmt: rows of fmt.row_bytes(D)
        read, float rows written)."""
        read, write = _row_bytes(dim, itemsize, fmt)
        return n_ids * read + n_ids // max(1, bag_length) * write

    @staticmethod
    def reference(weights, ids, offsets, mode="sum", per_sample_weights=None, padding_idx=None,
                  include_last_offset=False):
        """(ref, tol, zero) in float64, from kernels._bag_math.reference (a table: of its
        dequantized values, with float32's bound; int8 and int4 sums: of the exact s * q + b,
        with the bound of torch's fused sum)."""
        from kernels._bag_math import reference

        W, fmt, (V, D) = check_weights(_values(weights))
        a, flat, off, _, mode, psw, pad = _bag_args(fmt, ids, offsets, mode, per_sample_weights,
                                                    padding_idx, include_last_offset, V)
        exact = None if mode == "max" else _exact_rowwise(weights)
        if exact is not None:
            return reference(exact[0], flat, off, mode, psw, pad, parts=exact[1],
                             eps=float(np.finfo(np.float32).eps))
        return reference(W, flat, off, mode, psw, pad)

    @classmethod
    def assert_matches(cls, got, weights, ids, offsets=None, mode="sum", per_sample_weights=None,
                       padding_idx=None, include_last_offset=False, what="lookup_bag"):
        """got must be each bag's reduction within the bound of `reference` (NaN fails), torch's
        max bit for bit, and exactly +0.0 for bags with no id (or a zero divisor)."""
        W = _values(weights)
        ref, tol, zero = cls.reference(weights, ids, offsets, mode, per_sample_weights,
                                       padding_idx, include_last_offset)
        if got.shape != ref.shape or got.dtype != W.dtype:
            raise AssertionError(f"{what}: got {got.shape} {got.dtype}, expected {ref.shape} "
                                 f"{W.dtype}")
        if mode == "max":
            want = ref.astype(W.dtype)
            bad = (_bits(got) != _bits(want)) & ~(np.isnan(got) & np.isnan(want))
        else:
            bad = ~(np.abs(got - ref) <= tol)
        bad |= zero[:, None] & (_bits(got) != 0)
        if bad.any():
            b, k = (int(x) for x in np.argwhere(bad)[0])
            raise AssertionError(
                f"{what} ({mode}): out[{b}, {k}] = {got[b, k]!r}, reference {ref[b, k]!r} "
                f"(tolerance {tol[b, k]!r}{', must be +0.0' if zero[b] else ''})"
            )


class LookupBagGrad(Operation):
    """dW (vocab_size, dim) of a bag's output gradient: each non-padding id's row receives its
    bag's gradient times d out / d row (w, 1/d, w/d; for max the gradient goes, column by column,
    to the arg-max row). With per_sample_weights, their gradient too."""

    name = "lookup_bag_grad"
    title = "Bags backward: scatter-add of scaled bag gradients"
    benchmark = "bench_bags.BagGrad.time_bag_grad"
    extra_param = "bag_length"
    benchmark_n_ids = LookupBag.benchmark_n_ids

    @staticmethod
    def check(grad_out, ids, offsets, vocab_size, mode, per_sample_weights, padding_idx,
              include_last_offset, weights):
        """The checks of a call, without its (V, D) output: (G, format, ids array, flat_ids,
        offsets, mode, psw, pad, W, V); W is None unless mode is max or psw is given. The
        sparse gradient (kernels._sparse) runs exactly these. A low-precision table as weights
        is a TypeError (inference only)."""
        refuse_table(weights)
        G, fmt = float_array(grad_out, "grad_out")
        V = check_vocab_size(vocab_size)
        a, flat, off, B, mode, psw, pad = _bag_args(fmt, ids, offsets, mode, per_sample_weights,
                                                    padding_idx, include_last_offset, V)
        if G.ndim != 2 or G.shape[0] != B:
            raise ValueError(f"grad_out must have shape (number of bags, dim) = ({B}, dim), "
                             f"got {G.shape}")
        D = G.shape[1]
        W = None
        if mode == "max" or psw is not None:
            if weights is None:
                need = "mode='max' (its arg-max rows)" if mode == "max" else \
                    "the gradient of per_sample_weights"
                raise ValueError(f"weights= (the table of the forward) is needed for {need}")
            W, wfmt, _ = check_weights(weights)
            if W.shape != (V, D) or wfmt is not fmt:
                raise ValueError(f"weights must be the ({V}, {D}) {G.dtype} table of the forward, "
                                 f"got {W.shape} {W.dtype}")
        return G, fmt, a, flat, off, mode, psw, pad, W, V

    @staticmethod
    def prepare(grad_out, ids, offsets, vocab_size, mode, per_sample_weights, padding_idx,
                include_last_offset, weights, out):
        """Check a call; return (G, format, flat_ids, offsets, mode, psw, pad, W, dW, zeroed).
        W is the checked table (None unless mode is max or psw is given: the arg-max rows and
        the weights' gradient need it). The kernel's function is called as
        fn(G, flat_ids, offsets, mode, psw, pad, W, dW, zeroed) when ids and dW are not empty,
        and must write all of dW."""
        G, fmt, a, flat, off, mode, psw, pad, W, V = LookupBagGrad.check(
            grad_out, ids, offsets, vocab_size, mode, per_sample_weights, padding_idx,
            include_last_offset, weights)
        D = G.shape[1]
        if out is None:
            return G, fmt, flat, off, mode, psw, pad, W, np.zeros((V, D), G.dtype), True
        inputs = ((G, "grad_out"), (a, "ids"), (psw, "per_sample_weights"), (W, "weights"))
        dW = check_out(out, (V, D), G.dtype, inputs)
        return G, fmt, flat, off, mode, psw, pad, W, dW, False

    @staticmethod
    def moved_bytes(n_ids, vocab_size, dim, itemsize=4, bag_length=1):
        """Read the bag gradients, read and write n rows of dW, zero the V rows of dW."""
        return (n_ids // max(1, bag_length) + 2 * n_ids + vocab_size) * dim * itemsize

    @staticmethod
    def reference(grad_out, ids, offsets, vocab_size, mode="sum", per_sample_weights=None,
                  padding_idx=None, include_last_offset=False, weights=None):
        """The float64 dW: LOOKUP_GRAD's reference of the expanded rows c * G[bag] (see
        kernels._bag_math.coefficients), or the max routing in float64."""
        from kernels import _bag_math as bm

        G, fmt, flat, off, mode, psw, pad, W, dW, _ = LookupBagGrad.prepare(
            grad_out, ids, offsets, vocab_size, mode, per_sample_weights, padding_idx,
            include_last_offset, weights, None)
        G64 = G.astype(np.float64)
        if mode == "max":
            dW = np.zeros(dW.shape)
            bm.max_grad(G64, W, flat, off, pad, dW)
            return dW
        c = bm.coefficients(flat, off, mode, None if psw is None else psw, pad)
        return LOOKUP_GRAD.reference(G64[bm.bag_of_ids(off)] * c[:, None], flat, vocab_size)[0]


LOOKUP_BAG = LookupBag()
LOOKUP_BAG_GRAD = LookupBagGrad()
OPERATIONS.update({op.name: op for op in (LOOKUP_BAG, LOOKUP_BAG_GRAD)})

"""The bag contract (kernels.lookup_bag, kernels.lookup_bag_grad; issue 14), for every kernel.

* every kernel, dtype and mode against the operation's float64 reference (LOOKUP_BAG.assert_matches)
  on layouts with empty bags, padding, B = 0, 2-D ids, include_last_offset, a bag of 1e6 ids and
  every id dtype; plus exact checks of our own for the semantics (empty bag +0.0, divisor 0,
  torch's max rule for NaN, ties and -0.0);
* against torch.nn.functional.embedding_bag (forward and autograd) where torch is importable, and
  against a float64 torch autograd of the formula where we go beyond torch (weighted mean, sqrtn);
* lookup_bag_grad against LOOKUP_BAG_GRAD.reference within the summation bound;
* the compiled pair bitwise equal to each other for 1 and 2 threads;
* every bad input: the same exception and message from every kernel, before `out` is written;
* kernel="auto" for every mode.

A kernel that lacks a (operation, mode) is skipped for it, after checking that it raises
NotImplementedError naming the kernels that implement it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pytest

import kernels
from conftest import (
    GATHER_KERNEL_NAMES,
    KERNEL_NAMES,
    assert_bitwise_equal,
    assert_untouched,
    dtype_id,
    make_weights,
    outcome,
    sentinel_like,
    shared_weights,
)
from kernels import LOOKUP_BAG, LOOKUP_BAG_GRAD
from kernels._cpu import L2_BYTES, bag_prefetch_distance
from kernels._validate import BAG_MODES

FORWARD = "lookup_bag"
BACKWARD = "lookup_bag_grad"

MODES_AND_WEIGHTS = [(m, False) for m in BAG_MODES] + [
    (m, True) for m in BAG_MODES if m != "max"
]
"""(mode, with per_sample_weights): max takes no weights."""


def mode_label(mode, weighted):
    return f"{mode}+psw" if weighted else mode


MODE_PARAMS = [
    pytest.param(m, w, id=mode_label(m, w)) for m, w in MODES_AND_WEIGHTS
]


# --------------------------------------------------------------------------
# which kernel implements what
# --------------------------------------------------------------------------


def implementers(op, mode, dtype):
    """Names of the kernels that implement (op, mode) for tables of dtype."""
    return sorted(
        k.name for k in kernels.KERNELS.values()
        if k.implements(op, np.dtype(dtype).name) and mode in k.bag_modes
    )


def lacks(kernel_name, op, mode, dtype=np.float32):
    k = kernels.KERNELS[kernel_name]
    return not (k.implements(op, np.dtype(dtype).name) and mode in k.bag_modes)


def assert_names_implementers(message, kernel_name, op, mode, dtype):
    """The message names the kernel, then exactly the kernels that implement (op, mode)."""
    assert kernel_name in message, message
    assert "implemented by: " in message, message
    listed = message.split("implemented by: ", 1)[1].split(", ")
    assert sorted(listed) == implementers(op, mode, dtype), message


def require(kernel_name, mode, dtype=np.float32, op=FORWARD):
    """The kernel if it implements (op, mode) for dtype tables. Otherwise check that calling it
    raises NotImplementedError naming the kernels that do, then skip."""
    k = kernels.KERNELS[kernel_name]
    if not lacks(kernel_name, op, mode, dtype):
        return k
    W = make_weights(4, 3, dtype)
    with pytest.raises(NotImplementedError) as info:
        if op == FORWARD:
            k.lookup_bag(W, [1, 2, 3], [0, 1], mode=mode)
        else:
            k.lookup_bag_grad(np.ones((2, 3), dtype), [1, 2, 3], [0, 1], 4, mode=mode,
                              weights=W)
    assert_names_implementers(str(info.value), kernel_name, op, mode, dtype)
    pytest.skip(f"{kernel_name} does not implement {op} mode={mode!r} for "
                f"{np.dtype(dtype).name} (NotImplementedError checked)")


# --------------------------------------------------------------------------
# bag layouts
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Bags:
    """One bag layout: the arguments lookup_bag receives and what they mean."""

    label: str
    V: int
    D: int
    ids: object
    offsets: object = None
    include_last_offset: bool = False
    padding_idx: int | None = None

    def __str__(self):
        return self.label

    @cached_property
    def flat_ids(self):
        return np.asarray(self.ids).astype(np.int64).reshape(-1)

    @cached_property
    def bounds(self):
        """The B + 1 bag bounds, worked out here independently of kernels._validate."""
        ids = np.asarray(self.ids)
        if ids.ndim == 2:
            B, N = ids.shape
            return [b * N for b in range(B + 1)]
        off = [int(o) for o in np.asarray(self.offsets).reshape(-1)]
        return off if self.include_last_offset else off + [ids.shape[0]]

    @property
    def B(self):
        return len(self.bounds) - 1

    @property
    def pad_row(self):
        return None if self.padding_idx is None else self.padding_idx % self.V

    def kept_positions(self, b):
        """Positions (in flat ids) of the non-padding ids of bag b."""
        lo, hi = self.bounds[b], self.bounds[b + 1]
        flat = self.flat_ids
        return [p for p in range(lo, hi) if flat[p] != self.pad_row]

    def weights(self, dtype, seed=5):
        """per_sample_weights of the shape of ids, in [0.25, 2)."""
        rng = np.random.default_rng(seed)
        return rng.uniform(0.25, 2.0, size=np.shape(self.ids)).astype(dtype)

    def kwargs(self, mode, psw=None):
        return dict(mode=mode, per_sample_weights=psw, padding_idx=self.padding_idx,
                    include_last_offset=self.include_last_offset)

    def ref_args(self, mode, psw=None):
        """Positional arguments after (weights,) of LOOKUP_BAG.reference / assert_matches."""
        return (self.ids, self.offsets, mode, psw, self.padding_idx, self.include_last_offset)


def bags_1d(label, lengths, V=50, D=7, *, seed=0, padding_idx=None, padding_per_bag=0,
            all_padding=(), include_last_offset=False, ids_dtype=np.int64):
    """Bags of the given lengths with random ids. With padding_idx: no id equals the padding row
    except `padding_per_bag` in each bag (at random positions) and every id of the bags listed
    in `all_padding`."""
    rng = np.random.default_rng(seed)
    lengths = list(lengths)
    bounds = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)))
    ids = rng.integers(0, V, size=int(bounds[-1]))
    if padding_idx is not None:
        pad = padding_idx % V
        ids[ids == pad] = (pad + 1) % V
        for b, n in enumerate(lengths):
            if n:
                where = rng.choice(n, size=min(n, padding_per_bag), replace=False)
                ids[bounds[b] + where] = pad
        for b in all_padding:
            ids[bounds[b]:bounds[b + 1]] = pad
    offsets = bounds if include_last_offset else bounds[:-1]
    return Bags(label, V, D, ids.astype(ids_dtype), offsets, include_last_offset, padding_idx)


def bags_2d(label, B, N, V=50, D=7, *, seed=0, padding_idx=None, all_padding=()):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=(B, N))
    if padding_idx is not None:
        pad = padding_idx % V
        ids[ids == pad] = (pad + 1) % V
        ids[:, 0] = pad
        for b in all_padding:
            ids[b] = pad
    return Bags(label, V, D, ids, None, False, padding_idx)


VARIED = [3, 1, 5, 2, 8, 4, 6]

CASES = [
    bags_1d("varied", VARIED),
    bags_1d("empty_first", [0, 3, 2]),
    bags_1d("empty_middle", [2, 0, 0, 3]),
    bags_1d("empty_last", [2, 3, 0]),
    bags_1d("all_empty", [0, 0, 0]),
    bags_1d("length_1", [1] * 9),
    bags_1d("one_bag", [11]),
    bags_1d("padding_positive", VARIED + [0, 3], padding_idx=5, padding_per_bag=1,
            all_padding=[2, 8]),
    bags_1d("padding_negative", VARIED + [0, 3], padding_idx=-3, padding_per_bag=2,
            all_padding=[0]),
    bags_1d("padding_row_0", [4, 2, 2], padding_idx=0, padding_per_bag=1),
    bags_1d("padding_all_bags", [2, 3, 1], padding_idx=-1, all_padding=[0, 1, 2]),
    bags_1d("include_last_offset", [2, 0, 4, 1, 0], include_last_offset=True),
    bags_1d("include_last_offset_padding", [3, 0, 4, 2], include_last_offset=True,
            padding_idx=7, padding_per_bag=1, all_padding=[3]),
    bags_1d("B0", []),
    bags_1d("B0_include_last_offset", [], include_last_offset=True),
    Bags("B0_lists", 50, 7, [], []),
    Bags("B0_lists_include_last_offset", 50, 7, [], [0], include_last_offset=True),
    bags_1d("many_bags", np.random.default_rng(9).integers(0, 12, size=300), V=400, D=33),
    bags_1d("wide_rows", [5, 0, 9, 1], V=30, D=130),
    bags_1d("V1", [3, 0, 2], V=1, D=5),
    bags_1d("repeated_ids", [6, 5, 0, 7], V=3, D=9),
    bags_2d("2d", 4, 3),
    bags_2d("2d_N1", 5, 1),
    bags_2d("2d_N0", 3, 0),
    bags_2d("2d_B0", 0, 4),
    bags_2d("2d_padding", 5, 4, padding_idx=-7, all_padding=[3]),
]
CASE_PARAMS = [pytest.param(c, id=c.label) for c in CASES]
CASE = {c.label: c for c in CASES}

TORCH_UNSUPPORTED = {"2d_N0"}  # torch: "step must be nonzero" for (B, 0) input
TORCH_CASE_PARAMS = [pytest.param(c, id=c.label) for c in CASES if c.label not in TORCH_UNSUPPORTED]


def table(case, dtype, seed=1):
    return make_weights(case.V, case.D, dtype, seed=seed)


def grad_out(case, dtype, seed=2):
    return np.random.default_rng(seed).standard_normal((case.B, case.D)).astype(dtype)


def run_forward(k, case, W, mode, psw=None, out=None):
    return k.lookup_bag(W, case.ids, case.offsets, out=out, **case.kwargs(mode, psw))


def run_backward(k, case, G, W, mode, psw=None, out=None):
    return k.lookup_bag_grad(G, case.ids, case.offsets, case.V, weights=W, out=out,
                             **case.kwargs(mode, psw))


def bits(a):
    a = np.ascontiguousarray(a)
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


# --------------------------------------------------------------------------
# independent float64 arithmetic for bounds and exact checks
# --------------------------------------------------------------------------


def torch_max_rows(W, flat, positions):
    """Per column, the position whose row torch's max returns: the first row, replaced by each
    later one strictly greater (a plain loop, independent of kernels._bag_math)."""
    best = W[flat[positions[0]]].copy()
    arg = np.full(W.shape[1], positions[0])
    for p in positions[1:]:
        row = W[flat[p]]
        greater = row > best
        best[greater] = row[greater]
        arg[greater] = p
    return arg


def divisor(mode, ws):
    if mode == "mean":
        return math.fsum(ws)
    if mode == "sqrtn":
        return math.sqrt(math.fsum(w * w for w in ws))
    return 1.0


def grad_terms(case, G, W, mode, psw=None, divisor_slack=False):
    """(count, mag): per (row, column) of dW, the number of contributions and the float64 sum of
    their magnitudes |d out / d row| * |G|, from a plain loop over the bags.

    With divisor_slack, also (third) the sum of |contribution| * (bag length + 3): the rounding
    of a mean/sqrtn divisor, which a float64 reference computed differently (torch's autograd)
    makes too, so that a float64 table is compared within both roundings."""
    V, D = case.V, G.shape[1]
    count = np.zeros((V, D))
    mag = np.zeros((V, D))
    slack = np.zeros((V, D))
    flat = case.flat_ids
    w = None if psw is None else np.asarray(psw, np.float64).reshape(-1)
    for b in range(case.B):
        pos = case.kept_positions(b)
        if not pos:
            continue
        g = np.abs(G[b].astype(np.float64))
        if mode == "max":
            for col, p in enumerate(torch_max_rows(W, flat, pos)):
                count[flat[p], col] += 1
                mag[flat[p], col] += g[col]
            continue
        ws = [1.0] * len(pos) if w is None else [float(w[p]) for p in pos]
        d = divisor(mode, ws)
        for p, wp in zip(pos, ws):
            count[flat[p]] += 1
            mag[flat[p]] += (0.0 if d == 0 else abs(wp / d)) * g
            if mode != "sum":
                slack[flat[p]] += (0.0 if d == 0 else abs(wp / d)) * g * (len(pos) + 3)
    return (count, mag, slack) if divisor_slack else (count, mag)


def psw_grad_float64(case, G, W, mode, psw):
    """d loss / d per_sample_weights for loss = sum(out * G), float64, a plain loop."""
    flat = case.flat_ids
    w = np.asarray(psw, np.float64).reshape(-1)
    result = np.zeros(flat.shape[0])
    W64 = W.astype(np.float64)
    for b in range(case.B):
        pos = case.kept_positions(b)
        if not pos:
            continue
        g = G[b].astype(np.float64)
        d = divisor(mode, [w[p] for p in pos])
        if d == 0:
            continue
        out_b = sum(w[p] * W64[flat[p]] for p in pos) / d
        for p in pos:
            dot = float(g @ W64[flat[p]])
            if mode == "sum":
                result[p] = dot
            elif mode == "mean":
                result[p] = (dot - float(g @ out_b)) / d
            else:
                result[p] = dot / d - float(g @ out_b) * w[p] / (d * d)
    return result.reshape(np.shape(psw))


def assert_grad_within_bound(got, ref, count, mag, what="dW", slack=0.0):
    """|got - ref| <= ((count + 1) * mag + slack) * eps per element, and +0.0 exactly where
    nothing contributes."""
    eps = float(np.finfo(got.dtype).eps)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    bound = ((count + 1) * mag + slack) * eps
    err = np.abs(got.astype(np.float64) - ref)
    bad = ~(err <= bound)
    if bad.any():
        i, j = (int(x) for x in np.argwhere(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} entries outside the bound; first [{i}, {j}]: got "
            f"{got[i, j]!r}, float64 {ref[i, j]!r}, |err| {err[i, j]!r} > {bound[i, j]!r} "
            f"(count {int(count[i, j])})")
    untouched = (count == 0) & (bits(got) != 0)
    if untouched.any():
        i, j = (int(x) for x in np.argwhere(untouched)[0])
        raise AssertionError(f"{what}[{i}, {j}] = {got[i, j]!r}: no id contributes, must be +0.0")


def assert_psw_grad_close(got, ref, case, G, W, what="d per_sample_weights"):
    """got (the table's dtype) within a rounding of the float64 ref, plus float64 slack relative
    to the size of the terms (|G| |W| per id)."""
    assert got.shape == np.shape(ref), f"{what}: shape {got.shape} != {np.shape(ref)}"
    eps = float(np.finfo(got.dtype).eps)
    flat = case.flat_ids
    bag = np.repeat(np.arange(case.B), np.diff(case.bounds))
    scale = np.abs(G.astype(np.float64))[bag] @ np.ones(case.D) if case.B else np.zeros(0)
    scale = scale * (np.abs(W.astype(np.float64)).max() if W.size else 0.0)
    tol = 2 * eps * np.abs(ref).reshape(-1) + 64 * np.finfo(np.float64).eps * scale * (case.D + 2)
    err = np.abs(got.astype(np.float64).reshape(-1) - np.asarray(ref).reshape(-1))
    bad = ~(err <= tol)
    if bad.any():
        p = int(np.argwhere(bad)[0][0])
        raise AssertionError(f"{what}: at position {p} (id {flat[p]}): got "
                             f"{got.reshape(-1)[p]!r}, float64 {np.asarray(ref).reshape(-1)[p]!r}")


# --------------------------------------------------------------------------
# 1. every kernel against the float64 reference
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASE_PARAMS)
@pytest.mark.parametrize("mode,weighted", MODE_PARAMS)
def test_every_kernel_matches_the_float64_reference(kernel_name, wdtype, mode, weighted, case):
    k = require(kernel_name, mode, wdtype)
    W = table(case, wdtype)
    psw = case.weights(wdtype) if weighted else None
    got = run_forward(k, case, W, mode, psw)
    assert got.shape == (case.B, case.D)
    LOOKUP_BAG.assert_matches(got, W, *case.ref_args(mode, psw))


@pytest.mark.parametrize("mode,weighted", MODE_PARAMS)
def test_every_entry_point_gives_the_same_bits(kernel_name, mode, weighted):
    k = require(kernel_name, mode)
    case = CASE["padding_positive"]
    W = table(case, np.float32)
    psw = case.weights(np.float32) if weighted else None
    method = run_forward(k, case, W, mode, psw)
    module = getattr(kernels, kernel_name).lookup_bag(W, case.ids, case.offsets,
                                                       **case.kwargs(mode, psw))
    top = kernels.lookup_bag(W, case.ids, case.offsets, kernel=kernel_name,
                             **case.kwargs(mode, psw))
    assert_bitwise_equal(module, method, "kernels.<module>.lookup_bag")
    assert_bitwise_equal(top, method, "kernels.lookup_bag(kernel=...)")


@pytest.mark.parametrize("mode,weighted", MODE_PARAMS)
def test_out_receives_the_result_and_is_returned(kernel_name, wdtype, mode, weighted):
    k = require(kernel_name, mode, wdtype)
    for label in ("varied", "empty_middle", "padding_positive", "B0", "B0_lists"):
        case = CASE[label]
        W = table(case, wdtype)
        psw = case.weights(wdtype) if weighted else None
        out = sentinel_like((case.B, case.D), wdtype)
        got = run_forward(k, case, W, mode, psw, out=out)
        assert got is out, case.label
        assert_bitwise_equal(out, run_forward(k, case, W, mode, psw), f"out ({case.label})")


@pytest.mark.parametrize("mode,weighted", MODE_PARAMS)
def test_one_bag_of_a_million_ids(kernel_name, mode, weighted):
    k = require(kernel_name, mode, np.float32)
    case = bags_1d("huge", [10**6], V=1000, D=16, seed=3, padding_idx=3, padding_per_bag=1000)
    W = table(case, np.float32)
    psw = case.weights(np.float32) if weighted else None
    got = run_forward(k, case, W, mode, psw)
    LOOKUP_BAG.assert_matches(got, W, *case.ref_args(mode, psw))


@pytest.mark.parametrize("as_list", [False, True], ids=["ndarray", "list"])
@pytest.mark.parametrize("mode,weighted", MODE_PARAMS)
def test_every_ids_dtype_gives_the_same_bags(kernel_name, ids_dtype, mode, weighted, as_list):
    """ids (and offsets) of any integer dtype, or Python lists, give the int64 result bitwise."""
    k = require(kernel_name, mode)
    base = bags_1d("ids", [3, 0, 5, 1, 4], V=100, D=6, padding_idx=-28, padding_per_bag=1)
    W = table(base, np.float32)
    psw = base.weights(np.float32) if weighted else None
    want = run_forward(k, base, W, mode, psw)
    ids = base.ids.astype(ids_dtype)
    offsets = base.offsets.astype(ids_dtype)
    if as_list:
        ids, offsets = ids.tolist(), offsets.tolist()
    got = k.lookup_bag(W, ids, offsets, **base.kwargs(mode, psw))
    assert_bitwise_equal(got, want, f"ids {np.dtype(ids_dtype).name}")
    LOOKUP_BAG.assert_matches(got, W, ids, offsets, mode, psw, base.padding_idx)
    ids2d = base.ids[:12].reshape(3, 4).astype(ids_dtype)
    ids2d = ids2d.tolist() if as_list else ids2d
    psw2d = None if psw is None else psw[:12].reshape(3, 4)
    got2d = k.lookup_bag(W, ids2d, mode=mode, per_sample_weights=psw2d,
                         padding_idx=np.int16(base.padding_idx))
    LOOKUP_BAG.assert_matches(got2d, W, ids2d, None, mode, psw2d, base.padding_idx)


@pytest.mark.parametrize("mode,weighted", MODE_PARAMS)
def test_strided_and_byte_swapped_arguments_give_the_same_bits(kernel_name, mode, weighted):
    """ids, offsets and per_sample_weights that are views with a step, and byte-swapped ids,
    give the bits of their contiguous copies (forward and backward)."""
    k = require(kernel_name, mode)
    case = CASE["padding_positive"]
    W = table(case, np.float32)
    psw = case.weights(np.float32) if weighted else None
    G = grad_out(case, np.float32)
    want = run_forward(k, case, W, mode, psw)
    want_grad = run_backward(k, case, G, W, mode, psw)

    def every_other(a):
        big = np.zeros(2 * len(a), a.dtype)
        big[::2] = a
        return big[::2]

    for variant, ids in (("strided", every_other(case.ids)),
                         ("byte-swapped", case.ids.astype(case.ids.dtype.newbyteorder(">")))):
        strided = Bags(variant, case.V, case.D, ids, every_other(case.offsets), False,
                       case.padding_idx)
        spsw = None if psw is None else every_other(psw)
        assert_bitwise_equal(run_forward(k, strided, W, mode, spsw), want, variant)
        got_grad = run_backward(k, strided, G, W, mode, spsw)
        for g, w in zip(got_grad, want_grad) if weighted else [(got_grad, want_grad)]:
            assert_bitwise_equal(g, w, f"{variant} backward")


def test_gradient_vocab_size_defaults_to_the_table_rows(kernel_name):
    k = require(kernel_name, "sum", op=BACKWARD)
    case = CASE["varied"]
    W = table(case, np.float32)
    G = grad_out(case, np.float32)
    want = k.lookup_bag_grad(G, case.ids, case.offsets, case.V)
    got = k.lookup_bag_grad(G, case.ids, case.offsets, weights=W)
    assert_bitwise_equal(got, want, "vocab_size from weights=")


FIXED_DIMS = [8, 16, 32, 64, 128, 256]
"""Row sizes cython_gather accumulates in fixed-size local arrays (unweighted sum/mean/sqrtn)."""


@pytest.mark.parametrize("kernel_name", GATHER_KERNEL_NAMES)
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64], ids=dtype_id)
@pytest.mark.parametrize("beyond_l2", [False, True], ids=["in_l2", "beyond_l2"])
@pytest.mark.parametrize("D", FIXED_DIMS + [3, 40])
@pytest.mark.parametrize("mode,weighted", MODE_PARAMS)
def test_every_row_size_and_table_size_path(kernel_name, wdtype, mode, weighted, D, beyond_l2,
                                            index_dtype):
    """The gather kernels' paths: fixed row sizes or not, a table beyond L2 (rows prefetched
    ahead) or not, int32 or int64 ids."""
    k = require(kernel_name, mode, wdtype)
    itemsize = np.dtype(wdtype).itemsize
    V = 2 * L2_BYTES // (D * itemsize) if beyond_l2 else 64
    lengths = np.random.default_rng(D).integers(0, 17, size=150)
    case = bags_1d("paths", lengths, V=V, D=D, seed=D, padding_idx=-2, padding_per_bag=1,
                   all_padding=[3], ids_dtype=index_dtype)
    W = shared_weights(V, D, wdtype, seed=1)
    assert (W.nbytes > L2_BYTES) == beyond_l2
    psw = case.weights(wdtype) if weighted else None
    LOOKUP_BAG.assert_matches(run_forward(k, case, W, mode, psw), W, *case.ref_args(mode, psw))


def strided_copy(W, layout):
    """W's values in another memory layout: every other column or row of a larger array, or
    Fortran order."""
    if layout == "fortran":
        return np.asfortranarray(W)
    V, D = W.shape
    big = np.zeros((V, 2 * D) if layout == "column_step" else (2 * V, D), W.dtype)
    view = big[:, ::2] if layout == "column_step" else big[::2]
    view[...] = W
    return view


@pytest.mark.parametrize("layout", ["column_step", "row_step", "fortran"])
@pytest.mark.parametrize("mode,weighted", MODE_PARAMS)
def test_a_non_contiguous_table_gives_the_contiguous_result(kernel_name, wdtype, mode, weighted,
                                                            layout):
    """Within the bound for every kernel; bit for bit for the gather kernels (the same
    arithmetic on the same rows), forward and backward. The table is beyond L2."""
    k = require(kernel_name, mode, wdtype)
    lengths = np.random.default_rng(6).integers(0, 12, size=200)
    case = bags_1d("strided", lengths, V=2 * L2_BYTES // (16 * np.dtype(wdtype).itemsize), D=16,
                   seed=6, padding_idx=9, padding_per_bag=1, all_padding=[0])
    W = table(case, wdtype)
    Ws = strided_copy(W, layout)
    assert not Ws.flags.c_contiguous and np.array_equal(Ws, W)
    psw = case.weights(wdtype) if weighted else None
    got = run_forward(k, case, Ws, mode, psw)
    LOOKUP_BAG.assert_matches(got, Ws, *case.ref_args(mode, psw))
    G = grad_out(case, wdtype)
    grad = run_backward(k, case, G, Ws, mode, psw)
    if kernel_name in GATHER_KERNEL_NAMES:
        assert_bitwise_equal(got, run_forward(k, case, W, mode, psw), f"{layout} forward")
        want = run_backward(k, case, G, W, mode, psw)
        for g, w in zip(grad, want) if weighted else [(grad, want)]:
            assert_bitwise_equal(g, w, f"{layout} backward")


# --------------------------------------------------------------------------
# 1b. the semantics, checked exactly (not through assert_matches)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("mode,weighted", MODE_PARAMS)
def test_a_bag_without_a_non_padding_id_is_positive_zero(kernel_name, wdtype, mode, weighted):
    """Empty bags (first, middle, last), all-padding bags and (B, 0) ids give +0.0 bit for bit,
    on a table whose every value is negative (so neither -0.0 nor a max over nothing passes)."""
    k = require(kernel_name, mode, wdtype)
    case = bags_1d("zeros", [0, 2, 0, 3, 2, 0], V=9, D=5, padding_idx=4, all_padding=[4])
    W = -1.0 - np.abs(table(case, wdtype))
    psw = case.weights(wdtype) if weighted else None
    got = run_forward(k, case, W, mode, psw)
    for b in (0, 2, 4, 5):
        assert np.all(bits(got[b]) == 0), f"bag {b}: {got[b]!r} is not +0.0"
    for b in (1, 3):
        assert np.all(got[b] < 0), f"bag {b}: {got[b]!r} should be negative"
    n0 = k.lookup_bag(W, np.zeros((3, 0), np.int64), mode=mode,
                      per_sample_weights=np.zeros((3, 0), wdtype) if weighted else None)
    assert n0.shape == (3, 5) and np.all(bits(n0) == 0), n0


@pytest.mark.parametrize("mode", ["mean", "sqrtn"])
def test_a_zero_divisor_gives_positive_zeros(kernel_name, wdtype, mode):
    """mean divides by sum(w), sqrtn by sqrt(sum(w^2)); where that is 0 the bag is +0.0 (padding
    ids and their weights left out)."""
    k = require(kernel_name, mode, wdtype)
    W = -1.0 - np.abs(make_weights(6, 4, wdtype))
    ids = np.array([1, 2, 3, 0, 4, 5, 2])
    offsets = [0, 2, 4, 6]
    cancel = [1.5, -1.5] if mode == "mean" else [0.0, 0.0]
    psw = np.array(cancel + [2.0, 0.0] + [0.5, 0.25] + [1.0], wdtype)
    # bag 0: weights sum to 0 (mean) or are 0 (sqrtn); bag 1: [3 (weight 2), padding 0 (0)]
    got = k.lookup_bag(W, ids, offsets, mode=mode, per_sample_weights=psw, padding_idx=3)
    assert np.all(bits(got[0]) == 0), f"divisor 0: {got[0]!r}"
    assert np.all(bits(got[1]) == 0), f"only padding has weight: {got[1]!r}"
    assert np.all(got[2] < 0) and np.all(got[3] < 0), got


EXACT_W = np.array([[1, 2], [3, 4], [5, 10], [5, -5], [-8, 16]])
"""Small integers: every result below is exact in float32 (counts and divisors powers of 2)."""

EXACT_CASES = [
    # (label, ids, offsets, mode, per_sample_weights, padding_idx, expected rows)
    ("sum", [1, 2, 3, 4], [0, 3], "sum", None, None, [[13, 9], [-8, 16]]),
    ("mean", [1, 3, 2, 2, 4, 4], [0, 2, 4], "mean", None, None, [[4, -0.5], [5, 10], [-8, 16]]),
    ("sqrtn", [2, 2, 3, 3, 4], [0, 4], "sqrtn", None, None, [[10, 5], [-8, 16]]),
    ("sum_psw", [1, 2], [0], "sum", [0.5, 2], None, [[11.5, 22]]),
    ("mean_psw", [1, 2, 4], [0, 2], "mean", [1, 3, 0.5], None, [[4.5, 8.5], [-8, 16]]),
    ("sqrtn_psw", [2, 3, 1, 1], [0], "sqrtn", [2, 2, 2, 2], None, [[8, 6.5]]),
    ("mean_padding", [0, 1, 3, 0], [0], "mean", None, 0, [[4, -0.5]]),
    ("sqrtn_padding", [0, 2, 0, 4], [0, 3], "sqrtn", None, -5, [[5, 10], [-8, 16]]),
    ("mean_psw_padding", [0, 1, 2], [0], "mean", [100, 1, 3], 0, [[4.5, 8.5]]),
    ("sum_padding_2d", [[4, 1], [1, 4]], None, "sum", None, 4, [[3, 4], [3, 4]]),
]


@pytest.mark.parametrize("label,ids,offsets,mode,psw,padding_idx,expected", EXACT_CASES,
                         ids=[c[0] for c in EXACT_CASES])
def test_small_integer_bags_are_exact(kernel_name, wdtype, label, ids, offsets, mode, psw,
                                      padding_idx, expected):
    k = require(kernel_name, mode, wdtype)
    W = EXACT_W.astype(wdtype)
    psw = None if psw is None else np.array(psw, wdtype).reshape(np.shape(ids))
    got = k.lookup_bag(W, ids, offsets, mode=mode, per_sample_weights=psw,
                       padding_idx=padding_idx)
    assert_bitwise_equal(got, np.array(expected, wdtype), label)


NAN = np.nan
MAX_W = np.array([
    [NAN, 1.0, -0.0, -5.0],    # 0
    [2.0, NAN, 0.0, -3.0],     # 1
    [2.0, 3.0, 0.0, -3.0],     # 2
    [9.0, 9.0, 9.0, 9.0],      # 3: padding in the padded cases
    [-np.inf, -np.inf, -np.inf, -np.inf],  # 4
    [-0.0, -0.0, -0.0, -0.0],  # 5
])

MAX_CASES = [
    # (label, bags, padding_idx, expected row per bag)
    ("nan_in_first_row_propagates", [[0, 1, 2]], None, [[NAN, 3, -0.0, -3]]),
    ("nan_in_later_row_is_ignored", [[1, 0, 2]], None, [[2, NAN, 0, -3]]),
    ("nan_only_in_later_rows", [[2, 1, 0]], None, [[2, 3, 0, -3]]),
    ("negative_zero_first_stays", [[5, 2]], None, [[2, 3, -0.0, -0.0]]),
    ("positive_zero_first_stays", [[2, 5]], None, [[2, 3, 0.0, -0.0]]),
    ("all_negative_is_not_zero", [[4, 5, 4], [4]], None,
     [[-0.0, -0.0, -0.0, -0.0], [-np.inf] * 4]),
    ("padding_row_skipped_even_first", [[3, 1, 2], [3, 3]], 3, [[2, NAN, 0, -3], [0, 0, 0, 0]]),
    ("first_row_of_each_bag", [[2], [0, 3], [1, 0]], None,
     [[2, 3, 0, -3], [NAN, 9, 9, 9], [2, NAN, 0, -3]]),
    ("nan_first_after_padding", [[3, 0, 1]], -3, [[NAN, 1, -0.0, -3]]),
]


@pytest.mark.parametrize("label,bags,padding_idx,expected", MAX_CASES,
                         ids=[c[0] for c in MAX_CASES])
def test_max_follows_torch_for_nan_ties_and_negative_zero(kernel_name, wdtype, label, bags,
                                                           padding_idx, expected):
    """The first non-padding row, replaced by each later value strictly greater: a NaN only
    from the bag's first row, ties keep the first (so -0.0 first stays -0.0)."""
    k = require(kernel_name, "max", wdtype)
    W = MAX_W.astype(wdtype)
    ids = [i for bag in bags for i in bag]
    offsets = np.cumsum([0] + [len(bag) for bag in bags])[:-1]
    got = k.lookup_bag(W, ids, offsets, mode="max", padding_idx=padding_idx)
    want = np.array(expected, wdtype)
    # NaN compares by position only (payloads are the table's own)
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{label}: {got!r} != {want!r}"
    got_num = np.where(np.isnan(got), 0, got)
    assert_bitwise_equal(got_num, np.where(np.isnan(want), 0, want).astype(wdtype), label)


# --------------------------------------------------------------------------
# 2. against torch.nn.functional.embedding_bag
# --------------------------------------------------------------------------

TORCH_MODE_PARAMS = [pytest.param(m, w, id=mode_label(m, w))
                     for m, w in (("sum", False), ("sum", True), ("mean", False), ("max", False))]


def torch_bag(torch, W, case, mode, psw=None, dtype=None, requires_grad=False):
    """(out, weight tensor, psw tensor) of torch's embedding_bag on this layout."""
    F = torch.nn.functional
    tdtype = None if dtype is None else getattr(torch, np.dtype(dtype).name)
    weight = torch.tensor(W, dtype=tdtype, requires_grad=requires_grad)
    psw_t = None if psw is None else torch.tensor(psw, dtype=tdtype, requires_grad=requires_grad)
    ids = torch.as_tensor(np.asarray(case.ids, np.int64))
    offsets = None if case.offsets is None else torch.as_tensor(np.asarray(case.offsets, np.int64))
    out = F.embedding_bag(ids, weight, offsets, mode=mode, per_sample_weights=psw_t,
                          include_last_offset=case.include_last_offset,
                          padding_idx=case.padding_idx)
    return out, weight, psw_t


@pytest.mark.parametrize("case", TORCH_CASE_PARAMS)
@pytest.mark.parametrize("mode,weighted", TORCH_MODE_PARAMS)
def test_forward_agrees_with_torch(kernel_name, wdtype, mode, weighted, case):
    torch = pytest.importorskip("torch")
    k = require(kernel_name, mode, wdtype)
    W = table(case, wdtype)
    psw = case.weights(wdtype) if weighted else None
    ours = run_forward(k, case, W, mode, psw)
    theirs = torch_bag(torch, W, case, mode, psw)[0].detach().numpy()
    assert theirs.dtype == ours.dtype
    if mode == "max":
        assert_bitwise_equal(ours, theirs, "max against torch")
        return
    ref, tol, zero = LOOKUP_BAG.reference(W, *case.ref_args(mode, psw))
    assert np.all(np.abs(theirs - ref) <= tol), "torch itself is outside the reference bound"
    assert np.all(np.abs(ours - ref) <= tol), "outside the reference bound"
    assert np.all(bits(ours[zero]) == 0) and np.all(theirs[zero] == 0)


@pytest.mark.parametrize("label,bags,padding_idx,expected", MAX_CASES,
                         ids=[c[0] for c in MAX_CASES])
def test_max_cases_are_torchs_own_results_forward_and_backward(kernel_name, wdtype, label, bags,
                                                                padding_idx, expected):
    """The hand-made max table above is what torch computes; the gradient goes where torch's
    autograd sends it (NaN columns included), bit for bit."""
    torch = pytest.importorskip("torch")
    k = require(kernel_name, "max", wdtype, op=BACKWARD)
    W = MAX_W.astype(wdtype)
    ids = [i for bag in bags for i in bag]
    offsets = np.cumsum([0] + [len(bag) for bag in bags])[:-1]
    case = Bags(label, W.shape[0], W.shape[1], np.array(ids), offsets, False, padding_idx)
    out, weight, _ = torch_bag(torch, W, case, "max", requires_grad=True)
    theirs = out.detach().numpy()
    want = np.array(expected, wdtype)
    assert np.array_equal(np.isnan(theirs), np.isnan(want))
    assert_bitwise_equal(np.where(np.isnan(theirs), 0, theirs), np.where(np.isnan(want), 0, want)
                         .astype(wdtype), f"torch's max on {label}")
    G = (2.0 ** -np.arange(case.B * case.D)).reshape(case.B, case.D).astype(wdtype)
    out.backward(torch.as_tensor(G))
    dW = run_backward(k, case, G, W, "max")
    assert_bitwise_equal(dW, weight.grad.numpy(), f"max gradient on {label}")


@pytest.mark.parametrize("case", TORCH_CASE_PARAMS)
@pytest.mark.parametrize("mode,weighted", TORCH_MODE_PARAMS)
def test_gradient_agrees_with_torch_autograd(kernel_name, wdtype, mode, weighted, case):
    """dW (and d per_sample_weights for sum) against a float64 torch autograd of the same bags,
    within the summation bound; torch's own gradient in the table's dtype within it too."""
    torch = pytest.importorskip("torch")
    k = require(kernel_name, mode, wdtype, op=BACKWARD)
    W = table(case, wdtype)
    psw = case.weights(wdtype) if weighted else None
    G = grad_out(case, wdtype)
    result = run_backward(k, case, G, W, mode, psw)
    dW, dpsw = result if weighted else (result, None)
    count, mag, slack = grad_terms(case, G, W, mode, psw, divisor_slack=True)
    slack = slack if wdtype == np.float64 else 0.0  # a float64 reference is exact for float32

    def torch_grads(dtype):
        out, weight, psw_t = torch_bag(torch, W, case, mode, psw, dtype=dtype, requires_grad=True)
        out.backward(torch.as_tensor(G, dtype=out.dtype))
        return weight.grad.numpy(), None if psw is None else psw_t.grad.numpy()

    ref, ref_psw = torch_grads(np.float64)
    assert_grad_within_bound(dW, ref, count, mag, slack=slack)
    if weighted:
        assert_psw_grad_close(dpsw, ref_psw, case, G, W)
    theirs, theirs_psw = torch_grads(wdtype)
    assert_grad_within_bound(theirs, ref, count, mag, "torch's own dW", slack=slack)


def formula_autograd(torch, W, case, G, mode, psw):
    """float64 torch autograd of out[b] = sum_i w_i W[id_i] / d_b (d: 1, sum w, sqrt(sum w^2);
    0 where d = 0), padding left out: (dW, d psw)."""
    flat = torch.as_tensor(case.flat_ids)
    bag = torch.as_tensor(np.repeat(np.arange(case.B), np.diff(case.bounds)))
    keep = torch.ones(len(flat), dtype=torch.bool) if case.pad_row is None else flat != case.pad_row
    weight = torch.tensor(W, dtype=torch.float64, requires_grad=True)
    w = torch.tensor(psw, dtype=torch.float64, requires_grad=True)
    wk = w.reshape(-1) * keep
    zeros = torch.zeros(case.B, case.D + 1, dtype=torch.float64)
    S = zeros[:, 1:].index_add(0, bag, wk[:, None] * weight[flat])
    d = zeros[:, 0].index_add(0, bag, wk if mode == "mean" else wk * wk)
    ok = d != 0
    d = torch.where(ok, d, 1.0)  # before the sqrt: its gradient at 0 would be a NaN
    out = torch.where(ok[:, None], S / (d if mode == "mean" else d.sqrt())[:, None], 0.0)
    (out * torch.as_tensor(G, dtype=torch.float64)).sum().backward()
    return weight.grad.numpy(), w.grad.numpy()


@pytest.mark.parametrize("case", TORCH_CASE_PARAMS)
@pytest.mark.parametrize("mode", ["mean", "sqrtn"])
def test_weighted_mean_and_sqrtn_gradients_agree_with_float64_autograd(kernel_name, wdtype,
                                                                      mode, case):
    torch = pytest.importorskip("torch")
    k = require(kernel_name, mode, wdtype, op=BACKWARD)
    W = table(case, wdtype)
    psw = case.weights(wdtype)
    G = grad_out(case, wdtype)
    dW, dpsw = run_backward(k, case, G, W, mode, psw)
    ref, ref_psw = formula_autograd(torch, W, case, G, mode, psw)
    count, mag, slack = grad_terms(case, G, W, mode, psw, divisor_slack=True)
    assert_grad_within_bound(dW, ref, count, mag, slack=slack if wdtype == np.float64 else 0.0)
    assert_psw_grad_close(dpsw, ref_psw, case, G, W)


# --------------------------------------------------------------------------
# 3. lookup_bag_grad against the float64 reference
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASE_PARAMS)
@pytest.mark.parametrize("mode,weighted", MODE_PARAMS)
def test_gradient_within_the_summation_bound(kernel_name, wdtype, mode, weighted, case):
    k = require(kernel_name, mode, wdtype, op=BACKWARD)
    W = table(case, wdtype)
    psw = case.weights(wdtype) if weighted else None
    G = grad_out(case, wdtype)
    result = run_backward(k, case, G, W, mode, psw)
    dW = result[0] if weighted else result
    assert dW.dtype == wdtype and dW.shape == (case.V, case.D)
    ref = LOOKUP_BAG_GRAD.reference(G, case.ids, case.offsets, case.V, mode, psw,
                                    case.padding_idx, case.include_last_offset, W)
    count, mag = grad_terms(case, G, W, mode, psw)
    assert_grad_within_bound(dW, ref, count, mag)
    if weighted:
        dpsw = result[1]
        assert dpsw.dtype == wdtype
        assert_psw_grad_close(dpsw, psw_grad_float64(case, G, W, mode, psw), case, G, W)


@pytest.mark.parametrize("mode,weighted", MODE_PARAMS)
def test_gradient_out_is_overwritten(kernel_name, wdtype, mode, weighted):
    k = require(kernel_name, mode, wdtype, op=BACKWARD)
    for label in ("varied", "padding_negative", "B0", "B0_lists", "2d_N0"):
        case = CASE[label]
        W = table(case, wdtype)
        psw = case.weights(wdtype) if weighted else None
        G = grad_out(case, wdtype)
        out = sentinel_like((case.V, case.D), wdtype)
        got = run_backward(k, case, G, W, mode, psw, out=out)
        fresh = run_backward(k, case, G, W, mode, psw)
        if weighted:
            assert got[0] is out
            assert_bitwise_equal(got[1], fresh[1], f"d psw with out= ({case.label})")
        else:
            assert got is out
        assert_bitwise_equal(out, fresh[0] if weighted else fresh, f"out ({case.label})")


def test_max_gradient_goes_to_the_first_arg_max_row(kernel_name, wdtype):
    """Ties route to the first row holding the maximum; padding rows and rows that never win
    get +0.0; a row that wins in two bags receives both gradients."""
    k = require(kernel_name, "max", wdtype, op=BACKWARD)
    W = np.array([[1, 5], [4, 2], [4, 2], [9, 9], [0, 7]], wdtype)
    ids = [2, 1, 0, 3, 1, 3, 4, 1]
    offsets = [0, 3, 5]  # bags [2, 1, 0], [3, 1] (3 is padding), [3, 4, 1]
    G = np.array([[1, 10], [100, 1000], [0.5, 0.25]], wdtype)
    dW = k.lookup_bag_grad(G, ids, offsets, 5, mode="max", padding_idx=3, weights=W)
    want = np.array([
        [0, 10],          # row 0: column 1 of bag 0
        [100 + 0.5, 1000],  # row 1: bag 1 both columns; bag 2 column 0 (4 > 0)
        [1, 0],           # row 2: column 0 of bag 0 (the first of the tie 4, 4)
        [0, 0],           # row 3: padding
        [0, 0.25],        # row 4: column 1 of bag 2 (7 > 2)
    ], wdtype)
    assert_bitwise_equal(dW, want, "max gradient")


# --------------------------------------------------------------------------
# 3b. the compiled pair: bitwise equal, any thread count
# --------------------------------------------------------------------------

COMPILED_PAIR = ("numba_gather", "cython_gather")


def case_arrays(case, wdtype, weighted):
    """(W, per_sample_weights or None, grad_out) of a bag case in the table's dtype."""
    return table(case, wdtype), case.weights(wdtype) if weighted else None, grad_out(case, wdtype)


def parallel_bags(n_bags, V, D, wdtype, weighted):
    """(case, W, psw, G): n_bags 1-D bags of 0-39 ids (one padding id each, bags 5 and 6 all
    padding), large enough to run the compiled kernels on two threads."""
    lengths = np.random.default_rng(4).integers(0, 40, size=n_bags)
    case = bags_1d("parallel", lengths, V=V, D=D, seed=4, padding_idx=-11, padding_per_bag=1,
                   all_padding=[5, 6])
    return (case, *case_arrays(case, wdtype, weighted))


PARALLEL_CASES = [
    # (V, D, layout): a table in L2 and beyond it, a generic and fixed row sizes, 2-D ids
    (3000, 33, "1d"), (20000, 16, "1d"), (20000, 128, "1d"), (3000, 64, "2d")]


@pytest.mark.parametrize("V,D,layout", PARALLEL_CASES, ids=lambda x: str(x))
@pytest.mark.parametrize("mode,weighted", MODE_PARAMS)
def test_compiled_kernels_agree_bitwise_for_one_and_two_threads(wdtype, mode, weighted, V, D,
                                                                layout):
    for name in COMPILED_PAIR:
        require(name, mode, wdtype)
        require(name, mode, wdtype, op=BACKWARD)
    # big enough (> PARALLEL_MIN_BYTES) to run on two threads
    if layout == "2d":
        case = bags_2d("parallel_2d", 4000, 9, V=V, D=D, seed=4, padding_idx=-11,
                       all_padding=[5, 6])
        W, psw, G = case_arrays(case, wdtype, weighted)
    else:
        case, W, psw, G = parallel_bags(2000, V, D, wdtype, weighted)
    results = {}
    for name in COMPILED_PAIR:
        k = kernels.KERNELS[name]
        for threads in (1, 2):
            with kernels.num_threads(threads):
                fwd = run_forward(k, case, W, mode, psw)
                bwd = run_backward(k, case, G, W, mode, psw)
            results[name, threads] = (fwd, bwd[0] if weighted else bwd)
    (first, (fwd0, bwd0)), *rest = results.items()
    LOOKUP_BAG.assert_matches(fwd0, W, *case.ref_args(mode, psw))
    for key, (fwd, bwd) in rest:
        assert_bitwise_equal(fwd, fwd0, f"forward {key} vs {first}")
        assert_bitwise_equal(bwd, bwd0, f"gradient {key} vs {first}")


# --------------------------------------------------------------------------
# 4. bad input: the same error from every kernel, before out is written
# --------------------------------------------------------------------------

V_ERR, D_ERR = 6, 3
W_ERR = make_weights(V_ERR, D_ERR, np.float32, seed=7)
IDS_ERR = np.array([0, 1, 2, 3, 4, 5])
OFFSETS_ERR = np.array([0, 2, 2])
B_ERR = 3


@dataclass(frozen=True)
class BadCall:
    label: str
    exc: type
    match: str
    op: str = FORWARD
    changes: tuple = ()  # (argument name, value) pairs that replace the valid call's

    def arguments(self):
        if self.op == FORWARD:
            args = dict(weights=W_ERR, ids=IDS_ERR, offsets=OFFSETS_ERR, mode="sum")
        else:
            args = dict(grad_out=np.ones((B_ERR, D_ERR), np.float32), ids=IDS_ERR,
                        offsets=OFFSETS_ERR, vocab_size=V_ERR, mode="sum", weights=W_ERR)
        args.update(dict(self.changes))
        return args

    def out_shape(self):
        return (B_ERR, D_ERR) if self.op == FORWARD else (V_ERR, D_ERR)

    def call(self, k, out):
        args = self.arguments()
        if self.op == FORWARD:
            return k.lookup_bag(args.pop("weights"), args.pop("ids"), args.pop("offsets"),
                                out=out, **args)
        return k.lookup_bag_grad(args.pop("grad_out"), args.pop("ids"), args.pop("offsets"),
                                 args.pop("vocab_size"), out=out, **args)


def bad(label, exc, match, op=FORWARD, **changes):
    return BadCall(label, exc, match, op, tuple(changes.items()))


PSW_OK = np.ones(6, np.float32)

BAD_INPUTS = [
    bad("unknown_mode", ValueError, r"mode must be one of 'sum', 'mean', 'max', 'sqrtn', "
        r"got 'median'", mode="median"),
    bad("mode_not_a_string", ValueError, "mode must be one of", mode=None),
    bad("psw_with_max", ValueError, r"per_sample_weights is not supported with mode='max'",
        mode="max", per_sample_weights=PSW_OK),
    bad("psw_float64_for_float32", TypeError, r"per_sample_weights must have the table's dtype "
        r"float32, got float64", per_sample_weights=np.ones(6)),
    bad("psw_integer", TypeError, "per_sample_weights must have the table's dtype",
        per_sample_weights=np.ones(6, np.int32)),
    bad("psw_short", ValueError, r"per_sample_weights must have the shape of ids \(6,\), "
        r"got \(5,\)", per_sample_weights=np.ones(5, np.float32)),
    bad("psw_2d", ValueError, "per_sample_weights must have the shape of ids",
        per_sample_weights=np.ones((6, 1), np.float32)),
    bad("padding_idx_V", ValueError, r"padding_idx must be within \[-vocab_size, vocab_size\) "
        r"= \[-6, 6\), got 6", padding_idx=6),
    bad("padding_idx_below_minus_V", ValueError, r"got -7", padding_idx=-7),
    bad("padding_idx_bool", TypeError, "padding_idx must be an integer or None, got True",
        padding_idx=True),
    bad("padding_idx_float", TypeError, "padding_idx must be an integer or None",
        padding_idx=1.0),
    bad("offsets_float", TypeError, "offsets must have an integer dtype, got float64",
        offsets=np.array([0.0, 2.0])),
    bad("offsets_bool", TypeError, "offsets must have an integer dtype, got bool",
        offsets=np.array([False, True])),
    bad("offsets_2d", ValueError, r"offsets must be 1-D, got shape \(1, 2\)",
        offsets=np.array([[0, 2]])),
    bad("offsets_scalar", ValueError, "offsets must be 1-D", offsets=np.int64(0)),
    bad("offsets_not_from_0", ValueError, r"offsets\[0\] must be 0, got 1", offsets=[1, 2, 4]),
    bad("offset_past_end", ValueError, r"offset 9 at position 2 is past len\(ids\) = 6",
        offsets=[0, 2, 9]),
    bad("offsets_decreasing", ValueError, r"offsets must be non-decreasing: offsets\[2\] = 1 < "
        r"offsets\[1\] = 3", offsets=[0, 3, 1, 4]),
    bad("offsets_empty_with_ids", ValueError, "offsets is empty but ids holds 6 ids",
        offsets=[]),
    bad("offsets_missing_1d", ValueError, "offsets is required when ids are 1-D", offsets=None),
    bad("last_offset_not_len", ValueError, r"the last offset must equal len\(ids\) = 6, got 5",
        offsets=[0, 2, 5], include_last_offset=True),
    bad("last_offset_missing", ValueError, "offsets must hold at least one value",
        offsets=[], include_last_offset=True),
    bad("include_last_offset_not_bool", TypeError, "include_last_offset must be a bool",
        include_last_offset=1),
    bad("offsets_with_2d_ids", ValueError, "offsets must be None when ids are 2-D",
        ids=IDS_ERR.reshape(3, 2)),
    bad("include_last_offset_2d_ids", ValueError, "include_last_offset applies to 1-D ids",
        ids=IDS_ERR.reshape(3, 2), offsets=None, include_last_offset=True),
    bad("ids_3d", ValueError, r"ids must be 1-D \(with offsets\) or 2-D \(B, N\) for bags, got "
        r"shape \(1, 3, 2\)", ids=IDS_ERR.reshape(1, 3, 2), offsets=None),
    bad("ids_0d", ValueError, "ids must be 1-D", ids=np.int64(1), offsets=None),
    bad("ids_float", TypeError, "ids must have an integer dtype, got float64",
        ids=IDS_ERR.astype(np.float64)),
    bad("id_too_large", IndexError, r"id 6 at position \(4,\) is out of range for vocab_size 6",
        ids=np.array([0, 1, 2, 3, 6, 5])),
    bad("id_negative", IndexError, r"id -1 at position \(1,\) is out of range",
        ids=np.array([0, -1, 2, 3, 4, 5])),
    bad("id_too_large_2d", IndexError, r"id 9 at position \(1, 0\) is out of range",
        ids=np.array([[0, 1], [9, 2], [3, 4]]), offsets=None),
    bad("weights_1d", ValueError, "weights must be 2-D", weights=np.ones(6, np.float32)),
    bad("weights_int", TypeError, "weights must be float32 or float64, got int64",
        weights=np.ones((6, 3), np.int64)),
    bad("out_wrong_shape", ValueError, r"out must have shape \(4, 3\), got \(3, 3\)",
        offsets=[0, 2, 2, 4]),
    # backward
    bad("grad_unknown_mode", ValueError, "mode must be one of", BACKWARD, mode="first"),
    bad("grad_out_rows", ValueError, r"grad_out must have shape \(number of bags, dim\) = "
        r"\(3, dim\), got \(4, 3\)", BACKWARD, grad_out=np.ones((4, 3), np.float32)),
    bad("grad_out_1d", ValueError, "grad_out must have shape", BACKWARD,
        grad_out=np.ones(3, np.float32)),
    bad("grad_out_int", TypeError, "grad_out must be float32 or float64", BACKWARD,
        grad_out=np.ones((3, 3), np.int32)),
    bad("grad_max_without_weights", ValueError, r"weights= \(the table of the forward\) is "
        r"needed for mode='max'", BACKWARD, mode="max", weights=None),
    bad("grad_psw_without_weights", ValueError, "needed for the gradient of per_sample_weights",
        BACKWARD, per_sample_weights=PSW_OK, weights=None),
    bad("grad_weights_wrong_shape", ValueError, r"weights must be the \(6, 3\) float32 table",
        BACKWARD, mode="max", weights=np.ones((6, 4), np.float32)),
    bad("grad_weights_wrong_dtype", ValueError, "weights must be the", BACKWARD, mode="max",
        weights=np.ones((6, 3))),
    bad("grad_psw_with_max", ValueError, "not supported with mode='max'", BACKWARD, mode="max",
        per_sample_weights=PSW_OK),
    bad("grad_psw_dtype", TypeError, "per_sample_weights must have the table's dtype", BACKWARD,
        per_sample_weights=np.ones(6)),
    bad("grad_padding_idx", ValueError, "padding_idx must be within", BACKWARD, padding_idx=-8),
    bad("grad_offsets_decreasing", ValueError, r"offsets\[2\] = 0 < offsets\[1\] = 2", BACKWARD,
        offsets=[0, 2, 0]),
    bad("grad_id_past_vocab", IndexError, r"id 5 at position \(5,\) is out of range for "
        r"vocab_size 5", BACKWARD, vocab_size=5),
    bad("grad_vocab_size_negative", ValueError, "vocab_size must be >= 0", BACKWARD,
        vocab_size=-1),
    bad("grad_vocab_size_bool", TypeError, "vocab_size must be an integer", BACKWARD,
        vocab_size=True),
    bad("grad_vocab_size_missing", TypeError, r"needs vocab_size \(or weights=\)", BACKWARD,
        vocab_size=None, weights=None),
]
BAD_PARAMS = [pytest.param(c, id=c.label) for c in BAD_INPUTS]


@pytest.mark.parametrize("case", BAD_PARAMS)
def test_bad_input_raises_before_writing_out(kernel_name, case):
    k = kernels.KERNELS[kernel_name]
    out = sentinel_like(case.out_shape(), np.float32)
    with pytest.raises(case.exc, match=case.match):
        case.call(k, out)
    assert_untouched(out)


@pytest.mark.parametrize("case", BAD_PARAMS)
def test_bad_input_gives_the_same_error_from_every_kernel(case):
    seen = {}
    for name in KERNEL_NAMES:
        out = sentinel_like(case.out_shape(), np.float32)
        seen[name] = outcome(lambda: case.call(kernels.KERNELS[name], out))
    assert len(set(seen.values())) == 1, f"kernels disagree: {seen}"
    assert seen[KERNEL_NAMES[0]][0] is case.exc


def test_out_overlapping_an_input_is_refused_and_the_input_kept(kernel_name):
    k = kernels.KERNELS[kernel_name]
    W = W_ERR.copy()
    with pytest.raises(ValueError, match="out must not overlap weights"):
        k.lookup_bag(W, IDS_ERR, OFFSETS_ERR, out=W[:B_ERR])
    assert_bitwise_equal(W, W_ERR, "weights after the refused call")
    psw = np.ones((B_ERR + 1) * D_ERR, np.float32)
    with pytest.raises(ValueError, match="out must not overlap per_sample_weights"):
        k.lookup_bag(W, IDS_ERR, OFFSETS_ERR, per_sample_weights=psw[:6],
                     out=psw[D_ERR:].reshape(B_ERR, D_ERR))
    assert np.all(psw == 1)
    G = np.ones((V_ERR, D_ERR), np.float32)
    with pytest.raises(ValueError, match="out must not overlap grad_out"):
        k.lookup_bag_grad(G[:B_ERR], IDS_ERR, OFFSETS_ERR, V_ERR, out=G)
    assert np.all(G == 1)
    with pytest.raises(ValueError, match="out must not overlap weights"):
        k.lookup_bag_grad(G[:B_ERR].copy(), IDS_ERR, OFFSETS_ERR, V_ERR, mode="max", weights=W,
                          out=W)
    assert_bitwise_equal(W, W_ERR, "weights after the refused gradient")


UNIMPLEMENTED = [pytest.param(n, op, m, id=f"{n}-{op}-{m}") for n in KERNEL_NAMES
                 for op in (FORWARD, BACKWARD) for m in BAG_MODES if lacks(n, op, m)]


@pytest.mark.parametrize("kernel_name,op,mode", UNIMPLEMENTED)
def test_an_unimplemented_mode_raises_before_writing_out(kernel_name, op, mode):
    """NotImplementedError names the kernels that implement it; out keeps its sentinel."""
    k = kernels.KERNELS[kernel_name]
    W = W_ERR
    if op == FORWARD:
        out = sentinel_like((B_ERR, D_ERR), np.float32)
        call = lambda: k.lookup_bag(W, IDS_ERR, OFFSETS_ERR, mode=mode, out=out)  # noqa: E731
    else:
        out = sentinel_like((V_ERR, D_ERR), np.float32)
        call = lambda: k.lookup_bag_grad(np.ones((B_ERR, D_ERR), np.float32), IDS_ERR,  # noqa
                                         OFFSETS_ERR, V_ERR, mode=mode, weights=W, out=out)
    with pytest.raises(NotImplementedError) as info:
        call()
    assert_names_implementers(str(info.value), kernel_name, op, mode, np.float32)
    assert_untouched(out)


# --------------------------------------------------------------------------
# 5. kernel="auto"
# --------------------------------------------------------------------------

AUTO_SIZES = [(100, 8, 64, 4), (5000, 64, 4096, 1), (2000, 32, 4096, 64)]


@pytest.mark.parametrize("V,D,n,length", AUTO_SIZES, ids=lambda x: str(x))
@pytest.mark.parametrize("mode,weighted", MODE_PARAMS)
def test_auto_is_correct_for_every_mode(mode, weighted, V, D, n, length):
    case = bags_1d("auto", [length] * (n // length), V=V, D=D, padding_idx=1,
                   padding_per_bag=int(length > 1))
    W = table(case, np.float32)
    psw = case.weights(np.float32) if weighted else None
    got = kernels.lookup_bag(W, case.ids, case.offsets, kernel="auto", **case.kwargs(mode, psw))
    LOOKUP_BAG.assert_matches(got, W, *case.ref_args(mode, psw))
    G = grad_out(case, np.float32)
    result = kernels.lookup_bag_grad(G, case.ids, case.offsets, weights=W, kernel="auto",
                                     **case.kwargs(mode, psw))
    dW = result[0] if weighted else result
    ref = LOOKUP_BAG_GRAD.reference(G, case.ids, case.offsets, V, mode, psw, case.padding_idx,
                                    False, W)
    assert_grad_within_bound(dW, ref, *grad_terms(case, G, W, mode, psw))


@pytest.mark.parametrize("op", [FORWARD, BACKWARD])
@pytest.mark.parametrize("mode", BAG_MODES)
def test_auto_only_picks_kernels_that_have_the_mode(op, mode, wdtype):
    """Whatever the measurements say (one-hot kernels may be fastest for sum), the kernel auto
    runs for a mode has that mode, at every size and bag length."""
    for V in (10, 1000, 10**6):
        for D in (8, 64, 256):
            for length in (1, 8, 64):
                k = kernels.fastest(V, D, 4096, wdtype, op=op, bag_length=length, mode=mode)
                assert mode in k.bag_modes, (V, D, length, k.name)
                assert k.implements(op, wdtype.name), (V, D, length, k.name)


def _table_at(V, D, dtype, where, rng):
    """A (V, D) standard-normal table: in cache ("cached", V forced small), or beyond L2 (the
    prefetching loops) starting on a cache line ("aligned") or 16 bytes past one ("offset", as
    NumPy's large arrays start)."""
    if where == "cached":
        return rng.standard_normal((V, D)).astype(dtype)
    itemsize = np.dtype(dtype).itemsize
    skip = 0 if where == "aligned" else 16 // itemsize
    flat = kernels.aligned_empty(V * D + skip, dtype)
    W = flat[skip:].reshape(V, D)
    W[...] = rng.standard_normal((V, D))
    assert (W.ctypes.data % 64 == 0) == (where == "aligned")
    return W


@pytest.mark.parametrize("where", ["cached", "aligned", "offset"])
@pytest.mark.parametrize("D", [16, 64, 128, 256])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cython_bags_give_numbas_bits_at_every_isa_level(D, dtype, where, cython_isa):
    """cython_gather's float bags (AVX-512 vectors for float32 rows of 16, 64, 128 and 256 values,
    the target clones otherwise; with and without the row prefetch, whose tail line depends on
    the table's alignment) give numba_gather's bits, padding and empty bags included."""
    rng = np.random.default_rng(D)
    V = 500 if where == "cached" else max(40_000, 4 * L2_BYTES // (D * np.dtype(dtype).itemsize))
    W = _table_at(V, D, dtype, where, rng)
    assert (bag_prefetch_distance(W) > 0) == (where != "cached")
    ids = rng.integers(0, V, 4000)
    offsets = np.sort(rng.integers(0, 4000, 400))
    offsets[0] = 0
    offsets[9] = offsets[10]
    for mode in ("sum", "mean", "sqrtn"):
        got = kernels.lookup_bag(W, ids, offsets, mode=mode, padding_idx=7, kernel="cython_gather")
        want = kernels.lookup_bag(W, ids, offsets, mode=mode, padding_idx=7, kernel="numba_gather")
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("fmt", ["float32", "int8"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("where", [0, 0.3, 0.7, -1], ids=["first", "thread0", "thread1", "last"])
@pytest.mark.parametrize("bad, dtype", [(-1, np.int64), (5000, np.int64), (-3, np.int32),
                                        (2**64 - 1, np.uint64)],
                         ids=["neg64", "past64", "neg32", "huge_u64"])
def test_cython_bags_own_bounds_pass_names_the_id_and_writes_nothing(fmt, threads, where, bad,
                                                                     dtype):
    """cython_gather checks a bag call's ids inside its own parallel pass (bag_checks_ids): an
    id out of range anywhere in either thread's share gives the shared IndexError, naming the
    id and its position, with out untouched."""
    rng = np.random.default_rng(11)
    V, D, n = 5000, 64, 40_000
    W = rng.standard_normal((V, D)).astype(np.float32)
    T = W if fmt == "float32" else kernels.quantize(W, fmt)
    ids = rng.integers(0, V, n).astype(dtype)
    pos = n - 1 if where == -1 else int(where * n)
    ids[pos] = bad
    offsets = np.arange(0, n, 8)
    out = np.full((n // 8, D), 7.0, np.float32)
    with kernels.num_threads(threads):
        with pytest.raises(IndexError, match=rf"id {bad} at position \({pos},\)"):
            kernels.lookup_bag(T, ids, offsets, kernel="cython_gather", out=out)
    assert (out == 7.0).all()


def test_offsets_checked_in_place_are_the_callers_array_or_none_for_equal_bags():
    """check_bags(private=False), what cython_gather's bags receive: the caller's int64 offsets
    themselves (no copy), None when every bag holds n / B ids (no bound is then read), and the
    same errors as the private copy."""
    from kernels._validate import check_bags

    ids = np.arange(12)
    uneven = np.array([0, 3, 3, 7])
    assert check_bags(ids, uneven, False, private=False)[1] is uneven
    assert check_bags(ids, uneven, False, private=False)[2] == 4
    last = np.array([0, 3, 3, 7, 12])
    got = check_bags(ids, last, True, private=False)
    assert got[1] is last and got[2] == 4
    for offsets, include_last, B in (([0, 3, 6, 9], False, 4), ([0, 4, 8, 12], True, 3),
                                     ([0], False, 1), ([0, 12], True, 1),
                                     (np.arange(12), False, 12)):
        got = check_bags(ids, np.asarray(offsets, np.int64), include_last, private=False)
        assert got[1] is None and got[2] == B, offsets
        assert_bitwise_equal(
            kernels.lookup_bag(np.eye(12, dtype=np.float32), ids, offsets,
                               include_last_offset=include_last, kernel="cython_gather"),
            kernels.lookup_bag(np.eye(12, dtype=np.float32), ids, offsets,
                               include_last_offset=include_last, kernel="numpy_take"))
    assert check_bags(ids, np.array([0, 3, 6, 10]), False, private=False)[1] is not None
    assert check_bags(np.arange(0), np.zeros(0, np.int64), False, private=False)[2] == 0
    for bad, match in (([0, 5, 3], "non-decreasing"), ([0, 13], "past len"),
                       ([1, 3], r"offsets\[0\] must be 0")):
        for private in (True, False):
            with pytest.raises(ValueError, match=match):
                check_bags(ids, np.array(bad), False, private=private)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("D", [8, 16, 24, 32, 64, 128, 256])
def test_bags_of_one_id_are_the_row_plus_zero_in_every_form(dtype, D):
    """Bags of one id each (cython_gather's gather-like loop for them; no offsets are read when
    they are all one long): sum, mean and sqrtn give row + 0.0 (-0.0 made +0.0, NaN kept), max
    the row itself, a padding id zeros; 2-D (B, 1) ids, 1-D offsets 0..B-1, include_last_offset,
    1 and 2 threads, every gather kernel the same bits. B: bags enough that two threads run
    (4x kernels._threads.PARALLEL_MIN_BYTES of rows read and written), 1,000 at least."""
    from kernels._threads import PARALLEL_MIN_BYTES, threads_for

    rng = np.random.default_rng(D)
    V = 50
    B = max(1_000, 4 * PARALLEL_MIN_BYTES // (2 * D * np.dtype(dtype).itemsize))
    W = rng.standard_normal((V, D)).astype(dtype)
    W[3] = -0.0
    W[4, ::2] = np.nan
    ids = rng.integers(0, V, B)
    ids[:5] = [3, 4, 7, 7, 3]
    plus_zero = W[ids] + dtype(0)
    names = [n for n, k in kernels.KERNELS.items() if k.family == "gather"]
    for threads in (1, 2):
        with kernels.num_threads(threads):
            assert threads_for(2 * B * D * W.itemsize) == threads
            for mode in ("sum", "mean", "sqrtn", "max"):
                want = W[ids] if mode == "max" else plus_zero
                padded = want.copy()
                padded[ids == 7] = 0
                for name in names:
                    forms = (kernels.lookup_bag(W, ids.reshape(B, 1), mode=mode, kernel=name),
                             kernels.lookup_bag(W, ids, np.arange(B), mode=mode, kernel=name),
                             kernels.lookup_bag(W, ids, np.arange(B + 1), mode=mode,
                                                include_last_offset=True, kernel=name))
                    for got in forms:
                        assert_bitwise_equal(got, want, f"{name} {mode} D={D}")
                    assert_bitwise_equal(
                        kernels.lookup_bag(W, ids, np.arange(B), mode=mode, padding_idx=7,
                                           kernel=name), padded, f"{name} {mode} padded")


def test_bag_prefetch_reaches_a_bounded_span_of_rows_and_none_in_l2(monkeypatch):
    """Beyond L2 a float bag prefetches BAG_PREFETCH_DISTANCE rows ahead, fewer for long rows
    (never more than BAG_PREFETCH_BYTES of rows, never fewer than one); a table in L2 none.
    Beyond the last-level cache bags of several ids prefetch FAR_PREFETCH_BYTES of rows ahead
    (at most FAR_PREFETCH_MAX ids; low-precision rows at least DECODE_PREFETCH_DISTANCE), bags
    of one id as before. Low-precision bags of several ids prefetch in L2 too, from
    DECODE_BAG_PREFETCH_MIN_BYTES up; their lookups do not."""
    from kernels import _cpu

    monkeypatch.setattr(_cpu, "L2_BYTES", 2**20)
    monkeypatch.setattr(_cpu, "L3_BYTES", 32 * 2**20)

    def table(V, D, itemsize=4):  # shape and strides only: nothing of V * D is allocated
        base = np.zeros(D, np.dtype(f"f{itemsize}"))
        return np.lib.stride_tricks.as_strided(base, (V, D), (D * itemsize, itemsize))

    for D in (1, 16, 64, 128, 256, 1024, 10**5):
        row = 4 * D
        within = table(16 * 2**20 // row + 1, D)  # 16 MB: beyond L2, within L3
        beyond = table(64 * 2**20 // row + 1, D)  # 64 MB
        for W in (within, beyond):
            near = _cpu.bag_prefetch_distance(W, single=True)
            assert 1 <= near <= _cpu.BAG_PREFETCH_DISTANCE
            assert near == 1 or near * row <= max(_cpu.BAG_PREFETCH_BYTES, row)
        assert _cpu.bag_prefetch_distance(within) == _cpu.bag_prefetch_distance(within, True)
        far = _cpu.bag_prefetch_distance(beyond)
        assert 1 <= far <= _cpu.FAR_PREFETCH_MAX
        assert far == 1 or far * row <= max(_cpu.FAR_PREFETCH_BYTES, row)
        assert far >= _cpu.bag_prefetch_distance(beyond, single=True)
        assert _cpu.bag_prefetch_distance(table(max(1, 2**20 // (8 * D)), D)) == 0
    assert _cpu.bag_prefetch_distance(table(10**5, 64)) == _cpu.BAG_PREFETCH_DISTANCE
    assert _cpu.bag_prefetch_distance(table(10**5, 256)) < _cpu.BAG_PREFETCH_DISTANCE
    assert _cpu.bag_prefetch_distance(table(10**6, 16)) == _cpu.FAR_PREFETCH_MAX  # 64 B rows
    assert _cpu.bag_prefetch_distance(table(10**6, 64)) == _cpu.FAR_PREFETCH_BYTES // 256
    S = np.lib.stride_tricks.as_strided(np.zeros(72, np.uint8), (10**6, 72), (72, 1))
    assert _cpu.decode_prefetch_distance(S) == _cpu.DECODE_PREFETCH_DISTANCE
    assert _cpu.decode_prefetch_distance(S, bag=True) == _cpu.FAR_PREFETCH_BYTES // 72
    assert _cpu.decode_prefetch_distance(S[:10], bag=True) == 0
    monkeypatch.setattr(_cpu, "DECODE_BAG_PREFETCH_MIN_BYTES", 2**18)
    assert _cpu.decode_prefetch_distance(S[:2**18 // 72], bag=True) == 0  # 256 KB
    assert _cpu.decode_prefetch_distance(S[:2**18 // 72 + 1], bag=True) == \
        _cpu.DECODE_PREFETCH_DISTANCE  # a row more, and in L2 (1 MB)
    assert _cpu.decode_prefetch_distance(S[:2**18 // 72 + 1]) == 0  # lookups: none in L2
    assert _cpu.decode_prefetch_distance(S[:200_000], bag=True) == \
        _cpu.DECODE_PREFETCH_DISTANCE  # 14 MB: within L3
    wide = np.lib.stride_tricks.as_strided(np.zeros(4096, np.uint8), (10**5, 4096), (4096, 1))
    assert _cpu.decode_prefetch_distance(wide, bag=True) == _cpu.DECODE_PREFETCH_DISTANCE


def test_float_bags_of_one_prefetch_every_line_only_beyond_the_last_level_cache(monkeypatch):
    """kernels._cpu.bag_prefetch: cython_gather's float bags take the distance negated (bags
    of one id then prefetch every line of a row, not only its first) for tables larger than
    the last-level cache, as is for tables within it, none in L2; either gives the same bits."""
    from kernels import _cpu, _cython_gather

    W = np.random.default_rng(3).standard_normal((1000, 64)).astype(np.float32)
    monkeypatch.setattr(_cpu, "L2_BYTES", 1000)
    monkeypatch.setattr(_cpu, "L3_BYTES", 10**6)
    assert _cpu.bag_prefetch(W) == _cpu.bag_prefetch_distance(W) > 0
    monkeypatch.setattr(_cpu, "L3_BYTES", 10**5)
    assert _cpu.bag_prefetch(W) == -_cpu.bag_prefetch_distance(W) < 0
    monkeypatch.setattr(_cpu, "L2_BYTES", 10**6)
    assert _cpu.bag_prefetch(W) == 0
    monkeypatch.setattr(_cpu, "L2_BYTES", 1000)
    monkeypatch.setattr(_cpu, "L3_BYTES", 10**6)  # within the last-level cache: the lookup's
    assert _cpu.bag_prefetch(W, single=True) == _cpu.copy_prefetch_distance(W) \
        == _cpu.bag_prefetch_rows(256) > 0
    monkeypatch.setattr(_cpu, "L3_BYTES", 10**5)  # beyond it: the same, every line
    assert _cpu.bag_prefetch(W, single=True) == -_cpu.copy_prefetch_distance(W) \
        == -_cpu.bag_prefetch_rows(256) < 0
    assert _cpu.bag_prefetch(W) == -_cpu.far_bag_rows(256, 1) < 0  # several ids a bag: far
    short = W[:, :2].copy()  # its distance is below the lookup's: kept
    monkeypatch.setattr(_cpu, "L2_BYTES", 100)
    monkeypatch.setattr(_cpu, "BAG_PREFETCH_BYTES", 8 * 5)
    assert _cpu.bag_prefetch(short, single=True) == _cpu.bag_prefetch(short) == 5
    ids = np.random.default_rng(4).integers(0, 1000, 3000)
    ids[::9] = 5
    want = W[ids] + np.float32(0)
    want[ids == 5] = 0
    for prefetch in (0, 7, -7):
        out = np.full((3000, 64), np.nan, np.float32)
        _cython_gather.bag(W, ids.reshape(-1, 1), None, 0, None, 5, out, 2, prefetch)
        assert_bitwise_equal(out, want, f"prefetch={prefetch}")

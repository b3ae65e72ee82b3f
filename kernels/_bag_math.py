"""NumPy arithmetic of bags that every kernel shares: the float64 reference, torch's max rule
and its arg-max, the per-id coefficients of the backward, and the gradient of per_sample_weights.

Bags arrive checked (kernels._validate.check_bags): `offsets` holds B + 1 bounds, bag b is
ids[offsets[b]:offsets[b + 1]], `pad` is the padding row or -1.
"""
from __future__ import annotations

import numpy as np

_BLOCK = 65_536
"""Ids per block where a computation would otherwise hold an (n, D) float64 array."""


def fma32(a, x, c):
    """float32 fma(a, x, c) element-wise (a * x + c rounded once, as C's fmaf), exactly, for
    float32 arrays a and c and a float32 x of integers below 2**29 (the codes of a quantized
    row): a * x is exact in float64, the float64 sum is rounded to odd (TwoSum tells whether it
    was inexact; a float64 with 29 more bits than float32 rounded to odd, then to float32,
    rounds as the exact sum would), then rounded to float32. inf and NaN follow IEEE."""
    p = np.multiply(a, x, dtype=np.float64)
    c = np.asarray(c, np.float64)
    s = p + c
    t = s - p
    err = (p - (s - t)) + (c - t)
    fix = (err != 0) & ((s.view(np.int64) & 1) == 0) & np.isfinite(err)
    if fix.any():
        s[fix] = np.nextafter(s[fix], np.copysign(np.inf, err[fix]))
    return s.astype(np.float32)


def quantized_bag_sum(q, scale, bias, weights=None):
    """The bags of a rowwise-quantized table as torch's quantized bag ops sum them (FBGEMM's
    kernels, measured bit for bit): for each row in bag order, acc = fma(scale, q, acc + bias),
    from acc = +0; with weights, scale and bias are first multiplied by the row's weight
    (rounded). q (c, L, D) float32 codes, scale and bias (c, L) float32: returns (c, D)."""
    if weights is not None:
        scale = scale * weights
        bias = bias * weights
    acc = np.zeros((q.shape[0], q.shape[2]), np.float32)
    for l in range(q.shape[1]):
        acc = fma32(scale[:, l, None], q[:, l], acc + bias[:, l, None])
    return acc


def bag_of_ids(offsets):
    """The bag each id belongs to: int64 array of length offsets[-1]."""
    return np.repeat(np.arange(offsets.shape[0] - 1, dtype=np.int64), np.diff(offsets))


def kept(ids, pad):
    """Boolean mask of the ids that take part (not padding)."""
    return np.ones(ids.shape[0], bool) if pad < 0 else ids != pad


def without_padding(ids, offsets, pad, per_id=None):
    """(ids, offsets, per_id) with the padding ids left out: the bounds renumbered so each bag
    keeps its non-padding ids, per_id (an array with one value per id, or None) filtered alike.
    The arrays themselves when there is nothing to leave out."""
    if pad < 0:
        return ids, offsets, per_id
    keep = ids != pad
    if keep.all():
        return ids, offsets, per_id
    offsets = np.concatenate(([0], np.cumsum(keep)))[offsets]
    return ids[keep], offsets, None if per_id is None else per_id[keep]


def kept_entries(ids, offsets, mode, psw, pad):
    """(ids, offsets, coef) of the ids a bag's backward adds: the non-padding ids, their bags'
    bounds renumbered (without_padding), and each one's float64 factor (coefficients), or None
    where every factor is 1 (mode sum without per_sample_weights)."""
    coef = None if mode == "sum" and psw is None else coefficients(ids, offsets, mode, psw, pad)
    return without_padding(ids, offsets, pad, coef)


def segment_sum(x, offsets):
    """Per bag, the sum of x over the bag's range (np.add.reduceat over the non-empty bags;
    0 for empty ones, whose reduceat value would be an element of another bag)."""
    B = offsets.shape[0] - 1
    result = np.zeros((B,) + x.shape[1:], x.dtype)
    nonempty = offsets[1:] > offsets[:-1]
    if nonempty.any():
        result[nonempty] = np.add.reduceat(x, offsets[:-1][nonempty], axis=0)
    return result


def divisors(ids, offsets, mode, psw, pad):
    """(count, d): per bag the number of non-padding ids and the float64 divisor of the mode
    (1 for sum and max; the count or the sum of weights for mean; sqrt of the count or of the sum
    of squared weights for sqrtn)."""
    keep = kept(ids, pad)
    csum = np.concatenate(([0], np.cumsum(keep, dtype=np.int64)))
    count = csum[offsets[1:]] - csum[offsets[:-1]]
    if mode in ("sum", "max"):
        return count, np.ones(count.shape[0])
    if psw is None:
        w = count.astype(np.float64)
    else:
        w64 = np.where(keep, psw.astype(np.float64), 0.0)
        if mode == "sqrtn":
            w64 = w64 * w64
        w = segment_sum(w64, offsets)
        w[count == 0] = 0.0
    return count, (np.sqrt(w) if mode == "sqrtn" else w)


def max_positions(W, ids, offsets, pad):
    """(B, D) int64: for each bag and column, the position in ids of the row that torch's max
    returns: the first non-padding row, replaced by each later one strictly greater. So the
    first occurrence of the maximum, a NaN only when it is in the first row (a later NaN never
    compares greater), ties to the first. -1 for a bag with no non-padding id."""
    B, D = offsets.shape[0] - 1, W.shape[1]
    result = np.full((B, D), -1, np.int64)
    keep = kept(ids, pad)
    where = np.flatnonzero(keep)
    csum = np.concatenate(([0], np.cumsum(keep, dtype=np.int64)))
    starts_all = csum[offsets[:-1]]
    nonempty = csum[offsets[1:]] > starts_all
    if not nonempty.any():
        return result
    starts = starts_all[nonempty]
    rows = W[ids[where]]
    best = np.fmax.reduceat(rows, starts, axis=0)
    seg = np.repeat(np.arange(starts.shape[0]), np.diff(np.append(starts, rows.shape[0])))
    m = rows.shape[0]
    pos = np.where(rows == best[seg], np.arange(m)[:, None], m)
    first = np.minimum.reduceat(pos, starts, axis=0)
    nan_first = np.isnan(rows[starts])
    first = np.where(nan_first | (first == m), starts[:, None], first)
    result[nonempty] = where[first]
    return result


def max_values(W, ids, pos):
    """(B, D): W[ids[pos[b, k]], k], zeros where pos is -1 (a bag with no row)."""
    empty = pos < 0
    vals = W[ids[np.where(empty, 0, pos)], np.arange(W.shape[1])] if ids.shape[0] else 0
    return np.where(empty, 0, vals).astype(W.dtype, copy=False)


def bag_max(W, ids, offsets, pad, out):
    """out[b] = torch's max of bag b (see max_positions); zeros for bags with no row."""
    out[...] = max_values(W, ids, max_positions(W, ids, offsets, pad))


def max_routes(W, ids, offsets, pad):
    """(rows, cols, bags): where the max backward sends grad_out[bags[i], cols[i]]: to
    dW[rows[i], cols[i]], rows being the arg-max rows (see max_positions), in bag order."""
    pos = max_positions(W, ids, offsets, pad)
    b, k = np.nonzero(pos >= 0)
    return ids[pos[b, k]], k, b


def reference(W, ids, offsets, mode, psw, pad, parts=None, eps=None):
    """(ref, tol, zero): the float64 result of each bag, the bound a kernel's result must lie
    within (|got - ref| <= tol), and which bags must be exactly +0.0 (no id, or divisor 0).
    For max, ref is the exact torch result and tol 0.
    Sums: (k + 3) * eps * sum|w e| / d for k non-padding ids and divisor d, plus the divisor's own
    float64 rounding; bags with no id, or divisor 0, are exactly zero. eps is W's unless given.
    parts (V, D), for the exact values s * q + b of a quantized table summed as torch sums them
    (quantized_bag_sum: two roundings a row, of the running sum + b and of the fma): the
    magnitude |s q| + |b| of each value, and the bound (2k + 3) * eps * sum|w| parts / d."""
    W = np.asarray(W)
    B, D = offsets.shape[0] - 1, W.shape[1]
    if mode == "max":
        pos = max_positions(W, ids, offsets, pad)
        zero = (pos < 0)[:, 0] if D else np.zeros(B, bool)
        return max_values(W, ids, pos).astype(np.float64), np.zeros((B, D)), zero
    count, d = divisors(ids, offsets, mode, psw, pad)
    keep = kept(ids, pad)
    bag = bag_of_ids(offsets)
    S = np.zeros((B, D))
    mag = np.zeros((B, D))
    wabs = np.zeros(B)
    for i0 in range(0, ids.shape[0], _BLOCK):
        sl = slice(i0, i0 + _BLOCK)
        k = keep[sl]
        e = W[ids[sl][k]].astype(np.float64)
        m = np.abs(e) if parts is None else parts[ids[sl][k]].astype(np.float64)
        if psw is not None:
            w = psw[sl][k].astype(np.float64)
            e *= w[:, None]
            m *= np.abs(w)[:, None]
            np.add.at(wabs, bag[sl][k], np.abs(w) ** (2 if mode == "sqrtn" else 1))
        np.add.at(S, bag[sl][k], e)
        np.add.at(mag, bag[sl][k], m)
    eps = float(np.finfo(W.dtype).eps) if eps is None else eps
    terms = count if parts is None else 2 * count
    ok = (count > 0) & (d != 0)
    dd = np.where(ok, d, 1.0)
    ref = np.where(ok[:, None], S / dd[:, None], 0.0)
    tol = (terms[:, None] + 3) * eps * mag / np.abs(dd)[:, None]
    if psw is not None and mode == "mean":  # a sum of weights that cancels is ill-conditioned
        cond = (count + 1) * np.finfo(np.float64).eps * wabs / np.abs(dd)
        tol += np.abs(ref) * cond[:, None]
    return ref, np.where(ok[:, None], tol, 0.0), ~ok


def coefficients(ids, offsets, mode, psw, pad, keep=None, bag=None):
    """Per id, the float64 factor its bag's output gradient is scaled by in dW (d out / d row):
    w (or 1) for sum, w / d for mean and sqrtn, 0 for padding and where the divisor is 0.
    keep and bag (kept(ids, pad), bag_of_ids(offsets)) are computed unless given."""
    keep = kept(ids, pad) if keep is None else keep
    c = np.ones(ids.shape[0]) if psw is None else psw.astype(np.float64)
    if mode != "sum":
        _, d = divisors(ids, offsets, mode, psw, pad)
        db = d[bag_of_ids(offsets) if bag is None else bag]
        c = np.divide(c, db, out=np.zeros_like(c), where=db != 0)
    c[~keep] = 0.0
    return c


def expanded_rows(G, ids, offsets, mode, psw, pad):
    """(E, ids_kept): the gradient rows a scatter-add of the bag backward adds, E[k] = c * G[bag]
    rounded to G's dtype, for the non-padding ids in order (c from `coefficients`)."""
    keep = kept(ids, pad)
    bag = bag_of_ids(offsets)
    E = G[bag[keep]]
    if mode != "sum" or psw is not None:
        c = coefficients(ids, offsets, mode, psw, pad, keep, bag)[keep]
        E = (E * c[:, None]).astype(G.dtype, copy=False)
    return E, np.ascontiguousarray(ids[keep])


def max_grad(G, W, ids, offsets, pad, dW):
    """dW[ids[p], k] += G[b, k] for the arg-max position p of each bag b and column k (torch's
    routing: the first on ties), added in bag order; dW is zeroed first by the caller."""
    rows, k, b = max_routes(W, ids, offsets, pad)
    np.add.at(dW, (rows, k), G[b, k])


def psw_grad(G, W, ids, offsets, mode, psw, pad):
    """The gradient of per_sample_weights (float64 arithmetic, rounded to psw's dtype): for sum
    <G[b], W[id]>; for mean (<G[b], W[id]> - <G[b], out[b]>) / d; for sqrtn
    <G[b], W[id]> / s - <G[b], out[b]> * w / s**2; 0 for padding ids and divisor 0."""
    n = ids.shape[0]
    bag = bag_of_ids(offsets)
    keep = kept(ids, pad)
    dots = np.zeros(n)
    for i0 in range(0, n, _BLOCK):
        sl = slice(i0, i0 + _BLOCK)
        dots[sl] = np.einsum("ij,ij->i", G[bag[sl]].astype(np.float64),
                             W[ids[sl]].astype(np.float64))
    if mode == "sum":
        result = dots
    else:
        count, d = divisors(ids, offsets, mode, psw, pad)
        ref = reference(W, ids, offsets, mode, psw, pad)[0]
        gout = np.einsum("ij,ij->i", G.astype(np.float64), ref)[bag]
        db = d[bag]
        ok = db != 0
        safe = np.where(ok, db, 1.0)
        w = psw.astype(np.float64)
        if mode == "mean":
            result = (dots - gout) / safe
        else:
            result = dots / safe - gout * w / (safe * safe)
        result[~ok] = 0.0
    result[~keep] = 0.0
    return result.astype(psw.dtype)

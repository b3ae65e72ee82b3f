"""The row updates of kernels.optim, compiled: each touched row of the table (and of its state) is
read, updated and written by one thread, in the table's dtype, in the order the formula in
kernels.optim's docstring gives. Rows are independent, so the result is the same bits for any
thread count. One serial loop over a range of rows, and one prange over chunks of rows that
calls it; every optimizer is a branch of the same row update (one compilation per dtype).

The fused step (`fused_step`) does the backward and the update in one pass with no (rows, D)
gradient array: each thread reads every id once, keeps those whose row hashes to it (_owner),
groups them by row in an open-addressing hash table (_group: a chain per row, in id order, no
sort, nothing of vocab_size), then sums each of its rows' gradient rows in id order into a
float64 row in registers (rounded once to the table's dtype, exactly as numba_gather's and
cython_gather's scatter-add round a row: the same bits as coalescing with them and then
updating), and updates the table row and its state row at once. It replaced a stable radix
sort of the ids (still `sort_ids`, for the sparse gradient's sorted rows), single-threaded
and a third of the step: measured in one process, four tables' SGD steps in turn (16,384 ids
in 2,048 bags each, D = 64, 2 threads), the grouped step took 0.75-0.90x the sorted one's time
at V = 1e4, 1e5 and 1e6.

error_model="numpy": division is IEEE division (a zero divisor gives inf or NaN, as in NumPy and
torch) rather than Python's ZeroDivisionError check, whose branch kept LLVM from vectorizing the
loops: measured, 1 thread, D = 64, 16,384 ids' rows, float32: Adagrad 1.68 -> 0.26 ms with the
table in cache (V = 2e4) and 5.5 -> 1.5 ms at V = 1e6; SparseAdam 1.89 -> 0.51 and 6.0 -> 2.3 ms.
Division and sqrt are correctly rounded either way: the same bits.

The caller (kernels.optim) has checked everything: rows sorted, unique and in range, values
(len(rows), D) of the table's dtype, state arrays of the table's shape and dtype; for the fused
step, ids checked against vocab_size (_group checks each id it reads again).
"""
import threading

import numpy as np
from numba import njit, prange

from kernels._numba_intrinsics import load_id, prefetch_row, prefetch_row_w, prefetch_span
from kernels._threads import ids_changed_error, threads_for
from kernels.numba_gather import _numba_threads, _run_parallel

SGD, ADAGRAD, ROWWISE_ADAGRAD, SPARSE_ADAM = 0, 1, 2, 3
ROW_PREFETCH = 16
"""How many rows ahead (in a thread's order of first appearance) the fused step prefetches the
table's (and the state's) rows. Measured on the grouped step, four tables' SGD steps in turn
(16,384 ids in 2,048 bags each, D = 64, float32, 2 threads, best of 7 medians, two runs
each): 4 / 8 / 16 / 24 / 32 ahead took 1444-1472 / 1502-1587 / 1075-1215 / 1196-1212 /
1218-1287 us at V = 1e5 and 1554-1619 / 1750-1770 / 1334-1488 / 1418-1450 / 1486-1550 us at
V = 1e6. The rows are prefetched to be written (prefetchw: each line arrives writable): four
tables' forward bags and steps in turn took 0.83-0.85x the time of plain prefetches on NumPy's
tables (whose rows start 16 bytes past a line, so neighbouring rows share one), 0.99-1.01x on
64-byte aligned ones (torch's), three runs each. Aligned tables took 0.63x the time of
NumPy's."""
GRAD_PREFETCH = 8
"""How many rows ahead the fused step prefetches the first gradient row of each."""


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def _mean_square(W, r, g, wd):
    """The float64 mean over the row of g'^2, g' = g + wd * W[r] (FBGEMM's weight_decay_mode 1,
    L2; with wd = 0, W is not read). Each square of a float32 is exact in float64; the sum is
    reassociated (summed in vector lanes, then the lanes): a serial sum was a 4-cycle add per
    element, 1.6x the whole SGD step at D = 64."""
    D = W.shape[1]
    acc = 0.0
    if wd != 0:
        for k in range(D):
            gk = g[k] + wd * W[r, k]
            acc += np.float64(gk) * np.float64(gk)
    else:
        for k in range(D):
            acc += np.float64(g[k]) * np.float64(g[k])
    return acc / D if D else 0.0


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _update_row(which, W, A, B, M, r, g, h0, h1, h2, h3):
    """Update row r of W (and of the state) with its coalesced gradient g (D values of W's
    dtype). Per optimizer (h0..h3 are scalars of W's dtype):
    SGD: h0 = lr. ADAGRAD: A = sum, h0 = lr, h1 = eps. ROWWISE_ADAGRAD: M = momentum (one per
    row), h0 = lr, h1 = eps, h2 = weight_decay, h3 = 1. SPARSE_ADAM: A = exp_avg, B = exp_avg_sq,
    h0 = -step_size, h1 = eps, h2 = 1 - beta1, h3 = 1 - beta2."""
    D = W.shape[1]
    if which == SGD:
        for k in range(D):
            W[r, k] = W[r, k] - h0 * g[k]
    elif which == ADAGRAD:
        for k in range(D):
            gk = g[k]
            s = A[r, k] + gk * gk
            A[r, k] = s
            W[r, k] = W[r, k] - h0 * (gk / (np.sqrt(s) + h1))
    elif which == ROWWISE_ADAGRAD:
        old = M[r]
        M[r] = _mean_square(W, r, g, h2)  # rounded to the state's dtype
        m = old + M[r]
        M[r] = m
        mult = h0 / (np.sqrt(m) + h1)
        if h2 != 0:
            corr = h3 - mult * h2
            for k in range(D):
                W[r, k] = corr * W[r, k] - g[k] * mult
        else:
            for k in range(D):
                W[r, k] = W[r, k] - g[k] * mult
    else:
        for k in range(D):
            gk = g[k]
            om = A[r, k]
            m = om + (gk - om) * h2
            A[r, k] = m
            os_ = B[r, k]
            s = os_ + (gk * gk - os_) * h3
            B[r, k] = s
            W[r, k] = W[r, k] + h0 * (m / (np.sqrt(s) + h1))


@njit(cache=True, nogil=True, error_model="numpy")
def _update_rows(which, W, A, B, M, rows, values, h0, h1, h2, h3, lo, hi):
    """Update rows[lo:hi] with their coalesced gradients values[lo:hi] (see _update_row)."""
    for i in range(lo, hi):
        _update_row(which, W, A, B, M, rows[i], values[i], h0, h1, h2, h3)


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _update_parallel(which, W, A, B, M, rows, values, h0, h1, h2, h3, nthreads):
    n = rows.shape[0]
    for c in prange(nthreads):
        _update_rows(which, W, A, B, M, rows, values, h0, h1, h2, h3,
                     n * c // nthreads, n * (c + 1) // nthreads)


def _state(W, A, B, M):
    empty2 = W[:0]
    return (empty2 if A is None else A, empty2 if B is None else B,
            np.empty(0, W.dtype) if M is None else M)


def _hyper(W, hyper):
    t = W.dtype.type
    return tuple(t(x) for x in hyper) + (t(0),) * (4 - len(hyper))


def update(which, W, rows, values, hyper, A=None, B=None, M=None):
    """Apply optimizer `which` to the touched rows (see _update_row for hyper and the state)."""
    if rows.shape[0] == 0:
        return
    h = _hyper(W, hyper)
    A, B, M = _state(W, A, B, M)
    touched = values.nbytes * (1 + (A.shape[0] > 0) + (B.shape[0] > 0) + 1)
    nthreads = min(_numba_threads(threads_for(touched)), rows.shape[0])
    if nthreads == 1:
        _update_rows(which, W, A, B, M, rows, values, *h, 0, rows.shape[0])
    else:
        _run_parallel(_update_parallel, which, W, A, B, M, rows, values, *h, nthreads)


# -- the fused step ------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _radix_sort(ids, vocab_size, width, passes):
    """(keys, positions): ids sorted, stably, and where each came from; positions[0] = -1 when
    an id outside [0, vocab_size) was read (another thread changed ids after the check)."""
    n = ids.shape[0]
    keys = np.empty(n, np.int64)
    pos = np.empty(n, np.int64)
    for i in range(n):
        k = np.int64(ids[i])
        if k < 0 or k >= vocab_size:
            pos[0] = -1
            return keys, pos
        keys[i] = k
        pos[i] = i
    if passes == 0:
        return keys, pos
    keys2 = np.empty(n, np.int64)
    pos2 = np.empty(n, np.int64)
    nb = 1 << width
    mask = nb - 1
    count = np.empty(nb, np.int64)
    for p in range(passes):
        shift = p * width
        count[:] = 0
        for i in range(n):
            count[(keys[i] >> shift) & mask] += 1
        if count[(keys[0] >> shift) & mask] == n:
            continue  # every key has this digit: the order stands
        total = 0
        for d in range(nb):
            c = count[d]
            count[d] = total
            total += c
        for i in range(n):
            d = (keys[i] >> shift) & mask
            j = count[d]
            count[d] = j + 1
            keys2[j] = keys[i]
            pos2[j] = pos[i]
        keys, keys2 = keys2, keys
        pos, pos2 = pos2, pos
    return keys, pos


@njit(cache=True, nogil=True)
def _runs(keys):
    """(rows, starts): the distinct keys of a sorted array and where each run starts; starts has
    one more entry, len(keys)."""
    n = keys.shape[0]
    m = 0
    for i in range(n):
        if i == 0 or keys[i] != keys[i - 1]:
            m += 1
    rows = np.empty(m, np.int64)
    starts = np.empty(m + 1, np.int64)
    m = 0
    for i in range(n):
        if i == 0 or keys[i] != keys[i - 1]:
            rows[m] = keys[i]
            starts[m] = i
            m += 1
    starts[m] = n
    return rows, starts


def _digits(vocab_size):
    bits = max(0, int(vocab_size - 1).bit_length())
    passes = -(-bits // 11)
    return (-(-bits // passes), passes) if passes else (1, 0)


def sort_ids(ids, vocab_size):
    """(rows, starts, positions) of checked 1-D integer ids: the sorted unique ids (int64), where
    each one's run starts in the stable sort (plus len(ids) at the end), and the position in ids
    of each sorted entry. Never allocates anything of vocab_size. RuntimeError if an id outside
    [0, vocab_size) is read (ids changed by another thread after their check)."""
    keys, pos = _radix_sort(ids, vocab_size, *_digits(vocab_size))
    if pos.shape[0] and pos[0] < 0:
        raise ids_changed_error(vocab_size)
    rows, starts = _runs(keys)
    return rows, starts, pos


@njit(cache=True, nogil=True, error_model="numpy")
def _run_sums(G, rs, src, coef, starts, pos, values, lo, hi):
    """values[u] for runs lo..hi-1 of the sorted ids: the gradient rows of run u's entries p
    (pos[starts[u]:starts[u + 1]], in id order) summed in float64 and rounded once to values'
    dtype. G is flat with row stride rs (see _fused_rows); entry p adds G's row p (src empty)
    or row src[p], times coef[p] rounded to values' dtype when coef is not empty."""
    D = values.shape[1]
    acc = np.empty(D, np.float64)
    scaled = coef.shape[0] > 0
    for u in range(lo, hi):
        for k in range(D):
            acc[k] = 0.0
        for j in range(starts[u], starts[u + 1]):
            p = pos[j]
            r = np.uint64((p if src.shape[0] == 0 else src[p]) * rs)
            if scaled:
                c = coef[p]
                for k in range(D):
                    acc[k] += values.dtype.type(np.float64(G[r + np.uint64(k)]) * c)
            else:
                for k in range(D):
                    acc[k] += G[r + np.uint64(k)]
        for k in range(D):
            values[u, k] = acc[k]


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _run_sums_parallel(G, rs, src, coef, starts, pos, values, nthreads):
    m = values.shape[0]
    for t in prange(nthreads):
        _run_sums(G, rs, src, coef, starts, pos, values, m * t // nthreads,
                  m * (t + 1) // nthreads)


def coalesced(G, ids, vocab_size, src=None, coef=None):
    """(rows, values) of the coalesced gradient of checked ids (n,): rows the sorted unique ids
    (int64, sort_ids), values[u] the sum in id order of row u's gradient rows, G[p] (lookups:
    G (n, D)) or G[src[p]] times coef[p] rounded to G's dtype (bags: G (B, D), src the bag of
    each id, coef float64 or None for 1), in float64 rounded once: the bits of the compiled
    scatter-add of those rows, without an (n, D) array of them. G is read in place when its
    rows are contiguous."""
    rows, starts, pos = sort_ids(ids, vocab_size)
    m, D = rows.shape[0], G.shape[1]
    values = np.empty((m, D), G.dtype)
    if m == 0:
        return rows, values
    src = _NO_INDEX if src is None else src
    coef = _NO_COEF if coef is None else coef
    flat, rs = _rows_flat(G)
    T = min(_numba_threads(threads_for(ids.shape[0] * D * G.itemsize * 2)), m)
    if T == 1:
        _run_sums(flat, rs, src, coef, starts, pos, values, 0, m)
    else:
        _run_parallel(_run_sums_parallel, flat, rs, src, coef, starts, pos, values, T)
    return rows, values


_OWNER_HASH = np.uint64(0x9E3779B97F4A7C15)
_SLOT_HASH = np.uint64(0xC2B2AE3D27D4EB4F)
OWNER_BLOCK = 2


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _owner(k, T):
    """The thread (of T) that updates row k: the top bits of a multiplicative hash, so any
    pattern of ids (all even, a range) spreads over the threads."""
    h = np.uint64(k >> OWNER_BLOCK) * _OWNER_HASH
    return np.int64(((h >> np.uint64(32)) * np.uint64(T)) >> np.uint64(32))


@njit(cache=True, nogil=True, error_model="numpy")
def _group(ids, offsets, vocab_size, t, T, keys, pos, grow, nxt, tail, heads, slots):
    """Thread t's share of the ids, grouped by row without sorting. Entries are the positions p
    whose id k = ids[p] has _owner(k, T) == t, numbered in increasing p: keys[i] = k, pos[i] =
    p, grow[i] = the row of the output gradient it adds: p for a lookup (offsets empty), else
    its bag b, offsets[b] <= p < offsets[b + 1] (offsets: the B + 1 checked bounds; clamped
    to [0, B) should they change meanwhile). Each distinct row's entries form a chain in that
    order, from its head (heads[:h], in order of first appearance) along nxt (-1 ends it).
    Returns h, or -1 if an id outside [0, vocab_size) was read (ids changed by another thread
    after their check). Each id is read once; slots (a power of two >= 2 entries per owned id)
    is the open-addressing table."""
    n = ids.shape[0]
    nb = offsets.shape[0] - 1
    b = 0
    c = 0
    for p in range(n):
        k = np.int64(load_id(ids, p))
        if k < 0 or k >= vocab_size:
            return -1
        keys[c] = k
        pos[c] = p
        if nb < 0:
            grow[c] = p
        else:
            while b < nb - 1 and offsets[b + 1] <= p:
                b += 1
            grow[c] = b
        c += 1 if _owner(k, T) == t else 0
    bits = 1
    while (1 << bits) < 2 * c:
        bits += 1
    mask = (1 << bits) - 1
    shift = np.uint64(64 - bits)
    for s in range(mask + 1):
        slots[s] = -1
    h = 0
    for i in range(c):
        k = keys[i]
        s = np.int64((np.uint64(k) * _SLOT_HASH) >> shift)
        while True:
            j = slots[s]
            if j < 0:
                slots[s] = i
                heads[h] = i
                h += 1
                tail[i] = i
                nxt[i] = -1
                break
            if keys[j] == k:
                nxt[tail[j]] = i
                tail[j] = i
                nxt[i] = -1
                break
            s = (s + 1) & mask
    return h


@njit(cache=True, nogil=True, error_model="numpy")
def _fused_rows(which, W, A, B, M, G, rs, coef, keys, pos, grow, nxt, heads, nh, h0, h1, h2,
                h3):
    """The rows of heads[:nh] (see _group): each summed from its gradient rows, in id order, in
    float64 (a row with one contribution: 0 + g in the table's dtype, the same value), then
    updated. G is the output gradient flat, its row i at G[i * rs:i * rs + D]. Entry p
    contributes G's row p (lookups) or row (its bag) scaled by coef[p] (when coef is not empty)
    and
    rounded to the table's dtype (bags, coef non-empty: kernels._bag_math.expanded_rows's
    E[p], computed here rather than stored). SGD without coef (the common sparse step)
    subtracts lr * the sum straight from G and the float64 row, not through the row g and
    _update_row: the same bits, about half the time (measured, 16,384 bag ids of 2,048 bags,
    D = 64, float32, 2 threads: 298 -> 156 us at V = 1e6)."""
    D = W.shape[1]
    acc = np.empty(D, np.float64)
    g = np.empty(D, W.dtype)
    zero = W.dtype.type(0)
    scaled = coef.shape[0] > 0
    direct = which == SGD and not scaled
    for u in range(nh):
        if u + ROW_PREFETCH < nh:  # rows about to be written: prefetchw
            r = keys[heads[u + ROW_PREFETCH]]
            prefetch_row_w(W, r)
            if A.shape[0]:
                prefetch_row_w(A, r)
            if B.shape[0]:
                prefetch_row_w(B, r)
        if u + GRAD_PREFETCH < nh:
            prefetch_span(G, grow[heads[u + GRAD_PREFETCH]] * rs, D)
        e = heads[u]
        row = keys[e]
        if direct and nxt[e] < 0:
            r = np.uint64(grow[e] * rs)  # unsigned: an index that needs no wraparound check
            for k in range(D):
                W[row, k] = W[row, k] - h0 * (G[r + np.uint64(k)] + zero)  # 0 + g, as below
            continue
        for k in range(D):
            acc[k] = 0.0
        single = nxt[e] < 0
        while e >= 0:
            r = np.uint64(grow[e] * rs)
            if scaled:
                c = coef[pos[e]]
                for k in range(D):
                    acc[k] += W.dtype.type(np.float64(G[r + np.uint64(k)]) * c)
            elif single:
                for k in range(D):
                    g[k] = G[r + np.uint64(k)] + zero  # 0 + g: -0.0 made +0.0, as in the sum
            else:
                for k in range(D):
                    acc[k] += G[r + np.uint64(k)]
            e = nxt[e]
        if direct:
            for k in range(D):
                W[row, k] = W[row, k] - h0 * W.dtype.type(acc[k])
            continue
        if scaled or not single:
            for k in range(D):
                g[k] = acc[k]
        _update_row(which, W, A, B, M, row, g, h0, h1, h2, h3)


@njit(cache=True, nogil=True, error_model="numpy")
def _fused_share(which, W, A, B, M, G, rs, offsets, coef, ids, t, T, keys, pos, grow, nxt,
                 tail, heads, slots, h0, h1, h2, h3):
    """Thread t's rows: grouped (_group), then updated (_fused_rows). Returns how many rows,
    or -1 (see _group: nothing updated by this thread)."""
    nh = _group(ids, offsets, W.shape[0], t, T, keys, pos, grow, nxt, tail, heads, slots)
    if nh > 0:
        _fused_rows(which, W, A, B, M, G, rs, coef, keys, pos, grow, nxt, heads, nh, h0, h1,
                    h2, h3)
    return nh


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _fused_parallel(which, W, A, B, M, G, rs, offsets, coef, ids, keys, pos, grow, nxt, tail,
                    heads, slots, counts, h0, h1, h2, h3, nthreads):
    for t in prange(nthreads):
        counts[t] = _fused_share(which, W, A, B, M, G, rs, offsets, coef, ids, t, nthreads,
                                 keys[t], pos[t], grow[t], nxt[t], tail[t], heads[t], slots[t],
                                 h0, h1, h2, h3)


_workspaces = threading.local()
_KEEP_WORKSPACE = 64 << 20
"""The largest workspace (bytes) a Python thread keeps between calls."""


def _workspace(T, n, B):
    """(keys, pos, grow, nxt, tail, heads, slots) for _fused_parallel: (T, n) int64 keys, (T, n)
    index arrays and (T, a power of two >= 2n) slots, int32 unless 2n or B need int64. Carved from
    one buffer kept per Python thread (up to _KEEP_WORKSPACE bytes), with the views of the last
    shape: a fresh allocation of this size each call is served by mmap and page-faults in,
    which measured slower than the whole grouping pass."""
    index = np.dtype(np.int32 if max(2 * n, B) < 2**31 else np.int64)
    key = (T, n, index)
    cached = getattr(_workspaces, "views", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    cap = 1 << max(1, (2 * n - 1).bit_length())
    sizes = (T * n * 8,) + (T * n * index.itemsize,) * 5 + (T * cap * index.itemsize,)
    total = sum(sizes)
    buf = getattr(_workspaces, "buf", None)
    if buf is None or buf.nbytes < total:
        buf = np.empty(total, np.uint8)
    parts, at = [], 0
    for size, dtype, cols in zip(sizes, (np.int64,) + (index,) * 6, (n,) * 6 + (cap,)):
        parts.append(buf[at:at + size].view(dtype).reshape(T, cols))
        at += size
    if total <= _KEEP_WORKSPACE:
        _workspaces.buf, _workspaces.views = buf, (key, parts)
    return parts


def free_workspace():
    """Drop this Python thread's kept workspace (the next fused step allocates it again)."""
    _workspaces.__dict__.clear()


_NO_INDEX = np.empty(0, np.int64)
_NO_COEF = np.empty(0, np.float64)


def _rows_flat(G):
    """(flat, rs): a 1-D contiguous view of the memory from G[0, 0] to G[-1, -1] and the row
    stride in elements, G's row i being flat[i * rs:i * rs + D]. G (m, D) needs contiguous rows
    (a column slice of a wider array, such as one table's part of a concatenated output's
    gradient, is read in place); others are copied."""
    m, D = G.shape
    item = G.itemsize
    if G.flags.c_contiguous:
        return G.reshape(-1), D
    if m == 0 or D == 0 or G.strides[1] != item or G.strides[0] % item or \
            G.strides[0] < D * item:
        return np.ascontiguousarray(G).reshape(-1), D
    rs = G.strides[0] // item
    return np.lib.stride_tricks.as_strided(G, ((m - 1) * rs + D,), (item,)), rs


def fused_step(which, W, G, ids, hyper, A=None, B=None, M=None, offsets=None, coef=None):
    """The backward of checked ids (n,) and the update of the rows they touch, in one pass: the
    same bits as update() of the coalesced gradient numba_gather or cython_gather computes.
    Lookups (offsets None): G (n, D), entry p adds G[p]. Bags: offsets, the B + 1 checked
    bounds of the bags; G (B, D), entry p adds G[its bag] times coef[p] (float64, or None for
    1) rounded to the table's dtype. G is read in place when its rows are contiguous
    (_rows_flat). Each thread updates the rows whose id hashes to it
    (_owner, by blocks of 1 << OWNER_BLOCK rows: two threads rarely write one cache line),
    grouped by a hash table (_group) rather than sorted, so the result is the same for any
    thread count. Returns the number of rows updated."""
    n = ids.shape[0]
    if n == 0:
        return 0
    h = _hyper(W, hyper)
    A, B, M = _state(W, A, B, M)
    offsets = _NO_INDEX if offsets is None else offsets
    coef = _NO_COEF if coef is None else coef
    touched = n * W.shape[1] * W.itemsize * (3 + (A.shape[0] > 0) + (B.shape[0] > 0))
    T = _numba_threads(threads_for(touched))
    ws = _workspace(T, n, G.shape[0])
    G, rs = _rows_flat(G)
    counts = np.zeros(T, np.int64)
    if T == 1:
        counts[0] = _fused_share(which, W, A, B, M, G, rs, offsets, coef, ids, 0, 1,
                                 *(w[0] for w in ws), *h)
    else:
        _run_parallel(_fused_parallel, which, W, A, B, M, G, rs, offsets, coef, ids, *ws, counts,
                      *h, T)
    if (counts < 0).any():
        raise ids_changed_error(W.shape[0])
    return int(counts.sum())

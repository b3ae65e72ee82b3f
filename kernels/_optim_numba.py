"""The row updates of kernels.optim, compiled: each touched row of the table (and of its state) is
read, updated and written by one thread, in the table's dtype, in the order the formula in
kernels.optim's docstring gives. Rows are independent, so the result is the same bits for any
thread count. One serial loop over a range of rows, and one prange over chunks of rows that
calls it; every optimizer is a branch of the same row update (one compilation per dtype).

The fused step (`fused_step`) does the backward and the update in one pass with no (rows, D)
gradient array: the ids are sorted by a stable radix sort (`sort_ids`: O(n) per digit pass, a
pass per 8-11 bits of vocab_size - 1, vocab_size never allocated), then each thread takes a range
of the unique rows, sums each row's gradient rows in id order into a float64 row in registers
(rounded once to the table's dtype, exactly as numba_gather's and cython_gather's scatter-add
round a row: the same bits as coalescing with them and then updating), and updates the table row
and its state row at once.

error_model="numpy": division is IEEE division (a zero divisor gives inf or NaN, as in NumPy and
torch) rather than Python's ZeroDivisionError check, whose branch kept LLVM from vectorizing the
loops: measured, 1 thread, D = 64, 16,384 ids' rows, float32: Adagrad 1.68 -> 0.26 ms with the
table in cache (V = 2e4) and 5.5 -> 1.5 ms at V = 1e6; SparseAdam 1.89 -> 0.51 and 6.0 -> 2.3 ms.
Division and sqrt are correctly rounded either way: the same bits.

The caller (kernels.optim) has checked everything: rows sorted, unique and in range, values
(len(rows), D) of the table's dtype, state arrays of the table's shape and dtype; for the fused
step, ids checked against vocab_size (sort_ids checks its own copy again).
"""
import numpy as np
from numba import njit, prange

from kernels._numba_intrinsics import prefetch_row
from kernels._threads import ids_changed_error, threads_for
from kernels.numba_gather import _numba_threads, _run_parallel

SGD, ADAGRAD, ROWWISE_ADAGRAD, SPARSE_ADAM = 0, 1, 2, 3
ROW_PREFETCH = 8
"""How many unique rows ahead the fused step prefetches the table's (and the state's) rows.
Measured with tools.train_example's embedding part (4 bag tables, V = 1e6 and 1e5, D = 64,
2 threads, best of 5 medians of 30 steps): 4 / 8 / 16 ahead took 5.09 / 4.76 / 4.96 ms."""
GRAD_PREFETCH = 8
"""How many sorted positions ahead the fused step prefetches gradient rows."""


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


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _grad_row(src, p):
    """The index of the row of G that entry p (a position in ids) adds: p for a lookup,
    src[p] (its bag) for a bag."""
    return p if src.shape[0] == 0 else src[p]


@njit(cache=True, nogil=True, error_model="numpy")
def _fused_rows(which, W, A, B, M, G, src, coef, rows, starts, pos, h0, h1, h2, h3, lo, hi):
    """Rows lo..hi-1 of the unique rows: each summed from its gradient rows, in id order, in
    float64 (a row with one contribution: 0 + g in the table's dtype, the same value), then
    updated. Entry p contributes G[p] (lookups, src empty) or G[src[p]] scaled by coef[p] and
    rounded to the table's dtype (bags, coef non-empty: kernels._bag_math.expanded_rows's
    E[p], computed here rather than stored). SGD without coef (the common sparse step)
    subtracts lr * the sum straight from G and the float64 row, not through the row g and
    _update_row: the same bits, about half the time (measured, 16,384 bag ids of 2,048 bags,
    D = 64, float32, 2 threads: 298 -> 156 us at V = 1e6)."""
    D = W.shape[1]
    n = pos.shape[0]
    acc = np.empty(D, np.float64)
    g = np.empty(D, W.dtype)
    zero = W.dtype.type(0)
    scaled = coef.shape[0] > 0
    direct = which == SGD and not scaled
    for u in range(lo, hi):
        if u + ROW_PREFETCH < hi:
            r = rows[u + ROW_PREFETCH]
            prefetch_row(W, r)
            if A.shape[0]:
                prefetch_row(A, r)
            if B.shape[0]:
                prefetch_row(B, r)
        j0, j1 = starts[u], starts[u + 1]
        if j1 + GRAD_PREFETCH <= n:
            for j in range(j0, j1):
                prefetch_row(G, _grad_row(src, pos[j + GRAD_PREFETCH]))
        row = rows[u]
        if direct and j1 - j0 == 1:
            r = _grad_row(src, pos[j0])
            for k in range(D):
                W[row, k] = W[row, k] - h0 * (G[r, k] + zero)  # 0 + g, as below
            continue
        for k in range(D):
            acc[k] = 0.0
        for j in range(j0, j1):
            p = pos[j]
            r = _grad_row(src, p)
            if scaled:
                c = coef[p]
                for k in range(D):
                    acc[k] += W.dtype.type(np.float64(G[r, k]) * c)
            elif j1 - j0 == 1:
                for k in range(D):
                    g[k] = G[r, k] + zero  # 0 + g: -0.0 made +0.0, as in the sum
            else:
                for k in range(D):
                    acc[k] += G[r, k]
        if direct:
            for k in range(D):
                W[row, k] = W[row, k] - h0 * W.dtype.type(acc[k])
            continue
        if scaled or j1 - j0 > 1:
            for k in range(D):
                g[k] = acc[k]
        _update_row(which, W, A, B, M, row, g, h0, h1, h2, h3)


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _fused_parallel(which, W, A, B, M, G, src, coef, rows, starts, pos, h0, h1, h2, h3,
                    nthreads):
    m = rows.shape[0]
    for c in prange(nthreads):
        _fused_rows(which, W, A, B, M, G, src, coef, rows, starts, pos, h0, h1, h2, h3,
                    m * c // nthreads, m * (c + 1) // nthreads)


_NO_INDEX = np.empty(0, np.int64)
_NO_COEF = np.empty(0, np.float64)


def fused_step(which, W, G, ids, hyper, A=None, B=None, M=None, src=None, coef=None):
    """The backward of checked ids (n,) and the update of the rows they touch, in one pass: the
    same bits as update() of the coalesced gradient numba_gather or cython_gather computes.
    Lookups: G (n, D), entry p adds G[p]. Bags: G (B, D), entry p adds G[src[p]] times coef[p]
    (float64, or None for 1) rounded to the table's dtype. Returns the number of rows updated."""
    if ids.shape[0] == 0:
        return 0
    rows, starts, pos = sort_ids(ids, W.shape[0])
    h = _hyper(W, hyper)
    A, B, M = _state(W, A, B, M)
    src = _NO_INDEX if src is None else src
    coef = _NO_COEF if coef is None else coef
    touched = ids.shape[0] * W.shape[1] * W.itemsize + rows.shape[0] * W.shape[1] * \
        W.itemsize * (2 + (A.shape[0] > 0) + (B.shape[0] > 0))
    nthreads = min(_numba_threads(threads_for(touched)), rows.shape[0])
    if nthreads == 1:
        _fused_rows(which, W, A, B, M, G, src, coef, rows, starts, pos, *h, 0, rows.shape[0])
    else:
        _run_parallel(_fused_parallel, which, W, A, B, M, G, src, coef, rows, starts, pos, *h,
                      nthreads)
    return rows.shape[0]

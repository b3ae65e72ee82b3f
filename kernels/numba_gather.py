"""Numba gather: one llvm.memcpy per row, a serial path for small calls, chunked prange for
large ones, rows prefetched a few ids ahead when the table does not fit in L2. Tables whose rows
are not contiguous take an element loop.

Backward: rows of dW are split among threads; each thread zeroes its rows and scans every id,
adding only those in its range. No atomics, no sort, and the same sum order every call
(bitwise deterministic, for any thread count). A float32 row is the float64 sum of its
contributions in id order rounded once to float32 (the same bits as cython_gather); a float64
row is the sum in id order.

Every loop reads each id once (load_id) and checks it against V before use: ids rewritten by
another thread during a call can give wrong rows or a RuntimeError, never an access outside W,
out or dW.

Threads: the threading layer is chosen and started under a lock before the first parallel call
(omp, then tbb, then workqueue); under workqueue, which aborts the process when two Python threads
enter it at once, parallel calls are serialized. numba.set_num_threads is restored after each
parallel call (the caller's own Numba thread count is left as it was). One thread (small calls,
num_threads(1), a forked child where OpenMP is unsafe: see kernels._threads) runs the plain njit
loops and never enters a parallel function.
"""
import contextlib
import threading

import numba
import numpy as np
from numba import njit, prange

from kernels._cpu import bag_prefetch_distance, decode_prefetch_distance, prefetch_distance
from kernels._formats import FLOAT, LOW_PRECISION
from kernels._kernel import Kernel, bag_grad_by_scatter
from kernels._numba_intrinsics import copy_row, load_id, prefetch_line, prefetch_row, zero_rows
from kernels._numba_lowp import CODES, decode_row, pool_row, row_of, scratch, storage
from kernels._ops import LOOKUP, LOOKUP_BAG, LOOKUP_BAG_GRAD, LOOKUP_GRAD
from kernels._threads import ids_changed_error, openmp_threads, threads_for
from kernels._validate import MODE_CODES

# The workqueue layer aborts the process when two Python threads enter a parallel region at once.
numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]

_layer = None  # Numba's threading layer, once started by _start_layer
_serialize = contextlib.nullcontext()  # a lock around parallel calls under workqueue
_start_lock = threading.Lock()


def _start_layer():
    """Start Numba's threading layer (once, under a lock) and decide whether calls serialize.

    Done before the first parallel call, not after it: Python threads making their first
    parallel calls at once would otherwise all enter an unserialized workqueue layer."""
    global _layer, _serialize
    with _start_lock:
        if _layer is None:
            numba.get_num_threads()  # starts the layer (no parallel region runs)
            layer = numba.threading_layer()
            if layer == "workqueue":
                _serialize = threading.Lock()
            _layer = layer
    return _layer


def _numba_threads(n):
    """The thread count to run with: n, or 1 where a parallel region must not start."""
    if n == 1:
        return 1
    if (_layer or _start_layer()) == "omp":
        return openmp_threads(n)  # 1 in a forked child where libgomp is unsafe
    return n


def _run_parallel(fn, *args):
    """Call a prange kernel whose last argument is its thread count (> 1), leaving Numba's own
    thread count for this Python thread as it was."""
    previous = numba.get_num_threads()
    numba.set_num_threads(args[-1])  # thread-local to the calling Python thread
    try:
        with _serialize:
            return fn(*args)
    finally:
        numba.set_num_threads(previous)


@njit(cache=True, nogil=True)
def _gather_rows(W, ids, out, lo, hi, contiguous_rows, prefetch):
    """Copy rows lo..hi-1; return how many ids were outside [0, V) (each copied row 0)."""
    V = W.shape[0]
    bad = 0
    if contiguous_rows:
        for i in range(lo, hi):
            if prefetch and i + prefetch < hi:
                prefetch_row(W, ids[i + prefetch])  # a prefetch never faults, whatever the id
            j = load_id(ids, i)
            if j < 0 or j >= V:
                bad += 1
                j = 0
            copy_row(out, i, W, j)
    else:
        D = W.shape[1]
        for i in range(lo, hi):
            j = load_id(ids, i)
            if j < 0 or j >= V:
                bad += 1
                j = 0
            for k in range(D):
                out[i, k] = W[j, k]
    return bad


@njit(cache=True, nogil=True)
def _decode_rows(fmt, W, ids, out, lo, hi, prefetch):
    """out[i] = the decoded row ids[i] of a low-precision table for i in lo..hi-1; returns how
    many ids were outside [0, V) (each decoded row 0)."""
    V = W.shape[0]
    bad = 0
    for i in range(lo, hi):
        if prefetch and i + prefetch < hi:
            prefetch_row(W, ids[i + prefetch])
        j = load_id(ids, i)
        if j < 0 or j >= V:
            bad += 1
            j = 0
        decode_row(fmt, W, j, out, i)
    return bad


@njit(parallel=True, cache=True, nogil=True)
def _decode_parallel(fmt, W, ids, out, prefetch, nthreads):
    n = ids.shape[0]
    bad = 0
    for c in prange(nthreads):
        bad += _decode_rows(fmt, W, ids, out, n * c // nthreads, n * (c + 1) // nthreads,
                            prefetch)
    return bad


def _decoding_gather(fmt_name):
    """The lookup function of a low-precision format: rows decoded straight into out."""
    fmt = CODES[fmt_name]

    def gather(W, ids, out):
        S = storage(W)
        nthreads = _numba_threads(threads_for(out.nbytes))
        prefetch = decode_prefetch_distance(S)  # any row length gains here (cython_gather.py)
        if nthreads == 1:
            bad = _decode_rows(fmt, S, ids, out, 0, ids.shape[0], prefetch)
        else:
            bad = _run_parallel(_decode_parallel, fmt, S, ids, out, prefetch, nthreads)
        if bad:
            raise ids_changed_error(S.shape[0])

    return gather


@njit(parallel=True, cache=True, nogil=True)
def _gather_parallel(W, ids, out, contiguous_rows, prefetch, nthreads):
    n = ids.shape[0]
    worker = np.full(nthreads, -1, np.int64)
    bad = 0
    for c in prange(nthreads):
        bad += _gather_rows(W, ids, out, n * c // nthreads, n * (c + 1) // nthreads,
                            contiguous_rows, prefetch)
        worker[c] = numba.get_thread_id()
    return len(set(worker)), bad


@njit(cache=True, nogil=True)
def _scatter_rows(G, ids, dW, zeroed, r0, r1):
    """dW[r0:r1] = the contributions to those rows, added in id order in dW's precision (the
    float64 path). Returns 1 if an id outside [0, V) was read, else 0."""
    D = G.shape[1]
    V = dW.shape[0]
    bad = 0
    if not zeroed and r1 > r0:
        zero_rows(dW, r0, r1)
    for i in range(ids.shape[0]):
        j = load_id(ids, i)
        if r0 <= j < r1:
            for k in range(D):
                dW[j, k] += G[i, k]
        elif j < 0 or j >= V:
            bad = 1
    return bad


DENSE_BYTES = 4 << 20
COUNTED_ROWS_PER_ID = 64
CHUNK = 2048
SORTED_PREFETCH = 8
"""How many positions ahead the sorted backward prefetches grad rows."""
"""float32 scatter: a float64 copy of a row slice up to 4 MiB (it fits the caches; beyond, twice
the float32 footprint cost 2-4x: measured), a count byte per row up to 64 rows per id, else the
count kept in the rows themselves; own positions found CHUNK ids at a time (the same rules as
cython_gather)."""


@njit(cache=True, nogil=True, inline="always")
def _own(ids, i0, i1, r0, m, V, buf):
    """Write the offsets i - i0 of the positions i in [i0, i1) whose id lies in [r0, r0 + m)
    into buf, without a branch per id (with several threads, which thread owns an id is a coin
    toss a branch mispredicts). Returns (how many, 1 if an id was outside [0, V))."""
    c = 0
    bad = 0
    for i in range(i0, i1):
        j = load_id(ids, i)
        buf[c] = i - i0
        c += np.uint64(j - r0) < np.uint64(m)
        bad |= np.uint64(j) >= np.uint64(V)
    return c, bad


@njit(cache=True, nogil=True)
def _scatter_rows_sorted(G, ids, dW, r0, r1):
    """dW[r0:r1] for float32 when the slice has at most a quarter as many rows as there are ids: a
    counting sort of the slice's positions by row (id order kept within a row), then each row
    summed in float64 registers and written once, rounded (rows no id hits written as zeros).
    The same bits as the other ways; no float64 scratch the size of the rows hit, which at
    V = 1e4, D = 256 no longer fitted the caches. Returns 1 if an id outside [0, V) was read or
    ids changed between the passes (positions never filled are then left out, never read)."""
    D = G.shape[1]
    V = dW.shape[0]
    n = ids.shape[0]
    m = r1 - r0
    bad = 0
    start = np.zeros(m + 1, np.int64)
    for i in range(n):
        j = load_id(ids, i)
        x = j - r0
        inr = np.uint64(x) < np.uint64(m)
        start[(x + 1) if inr else 0] += inr
        bad |= np.uint64(j) >= np.uint64(V)
    for r in range(m):
        start[r + 1] += start[r]
    total = start[m]
    pos = np.full(total, n, np.int64)  # n: a position not filled (ids changed), never read
    fill = start[:m].copy()
    for i in range(n):
        x = load_id(ids, i) - r0
        if np.uint64(x) < np.uint64(m):
            p = fill[x]
            if p < start[x + 1]:
                pos[p] = i
                fill[x] = p + 1
            else:
                bad = 1
    acc = np.empty(D, np.float64)
    for r in range(m):
        a, b = start[r], fill[r]
        if b != start[r + 1]:
            bad = 1
        for k in range(D):
            acc[k] = 0.0
        for p in range(a, b):
            if p + SORTED_PREFETCH < total:
                nxt = pos[p + SORTED_PREFETCH]
                if np.uint64(nxt) < np.uint64(n):
                    prefetch_row(G, nxt)
            i = pos[p]
            for k in range(D):
                acc[k] += G[i, k]
        for k in range(D):
            dW[r0 + r, k] = acc[k]
    return bad


@njit(cache=True, nogil=True)
def _scatter_rows_f32(G, ids, dW, state, zeroed, r0, r1):
    """dW[r0:r1] for float32 (state is dW viewed as int32): every row is the float64 sum of its
    contributions in id order, rounded once. Returns 1 if an id outside [0, V) was read, or ids
    changed between the passes, else 0. Four ways to the same bits (the first three as in
    cython_gather):

    - sorted (at most n / 4 rows, whose float64 copy would exceed DENSE_BYTES): _scatter_rows_sorted.

    - dense (a slice of at most n / 2 rows whose float64 copy takes at most DENSE_BYTES): the
      slice is summed in that copy, then rounded into dW.
    - counted (at most COUNTED_ROWS_PER_ID * n rows): pass 1 counts each row's contributions
      (0, 1, 2, 3 = three or more) in a byte per row. Pass 2 adds rows with one or two straight
      into the zeroed float32 row (0 + g1 + g2 rounds as the float64 sum does: 53 >= 2 * 24 + 2
      bits, so rounding twice is innocuous), and rows with three or more into a float64 scratch
      row of their own, whose index is kept in the dW row's first 4 bytes; a flush rounds them.
    - word (larger slices: calls with few ids): the count (0, 1, 2 = two or more) lives in the dW
      row's first 4 bytes, which are still zero; a row with one contribution is written as
      0 + g, rows with more go to float64 scratch rows as above. No array the size of the slice.
    Scratch of the last two: 8 * D bytes per row hit three (two) times or more. The adding
    passes visit the slice's own positions, found CHUNK ids at a time by _own (all of them when
    the slice is the whole table)."""
    D = G.shape[1]
    V = dW.shape[0]
    n = ids.shape[0]
    m = r1 - r0
    bad = 0
    if m <= 0:
        return bad
    whole = r0 == 0 and r1 == V
    buf = np.empty(CHUNK, np.int64)
    if 4 * m <= n and m * D * 8 > DENSE_BYTES:
        return _scatter_rows_sorted(G, ids, dW, r0, r1)
    if 2 * m <= n and m * D * 8 <= DENSE_BYTES:
        dense = np.zeros((m, D), np.float64)
        for i0 in range(0, n, CHUNK):
            i1 = min(n, i0 + CHUNK)
            if whole:
                q = i1 - i0
            else:
                q, ob = _own(ids, i0, i1, r0, m, V, buf)
                bad |= ob
            for p in range(q):
                i = i0 + (p if whole else buf[p])
                j = load_id(ids, i)
                if not r0 <= j < r1:  # only if ids changed since _own
                    bad = 1
                    continue
                for k in range(D):
                    dense[j - r0, k] += G[i, k]
        for r in range(m):
            for k in range(D):
                dW[r0 + r, k] = dense[r, k]
        return bad
    if not zeroed:
        zero_rows(dW, r0, r1)
    counted = m <= COUNTED_ROWS_PER_ID * n
    nheavy = 0
    cnt = np.zeros(m + 1 if counted else 0, np.uint8)  # cnt[m]: where other slices' ids count
    if counted:  # pass 1: count, branch-free
        for i in range(n):
            j = load_id(ids, i)
            inr = np.uint64(j - r0) < np.uint64(m)
            x = j - r0 if inr else m
            b = cnt[x]
            cnt[x] = b + (b < 3)
            nheavy += inr and b == 2
            bad |= np.uint64(j) >= np.uint64(V)
    else:
        for i0 in range(0, n, CHUNK):
            i1 = min(n, i0 + CHUNK)
            if whole:
                q = i1 - i0
            else:
                q, ob = _own(ids, i0, i1, r0, m, V, buf)
                bad |= ob
            for p in range(q):
                j = load_id(ids, i0 + (p if whole else buf[p]))
                if not r0 <= j < r1:  # only if ids changed since _own
                    bad = 1
                    continue
                c = state[j, 0]
                if c == 0 or c == 1:
                    state[j, 0] = c + 1
                    if c == 1:
                        nheavy += 1
    acc = np.zeros((nheavy, D), np.float64)
    rows = np.empty(nheavy, np.int64)
    nslots = 0
    zero = np.float32(0.0)
    for i0 in range(0, n, CHUNK):  # pass 2: add (rows prefetched 8 positions ahead)
        i1 = min(n, i0 + CHUNK)
        if whole:
            q = i1 - i0
        else:
            q, ob = _own(ids, i0, i1, r0, m, V, buf)
            bad |= ob
        for p in range(q):
            if p + 8 < q:
                pk = load_id(ids, i0 + ((p + 8) if whole else buf[p + 8]))
                if r0 <= pk < r1:
                    prefetch_line(dW, pk)
            i = i0 + (p if whole else buf[p])
            j = load_id(ids, i)
            if not r0 <= j < r1:  # only if ids changed since _own
                bad = 1
                continue
            s = -1
            if counted:
                b = cnt[j - r0]
                if b == 1 or b == 2:
                    for k in range(D):
                        dW[j, k] += G[i, k]
                    continue
                if b == 3 and nslots < nheavy:
                    s = nslots
                    nslots += 1
                    rows[s] = j
                    state[j, 0] = s
                    cnt[j - r0] = 4
                elif b == 4 and 0 <= state[j, 0] < nslots:
                    s = state[j, 0]
            else:
                c = state[j, 0]
                if c == 1:
                    for k in range(D):
                        dW[j, k] = zero + G[i, k]
                    continue
                if c == 2 and nslots < nheavy:
                    s = nslots
                    nslots += 1
                    rows[s] = j
                    state[j, 0] = -1 - s
                elif c < 0 and -1 - np.int64(c) < nslots:
                    s = -1 - np.int64(c)
            if s < 0:  # only if ids changed between the passes
                bad = 1
                continue
            for k in range(D):
                acc[s, k] += G[i, k]
    for s in range(nslots):  # flush
        j = rows[s]
        for k in range(D):
            dW[j, k] = acc[s, k]
    return bad


@njit(parallel=True, cache=True, nogil=True)
def _scatter_parallel(G, ids, dW, zeroed, nthreads):
    V = dW.shape[0]
    bad = 0
    for c in prange(nthreads):
        bad += _scatter_rows(G, ids, dW, zeroed, V * c // nthreads, V * (c + 1) // nthreads)
    return bad


@njit(parallel=True, cache=True, nogil=True)
def _scatter_parallel_f32(G, ids, dW, state, zeroed, nthreads):
    V = dW.shape[0]
    bad = 0
    for c in prange(nthreads):
        bad += _scatter_rows_f32(G, ids, dW, state, zeroed,
                                 V * c // nthreads, V * (c + 1) // nthreads)
    return bad


def _gather_threads(W, ids, out):
    nthreads = _numba_threads(threads_for(out.nbytes))
    contiguous_rows = W.strides[1] == W.itemsize
    prefetch = prefetch_distance(W) if contiguous_rows else 0
    if nthreads == 1:
        used, bad = 1, _gather_rows(W, ids, out, 0, ids.shape[0], contiguous_rows, prefetch)
    else:
        used, bad = _run_parallel(_gather_parallel, W, ids, out, contiguous_rows, prefetch,
                                  nthreads)
    if bad:
        raise ids_changed_error(W.shape[0])
    return used


def _gather(W, ids, out):
    _gather_threads(W, ids, out)


def _scatter_add(G, ids, dW, zeroed):
    nthreads = _numba_threads(threads_for(G.nbytes + (0 if zeroed else dW.nbytes)))
    if G.dtype == np.float32:
        state = dW.view(np.int32)
        if nthreads == 1:
            bad = _scatter_rows_f32(G, ids, dW, state, zeroed, 0, dW.shape[0])
        else:
            bad = _run_parallel(_scatter_parallel_f32, G, ids, dW, state, zeroed, nthreads)
    elif nthreads == 1:
        bad = _scatter_rows(G, ids, dW, zeroed, 0, dW.shape[0])
    else:
        bad = _run_parallel(_scatter_parallel, G, ids, dW, zeroed, nthreads)
    if bad:
        raise ids_changed_error(dW.shape[0])




@njit(cache=True, nogil=True, inline="always")
def _divide_into(acc, row, mode, d):
    """row = acc / d for mean (mode 1) or acc / sqrt(d) for sqrtn (mode 3), the float64 divisor
    rounded once to the row's dtype; zeros when it is 0 (acc may be row itself)."""
    if mode == 3:
        d = np.sqrt(d)
    if d == 0.0:
        for k in range(row.shape[0]):
            row[k] = 0
    else:
        dd = row.dtype.type(d)
        for k in range(row.shape[0]):
            row[k] = acc[k] / dd


@njit(cache=True, nogil=True)
def _bag_range(fmt, W, ids, offsets, mode, psw, weighted, pad, out, b0, b1, prefetch):
    """Bags b0..b1-1, each summed (or maxed) in id order into its own output row, then divided
    by its divisor: float64 count, sum of weights or sqrt of the sum of squares, rounded to the
    output's dtype. A half-precision table's rows are decoded into a scratch row first, then
    pooled as a float32 table's; int8 and int4 rows are summed as torch sums them (pool_row);
    max compares decoded rows. Returns how many ids were outside [0, V) (each skipped)."""
    V = W.shape[0]
    D = out.shape[1]
    n = ids.shape[0]
    zero = out.dtype.type(0)
    one = out.dtype.type(1)
    s = scratch(D)
    bad = 0
    for b in range(b0, b1):
        row = out[b]
        for k in range(D):
            row[k] = zero
        cnt = 0
        wsum = 0.0
        for i in range(offsets[b], offsets[b + 1]):
            if prefetch and i + prefetch < n:
                prefetch_row(W, ids[i + prefetch])  # a prefetch never faults, whatever the id
            j = load_id(ids, i)
            if j == pad:
                continue
            if j < 0 or j >= V:
                bad += 1
                continue
            if mode == 2:
                src = row_of(W, j, fmt, s)
                if cnt == 0:
                    for k in range(D):
                        row[k] = src[k]
                else:
                    for k in range(D):
                        v = src[k]
                        if v > row[k]:
                            row[k] = v
            elif weighted:
                w = psw[i]
                pool_row(W, j, fmt, s, row, w, True)
                wf = np.float64(w)
                wsum += wf * wf if mode == 3 else wf
            else:
                pool_row(W, j, fmt, s, row, one, False)
            cnt += 1
        if mode == 1 or mode == 3:
            _divide_into(row, row, mode, wsum if weighted else np.float64(cnt))
    return bad


@njit(cache=True, nogil=True)
def _bag_plain_range(fmt, W, ids, offsets, mode, pad, out, b0, b1, prefetch):
    """_bag_range for unweighted sum, mean and sqrtn (the same arithmetic, the same bits), with
    no per-row mode test: each bag is summed in a scratch row (kept in L1) and copied out."""
    V = W.shape[0]
    D = out.shape[1]
    n = ids.shape[0]
    acc = np.empty(D, out.dtype)
    s = scratch(D)
    zero = out.dtype.type(0)
    one = out.dtype.type(1)
    bad = 0
    for b in range(b0, b1):
        for k in range(D):
            acc[k] = zero
        cnt = 0
        for i in range(offsets[b], offsets[b + 1]):
            if prefetch and i + prefetch < n:
                prefetch_row(W, ids[i + prefetch])
            j = load_id(ids, i)
            if j == pad:
                continue
            if j < 0 or j >= V:
                bad += 1
                continue
            pool_row(W, j, fmt, s, acc, one, False)
            cnt += 1
        row = out[b]
        if mode == 0:
            for k in range(D):
                row[k] = acc[k]
        else:
            _divide_into(acc, row, mode, np.float64(cnt))
    return bad


@njit(parallel=True, cache=True, nogil=True)
def _bag_parallel(fmt, W, ids, offsets, mode, psw, weighted, pad, out, prefetch, nthreads):
    """Bags split among threads by the number of ids they hold, each bag whole on one thread
    (so the result does not depend on the thread count)."""
    n = ids.shape[0]
    B = out.shape[0]
    bounds = np.searchsorted(offsets[:B], np.arange(nthreads + 1) * n // nthreads)
    bounds[nthreads] = B
    bounds[0] = 0
    bad = 0
    for c in prange(nthreads):
        if weighted or mode == 2:
            bad += _bag_range(fmt, W, ids, offsets, mode, psw, weighted, pad, out,
                              bounds[c], bounds[c + 1], prefetch)
        else:
            bad += _bag_plain_range(fmt, W, ids, offsets, mode, pad, out, bounds[c],
                                    bounds[c + 1], prefetch)
    return bad


_NO_WEIGHTS = {np.dtype(np.float32): np.zeros(1, np.float32),
               np.dtype(np.float64): np.zeros(1, np.float64)}


def _bag_of(fmt):
    """The lookup_bag function of table format code fmt (0: float32/float64 rows)."""

    def bag(W, ids, offsets, mode, psw, pad, out):
        S = storage(W) if fmt else W
        nthreads = _numba_threads(
            threads_for(ids.shape[0] * S.shape[1] * S.itemsize + out.nbytes))
        # Float bags of several ids a bag prefetch far ahead beyond the last-level cache
        # (kernels._cpu.far_bag_rows: on a Zen 5, bags of 8 at V = 2e6 1.54-1.64x faster at
        # D = 16, level at D = 64 and 256). Decoding bags keep their distance: far, int8 gained
        # (1.44-1.53x at D = 64) but int4 lost (0.65x at D = 64), unlike cython_gather's.
        single = offsets.shape[0] == ids.shape[0] + 1  # a bag for each id
        distance = decode_prefetch_distance(S) if fmt else bag_prefetch_distance(S, single)
        prefetch = distance if S.strides[1] == S.itemsize else 0
        weighted = psw is not None
        p = psw if weighted else _NO_WEIGHTS[out.dtype]
        code = MODE_CODES[mode]
        if nthreads == 1:
            if weighted or code == 2:
                bad = _bag_range(fmt, S, ids, offsets, code, p, weighted, pad, out, 0,
                                 out.shape[0], prefetch)
            else:
                bad = _bag_plain_range(fmt, S, ids, offsets, code, pad, out, 0, out.shape[0],
                                       prefetch)
        else:
            bad = _run_parallel(_bag_parallel, fmt, S, ids, offsets, code, p, weighted, pad,
                                out, prefetch, nthreads)
        if bad:
            raise ids_changed_error(S.shape[0])

    return bag


_bag = _bag_of(0)


KERNEL = Kernel(
    "numba_gather",
    "Numba row loops, chunked prange",
    {(LOOKUP, FLOAT): _gather, (LOOKUP_GRAD, FLOAT): _scatter_add,
     (LOOKUP_BAG, FLOAT): _bag, (LOOKUP_BAG_GRAD, FLOAT): bag_grad_by_scatter(_scatter_add),
     **{(LOOKUP, fmt): _decoding_gather(fmt.name) for fmt in LOW_PRECISION},
     **{(LOOKUP_BAG, fmt): _bag_of(CODES[fmt.name]) for fmt in LOW_PRECISION}},
    compiled=True,
    family="gather",
    colour="#1f77b4",
)
lookup = KERNEL.lookup
lookup_grad = KERNEL.lookup_grad
lookup_bag = KERNEL.lookup_bag
lookup_bag_grad = KERNEL.lookup_bag_grad


def threads_used(weights, ids):
    """Run the forward gather and return how many threads did work in it."""
    W, _, flat, out2d, _ = LOOKUP.prepare(weights, ids, None)
    return _gather_threads(W, flat, out2d) if out2d.size else 0

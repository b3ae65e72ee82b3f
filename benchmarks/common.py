"""Shared grids, seeded data, the correctness checks and the budgets of the asv suite.

Nothing here runs at import: asv forks every benchmark from a server that imported the suite, so
importing must build no data and start no threads. Each parameter set runs in a fresh process, and
asv_runner >= 0.3 re-runs `setup` before every timed call, so data is built once per process and
kept in a module-level cache, and every kernel is checked once per process (its first call, which
also JIT-compiles the Numba kernels outside the timed calls).

Budget (what is run and what is shown as n/a; one call stays under ~2 s on a 2-vCPU VM):
- onehot_dense only where the one-hot input of the whole batch, n * V * itemsize, is at most
  ONEHOT_MAX_BYTES (1 GiB) and the matmul is at most DENSE_MAX_MACS (1e11 multiply-adds; the
  largest case run, V = 10_000 and D = 512, has 8.4e10 and took 0.8-1.9 s per call here, forward
  or backward). With n = 16_384 that is V <= 10_000: at V = 100_000 the one-hot alone is 6.1 GiB.
  The same 1 GiB bounds OneHotMatmul's pre-encoded dense input.
- every kernel only where its estimated peak memory (table or gradient, ids, outputs and the
  kernel's own temporaries) is at most MAX_PROCESS_BYTES (6 GiB).
Everything else raises NotImplementedError in `setup`, which asv shows as n/a: never a crash, an
out-of-memory kill or swapping.
"""
import math
import time
import zlib

import numpy as np

import kernels

# ---------------------------------------------------------------------------------------------
# Grids

BATCH_SHAPE = (32, 512)
"""ids of one batch: 32 sequences of 512 tokens."""
N_IDS = math.prod(BATCH_SHAPE)  # 16_384
DTYPE = np.dtype(np.float32)
IDS_DTYPE = np.dtype(np.int64)
SEED = 20240611

KERNELS = ["onehot_dense", "onehot_sparse", "numpy_take", "numba_gather", "cython_gather"]
GATHERS = ["numpy_take", "numba_gather", "cython_gather"]
COMPILED = ["numba_gather", "cython_gather"]
VOCAB_SIZES = [100, 1_000, 10_000, 100_000, 1_000_000]
DIMS = [8, 32, 128, 512]
TABLES = [(10_000, 64), (1_000_000, 64), (1_000_000, 8)]
"""(vocab_size, dim) points for the benchmarks that do not sweep the whole grid."""

ALL_THREADS = kernels.get_num_threads()
"""The kernels' default thread count in a fresh process: every core this process may use."""

# ---------------------------------------------------------------------------------------------
# Budgets (see the module docstring)

ONEHOT_MAX_BYTES = 2**30
DENSE_MAX_MACS = 10**11
MAX_PROCESS_BYTES = 6 * 2**30
MAX_CALL_SECONDS = 2.0
"""What the rules above are meant to keep one call under; not enforced by timing."""


def estimated_bytes(kernel, vocab_size, dim, n=N_IDS, backward=False, itemsize=DTYPE.itemsize):
    """Peak bytes of one benchmark process for this case: data, outputs and kernel temporaries.

    Forward: W, ids, the preallocated out and the fresh output of the peakmem call. Backward: G,
    ids, the preallocated dW and the fresh dW of the peakmem call. Plus the one-hot kernels'
    temporaries (a dense one-hot block; scipy's CSR matrix and its freshly allocated result).
    """
    table = vocab_size * dim * itemsize  # W forward, dW backward
    rows = n * dim * itemsize  # out forward, G backward
    total = table + 2 * rows + 2 * n * IDS_DTYPE.itemsize
    total += table if backward else rows  # peakmem_*: the kernel allocates its own output
    if kernel == "onehot_dense":
        block_rows = min(n, kernels.onehot_dense.chunk_rows(vocab_size, itemsize))
        total += block_rows * vocab_size * itemsize + (table if backward else 0)
    elif kernel == "onehot_sparse":
        total += n * (itemsize + 2 * IDS_DTYPE.itemsize)  # the CSR matrix
        total += table if backward else rows  # scipy's result, then copied into out / dW
    return total


def over_budget(kernel, vocab_size, dim, n=N_IDS, backward=False):
    """Why this case is not run (a sentence), or None if it is within the budget."""
    if kernel == "onehot_dense":
        onehot_bytes = n * vocab_size * DTYPE.itemsize
        if onehot_bytes > ONEHOT_MAX_BYTES:
            return (
                f"onehot_dense: the one-hot input of {n} ids x {vocab_size} is "
                f"{onehot_bytes / 2**30:.1f} GiB > {ONEHOT_MAX_BYTES / 2**30:.0f} GiB budget"
            )
        macs = n * vocab_size * dim
        if macs > DENSE_MAX_MACS:
            return f"onehot_dense: {macs:.2g} multiply-adds > {DENSE_MAX_MACS:.0e} budget"
    need = estimated_bytes(kernel, vocab_size, dim, n, backward)
    if need > MAX_PROCESS_BYTES:
        return (
            f"{kernel}: needs ~{need / 2**30:.1f} GiB > {MAX_PROCESS_BYTES / 2**30:.0f} GiB budget"
        )
    return None


def require_budget(kernel, vocab_size, dim, n=N_IDS, backward=False):
    """Raise NotImplementedError (asv: n/a) if the case is beyond the budget."""
    reason = over_budget(kernel, vocab_size, dim, n, backward)
    if reason:
        raise NotImplementedError(reason)


# ---------------------------------------------------------------------------------------------
# Seeded data

_CACHE = {}


def cached(key, make):
    """make(), built once per process per key (setup runs before every timed call)."""
    try:
        return _CACHE[key]
    except KeyError:
        value = _CACHE[key] = make()
        return value


def clear_cache():
    _CACHE.clear()
    _CHECKED.clear()


def _rng(*key):
    """A generator seeded by SEED and the key (strings by CRC-32: hash() differs per process)."""
    words = [zlib.crc32(k.encode()) if isinstance(k, str) else k for k in key]
    return np.random.default_rng([SEED, *words])


def make_weights(vocab_size, dim, seed=0, block_rows=4096):
    """A (vocab_size, dim) float32 table: every row distinct, finite, no -0.0.

    A seeded random block of `block_rows` rows in [-1, 1) is tiled down the table, block b shifted
    by 2 * b, so the table is built at memory speed (not the generator's) and a row copied from
    the wrong place cannot pass the bitwise check. No -0.0 can occur (2 * r - 1 is +0.0 at
    r = 0.5, and x + 0.0 is +0.0 for x = -0.0), so the one-hot kernels must match bitwise too.
    """
    rng = _rng("weights", seed, vocab_size, dim)
    base = rng.random((min(block_rows, vocab_size), dim), dtype=DTYPE)
    base *= 2
    base -= 1
    W = np.empty((vocab_size, dim), DTYPE)
    for start in range(0, vocab_size, block_rows):
        stop = min(start + block_rows, vocab_size)
        np.add(base[: stop - start], DTYPE.type(2 * (start // block_rows)), out=W[start:stop])
    return W


def uniform_ids(vocab_size, shape=BATCH_SHAPE, seed=0):
    """int64 ids drawn uniformly from [0, vocab_size)."""
    return _rng("uniform", seed, vocab_size).integers(0, vocab_size, size=shape, dtype=IDS_DTYPE)


def zipf_ids(vocab_size, shape=BATCH_SHAPE, a=1.1, seed=0):
    """int64 ids with Zipf's law of exponent a, truncated to the vocabulary.

    rng.zipf(a) draws a rank k >= 1 with P(k) ~ k**-a; id = k - 1, so the most frequent ids are
    the first rows of the table, as in a vocabulary sorted by frequency. Ranks beyond vocab_size
    are drawn again (not clipped, which would pile the tail onto the last id, nor wrapped, which
    would spread it uniformly): the result is the Zipf law restricted to [0, vocab_size).
    """
    rng = _rng("zipf", seed, vocab_size)
    ids = rng.zipf(a, size=shape).astype(IDS_DTYPE) - 1
    bad = ids >= vocab_size
    while bad.any():
        ids[bad] = rng.zipf(a, size=int(bad.sum())) - 1
        bad = ids >= vocab_size
    return ids


DISTRIBUTIONS = {"uniform": uniform_ids, "zipf": zipf_ids}


def make_ids(distribution, vocab_size, shape=BATCH_SHAPE, seed=0):
    return DISTRIBUTIONS[distribution](vocab_size, shape, seed=seed)


def make_grad(dim, shape=BATCH_SHAPE, seed=0):
    """The gradient of the lookup's output, shape + (dim,), float32 in [-1, 1)."""
    G = _rng("grad", seed, dim).random(shape + (dim,), dtype=DTYPE)
    G *= 2
    G -= 1
    return G


def lookup_data(vocab_size, dim, distribution="uniform"):
    """(W, ids, out) for a forward benchmark, cached; out is preallocated and C-contiguous."""
    return cached(
        ("lookup", vocab_size, dim, distribution),
        lambda: (
            make_weights(vocab_size, dim),
            make_ids(distribution, vocab_size),
            np.empty(BATCH_SHAPE + (dim,), DTYPE),
        ),
    )


def grad_data(vocab_size, dim):
    """(G, ids, dW) for a backward benchmark, cached; dW is preallocated (V, D)."""
    return cached(
        ("grad", vocab_size, dim),
        lambda: (make_grad(dim), uniform_ids(vocab_size), np.empty((vocab_size, dim), DTYPE)),
    )


# ---------------------------------------------------------------------------------------------
# Correctness checks

_CHECKED = set()
_CHUNK_BYTES = 2**20  # the checks work in chunks this big: they must not raise peak memory


def check_once(key, check):
    """Run check() once per process per key (setup runs before every timed call)."""
    if key not in _CHECKED:
        check()
        _CHECKED.add(key)


def _bits(a):
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_gathered(W, ids, got, what="lookup"):
    """got must equal W[ids] bit for bit (shape ids.shape + (D,)); checked in small chunks."""
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


def check_lookup(kernel, W, ids, out):
    """Call kernel(W, ids, out=out) on a NaN-filled out and check it wrote W[ids] bitwise."""
    K = kernels.KERNELS[kernel] if isinstance(kernel, str) else kernel
    out.fill(np.nan)
    result = K(W, ids, out=out)
    if result is not out:
        assert_gathered(W, ids, result, f"{K.name} (returned array)")
    assert_gathered(W, ids, out, K.name)


def assert_grad(got, G, ids, vocab_size, what="lookup_grad"):
    """got must be the scatter-add of G's rows into vocab_size rows (float64 reference).

    Each hit element within k * eps * sum|g| of the float64 sum over its k contributions (the
    worst-case bound of recursive summation, in any order); rows no id hits exactly 0.
    """
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


def check_lookup_grad(kernel, G, ids, vocab_size, dW):
    """Call kernel.lookup_grad(G, ids, V, out=dW) on a NaN-filled dW and check the result."""
    K = kernels.KERNELS[kernel] if isinstance(kernel, str) else kernel
    dW.fill(np.nan)
    result = K.lookup_grad(G, ids, vocab_size, out=dW)
    if result is not dW:
        assert_grad(result, G, ids, vocab_size, f"{K.name} (returned array)")
    assert_grad(dW, G, ids, vocab_size, K.name)


# ---------------------------------------------------------------------------------------------
# Timing helpers for track_* benchmarks

def best_median_seconds(call, batches=3, batch_seconds=0.05, max_calls=100):
    """The best (lowest) of `batches` medians of single calls timed with time.perf_counter.

    Each batch times calls one at a time until batch_seconds have passed (at least one call, at
    most max_calls). Best-of-batches because this runs on shared 2-vCPU machines, where whole
    episodes occur in which every multi-threaded call waits a scheduler slice (~2 ms or more).
    """
    best = math.inf
    for _ in range(batches):
        times = []
        start = time.perf_counter()
        while len(times) < max_calls:
            t0 = time.perf_counter()
            call()
            t1 = time.perf_counter()
            times.append(t1 - t0)
            if t1 - start > batch_seconds:
                break
        best = min(best, float(np.median(times)))
    return best


def gather_bytes(n, dim, itemsize=DTYPE.itemsize):
    """Bytes a gather must move: read n rows of W, write n output rows."""
    return 2 * n * dim * itemsize


def scatter_bytes(n, vocab_size, dim, itemsize=DTYPE.itemsize):
    """Bytes the backward must move, as counted here: read n rows of G, n rows of dW updated
    (read-modify-write counted once), and the V rows of dW zeroed."""
    return (2 * n * dim + vocab_size * dim) * itemsize


def gbps(nbytes, seconds):
    return nbytes / seconds / 1e9


# ---------------------------------------------------------------------------------------------
# Timing attributes shared by every class

class Timing:
    """asv attributes, tuned so `make bench` (all classes, fresh environment) fits in 25 minutes.

    number = 1: asv_runner re-runs setup before every timed call anyway; each sample is one call.
    repeat = (2, 100, 0.5): at least 2 samples, at most 100, no new one after 0.5 s.
    rounds = 3: three processes per parameter set, run in three passes over the whole suite, so
    the samples come from three moments (the machines are shared); asv reports their median.
    warmup_time = 0: setup's checked first call already warmed the kernel, caches and pages.
    """

    number = 1
    repeat = (2, 100, 0.5)
    rounds = 3
    warmup_time = 0.0
    timeout = 300

"""Shared grids, seeded data, the correctness checks and the budgets of the asv suite.

Nothing here runs at import: asv forks every benchmark from a server that imported the suite, so
importing must build no data and start no threads. Each parameter set runs in a fresh process, and
asv_runner >= 0.3 re-runs `setup` before every timed call, so data is built once per process and
kept in a module-level cache, and every kernel is checked once per process (its first call, which
also JIT-compiles the Numba kernels outside the timed calls).

Budget (what is run and what is shown as n/a; one call stays under ~2 s on a 2-vCPU VM):
- each kernel within its own limits (its `over_budget` trait; for onehot_dense, defined in
  kernels/onehot_dense.py: the one-hot input of the whole batch at most 1 GiB and at most 1e11
  multiply-adds a call, i.e. V <= 10_000 at n = 16_384). The same trait bounds OneHotMatmul's
  pre-encoded dense input.
- every kernel only where its estimated peak memory (table or gradient, ids, outputs and the
  kernel's own temporaries) is at most MAX_PROCESS_BYTES (6 GiB).
Everything else raises NotImplementedError in `setup`, which asv shows as n/a: never a crash, an
out-of-memory kill or swapping.
"""
import math
import zlib

import numpy as np

import kernels
from kernels import _timing
from kernels._ops import LOOKUP, LOOKUP_GRAD
from kernels._registry import names

# ---------------------------------------------------------------------------------------------
# Grids

BATCH_SHAPE = (32, 512)
"""ids of one batch: 32 sequences of 512 tokens."""
N_IDS = math.prod(BATCH_SHAPE)  # 16_384
DTYPE = np.dtype(np.float32)
IDS_DTYPE = np.dtype(np.int64)
SEED = 20240611

KERNELS = names()
"""Every registered kernel (the registry is the one list)."""
GATHERS = names(family="gather")
COMPILED = names(compiled=True)
VOCAB_SIZES = [100, 1_000, 10_000, 100_000, 1_000_000]
DIMS = [8, 32, 128, 512]
TABLES = [(10_000, 64), (1_000_000, 64), (1_000_000, 8)]
"""(vocab_size, dim) points for the benchmarks that do not sweep the whole grid."""

ALL_THREADS = kernels.get_num_threads()
"""The kernels' default thread count in a fresh process: every core this process may use."""

# ---------------------------------------------------------------------------------------------
# Budgets (see the module docstring)

MAX_PROCESS_BYTES = 6 * 2**30
MAX_CALL_SECONDS = 2.0
"""What the rules above are meant to keep one call under; not enforced by timing."""


def _op(backward):
    return LOOKUP_GRAD if backward else LOOKUP


def estimated_bytes(kernel, vocab_size, dim, n=N_IDS, backward=False, itemsize=DTYPE.itemsize):
    """Peak bytes of one benchmark process for this case: data, outputs and kernel temporaries.

    Forward: W, ids, the preallocated out and the fresh output of the peakmem call. Backward: G,
    ids, the preallocated dW and the fresh dW of the peakmem call. Plus what the kernel
    allocates beyond its output (its `scratch_bytes` trait).
    """
    table = vocab_size * dim * itemsize  # W forward, dW backward
    rows = n * dim * itemsize  # out forward, G backward
    total = table + 2 * rows + 2 * n * IDS_DTYPE.itemsize
    total += table if backward else rows  # peakmem_*: the kernel allocates its own output
    K = kernels.KERNELS[kernel]
    return total + K.scratch_bytes(_op(backward), vocab_size, dim, n, itemsize)


def over_budget(kernel, vocab_size, dim, n=N_IDS, backward=False):
    """Why this case is not run (a sentence), or None if it is within the budget: the kernel's
    own limits (its `over_budget` trait), then this suite's memory budget."""
    reason = kernels.KERNELS[kernel].over_budget(_op(backward), vocab_size, dim, n,
                                                 DTYPE.itemsize)
    if reason:
        return reason
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
# Correctness checks: the operations' own reference checks (kernels._ops)

_CHECKED = set()


def check_once(key, check):
    """Run check() once per process per key (setup runs before every timed call)."""
    if key not in _CHECKED:
        check()
        _CHECKED.add(key)


assert_gathered = LOOKUP.assert_matches
assert_grad = LOOKUP_GRAD.assert_matches


def check_lookup(kernel, W, ids, out):
    """Call kernel(W, ids, out=out) on a NaN-filled out and check it wrote W[ids] bitwise."""
    K = kernels.KERNELS[kernel] if isinstance(kernel, str) else kernel
    out.fill(np.nan)
    result = K(W, ids, out=out)
    if result is not out:
        assert_gathered(result, W, ids, f"{K.name} (returned array)")
    assert_gathered(out, W, ids, K.name)


def check_lookup_grad(kernel, G, ids, vocab_size, dW):
    """Call kernel.lookup_grad(G, ids, V, out=dW) on a NaN-filled dW and check the result."""
    K = kernels.KERNELS[kernel] if isinstance(kernel, str) else kernel
    dW.fill(np.nan)
    result = K.lookup_grad(G, ids, vocab_size, out=dW)
    if result is not dW:
        assert_grad(result, G, ids, vocab_size, f"{K.name} (returned array)")
    assert_grad(dW, G, ids, vocab_size, K.name)


# ---------------------------------------------------------------------------------------------
# Bandwidth of track_* benchmarks: the operations' byte formulas, the one timing loop

best_median_seconds = _timing.best_median_seconds


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

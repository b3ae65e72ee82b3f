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
out-of-memory kill or swapping. Bags (bench_bags) follow the same rules, plus: a kernel that does
not implement lookup_bag for float32 tables, or not the mode asked for (its `bag_modes` trait),
is n/a too (see require_bag).
"""
import math
import zlib

import numpy as np

import kernels
from kernels import _timing, aligned_empty
from kernels._ops import LOOKUP, LOOKUP_BAG, LOOKUP_BAG_GRAD, LOOKUP_GRAD
from kernels._registry import names
from kernels._validate import BAG_MODES

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

BAG_N_IDS = LOOKUP_BAG.benchmark_n_ids
"""ids of one bag batch (all bags together): B = BAG_N_IDS / bag_length bags (32,768 at bag
length 1, 512 at 64). Half of the 65,536 the roofline script uses, because a bag process spends
most of its time checking the kernel against the float64 reference (0.3 s on average at 65,536,
up to 1.8 s at D = 256), which scales with n; onehot_dense runs the same points at either n."""
BAG_VOCAB_SIZES = [1_000, 10_000, 100_000, 1_000_000]
BAG_DIMS = [16, 64, 256]
BAG_LENGTHS = [1, 8, 64]
BAG_MODES = list(BAG_MODES)
"""sum, mean, max, sqrtn: every mode lookup_bag has (kernels._validate.BAG_MODES)."""

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


def _bag_op(backward):
    return LOOKUP_BAG_GRAD if backward else LOOKUP_BAG


def _bag_block_rows(bag_length, n, backward):
    """The n the kernels' traits receive for a bag call: the rows of the kernel's block. Forward:
    the B bags (onehot_dense's multi-hot block is (B, V), as its trait defines for bags).
    Backward: the n ids, because every kernel's lookup_bag_grad expands the bag gradient to one
    row per id and scatters those (kernels._kernel.bag_grad_by_scatter): onehot_dense's
    scatter builds an (n, V) one-hot."""
    return n if backward else n // bag_length


def estimated_bag_bytes(kernel, vocab_size, dim, bag_length, n=BAG_N_IDS, backward=False,
                        itemsize=DTYPE.itemsize):
    """Peak bytes of one bag benchmark process: W (forward) or G and dW (backward), the ids and
    offsets, the (n, D) rows a gather-then-reduce kernel or the backward's expansion holds, the
    float64 reference of the check, plus the kernel's own scratch (its `scratch_bytes` trait)."""
    B = n // bag_length
    total = n * IDS_DTYPE.itemsize + (B + 1) * IDS_DTYPE.itemsize
    total += vocab_size * dim * itemsize + B * dim * itemsize  # W and out, or dW and G
    total += n * dim * (itemsize + 8)  # (n, D) rows, and the reference in float64
    K = kernels.KERNELS[kernel]
    rows = _bag_block_rows(bag_length, n, backward)
    return total + K.scratch_bytes(_bag_op(backward), vocab_size, dim, rows, itemsize)


def bag_over_budget(kernel, vocab_size, dim, bag_length, n=BAG_N_IDS, backward=False,
                    mode="sum", weighted=False):
    """Why this bag case is not run (a sentence), or None: what the kernel does not implement
    (lookup_bag or lookup_bag_grad for float32 tables, the mode: its `bag_modes` trait; weights
    with max, which no kernel takes), then its own limits (`over_budget`), then the memory
    budget. Cheap: nothing is built."""
    K = kernels.KERNELS[kernel]
    op = _bag_op(backward)
    if not K.implements(op, DTYPE.name):
        return f"{kernel}: {op.name} is not implemented for {DTYPE.name} tables"
    if mode not in K.bag_modes:
        return f"{kernel}: mode={mode!r} bags are not implemented"
    if weighted and mode == "max":
        return "mode='max' takes no per_sample_weights"
    rows = _bag_block_rows(bag_length, n, backward)
    reason = K.over_budget(op, vocab_size, dim, rows, DTYPE.itemsize)
    if reason:
        return reason
    need = estimated_bag_bytes(kernel, vocab_size, dim, bag_length, n, backward)
    if need > MAX_PROCESS_BYTES:
        return (
            f"{kernel}: needs ~{need / 2**30:.1f} GiB > {MAX_PROCESS_BYTES / 2**30:.0f} GiB budget"
        )
    return None


def require_bag(kernel, vocab_size, dim, bag_length, n=BAG_N_IDS, backward=False, mode="sum",
                weighted=False):
    """Raise NotImplementedError (asv: n/a) if the bag case is not implemented or beyond the
    budget."""
    reason = bag_over_budget(kernel, vocab_size, dim, bag_length, n, backward, mode, weighted)
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
    """A (vocab_size, dim) float32 table: every row distinct, finite, no -0.0, 64-byte aligned
    (kernels.aligned_empty), as torch allocates a tensor, so that the kernels and torch's peers
    read rows of whole cache lines.

    A seeded random block of `block_rows` rows in [-1, 1) is tiled down the table, block b shifted
    by 2 * b, so the table is built at memory speed (not the generator's) and a row copied from
    the wrong place cannot pass the bitwise check. No -0.0 can occur (2 * r - 1 is +0.0 at
    r = 0.5, and x + 0.0 is +0.0 for x = -0.0), so the one-hot kernels must match bitwise too.
    """
    rng = _rng("weights", seed, vocab_size, dim)
    base = rng.random((min(block_rows, vocab_size), dim), dtype=DTYPE)
    base *= 2
    base -= 1
    W = aligned_empty((vocab_size, dim), DTYPE)
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
    """(W, ids, out) for a forward benchmark, cached; out is preallocated, C-contiguous and
    64-byte aligned (aligned_empty), as the kernels allocate the outputs they stream."""
    return cached(
        ("lookup", vocab_size, dim, distribution),
        lambda: (
            make_weights(vocab_size, dim),
            make_ids(distribution, vocab_size),
            aligned_empty(BATCH_SHAPE + (dim,), DTYPE),
        ),
    )


def grad_data(vocab_size, dim):
    """(G, ids, dW) for a backward benchmark, cached; dW is preallocated (V, D)."""
    return cached(
        ("grad", vocab_size, dim),
        lambda: (make_grad(dim), uniform_ids(vocab_size), np.empty((vocab_size, dim), DTYPE)),
    )


def table(vocab_size, dim):
    """make_weights(vocab_size, dim), cached: the table the bag benchmarks share."""
    return cached(("table", vocab_size, dim), lambda: make_weights(vocab_size, dim))


def bag_ids(vocab_size, bag_length, n=BAG_N_IDS):
    """(ids, offsets), cached: n uniform int64 ids (1-D) in B = n / bag_length bags of
    bag_length ids each; offsets are the B bag starts (int64), torch's default form
    (include_last_offset=False)."""
    if n % bag_length:
        raise ValueError(f"n = {n} is not a multiple of bag_length = {bag_length}")
    return cached(
        ("bag_ids", vocab_size, bag_length, n),
        lambda: (
            uniform_ids(vocab_size, shape=(n,)),
            np.arange(0, n, bag_length, dtype=IDS_DTYPE),
        ),
    )


def bag_data(vocab_size, dim, bag_length, n=BAG_N_IDS):
    """(W, ids, offsets, out) for a forward bag benchmark, cached; out (B, D) is preallocated
    and 64-byte aligned, as the kernels allocate the outputs they stream."""
    W = table(vocab_size, dim)
    ids, offsets = bag_ids(vocab_size, bag_length, n)
    out = cached(("bag_out", dim, offsets.shape[0]),
                 lambda: aligned_empty((offsets.shape[0], dim), DTYPE))
    return W, ids, offsets, out


def bag_weights(n=BAG_N_IDS):
    """per_sample_weights for n ids, cached: float32 in [0.5, 1.5) (positive, so every mode's
    divisor is well away from 0)."""
    def make():
        w = _rng("bag_weights", n).random(n, dtype=DTYPE)
        w += 0.5
        return w

    return cached(("bag_weights", n), make)


def bag_grad_data(vocab_size, dim, bag_length, n=BAG_N_IDS):
    """(G, ids, offsets, dW) for a backward bag benchmark, cached: G (B, D) float32 in [-1, 1),
    dW (V, D) preallocated."""
    ids, offsets = bag_ids(vocab_size, bag_length, n)
    G = cached(("bag_grad", dim, offsets.shape[0]),
               lambda: make_grad(dim, shape=(offsets.shape[0],)))
    dW = cached(("bag_dW", vocab_size, dim), lambda: np.empty((vocab_size, dim), DTYPE))
    return G, ids, offsets, dW


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


assert_bag = LOOKUP_BAG.assert_matches


def check_bag(kernel, W, ids, offsets, out, mode="sum", per_sample_weights=None):
    """Call kernel.lookup_bag(W, ids, offsets, mode=, per_sample_weights=, out=out) on a
    NaN-filled out and check it against LOOKUP_BAG's float64 reference (within the summation
    bound; max bit for bit)."""
    K = kernels.KERNELS[kernel] if isinstance(kernel, str) else kernel
    out.fill(np.nan)
    result = K.lookup_bag(W, ids, offsets, mode=mode, per_sample_weights=per_sample_weights,
                          out=out)
    if result is not out:
        assert_bag(result, W, ids, offsets, mode, per_sample_weights,
                   what=f"{K.name} (returned array)")
    assert_bag(out, W, ids, offsets, mode, per_sample_weights, what=K.name)


def expanded_bag_grad(G, offsets, n):
    """The rows a sum-mode bag backward scatters: G[b] for each id of bag b, (n, D)."""
    bounds = np.append(offsets, n)
    return G[np.repeat(np.arange(G.shape[0]), np.diff(bounds))]


def check_bag_grad(kernel, G, ids, offsets, vocab_size, dW):
    """Call kernel.lookup_bag_grad(G, ids, offsets, V, mode="sum", out=dW) on a NaN-filled dW
    and check it: a sum-mode bag gradient is the lookup gradient of each id's bag row, so
    LOOKUP_GRAD's check of the expanded rows applies (each element within the summation bound
    of the float64 scatter-add, rows no id hits exactly +0.0)."""
    K = kernels.KERNELS[kernel] if isinstance(kernel, str) else kernel
    dW.fill(np.nan)
    result = K.lookup_bag_grad(G, ids, offsets, vocab_size, mode="sum", out=dW)
    expanded = expanded_bag_grad(G, offsets, ids.shape[0])
    if result is not dW:
        assert_grad(result, expanded, ids, vocab_size, f"{K.name} (returned array)")
    assert_grad(dW, expanded, ids, vocab_size, K.name)


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
    repeat = (2, 100, 0.25): at least 2 samples, at most 100, no new one after 0.25 s.
    rounds = 2: two processes per parameter set, run in two passes over the whole suite, so
    the samples come from two moments (the machines are shared); asv reports their median.
    Three rounds of 0.5 s took `make bench` to 35 min 47 s on a 12 GB/s 2-vCPU AMD EPYC (at
    5a16ec5; 29 min 44 s of it benchmarks), over the budget: a process of a small lookup spends
    most of its time sampling, one of a large table building and checking it.
    warmup_time = 0: setup's checked first call already warmed the kernel, caches and pages.
    """

    number = 1
    repeat = (2, 100, 0.25)
    rounds = 2
    warmup_time = 0.0
    timeout = 300


class BagTiming(Timing):
    """Timing of the bag classes (bench_bags, bench_peers.BagPeers): Timing's two rounds, but
    samples for at most 0.1 s a process, so that the ~300 bag parameter sets cost `make bench`
    at most ~7 minutes. A bag process builds its table (up to 1 GB at V = 1e6, D = 256) and
    checks the kernel against the float64 reference before timing: that, not the timed calls
    (0.1-30 ms for the gathers), is most of its cost, so the sampling time is what can go.
    0.1 s still holds 50 samples of a compiled bag.
    repeat = (2, 50, 0.1): at least 2 samples, at most 50, no new one after 0.1 s.
    """

    repeat = (2, 50, 0.1)


class TrainingTiming(Timing):
    """Timing with samples for at most 0.2 s a process (repeat = (2, 50, 0.2)) for the training
    classes (bench_training, bench_peers.TrainingPeers): a step takes 0.3-15 ms, so 0.2 s still
    holds 10+ samples, and most of a process is building its table (up to 2.5 GB) anyway.
    (Measured at bff28ce: the 36 SparseTraining sets of then and SparseTrainingMemory took 64 s
    of benchmarks on a quiet machine.)"""

    repeat = (2, 50, 0.2)


class FormatTiming(Timing):
    """Timing's attributes with one round and samples for at most 0.1 s a process: the ~150
    LowPrecision (and FormatPeers) points would otherwise cost `make bench` ~8 minutes (most of
    a process is its table and its check, not the timed calls)."""

    rounds = 1
    repeat = (2, 50, 0.1)


# ---------------------------------------------------------------------------------------------
# Training (bench_training): sparse gradients and optimizer steps

OPTIMIZERS = {"sgd": "SGD", "adagrad": "Adagrad", "rowwise_adagrad": "RowwiseAdagrad",
              "sparse_adam": "SparseAdam"}
"""Benchmark op name -> class of kernels.optim (constructed with lr only: their defaults)."""
TRAINING_LR = 0.01


def make_optimizer(op, W, kernel="cython_gather"):
    """kernels.optim.<OPTIMIZERS[op]>(W, TRAINING_LR, kernel=kernel)."""
    import kernels.optim

    return getattr(kernels.optim, OPTIMIZERS[op])(W, TRAINING_LR, kernel=kernel)


TORCH_OPTIMIZERS = {"SGD": "SGD", "Adagrad": "Adagrad", "SparseAdam": "SparseAdam"}
"""kernels.optim class -> torch.optim class of the same semantics (torch's defaults)."""
ROWWISE = "RowwiseAdagrad"
"""The kernels.optim class whose peer is FBGEMM's CPU TBE (EXACT_ROWWISE_ADAGRAD)."""


# The training peers (bench_peers.TrainingPeers, tools/train_step): torch is passed in, never
# imported here.

def fbgemm_tbe():
    """(SplitTableBatchedEmbeddingBagsCodegen, its enums) or None when fbgemm_gpu does not load."""
    try:
        import fbgemm_gpu  # noqa: F401
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
            EmbeddingLocation,
            PoolingMode,
        )
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            SplitTableBatchedEmbeddingBagsCodegen,
        )
    except Exception:  # noqa: BLE001 (any failure to load the optional peer: no column)
        return None
    return SplitTableBatchedEmbeddingBagsCodegen, EmbOptimType, EmbeddingLocation, \
        PoolingMode, ComputeDevice


def torch_training_step(torch, name, W, ids, G):
    """nn.Embedding(sparse=True) forward, (out * G).sum().backward(), optimizer step, zero_grad."""
    V, D = W.shape
    emb = torch.nn.Embedding(V, D, sparse=True)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(W))
    opt = getattr(torch.optim, TORCH_OPTIMIZERS[name])(emb.parameters(), lr=TRAINING_LR)
    tids, tG = torch.from_numpy(ids), torch.from_numpy(G)

    def step():
        out = emb(tids)
        (out * tG).sum().backward()
        opt.step()
        opt.zero_grad()

    return step


def fbgemm_training_step(torch, tbe, W, ids, G):
    """FBGEMM's CPU TBE with EXACT_ROWWISE_ADAGRAD (kernels.optim.RowwiseAdagrad's defaults:
    eps = 1e-8, no weight decay), bags of one id: forward, then backward (which updates)."""
    Codegen, EmbOptimType, EmbeddingLocation, PoolingMode, ComputeDevice = tbe
    V, D = W.shape
    module = Codegen([(V, D, EmbeddingLocation.HOST, ComputeDevice.CPU)],
                     optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD, learning_rate=TRAINING_LR, eps=1e-8,
                     pooling_mode=PoolingMode.SUM)
    with torch.no_grad():
        module.split_embedding_weights()[0].copy_(torch.from_numpy(W))
    tids = torch.from_numpy(ids)
    offsets = torch.arange(ids.shape[0] + 1, dtype=torch.int64)
    tG = torch.from_numpy(G)

    def step():
        module(tids, offsets).backward(tG)

    return step


def optimizer_state_tables(op, dim):
    """How many (V, D) tables the optimizer's state holds (0 for SGD, 1 for Adagrad, 2 for
    SparseAdam; RowwiseAdagrad's (V,) accumulator counts as 1/D), read from a (1, dim) instance
    so the fact stays in kernels.optim."""
    W = np.zeros((1, dim), DTYPE)
    state = make_optimizer(op, W, kernel="numpy_take").state
    return sum(a.size for a in state.values() if isinstance(a, np.ndarray)) / W.size


def estimated_training_bytes(op, vocab_size, dim, n=N_IDS, itemsize=DTYPE.itemsize):
    """Peak bytes of one SparseTraining process: G and ids; the coalesced gradient (rows and
    values, at most n rows) and the step's temporaries (~4 n-row arrays); for the optimizers the
    table and their state, all paged in (huge pages: uniform ids touch every page); for
    dense_grad the preallocated dW and the float64 reference of the check."""
    rows = n * dim * itemsize
    total = 4 * rows + 4 * n * IDS_DTYPE.itemsize
    table_bytes = vocab_size * dim * itemsize
    if op == "dense_grad":
        total += table_bytes + vocab_size * dim * 8
    elif op == "dense_sgd":
        total += 2 * table_bytes
    elif op in OPTIMIZERS:
        total += table_bytes * (1 + optimizer_state_tables(op, dim))
    return int(total)


def require_training_budget(op, vocab_size, dim, n=N_IDS):
    """Raise NotImplementedError (asv: n/a) if the training case is beyond the budget:
    the dense gradient at vocab_size > 1e6 (it is the scale reference, not a subject), or more
    than MAX_PROCESS_BYTES."""
    if op.startswith("dense") and vocab_size > 1_000_000:
        raise NotImplementedError(f"{op}: the scale reference is measured up to V = 1e6")
    need = estimated_training_bytes(op, vocab_size, dim, n)
    if need > MAX_PROCESS_BYTES:
        raise NotImplementedError(
            f"{op}: needs ~{need / 2**30:.1f} GiB > {MAX_PROCESS_BYTES / 2**30:.0f} GiB budget"
        )


def training_table(vocab_size, dim):
    """A writeable copy of make_weights(vocab_size, dim), cached: the optimizers update it in
    place (one process, one op, so one table)."""
    return cached(("training_table", vocab_size, dim), lambda: make_weights(vocab_size, dim))


def training_grad_data(vocab_size, dim, n=N_IDS):
    """(G (n, D), ids (n,)), cached: the uniform batch of every SparseTraining op."""
    return cached(
        ("training_grad", vocab_size, dim, n),
        lambda: (make_grad(dim, shape=(n,)), uniform_ids(vocab_size, shape=(n,))),
    )


# ---------------------------------------------------------------------------------------------
# Table formats (bench_formats): low-precision tables

FORMATS = ["float32", "float16", "bfloat16", "int8", "int4"]
"""The formats LowPrecision compares: float32 (the reference ndarray) and kernels' tables."""
FORMAT_KERNELS = [k for k in KERNELS if kernels.KERNELS[k].implements("lookup", "int8")]
"""The kernels LowPrecision times: those with every format (the one-hot kernels have only the
half-precision ones)."""
FORMAT_N_IDS = LOOKUP.format_benchmark_n_ids
"""ids of one LowPrecision call (lookups; bags: 8,192 bags of 8), read by the decision table."""
FORMAT_BAG_LENGTH = LOOKUP_BAG.format_bag_length


def format_table(fmt, vocab_size, dim, block_rows=4096):
    """A (vocab_size, dim) table of format fmt, cached. float32: make_weights. The others: a block
    of block_rows rows of make_weights quantized with kernels.quantize, tiled down the table at
    memory speed (a 1e7-row table without its 10 GB float32 source), each block's bias (or, for
    float16/bfloat16, every value) shifted so no two blocks hold the same rows. Every table
    starts on a cache line (kernels.aligned_empty)."""
    def make():
        if fmt == "float32":
            return make_weights(vocab_size, dim)
        block = kernels.quantize(make_weights(min(vocab_size, block_rows), dim), fmt).packed
        cls = type(kernels.quantize(np.zeros((0, dim), DTYPE), fmt))
        packed = aligned_empty((vocab_size,) + block.shape[1:], block.dtype)
        for r0 in range(0, vocab_size, block_rows):
            rows = packed[r0:r0 + block_rows]
            rows[...] = block[:rows.shape[0]]
            shift = 2 * (r0 // block_rows) % 256
            if fmt in ("float16", "bfloat16"):
                rows += rows.dtype.type(shift)
            elif fmt == "int8":
                rows[:, dim + 4:dim + 8].view(np.float32)[:, 0] += np.float32(shift)
            else:
                rows[:, dim // 2 + 2:dim // 2 + 4].view(np.float16)[:, 0] += np.float16(shift)
        return cls.from_packed(packed)

    return cached(("format_table", fmt, vocab_size, dim), make)


def format_bytes(fmt, vocab_size, dim, n=FORMAT_N_IDS):
    """Peak bytes of a LowPrecision process: the table, ids, the (n, D) float32 output and the
    check's decoded copy of the rows read (n, D float32, and their packed rows)."""
    row = kernels.FORMATS[fmt].row_bytes(dim)
    return vocab_size * row + n * (2 * dim * 4 + row + 8)


def require_format(kernel, fmt, vocab_size, dim, op="lookup"):
    """NotImplementedError (asv: n/a) when the kernel does not implement the format, or the
    point is beyond the budget: V = 1e7 only for int8 and int4 (the formats meant for tables
    that large), at most MAX_PROCESS_BYTES."""
    K = kernels.KERNELS[kernel]
    if not K.implements(op, fmt):
        raise NotImplementedError(f"{kernel} does not implement {op} for {fmt} tables")
    if vocab_size > 1_000_000 and fmt not in ("int8", "int4"):
        raise NotImplementedError(f"V = {vocab_size:.0e} is measured for int8 and int4 only")
    need = format_bytes(fmt, vocab_size, dim)
    if need > MAX_PROCESS_BYTES:
        raise NotImplementedError(f"needs ~{need / 2**30:.1f} GiB > budget")


def decoded_rows(table, ids):
    """The float32 rows a lookup of ids must return: W[ids] for an ndarray, else the rows' packed
    bytes wrapped as a table of their own and dequantized (never the whole table)."""
    if isinstance(table, np.ndarray):
        return table[ids]
    return type(table).from_packed(np.ascontiguousarray(table.packed[ids])).dequantize()


def check_format_lookup(K, table, ids, out):
    """K.lookup(table, ids, out=out) on a NaN-filled out equals decoded_rows bit for bit."""
    out.fill(np.nan)
    K.lookup(table, ids, out=out)
    assert_gathered(out, decoded_rows(table, ids), np.arange(ids.shape[0]),
                    f"{K.name} ({format_name(table)})")


def check_format_bag(K, table, ids, offsets, out):
    """K.lookup_bag(table, ids, offsets, out=out) within the summation bound of the float64
    reference over decoded_rows."""
    out.fill(np.nan)
    K.lookup_bag(table, ids, offsets, out=out)
    assert_bag(out, decoded_rows(table, ids), np.arange(ids.shape[0]), offsets,
               what=f"{K.name} ({format_name(table)})")


def format_name(table):
    return "float32" if isinstance(table, np.ndarray) else table.format


# PyTorch (bench_torch, tools/train_example): a small recommender, torch's bags against ours.
# torch is passed in, never imported here: the default asv environment has none.

RECSYS_DIM = 64
RECSYS_BATCH = 2_048
RECSYS_BAG_LENGTH = 8
RECSYS_HIDDEN = (256, 64)
RECSYS_LR = 0.05


def recsys_table(vocab_size, dim=RECSYS_DIM, seed=0, block_rows=4096):
    """A (vocab_size, dim) float32 table of small values (normal(0, 0.05)), a seeded block of
    rows tiled down the table so that it is built at memory speed; trainable (unlike
    make_weights, whose blocks are shifted apart). 64-byte aligned, as the weight of a torch
    module (nn.EmbeddingBag(V, D)) is."""
    rng = _rng("recsys_table", seed, vocab_size, dim)
    base = rng.standard_normal((min(block_rows, vocab_size), dim), dtype=DTYPE)
    base *= 0.05
    W = aligned_empty((vocab_size, dim), DTYPE)
    for start in range(0, vocab_size, block_rows):
        stop = min(start + block_rows, vocab_size)
        W[start:stop] = base[: stop - start]
    return W


def recsys_batch(vocab_sizes, batch=RECSYS_BATCH, bag_length=RECSYS_BAG_LENGTH, seed=0):
    """(ids, offsets, labels) of one batch of synthetic clicks: per table batch * bag_length
    uniform int64 ids in `batch` bags of bag_length (offsets: the bag starts), and a label per
    sample, 1.0 where a hidden score of its ids (a hash of each id, averaged per bag, summed
    over the tables) is positive."""
    rng = _rng("recsys_batch", seed, batch, bag_length)
    ids = [rng.integers(0, V, batch * bag_length, dtype=IDS_DTYPE) for V in vocab_sizes]
    score = sum(((i * 2654435761) % 1009 / 1009.0 - 0.5).reshape(batch, bag_length).mean(1)
                for i in ids)
    labels = (score > 0).astype(DTYPE)
    offsets = np.arange(0, batch * bag_length, bag_length, dtype=IDS_DTYPE)
    return ids, offsets, labels


def recsys_model(torch, bag_class, tables, hidden=RECSYS_HIDDEN, sparse=True, seed=0):
    """A torch module: one EmbeddingBag(mode="sum", sparse=sparse) of `bag_class`
    (torch.nn.EmbeddingBag or kernels.torch.EmbeddingBag) per table (each a (V, D) float32
    array, shared, not copied: torch.from_numpy), the pooled rows concatenated, then an MLP
    (Linear + ReLU per hidden width, then Linear to one click logit). The MLP is initialised
    from `seed`, so two models of the same seed differ only in their bags. forward(ids,
    offsets) takes one ids tensor per table and the shared offsets."""
    nn = torch.nn

    class Recommender(nn.Module):
        def __init__(self):
            super().__init__()
            self.bags = nn.ModuleList(
                bag_class.from_pretrained(torch.from_numpy(W), freeze=False, mode="sum",
                                          sparse=sparse) for W in tables)
            widths = [sum(W.shape[1] for W in tables), *hidden]
            layers = []
            for a, b in zip(widths, widths[1:]):
                layers += [nn.Linear(a, b), nn.ReLU()]
            layers.append(nn.Linear(widths[-1], 1))
            self.mlp = nn.Sequential(*layers)

        def pooled(self, ids, offsets):
            return torch.cat([bag(i, offsets) for bag, i in zip(self.bags, ids)], dim=1)

        def forward(self, ids, offsets):
            return self.mlp(self.pooled(ids, offsets)).squeeze(1)

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Recommender()

"""The bags section of the roofline script: every bag form against the row-read floor.

    python -m tools.roofline --bags            # V 1e4,1e6,2e6 x D 16,64,256 x bag length 1,8,64
    python -m tools.roofline --bags --quick    # a 2 x 2 x 2 subset, fewer rounds
    python -m tools.roofline --bags --id-sets 8  # 8 sets of ids in turn: rows not left in L3

A bag reads n rows and writes B = n / bag_length rows. The time to read the same n rows, summed
into a per-thread accumulator of D floats and written nowhere (`read_rows`), is the floor of any
bag. Four read loops are timed: 4 or 8 rows summed a step, each without and with row prefetch
(kernels._cpu.bag_prefetch_rows ids ahead, as the compiled bags prefetch beyond L2); the
fastest is the floor and the table names it. They run on kernels.get_num_threads() threads, the
ids split in equal contiguous chunks as the compiled gathers split them.

The table is 64-byte aligned (kernels.aligned_empty), as torch's are. Timed at each (V, D),
interleaved round after round in a shuffled order (kernels._timing's median_seconds; a time in
the table is the best per-round median, a ratio the median over rounds of the two methods'
times in the same round, kernels._timing.paired_ratio): the four floors, every registered
kernel's lookup_bag (mode sum, offsets of equal bags, into a preallocated out, 64-byte aligned
as the kernels allocate their own large outputs, so that cython_gather may stream it) unless
the kernel does not implement it (NotImplementedError, no float32 function, no sum mode) or is
over its budget (its `over_budget` trait, called with the number of bags, the rows of a
multi-hot block), torch.nn.functional.embedding_bag on the same number of threads when torch
is importable (it allocates its output: no `out=` exists), and at bag length 1 the plain
lookup of every compiled kernel into a preallocated (n, D) out, aligned too. Every method reads
the same set of ids each call, or with --id-sets K the next of K sets (kernels._timing.in_turn:
rows a call read are not still in the cache for the next, beyond L3). A method whose
first call took long is timed with fewer repeats per round (at least one), so the dense
one-hot's 1 s calls do not take the whole budget.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

import kernels
from kernels._cpu import bag_prefetch_rows
from kernels._numba_intrinsics import prefetch_row
from kernels._timing import (as_id_sets, calls_in_turn, median_seconds, paired_ratio,
                             per_call_seconds)
from kernels.numba_gather import _numba_threads, _run_parallel

LOOKUP_BAG = kernels.OPERATIONS["lookup_bag"]
FULL = {"vocab": (10_000, 1_000_000, 2_000_000), "dims": (16, 64, 256), "bag_lengths": (1, 8, 64),
        "rounds": 9, "reps": 3, "passes": 3}
QUICK = {"vocab": (10_000, 1_000_000), "dims": (16, 256), "bag_lengths": (1, 8),
         "rounds": 4, "reps": 3, "passes": 2}
"""The grids of `--bags` and `--bags --quick` (n = 65,536 float32 ids, uniform, mode sum). Many
short rounds over several passes of the grid rather than a few long rounds at each size: this
machine's noisy episodes (every 2-thread call waiting a scheduler slice) last seconds, and a
method's best round must fall outside one."""

FLOOR = {f"floor ({g} rows{pf})": (g, p) for g in (4, 8)
         for p, pf in ((False, ""), (True, ", prefetch"))}
"""The row-read loops timed, name -> (rows a step, whether rows are prefetched
bag_prefetch_rows ahead); the fastest is the floor."""
TORCH = "torch embedding_bag"
FBGEMM = "fbgemm TBE"
LOOKUP_PREFIX = "lookup "
ROUND_SECONDS = 0.25
"""Per method and round, about this long of timed calls (never fewer than one call)."""
ROUNDS = "rounds"
"""A row's {method: [seconds of each round]}, the rounds of every method in the same order."""
KEYS = ("V", "D", "bag_length", "n", ROUNDS)


# ---------------------------------------------------------------------------------------------
# The floor


@njit(cache=True, nogil=True, inline="always")
def _u(j):
    """An id as an unsigned index: W[j, k] then compiles without the negative-index wrap
    (measured 20% faster at D = 16); ids are in range by read_rows' contract."""
    return np.uint64(j)


@njit(cache=True, nogil=True)
def _read_rows4(W, ids, lo, hi, prefetch):
    """Sum rows W[ids[lo:hi]] into one accumulator of D floats (the table's dtype), four rows a
    step ((a + b) + (c + d) added to it: four loads in flight, one dependency on the accumulator
    per four rows), and return the sum of the accumulator. Nothing is written but the
    accumulator, which stays in L1."""
    D = W.shape[1]
    acc = np.zeros(D, W.dtype)
    i = lo
    while i + 4 <= hi:
        if prefetch and i + prefetch + 4 <= hi:
            for p in range(4):
                prefetch_row(W, ids[i + prefetch + p])
        a, b, c, d = _u(ids[i]), _u(ids[i + 1]), _u(ids[i + 2]), _u(ids[i + 3])
        for k in range(D):
            acc[k] += (W[a, k] + W[b, k]) + (W[c, k] + W[d, k])
        i += 4
    for i in range(i, hi):
        j = _u(ids[i])
        for k in range(D):
            acc[k] += W[j, k]
    total = 0.0
    for k in range(D):
        total += acc[k]
    return total


@njit(cache=True, nogil=True)
def _read_rows8(W, ids, lo, hi, prefetch):
    """_read_rows4 with eight rows a step (measured faster at D = 256, slower at D = 16)."""
    D = W.shape[1]
    acc = np.zeros(D, W.dtype)
    i = lo
    while i + 8 <= hi:
        if prefetch and i + prefetch + 8 <= hi:
            for p in range(8):
                prefetch_row(W, ids[i + prefetch + p])
        a, b, c, d = _u(ids[i]), _u(ids[i + 1]), _u(ids[i + 2]), _u(ids[i + 3])
        e, f, g, h = _u(ids[i + 4]), _u(ids[i + 5]), _u(ids[i + 6]), _u(ids[i + 7])
        for k in range(D):
            acc[k] += (((W[a, k] + W[b, k]) + (W[c, k] + W[d, k]))
                       + ((W[e, k] + W[f, k]) + (W[g, k] + W[h, k])))
        i += 8
    for i in range(i, hi):
        j = _u(ids[i])
        for k in range(D):
            acc[k] += W[j, k]
    total = 0.0
    for k in range(D):
        total += acc[k]
    return total


@njit(cache=True, nogil=True)
def _read_rows(W, ids, lo, hi, group, prefetch):
    if group == 8:
        return _read_rows8(W, ids, lo, hi, prefetch)
    return _read_rows4(W, ids, lo, hi, prefetch)


@njit(parallel=True, cache=True, nogil=True)
def _read_rows_parallel(W, ids, group, prefetch, nthreads):
    n = ids.shape[0]
    total = 0.0
    for c in prange(nthreads):
        total += _read_rows(W, ids, n * c // nthreads, n * (c + 1) // nthreads, group, prefetch)
    return total


GROUPS = (4, 8)
"""Rows summed per step by the floor's loops."""


def read_rows(W, ids, prefetch=0, group=4, nthreads=None):
    """The floor of a bag: read the rows W[ids] (ids in range, W a C-contiguous table) summing
    them into a per-thread accumulator, `group` rows a step (4 or 8), on nthreads threads
    (default kernels.get_num_threads()), each thread a contiguous chunk of ids, prefetching rows
    `prefetch` ids ahead (0: none). Returns the checksum, the float64 sum of the per-thread
    float32 (the table's dtype) sums: sum(W[ids]) up to rounding."""
    if not W.flags.c_contiguous:
        raise ValueError("read_rows needs a C-contiguous table")
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
    nthreads = _numba_threads(kernels.get_num_threads() if nthreads is None else nthreads)
    if nthreads == 1:
        return _read_rows(W, ids, 0, ids.shape[0], group, prefetch)
    return _run_parallel(_read_rows_parallel, W, ids, group, prefetch, nthreads)


# ---------------------------------------------------------------------------------------------
# What is timed


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def bag_methods(W, ids, bag_lengths, torch=None):
    """({key: zero-argument callable}, {kernel: why it is not run}) at one table and ids (one
    1-D array, or a list of equally long ones that each method takes in turn, one a call) for
    every bag length; keys are (bag_length, method), bag_length None for the floors."""
    sets = as_id_sets(ids)
    ids = sets[0]
    n, (V, D) = ids.shape[0], W.shape
    if any(s.shape != ids.shape for s in sets):
        raise ValueError(f"every set of ids must hold {n} ids")
    ahead = bag_prefetch_rows(D * W.itemsize)
    methods = {}
    for name, (g, p) in FLOOR.items():
        methods[None, name] = calls_in_turn(
            lambda i, g=g, p=p: read_rows(W, i, ahead if p else 0, g), sets)
    skipped = {}
    if torch is not None:
        torch.set_num_threads(kernels.get_num_threads())
        Wt, tsets = torch.from_numpy(W), [torch.from_numpy(s) for s in sets]
    for L in bag_lengths:
        B = n // L
        offsets = np.arange(0, n, L, dtype=ids.dtype)
        out = kernels.aligned_empty((B, D), W.dtype)
        for name, k in kernels.KERNELS.items():
            why = _why_not(k, V, D, B, W, ids, offsets, out)
            if why:
                skipped.setdefault(name, set()).add(why)
                continue
            methods[L, name] = calls_in_turn(lambda i, k=k, o=offsets, out=out:
                                             k.lookup_bag(W, i, o, mode="sum", out=out), sets)
        if torch is not None:
            ot = torch.from_numpy(offsets)
            methods[L, TORCH] = calls_in_turn(
                lambda i, o=ot: torch.nn.functional.embedding_bag(i, Wt, o, mode="sum"), tsets)
            try:
                from benchmarks.bench_peers import _fbgemm_bag

                bounds = torch.from_numpy(np.append(offsets, n).astype(np.int64))
                fbgemm = [_fbgemm_bag(torch, Wt, t, bounds) for t in tsets]
                methods[L, FBGEMM] = calls_in_turn(lambda call: call(), fbgemm)
            except NotImplementedError as e:
                skipped.setdefault(FBGEMM, set()).add(str(e))
        if L == 1:
            rows = kernels.aligned_empty((n, D), W.dtype)
            for name, k in kernels.KERNELS.items():
                if k.compiled and k.implements("lookup", W.dtype.name):
                    methods[L, LOOKUP_PREFIX + name] = calls_in_turn(
                        lambda i, k=k: k.lookup(W, i, out=rows), sets)
    return methods, skipped


def _why_not(k, V, D, B, W, ids, offsets, out):
    """Why kernel k's bag is not timed here (a sentence), or None."""
    if not k.implements(LOOKUP_BAG, W.dtype.name) or "sum" not in k.bag_modes:
        return f"no lookup_bag (mode sum) for {W.dtype.name} tables"
    reason = k.over_budget(LOOKUP_BAG, V, D, B, W.itemsize)
    if reason:
        return reason
    try:
        k.lookup_bag(W, ids[:1], offsets[:1], mode="sum", out=out[:1])
    except NotImplementedError as e:
        return f"NotImplementedError: {e}"
    return None


def time_interleaved(methods, rounds, reps, rng, round_seconds=ROUND_SECONDS):
    """{key: [median seconds of each round]}, the methods timed in turn in a new shuffled
    order each round (kernels._timing.median_seconds), after two warm-up calls each
    (compilation, first touch of pages); a method whose second call took t seconds gets
    min(reps, round_seconds / t) repeats a round, at least one."""
    reps_of = {}
    for key, fn in methods.items():
        fn()
        t = per_call_seconds(fn)
        reps_of[key] = max(1, min(reps, int(round_seconds / max(t, 1e-9))))
    times = {key: [] for key in methods}
    order = list(methods)
    for _ in range(rounds):
        rng.shuffle(order)
        for key in order:
            times[key].append(median_seconds(methods[key], reps_of[key]))
    return times


def measure_bags(vocab_sizes, dims, bag_lengths, n=65_536, rounds=5, reps=5, passes=1, seed=0,
                 log=print, id_sets=1):
    """(rows, skipped): a row {'V','D','bag_length','n', method: seconds} per size and bag
    length (the floors in every row of their (V, D)); skipped: {kernel: [reasons]}.

    The grid is visited `passes` times, each time with rounds // passes rounds (at least one) at
    every size and the same table and ids (seeded by seed, V, D: one set of n ids, or id_sets
    sets handed to each method in turn); a method keeps its best over all passes. So the rounds
    of one size are spread over the whole run, not bunched into a few seconds that a noisy
    episode can cover entirely."""
    uneven = [L for L in bag_lengths if L < 1 or n % L]
    if uneven:
        raise ValueError(f"n = {n} must be a multiple of every bag length, not of {uneven}: the "
                         f"bags and the floor read the same n rows")
    order_rng = np.random.default_rng(seed)
    torch = _torch()
    for group in GROUPS:  # compile (or load from the cache) once
        read_rows(np.zeros((2, 1), np.float32), np.zeros(1, np.int64), 0, group)
    best, skipped = {}, {}
    for p in range(passes):
        for V in vocab_sizes:
            for D in dims:
                rng = np.random.default_rng([seed, V, D])
                W = kernels.aligned_empty((V, D))  # as torch allocates its tables
                W[...] = rng.random((V, D), dtype=np.float32) - np.float32(0.5)
                ids = [rng.integers(0, V, n) for _ in range(id_sets)]
                methods, why = bag_methods(W, ids, bag_lengths, torch)
                for name, reasons in why.items():
                    skipped.setdefault(name, set()).update(reasons)
                times = time_interleaved(methods, max(1, rounds // passes), reps, order_rng)
                old = best.setdefault((V, D), {})
                for key, t in times.items():
                    old.setdefault(key, []).extend(t)  # one list of rounds over all passes
                log(f"  measured bags V={V:.0e} D={D}"
                    + (f" (pass {p + 1} of {passes})" if passes > 1 else ""), flush=True)
                del W, methods
    rows = []
    for V in vocab_sizes:
        for D in dims:
            times = best[V, D]
            floors = {name: min(times[None, name]) for name in FLOOR}
            for L in bag_lengths:
                row = {"V": V, "D": D, "bag_length": L, "n": n, **floors}
                row.update({m: min(t) for (bl, m), t in times.items() if bl == L})
                row[ROUNDS] = {m: t for (bl, m), t in times.items() if bl == L}
                rows.append(row)
    return rows, {k: sorted(v) for k, v in skipped.items()}


# ---------------------------------------------------------------------------------------------
# The table


def floor_of(row):
    """(seconds, which): the faster of the two row-read floors in a row."""
    name = min(FLOOR, key=lambda m: row[m])
    return row[name], name[len("floor ("):-1]


def _ms(t):
    return f"{t * 1e3:.3g}" if t < 1e-3 else f"{t * 1e3:.2f}"


def _best(row, names):
    """The fastest of the methods `names` timed in row, or None."""
    timed = [m for m in names if m in row]
    return min(timed, key=lambda m: row[m]) if timed else None


def _ratio(row, a, b, fmt="{:.2f}"):
    """Method a's time over method b's in row: the median over rounds of their times in the
    same round (kernels._timing.paired_ratio) when the row holds their rounds, else the ratio
    of their bests; "n/a" if either was not timed."""
    if a is None or b is None or a not in row or b not in row:
        return "n/a"
    rounds = row.get(ROUNDS, {})
    if a in rounds and b in rounds:
        return fmt.format(paired_ratio(rounds[a], rounds[b]))
    return fmt.format(row[a] / row[b])


def bag_table(rows):
    """Markdown: per (V, D, bag length) the floor, each method's ms and % of the floor
    (floor / time * 100), and the ratios of the issue."""
    if not rows:
        return "\n### bags\n\n(no rows)"
    known = set(KEYS) | set(FLOOR)
    methods = list(dict.fromkeys(m for r in rows for m in r if m not in known))
    names = kernels.KERNELS
    compiled = [m for m in methods if m in names and names[m].compiled]
    gathers = [m for m in methods if m in names and names[m].family == "gather"]
    lookups = [m for m in methods if m.startswith(LOOKUP_PREFIX)]
    onehots = [m for m in methods if m in names and names[m].family == "onehot"]
    head = ["V", "D", "bag length", "floor ms (which)"]
    head += [f"{m} ms (% floor)" for m in methods]
    torch = TORCH in methods
    fbgemm = FBGEMM in methods
    head += ["best compiled bag % floor"] + ([f"x {TORCH}"] if torch else [])
    head += [f"x {FBGEMM}"] if fbgemm else []
    head += ["bag / lookup (length 1)"]
    head += [f"{m} / fastest gather bag" for m in onehots]
    lines = [f"\n### bags (n = {rows[0]['n']:,} ids, float32, mode sum, uniform ids)\n",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        floor, which = floor_of(r)
        cells = [f"{r['V']:.0e}", str(r["D"]), str(r["bag_length"]), f"{_ms(floor)} ({which})"]
        cells += [f"{_ms(r[m])} ({floor / r[m] * 100:.0f}%)" if m in r else "n/a"
                  for m in methods]
        best_c = _best(r, compiled)
        cells.append("n/a" if best_c is None else f"{floor / r[best_c] * 100:.0f}%")
        if torch:
            cells.append(_ratio(r, TORCH, best_c))
        if fbgemm:
            cells.append(_ratio(r, FBGEMM, best_c))
        cells.append(_ratio(r, best_c, _best(r, lookups)) if r["bag_length"] == 1 else "")
        best_g = _best(r, gathers)
        cells += [_ratio(r, m, best_g, "{:.1f}") for m in onehots]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    note = ("Times: the best per-round median; ratios: the median over rounds of the two "
            "methods' times in the same round. bag / lookup: the best compiled bag's time at bag "
            "length 1 / the best compiled plain lookup of the same ids into a preallocated out. "
            "Onehot ratios: time / the fastest gather-family bag's time.")
    if torch:
        note = (f"x {TORCH}: torch's time / the best compiled bag's (> 1: ours is faster); torch "
                "allocates its output every call, the kernels write a preallocated out. " + note)
    if fbgemm:
        note = (f"x {FBGEMM}: FBGEMM's table-batched CPU op with one table "
                "(benchmarks.bench_peers._fbgemm_bag; it allocates its output) / the best "
                "compiled bag's time. " + note)
    lines.append(note)
    return "\n".join(lines)


def skipped_text(skipped):
    """One line per kernel not timed somewhere, with why."""
    return "\n".join(f"- {name} not run where: {'; '.join(reasons)}"
                     for name, reasons in skipped.items())

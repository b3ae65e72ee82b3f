"""Cache sizes of this CPU, read once from Linux sysfs (conservative defaults elsewhere), the
prefetch distances tuned on them, and cache-line aligned tables."""
import math

import numpy as np


def _cache_bytes(level, default):
    try:
        for index in range(8):
            base = f"/sys/devices/system/cpu/cpu0/cache/index{index}"
            with open(f"{base}/level") as f:
                if int(f.read()) != level:
                    continue
            with open(f"{base}/size") as f:
                text = f.read().strip()
            scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1], 1)
            return int(text.rstrip("KMG")) * scale
    except (OSError, ValueError):
        pass
    return default


L2_BYTES = _cache_bytes(2, 512 * 2**10)
L3_BYTES = _cache_bytes(3, 8 * 2**20)

def _table_bytes(A):
    """The bytes the rows of the 2-D table A span: rows times row stride."""
    return A.shape[0] * abs(A.strides[0])


def _every_line_beyond_l3(distance, A):
    """distance negated (cython_gather's loops then prefetch every line of a row) when the
    table A is larger than the last-level cache, else as it is."""
    return -distance if _table_bytes(A) > L3_BYTES else distance


PREFETCH_DISTANCE = 12
"""How many ids ahead numba_gather's lookups prefetch rows (12-16 measured best at D = 64);
cython_gather's take copy_prefetch_distance."""


def prefetch_distance(W):
    """PREFETCH_DISTANCE when the table W does not fit in L2, else 0 (prefetching rows already
    in cache was measured to cost time): how far ahead the compiled lookups fetch rows, of
    every length. Rows under 128 bytes were left out until 2026-11-27 (measured then, on
    another machine of the kind, with tables 16 bytes past a cache line: up to 30% slower for
    numba_gather, nothing gained for cython_gather). Measured on an AMD EPYC (n = 65,536,
    2 threads, per-round medians of 15 interleaved rounds, none / 12 ahead, D = 8 and 16,
    tables beyond L2 from V = 1e4 to 2e6): cython_gather through kernels.lookup 1.06-1.28x
    faster on 64-byte aligned tables and 1.09-1.49x on NumPy's own (16 bytes past a line),
    numba_gather 1.01-1.12x and 1.09-2.13x (V = 1e6, D = 8: 1.73 -> 0.79 ms); bare
    cython_gather at n = 16,384 1.08-1.14x; 8, 12 and 16 ahead alike."""
    return PREFETCH_DISTANCE if _table_bytes(W) > L2_BYTES else 0


BAG_PREFETCH_DISTANCE = 24
"""How many ids ahead the compiled bags prefetch float rows of up to BAG_PREFETCH_BYTES / 24
bytes. Measured (cython_gather, n = 65,536, V = 1e6, bags of 8, 2 threads, one interleaved
run): none / 8 / 12 / 16 / 24 ahead took 0.164 / 0.153 / 0.153 / 0.153 / 0.152 ms at D = 16
and 1.24 / 0.66 / 0.57 / 0.53 / 0.55 ms at D = 64 (tables 16 bytes past a cache line). On
64-byte aligned tables (kernels.aligned_empty), an AMD EPYC, medians of calls repeated on the
same ids: 12 / 16 / 24 / 32 ahead took 0.314 / 0.273 / 0.262 / 0.265 ms at D = 64 (bags of 64:
0.256 / 0.236 / 0.216 / 0.217) and 0.098 / 0.095 / 0.093 / 0.093 ms at D = 16. A bag does
little besides reading rows, so even one-line rows gain."""

BAG_PREFETCH_BYTES = 8192
"""Longer float rows are prefetched this many bytes of rows ahead (at least one row): 24 rows of
1 KB fill most of a 32 KB L1 and evict rows not yet added. Measured as above at D = 256 (1 KB
rows), 4 / 8 / 12 / 16 / 24 rows ahead: bags of 8 2.97 / 2.82 / 2.92 / 2.88 / 2.88 ms at V = 1e6
and 0.572 / 0.537 / 0.559 / 0.565 / 0.619 ms at V = 1e4 (a 10 MB table, beyond L2)."""

DECODE_PREFETCH_DISTANCE = 16
"""How many ids ahead the compiled gathers and bags of low-precision tables prefetch a row's
first cache line. Measured (cython_gather bags, V = 2e6, int8 and int4, D = 64 / 128 / 256,
bags of 8 and of 1): 16 ahead was fastest or level everywhere against 8 and 24; 24 cost up to
1.6x at D = 256 (int8 bags of one: 2.04 against 3.06 ms)."""


FAR_PREFETCH_BYTES = 8192
FAR_PREFETCH_MAX = 128
"""Beyond the last-level cache, the compiled bags of several ids a bag prefetch about this many
bytes of rows ahead (some 128 lines), at most FAR_PREFETCH_MAX ids: far_bag_rows. Measured on
an AMD Zen 5 (cython_gather, V = 2e6, n = 65,536, bags of 8, 2 threads, 16 sets of ids in turn
so that rows come from memory, 9 interleaved rounds, paired, against the distances before):
int8 D = 64 2.3x faster (16 -> 79-118 ids ahead), int4 D = 64 2.4x, float16 D = 64 1.7x,
int8 D = 128 1.3x, int4 D = 256 1.3x, float16 D = 128 1.1x, int8 and bfloat16 D = 256 level;
float32 D = 16 2.1x (24 -> 128), D = 64 1.1x, D >= 128 level (their distance was already this
span). 64 lines ahead gained less and 192-256 no more; fewer than 16 rows ahead lost (0.83x,
bfloat16 D = 256). The lookups and bags of one id did not gain (0.91-1.07x): they keep theirs."""


def far_bag_rows(row_bytes, least):
    """How many rows of row_bytes a compiled bag of a table beyond the last-level cache
    prefetches ahead: FAR_PREFETCH_BYTES of them, at least `least`, at most FAR_PREFETCH_MAX."""
    return max(least, min(FAR_PREFETCH_MAX, FAR_PREFETCH_BYTES // max(1, row_bytes)))


def _distance(A, near, least, several, cached_bytes=None):
    """The prefetch distance of a compiled loop over the rows of table A: 0 when A fits in L2
    (or in cached_bytes, when given); far_bag_rows (at least `least`) for bags of several ids a
    bag of a table beyond the last-level cache; else near."""
    table_bytes = _table_bytes(A)
    if table_bytes <= (L2_BYTES if cached_bytes is None else cached_bytes):
        return 0
    if several and table_bytes > L3_BYTES:
        return far_bag_rows(A.shape[1] * A.itemsize, least)
    return near


def bag_prefetch_rows(row_bytes):
    """How many rows of row_bytes a compiled float bag prefetches ahead beyond L2:
    BAG_PREFETCH_DISTANCE, fewer for rows longer than BAG_PREFETCH_BYTES / that (at least 1)."""
    return max(1, min(BAG_PREFETCH_DISTANCE, BAG_PREFETCH_BYTES // max(1, row_bytes)))


def bag_prefetch_distance(W, single=False):
    """How far ahead a compiled bag of the float table W prefetches rows: 0 when W fits in L2,
    else bag_prefetch_rows of its rows, or far_bag_rows beyond the last-level cache for bags
    of several ids (single: bags of one id each)."""
    return _distance(W, bag_prefetch_rows(W.shape[1] * W.itemsize), 1, not single)


def copy_prefetch_distance(W):
    """How far ahead cython_gather's float lookups and bags of one id, which copy whole rows and
    prefetch every line of each, fetch rows of the table W: bag_prefetch_distance(W, single=
    True), up to 24 rows and about 8 KB ahead beyond L2. Measured (an AMD Zen 5, n = 65,536,
    2 threads, NumPy's tables, per-round medians of 11 interleaved rounds, against 12 ahead):
    D = 32 at V = 2e6 24 ahead 0.85x the time; D = 64 24 ahead 0.86x at V = 1e5 (within L3),
    level at V = 2e6; D = 128 and 256 6 to 32 ahead within 0.97-1.06x."""
    return bag_prefetch_distance(W, single=True)


def bag_prefetch(W, single=False):
    """bag_prefetch_distance(W) as cython_gather's float bags take it: negated when W is larger
    than the last-level cache (its float64 bags of one id, or on a CPU without AVX, then
    prefetch every line of a row, not only its first). Measured (cython_gather bags of one,
    V = 1e4 / 1e6 / 2e6, D = 64, 2 threads, two builds side by side, per-round median of 11
    interleaved rounds, before they took the lookup's loop): every line took 1.16 / 0.91 / 0.96
    times as long as the first line only.
    single (bags of one id each): copy_prefetch_distance, as the lookup's rows are fetched
    (float32 rows of a multiple of 32 bytes then take the lookup's loop, every line of a row
    prefetched at any distance)."""
    return _every_line_beyond_l3(bag_prefetch_distance(W, single), W)


DECODE_BAG_PREFETCH_MIN_BYTES = L2_BYTES // 4
"""Bags of several low-precision ids a bag prefetch rows of tables larger than this, L2 or not:
a call's output and ids pass through L2 too (n = 65,536, bags of 8, D = 64: 2 MB and 512 KB)
and evict the table's rows. Measured (an AMD Zen 5 with 1 MB of L2 a core, cython_gather bags
of 8, n = 65,536, 2 threads, per-round medians of 11 interleaved rounds, none / 16 ahead):
int8 and int4 tables of 0.36-1.36 MB 1.07-1.36x faster (int8 D = 128, V = 1e4: 0.132 -> 0.097
ms), of 0.41 MB at D = 128 1.10x; tables of 0.01-0.24 MB 0.71-1.04x (D = 16 rows lost most)."""


def decode_prefetch_distance(S, bag=False):
    """How far ahead a compiled gather or bag of the low-precision storage S (kernels._numba_lowp
    .storage) prefetches rows: 0 when S fits in L2, else DECODE_PREFETCH_DISTANCE, or for bags
    of several ids (bag) of a table beyond the last-level cache far_bag_rows; bags of several
    ids prefetch DECODE_PREFETCH_DISTANCE ahead from DECODE_BAG_PREFETCH_MIN_BYTES up."""
    return _distance(S, DECODE_PREFETCH_DISTANCE, DECODE_PREFETCH_DISTANCE, bag,
                     min(DECODE_BAG_PREFETCH_MIN_BYTES, L2_BYTES) if bag else None)


def decode_prefetch(S, bag=False):
    """decode_prefetch_distance(S) as cython_gather's decoding loops take it: negated (every line
    of each row prefetched, not only its first, or first and last) when S is larger than the
    last-level cache. Measured (cython_gather, n = 65,536, 2 threads, an AMD EPYC with 12 GB/s
    of copy bandwidth, one interleaved run each; first / every line): beyond L3 (V = 2e6)
    bags of 8 1.3-2.0x faster at D >= 128 for every format and for float16 and bfloat16 at
    D = 64 (int8 D = 256 8.42 -> 4.52 ms, int4 D = 128 3.39 -> 1.67, float16 D = 64 3.50 ->
    1.80), lookups and bags of one 0.95-1.56x; within L3 (V = 1e4) every line cost up to 1.35x
    (float16 D = 256 lookups 4.55 -> 5.92 ms), so it is kept for tables beyond it. (Bags of
    rows that take several passes prefetch every line, spread over the passes, at any positive
    distance: see EK_DECODE_PASS in kernels/_cython_gather.pyx.)"""
    return _every_line_beyond_l3(decode_prefetch_distance(S, bag), S)


STREAM_MIN_BYTES = L3_BYTES
"""Outputs at least this large are written with non-temporal stores by cython_gather's lookups
(see stream_output)."""

def cpuinfo(text=None):
    """The fields of the first processor in /proc/cpuinfo (or in `text`, that file's format),
    name -> value; {} without the file."""
    if text is None:
        try:
            with open("/proc/cpuinfo") as f:
                text = ""
                for line in f:  # up to the blank line after the first processor
                    if not line.strip():
                        break
                    text += line
        except OSError:
            return {}
    fields = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _amd_family(fields):
    """The CPU family of an AMD processor from its cpuinfo() fields, else None."""
    try:
        family = int(fields.get("cpu family", ""))
    except ValueError:
        return None
    return family if fields.get("vendor_id") == "AuthenticAMD" else None


REGULAR_STORES_BESIDE_TABLE = frozenset({26})
"""AMD CPU families whose outputs smaller than the last-level cache are not streamed beside a
table (STREAM_BESIDE_TABLE_MIN_BYTES is the cache itself there). Measured on an AMD EPYC of
family 26 (Zen 5, 32 MB L3, 47 GB/s; cython_gather through kernels.lookup and lookup_bag, 2
threads, 8 id sets in turn, per-round medians of 9 interleaved rounds, streamed / regular, each
call followed by out.max() as its reader): 16-24 MB outputs beside tables of 77 MB-1 GB, float32,
int8 and float16 rows, lookups and bags of one, 1.12-1.44x as long streamed; float32 lookups at
V = 2e6 and 3e5, D = 64, uniform ids (one set, or 8 in turn) and Zipf ids (a = 1.05, 1.1)
1.17-1.57x, and 0.97-1.56x with no reader; np.sum, np.add and a row sum as readers 1.13-1.22x.
On the family 25 machine (Zen 3, 12 GB/s) streaming there took 0.53-0.82x the time
(stream_output), so every other CPU keeps the rule."""


def _beside_table_min_bytes(family):
    """STREAM_BESIDE_TABLE_MIN_BYTES on a CPU of this AMD family (None: not AMD)."""
    return L3_BYTES if family in REGULAR_STORES_BESIDE_TABLE else L3_BYTES // 2


STREAM_BESIDE_TABLE_MIN_BYTES = _beside_table_min_bytes(_amd_family(cpuinfo()))
"""Outputs at least this large are streamed too when they and the table together are larger
than the last-level cache (see stream_output): half of it, or all of it (no output under the
cache streamed) on the CPU families of REGULAR_STORES_BESIDE_TABLE."""


def stream_output(out, table=0):
    """Whether cython_gather's lookups write `out` with non-temporal (streaming) stores: when its
    rows are 32-byte aligned (the kernels check again, and store as usual otherwise) and it is
    at least STREAM_MIN_BYTES (the last-level cache: such an output cannot stay cached for its
    reader anyway, and regular stores first read each of its lines and evict table rows), or
    at least STREAM_BESIDE_TABLE_MIN_BYTES while it and the table (the 2-D array it is written
    beside, or that table's bytes) do not fit in the last-level cache together.
    Measured in a C harness (n = 65,536, 2 threads, an AMD EPYC with 32 MB of L3 and 12 GB/s,
    one interleaved run, 256-bit streaming stores / regular ones): float32 rows 1.12-2.04x at
    32-64 MB of output, float16 and int8 rows 1.26-2.78x; at 16 MB (V = 1e4, D = 64) they cost
    float16 and int8 1.3-1.4x. Measured again through cython_gather (aligned outputs, 2
    threads, per-round medians of 15 interleaved rounds, streamed / regular; "then read": the
    lookup and out.max() after it, as a reader of the output pays too), a 16 MB output
    (n = 65,536, D = 64) beside a table it does not fit with (V = 1e5, 1e6, 2e6): lookups
    0.53-0.82x the time, then read 0.70-0.88x for float32 and float16, 0.88-1.11x for int8;
    beside a table it fits with (V = 1e4, 3e4), then read 0.90-1.17x; 4 and 8 MB outputs then
    read up to 2.9x and 1.65x as long, so they keep regular stores."""
    return (_large_output(out.nbytes, table) and out.ndim == 2 and out.flags.c_contiguous
            and out.ctypes.data % 32 == 0 and out.strides[0] % 32 == 0)


def _large_output(nbytes, table):
    """Whether an output of nbytes written beside a table (an array, or its bytes) is streamed
    when aligned (stream_output's size rule). The table's bytes are counted only for an output
    whose size leaves it to them: most calls are small, and every call asks."""
    if nbytes >= STREAM_MIN_BYTES:
        return True
    if nbytes < STREAM_BESIDE_TABLE_MIN_BYTES:
        return False
    bytes_ = table if isinstance(table, (int, np.integer)) else _table_bytes(table)
    return nbytes + bytes_ > L3_BYTES


def empty_output(shape, dtype, table=0):
    """np.empty(shape, dtype) for a kernel's output beside a table (the 2-D array, or its
    bytes), cache-line aligned (aligned_empty) when it is large enough to be streamed
    (stream_output): aligning costs 10 us or more a call, nothing next to such a call but
    several times a small lookup's whole overhead (and at 16 MB beside a table in cache an
    aligned output measured 1.05x the time of NumPy's, regular stores both)."""
    dtype = np.dtype(dtype)
    if _large_output(math.prod(shape) * dtype.itemsize, table):
        return aligned_empty(shape, dtype)
    return np.empty(shape, dtype)


def aligned_empty(shape, dtype=np.float32, align=64):
    """np.empty(shape, dtype), C-contiguous and writeable, whose data starts on an `align`-byte
    boundary (a power of two; NumPy moves no pointer for an array of no element), as torch's
    CPU allocator places a tensor. NumPy's large arrays start 16 bytes past a cache line, so
    each 64-byte row spans 2 lines and a 256-byte row 5. Measured (cython_gather bags, V = 1e6,
    n = 65,536 ids, 2 threads, an AMD EPYC), aligned against NumPy's: 1.25-1.32x faster at
    D = 16, 2.2-2.5x at D = 64 for bags of 8 and 64 (1.2x for bags of one), 1.1-1.2x at
    D = 256."""
    dtype = np.dtype(dtype)
    if align < 1 or align & (align - 1):
        raise ValueError(f"align must be a power of two, got {align}")
    shape = (shape,) if np.ndim(shape) == 0 else tuple(shape)
    if any(int(s) < 0 for s in shape):
        raise ValueError(f"negative dimensions are not allowed: {shape}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.empty(nbytes + align, np.uint8)
    start = -buf.ctypes.data % align
    return buf[start:start + nbytes].view(dtype).reshape(shape)

# cython: language_level=3
"""Compiled core of cython_gather. Arguments arrive checked by kernels._validate. Weights may
have any strides (byte strides are used); ids are 1-D C-contiguous int32/int64; out and dW are
C-contiguous.

The loops still read each id once (a relaxed atomic load: the compiler may not read it again)
and check it against V before using it: ids that another thread rewrites during the call
(after the shared check) must never make a loop read or write outside W, out or dW. Such an id
is replaced by row 0 in the gather and skipped in the scatter, and the call raises RuntimeError
afterwards (kernels._threads.ids_changed_error)."""
cimport numpy as cnp
from cython.parallel cimport parallel, prange, threadid
from libc.stdint cimport INT32_MAX, int32_t, int64_t, uint8_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

from kernels._threads import ids_changed_error
from kernels._validate import IdsOutOfRange
from kernels._bounds cimport ids_out_of_range

cnp.import_array()

ctypedef fused floating:
    float
    double

ctypedef fused index_t:
    int32_t
    int64_t

cdef enum:
    MAX_THREADS = 256
    # float32 scatter (_scatter_rows_f32): a float64 copy of the row slice up to 4 MiB (it fits
    # the caches; beyond, twice the float32 footprint cost 2-4x: measured), a count byte per row
    # up to 64 rows per id, else the count kept in the rows themselves.
    DENSE_BYTES = 4 << 20
    COUNTED_ROWS_PER_ID = 64
    CHUNK = 2048  # ids per _own call

cdef extern from *:
    """
    #include <string.h>
    #include <stdint.h>
    #if defined(__GNUC__)
    #define EK_PREFETCH(p) __builtin_prefetch((p), 0, 3)
    #else
    #define EK_PREFETCH(p) ((void)0)
    #endif

    static inline void ek_prefetch_w(char* p) {
    #if defined(__GNUC__)
        __builtin_prefetch(p, 1, 3);
    #endif
    }

    /* A row's first cache line only: the hardware fetches the lines after it. Prefetching
       every line of the row (and the one holding its last byte) was slower, the more so the
       fewer lines a row has: measured (cython_gather, V = 2e6, n = 65,536, 2 threads, separate
       builds in alternating processes) int8 bags of 8 D = 64 189 -> 147 us and D = 128 300 ->
       255 us (torch's quantized op: 150 and 270), float16 lookups D = 128 2.04 -> 1.69 ms;
       int4 lookups D = 128 0.85-0.97 -> 1.03-1.05 ms, the one case measured slower. */
    static inline void ek_prefetch_row(const char* p) { EK_PREFETCH(p); }
    /* A packed row's first and last lines (one line twice if it fits in one), for the decoding
       gathers and bags of one: int8 rows of D + 8 bytes start anywhere in a line. Measured
       (V = 2e6, 2 threads, against the first line only): int8 lookups at D = 64 0.33 -> 0.29 ms,
       level at D = 128; int8 bags of one 0.35 -> 0.31 ms (D = 64), int4 0.90 -> 0.71 (D = 128).
       Bags of 8 measured slower with it (0.27 -> 0.31 ms, int8 D = 128) and keep the first.
       Tables beyond the last-level cache take every line instead (kernels._cpu.decode_prefetch:
       a negative distance; on a machine of 12 GB/s it made bags of 8 1.3-2x faster). */
    static inline void ek_prefetch_packed(Py_ssize_t rowbytes, const char* p) {
        EK_PREFETCH(p);
        EK_PREFETCH(p + rowbytes - 1);
    }
    /* Every line of a packed row, once each: for tables beyond the last-level cache, where a
       line left to the demand load costs a full memory latency (see decode_prefetch). */
    static inline void ek_prefetch_all(Py_ssize_t rowbytes, const char* p) {
        uintptr_t a = (uintptr_t)p & ~(uintptr_t)63, e = (uintptr_t)(p + rowbytes - 1);
        for (; a <= e; a += 64) EK_PREFETCH((const char*)a);
    }

    /* p's value hidden from the optimizer: the vector loops then address a row's pieces as
       p + constant. Without it GCC folded each block's offset into one sum per vector, kept on
       the stack (one more load per vector in the AVX2 int8 and int4 bags at D >= 128, and in
       the bfloat16 lookups: 32 address registers, half of them spilled, at D = 256). */
    #if defined(__GNUC__)
    #define EK_OPAQUE(p) __asm__("" : "+r"(p))
    #else
    #define EK_OPAQUE(p) ((void)0)
    #endif

    /* One read of ids[i]: the empty asm makes the loaded value opaque, so the compiler may
       not load the element a second time (a racing writer cannot split check and use). A
       relaxed atomic load promised the same but kept GCC from holding a bag's accumulators
       in registers across it (measured in a standalone C harness, n = 65,536, 1 thread: bags
       1.2-2.9x slower). */
    #if defined(__GNUC__)
    static inline Py_ssize_t ek_load_i32(const int32_t* p) { int32_t v = *p; __asm__("" : "+r"(v)); return v; }
    static inline Py_ssize_t ek_load_i64(const int64_t* p) { int64_t v = *p; __asm__("" : "+r"(v)); return (Py_ssize_t)v; }
    #else
    static inline Py_ssize_t ek_load_i32(const int32_t* p) { return *(volatile const int32_t*)p; }
    static inline Py_ssize_t ek_load_i64(const int64_t* p) { return (Py_ssize_t)*(volatile const int64_t*)p; }
    #endif

    /* The bags of a call: the caller's checked offsets read in place (bag b starts at off[b],
       only off[0..B-1] are read, n ends the last bag), or off NULL for B bags of N ids each
       (2-D ids). Bag b holds the ids from clamp(off[b]) up to clamp(off[b + 1]) (clamp: into
       [0, n]), none if that end is not past the start. A loop over bags reads each bound once,
       the end of one bag being the start of the next: offsets rewritten during the call give
       wrong sums, never a read outside ids. */
    typedef struct { const int64_t* off; Py_ssize_t B, N, n; int stream; } ek_bags;
    static inline Py_ssize_t ek_clamp_bound(Py_ssize_t x, Py_ssize_t n) {
        return x < 0 ? 0 : (x > n ? n : x);
    }
    /* Where bag b starts (n for b >= B), from the fields of an ek_bags. */
    static inline Py_ssize_t ek_start_of(const int64_t* off, Py_ssize_t B, Py_ssize_t N,
                                         Py_ssize_t n, Py_ssize_t b) {
        if (b >= B) return n;
        if (off == NULL) return b * N;
        return ek_clamp_bound(ek_load_i64(off + b), n);
    }
    static inline Py_ssize_t ek_bag_start(const ek_bags* g, Py_ssize_t b) {
        return ek_start_of(g->off, g->B, g->N, g->n, b);
    }
    /* Before a loop over bags b0.. (each a block with EK_BAG_BOUNDS(b) in it): the fields in
       locals (with out's stores in between, the compiler would reload them every bag). */
    #define EK_BAGS_FROM(b0) const int64_t* goff_ = offsets->off; \\
        const Py_ssize_t gB_ = offsets->B, gN_ = offsets->N, gn_ = offsets->n; \\
        Py_ssize_t next_ = ek_start_of(goff_, gB_, gN_, gn_, (b0));
    #define EK_BAG_BOUNDS(b) Py_ssize_t lo_ = next_, \\
        hi_ = ek_start_of(goff_, gB_, gN_, gn_, (b) + 1); next_ = hi_;

    /* The lookup's loop for rows that are not a multiple of 32 bytes (or a CPU without AVX;
       the others take ek_copy_gather): constant-size memcpy of small rows is inlined as vector
       moves; larger rows call libc's memcpy. An id outside [0, V) (only if ids changed after
       the shared check) copies row 0 and is counted. Prefetching a bad id's address is
       harmless: a prefetch never faults. */
    #define EK_COPY_LOOP(NB, LOAD) \\
        for (i = lo; i < hi; i++) { \\
            if (prefetch && i + prefetch < hi) \\
                ek_prefetch_row(W + (Py_ssize_t)ids[i + prefetch] * rs); \\
            j = LOAD(&ids[i]); \\
            if ((size_t)j >= (size_t)V) { bad++; j = 0; } \\
            memcpy(out + i * (NB), W + j * rs, NB); \\
        }

    /* Rows written with non-temporal (streaming) stores: for an output larger than the
       last-level cache, or half as large beside a table it does not fit with (kernels._cpu
       .stream_output decides), whose lines would otherwise be
       read for ownership first and evict the table's rows. 32-byte aligned rows of a multiple
       of 32 bytes, on a CPU with AVX; the caller ends with ek_stream_fence(). */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
    #include <immintrin.h>
    static inline int ek_can_stream(const void* out, Py_ssize_t rowbytes) {
        return !(((uintptr_t)out | (uintptr_t)rowbytes) & 31) && __builtin_cpu_supports("avx");
    }
    static inline void ek_stream_fence(void) { _mm_sfence(); }
    #define EK_AVX_TARGET __attribute__((target("avx")))
    #define EK_STREAM32(D, S) _mm256_stream_ps((float*)(D), _mm256_loadu_ps((const float*)(S)))
    /* a bag of one id's row: the row + 0 (-0.0 becomes +0.0, as the bag's sum) */
    #define EK_STREAM32_PLUS0(D, S) _mm256_stream_ps((float*)(D), _mm256_add_ps( \\
        _mm256_loadu_ps((const float*)(S)), _mm256_setzero_ps()))
    #define EK_STREAM32_ZERO(D) _mm256_stream_ps((float*)(D), _mm256_setzero_ps())
    static inline int ek_has_avx(void) { return __builtin_cpu_supports("avx"); }
    #define EK_COPY32(D, S) _mm256_storeu_ps((float*)(D), _mm256_loadu_ps((const float*)(S)))
    #define EK_COPY32_PLUS0(D, S) _mm256_storeu_ps((float*)(D), _mm256_add_ps( \\
        _mm256_loadu_ps((const float*)(S)), _mm256_setzero_ps()))
    #else
    static inline int ek_can_stream(const void* out, Py_ssize_t rowbytes) {
        (void)out; (void)rowbytes; return 0;
    }
    static inline void ek_stream_fence(void) {}
    #define EK_AVX_TARGET
    #define EK_STREAM32(D, S) memcpy((D), (S), 32)
    #define EK_STREAM32_PLUS0(D, S) { float t_[8]; memcpy(t_, (S), 32); \\
        for (int u_ = 0; u_ < 8; u_++) t_[u_] += 0.0f; memcpy((D), t_, 32); }
    #define EK_STREAM32_ZERO(D) memset((D), 0, 32)
    static inline int ek_has_avx(void) { return 0; }
    #define EK_COPY32(D, S) memcpy((D), (S), 32)
    #define EK_COPY32_PLUS0(D, S) EK_STREAM32_PLUS0(D, S)
    #endif

    /* The row loops in AVX code, with every row streamed (EK_DEFINE_STREAM_LOOP) or stored as
       usual (EK_DEFINE_ROWS_LOOP, below), every line of a row prefetched: lookups (an id outside [0, V), only if ids changed after the
       check, copies row 0 and is counted) and float32 bags of one id (each row + 0; a padding
       or bad id's row zeros, a bad one counted). The common row sizes are compile-time
       constants, so the inner loops unroll: rolled (a runtime row size), they made lookups
       1.3-1.4x slower than bags of one, whose loop had them unrolled (V = 2e6, D = 128,
       2 threads); bags of one, called a row at a time from the bag's loop, were 1.3-1.5x the
       lookup at D = 256. */
    /* Inside a loop over bags of one id, for the id j of the bag: a padding id, or one outside
       [0, V) (counted), runs ZERO (the bag's row set to zeros) and goes on to the next bag. */
    #define EK_PAD_OR_BAD_ZEROS(ZERO) \\
            if (j == pad || (size_t)j >= (size_t)V) { \\
                if (j != pad) bad++; \\
                ZERO; \\
                continue; \\
            }
    #define EK_BAD_ROW0(RB) if ((size_t)j >= (size_t)V) { bad++; j = 0; }
    #define EK_STREAM_BAD_ZEROS(RB) \\
        EK_PAD_OR_BAD_ZEROS(for (q = 0; q < (RB); q += 32) EK_STREAM32_ZERO(dst + q))
    #define EK_COPY_BAD_ZEROS(RB) EK_PAD_OR_BAD_ZEROS(memset(dst, 0, RB))
    #define EK_ROWS(RB, LOAD, BAD, STORE) \\
        for (i = lo; i < hi; i++) { \\
            char* dst = out + i * (RB); EK_OPAQUE(dst); \\
            if (prefetch && i + prefetch < hi) { \\
                const char* pf = W + (Py_ssize_t)ids[i + prefetch] * rs; \\
                _Pragma("GCC unroll 16") \\
                for (q = 0; q < (RB); q += 64) EK_PREFETCH(pf + q); \\
                if (tail) EK_PREFETCH(pf + (RB) - 1); } \\
            j = LOAD(&ids[i]); \\
            BAD(RB) \\
            const char* src = W + j * rs; EK_OPAQUE(src); \\
            _Pragma("GCC unroll 32") \\
            for (q = 0; q < (RB); q += 32) STORE(dst + q, src + q); \\
        }
    #define EK_DEFINE_STREAM_LOOP(NAME, IDX_T, LOAD, BAD, STORE) \\
        EK_DEFINE_ROWS_LOOP(NAME, IDX_T, LOAD, BAD, STORE, ek_stream_fence())
    #define EK_DEFINE_ROWS_LOOP(NAME, IDX_T, LOAD, BAD, STORE, END) \\
    EK_AVX_TARGET static Py_ssize_t NAME(const char* W, Py_ssize_t V, Py_ssize_t rs, \\
            const IDX_T* ids, char* out, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t rowbytes, \\
            Py_ssize_t pad, int prefetch) { \\
        Py_ssize_t i, j, q, bad = 0; \\
        const int tail = (((uintptr_t)W | (uintptr_t)rs) & 63) != 0; \\
        (void)pad; \\
        switch (rowbytes) { \\
        case 32: EK_ROWS(32, LOAD, BAD, STORE) break; \\
        case 64: EK_ROWS(64, LOAD, BAD, STORE) break; \\
        case 128: EK_ROWS(128, LOAD, BAD, STORE) break; \\
        case 256: EK_ROWS(256, LOAD, BAD, STORE) break; \\
        case 512: EK_ROWS(512, LOAD, BAD, STORE) break; \\
        case 1024: EK_ROWS(1024, LOAD, BAD, STORE) break; \\
        default: EK_ROWS(rowbytes, LOAD, BAD, STORE) \\
        } \\
        END; \\
        return bad; \\
    }
    EK_DEFINE_STREAM_LOOP(ek_stream_gather_i32, int32_t, ek_load_i32, EK_BAD_ROW0,
                          EK_STREAM32)
    EK_DEFINE_STREAM_LOOP(ek_stream_gather_i64, int64_t, ek_load_i64, EK_BAD_ROW0,
                          EK_STREAM32)
    EK_DEFINE_STREAM_LOOP(ek_stream_singles_i32, int32_t, ek_load_i32, EK_STREAM_BAD_ZEROS,
                          EK_STREAM32_PLUS0)
    EK_DEFINE_STREAM_LOOP(ek_stream_singles_i64, int64_t, ek_load_i64, EK_STREAM_BAD_ZEROS,
                          EK_STREAM32_PLUS0)
    /* The same loops with regular stores, for rows of a multiple of 32 bytes: lookups into an
       output that is not streamed, and float32 bags of one id. They replaced a memcpy per row
       with its first line prefetched (libc's call from 256 bytes), which took 1.05-2.3x as long
       (an AMD Zen 5, n = 65,536, 2 threads, NumPy's tables, per-round medians of 11
       interleaved rounds: V = 2e6, D = 64 0.71 -> 0.31 ms; D = 16 and 128 1.1-1.2x; within
       L3 at V = 1e4, D = 256 1.2-1.4x). The line holding a row's last byte is prefetched too
       when rows are not on line boundaries (`tail`; NumPy's tables start 16 bytes past one). */
    EK_DEFINE_ROWS_LOOP(ek_copy_gather_i32, int32_t, ek_load_i32, EK_BAD_ROW0,
                        EK_COPY32, (void)0)
    EK_DEFINE_ROWS_LOOP(ek_copy_gather_i64, int64_t, ek_load_i64, EK_BAD_ROW0,
                        EK_COPY32, (void)0)
    EK_DEFINE_ROWS_LOOP(ek_copy_singles_i32, int32_t, ek_load_i32, EK_COPY_BAD_ZEROS,
                        EK_COPY32_PLUS0, (void)0)
    EK_DEFINE_ROWS_LOOP(ek_copy_singles_i64, int64_t, ek_load_i64, EK_COPY_BAD_ZEROS,
                        EK_COPY32_PLUS0, (void)0)

    #define EK_DEFINE_GATHER(NAME, IDX_T, LOAD, STREAM_NAME, COPY_NAME) \\
    static Py_ssize_t NAME(const char* W, Py_ssize_t V, Py_ssize_t rs, const IDX_T* ids, \\
                           char* out, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t rowbytes, \\
                           int prefetch, int stream) { \\
        Py_ssize_t i, j, bad = 0; \\
        if (stream && ek_can_stream(out, rowbytes)) \\
            return STREAM_NAME(W, V, rs, ids, out, lo, hi, rowbytes, -1, prefetch); \\
        if (!(rowbytes & 31) && ek_has_avx()) \\
            return COPY_NAME(W, V, rs, ids, out, lo, hi, rowbytes, -1, prefetch); \\
        switch (rowbytes) { \\
        case 32: EK_COPY_LOOP(32, LOAD) break; \\
        case 64: EK_COPY_LOOP(64, LOAD) break; \\
        case 128: EK_COPY_LOOP(128, LOAD) break; \\
        default: EK_COPY_LOOP(rowbytes, LOAD) \\
        } \\
        return bad; \\
    }
    EK_DEFINE_GATHER(ek_gather_i32, int32_t, ek_load_i32, ek_stream_gather_i32,
                     ek_copy_gather_i32)
    EK_DEFINE_GATHER(ek_gather_i64, int64_t, ek_load_i64, ek_stream_gather_i64,
                     ek_copy_gather_i64)
    """
    void ek_prefetch_w(char* p) noexcept nogil
    Py_ssize_t ek_load_i32(const int32_t* p) noexcept nogil
    Py_ssize_t ek_load_i64(const int64_t* p) noexcept nogil
    ctypedef struct ek_bags:
        const int64_t* off
        Py_ssize_t B
        Py_ssize_t N
        Py_ssize_t n
        int stream
    Py_ssize_t ek_bag_start(const ek_bags* g, Py_ssize_t b) noexcept nogil
    Py_ssize_t ek_gather_i32(const char* W, Py_ssize_t V, Py_ssize_t rs, const int32_t* ids,
                             char* out, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t rowbytes,
                             int prefetch, int stream) noexcept nogil
    Py_ssize_t ek_gather_i64(const char* W, Py_ssize_t V, Py_ssize_t rs, const int64_t* ids,
                             char* out, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t rowbytes,
                             int prefetch, int stream) noexcept nogil


cdef inline Py_ssize_t _load(const index_t* ids, Py_ssize_t i) noexcept nogil:
    if index_t is int32_t:
        return ek_load_i32(&ids[i])
    else:
        return ek_load_i64(&ids[i])


cdef inline void _copy_row(floating* dst, const char* src, Py_ssize_t D,
                           Py_ssize_t col_stride) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(D):
        dst[k] = (<const floating*>(src + k * col_stride))[0]


cdef inline int _ids_bad(const void* ids, bint i32, Py_ssize_t lo, Py_ssize_t hi,
                         Py_ssize_t V) noexcept nogil:
    """Whether an id of ids[lo:hi] is outside [0, V): the shared check's pass
    (kernels/_bounds.pyx), run by each gather or bag thread over its own ids before it
    writes."""
    cdef int size = 4 if i32 else 8
    return ids_out_of_range(<const char*>ids + lo * size, hi - lo, size, True, V)


cdef inline bint _any(const int* flags, int n) noexcept nogil:
    cdef int c
    for c in range(n):
        if flags[c]:
            return True
    return False


ctypedef Py_ssize_t (*share_work)(const void* job, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil
ctypedef bint (*share_check)(const void* job, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil


cdef int _checked_shares(const void* job, bint checked, share_check check, share_work work,
                         const Py_ssize_t* bounds, int nthreads, int* flags,
                         Py_ssize_t* result) noexcept nogil:
    """The one check-then-work shape of the lookups and bags: share c of the job is [bounds[c],
    bounds[c + 1]), one a thread; each thread first runs `check` on its share (if checked),
    then, unless a check failed anywhere (flags[c] set: nothing is written), `work`. The same
    static schedule twice, so each thread checks the ids it then handles while they are hot.
    nthreads <= 1 starts no OpenMP region (forked children rely on it). result receives the
    sum of the shares' work (-1 if one returned a negative value: its own failure); returns
    the number of threads that ran."""
    cdef Py_ssize_t c, total = 0
    cdef int used = 0
    cdef bint failed = False
    cdef int worker[MAX_THREADS]
    cdef Py_ssize_t part[MAX_THREADS]
    if nthreads <= 1:
        flags[0] = checked and check(job, bounds[0], bounds[1])
        result[0] = 0 if flags[0] else work(job, bounds[0], bounds[1])
        return 1
    for c in range(nthreads):
        worker[c] = 0
        part[c] = 0
        flags[c] = 0
    with parallel(num_threads=nthreads):
        for c in prange(nthreads, schedule="static", chunksize=1):
            flags[c] = checked and check(job, bounds[c], bounds[c + 1])
        for c in prange(nthreads, schedule="static", chunksize=1):
            if not _any(flags, nthreads):
                part[c] = work(job, bounds[c], bounds[c + 1])
            worker[threadid()] = 1
    for c in range(nthreads):
        used = used + worker[c]
        if part[c] < 0:
            failed = True
        else:
            total = total + part[c]
    result[0] = -1 if failed else total
    return used


cdef inline void _even_shares(Py_ssize_t n, int nthreads, Py_ssize_t* bounds) noexcept nogil:
    """bounds[0..nthreads]: n items split in nthreads contiguous shares of equal size."""
    cdef int c
    for c in range(nthreads + 1):
        bounds[c] = n * c // nthreads


ctypedef struct ids_job:
    const void* ids
    bint i32
    Py_ssize_t V


cdef bint _ids_share_bad(const void* job, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """_ids_bad over ids[lo:hi] of a job whose struct starts with an ids_job."""
    cdef const ids_job* j = <const ids_job*>job
    return _ids_bad(j.ids, j.i32, lo, hi, j.V)


cdef int _run_over_ids(ids_job* job, share_work work, cnp.ndarray ids, Py_ssize_t V,
                       int nthreads, bint check) except -1:
    """A lookup's run: the job (a struct that starts with the ids_job *job) gets ids and V, its
    work runs over nthreads even shares of the ids, each share's bounds checked first with
    check (_checked_shares). IdsOutOfRange (nothing written) for an id outside [0, V) then,
    RuntimeError for one the work read (ids changed meanwhile); returns the threads that ran."""
    cdef Py_ssize_t n = cnp.PyArray_DIM(ids, 0), bad
    cdef Py_ssize_t bounds[MAX_THREADS + 1]
    cdef int flags[MAX_THREADS]
    cdef int used
    job.ids = cnp.PyArray_DATA(ids)
    job.i32 = cnp.PyArray_ITEMSIZE(ids) == 4
    job.V = V
    nthreads = max(1, min(nthreads, MAX_THREADS))
    with nogil:
        _even_shares(n, nthreads, bounds)
        used = _checked_shares(job, check, _ids_share_bad, work, bounds, nthreads, flags, &bad)
    if check and _any(flags, nthreads):
        raise IdsOutOfRange()
    if bad:
        raise ids_changed_error(V)
    return used


cdef inline Py_ssize_t _gather_range(const char* W, Py_ssize_t V, Py_ssize_t row_stride,
                                     Py_ssize_t col_stride, const index_t* ids, floating* out,
                                     Py_ssize_t D, Py_ssize_t lo, Py_ssize_t hi,
                                     int prefetch, bint stream) noexcept nogil:
    """Copy rows lo..hi-1 (with streaming stores if asked and possible); return how many ids
    were outside [0, V) (each copied row 0)."""
    cdef Py_ssize_t i, j, bad = 0
    if col_stride == sizeof(floating):
        if index_t is int32_t:
            return ek_gather_i32(W, V, row_stride, ids, <char*>out, lo, hi,
                                 D * sizeof(floating), prefetch, stream)
        else:
            return ek_gather_i64(W, V, row_stride, ids, <char*>out, lo, hi,
                                 D * sizeof(floating), prefetch, stream)
    for i in range(lo, hi):
        j = _load(ids, i)
        if <size_t>j >= <size_t>V:
            bad += 1
            j = 0
        _copy_row(out + i * D, W + j * row_stride, D, col_stride)
    return bad


ctypedef struct gather_job:
    ids_job head
    const char* W
    Py_ssize_t row_stride
    Py_ssize_t col_stride
    void* out
    Py_ssize_t D
    bint f32
    int prefetch
    bint stream


cdef Py_ssize_t _gather_share(const void* job, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """_gather_range over rows lo..hi-1 of a gather_job, in its dtypes."""
    cdef const gather_job* j = <const gather_job*>job
    cdef Py_ssize_t V = j.head.V
    if j.f32 and j.head.i32:
        return _gather_range(j.W, V, j.row_stride, j.col_stride, <const int32_t*>j.head.ids,
                             <float*>j.out, j.D, lo, hi, j.prefetch, j.stream)
    if j.f32:
        return _gather_range(j.W, V, j.row_stride, j.col_stride, <const int64_t*>j.head.ids,
                             <float*>j.out, j.D, lo, hi, j.prefetch, j.stream)
    if j.head.i32:
        return _gather_range(j.W, V, j.row_stride, j.col_stride, <const int32_t*>j.head.ids,
                             <double*>j.out, j.D, lo, hi, j.prefetch, j.stream)
    return _gather_range(j.W, V, j.row_stride, j.col_stride, <const int64_t*>j.head.ids,
                         <double*>j.out, j.D, lo, hi, j.prefetch, j.stream)


# Scatter status codes (per thread, the largest wins)
cdef enum:
    SCATTER_OK = 0
    SCATTER_BAD_ID = 1      # an id outside [0, V), or ids changed between the two passes
    SCATTER_NO_MEMORY = 2


cdef int _scatter_rows(const floating* G, const index_t* ids, Py_ssize_t n,
                       floating* dW, Py_ssize_t V, Py_ssize_t D, bint zeroed,
                       Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """dW[r0:r1] = the contributions to those rows, added in id order in dW's own precision
    (the float64 path: one recursive sum per row)."""
    cdef Py_ssize_t i, j, k
    cdef floating* row
    cdef const floating* g
    cdef int status = SCATTER_OK
    if not zeroed:
        memset(dW + r0 * D, 0, (r1 - r0) * D * sizeof(floating))
    for i in range(n):
        j = _load(ids, i)
        if <size_t>(j - r0) < <size_t>(r1 - r0):
            row = dW + j * D
            g = G + i * D
            for k in range(D):
                row[k] += g[k]
        elif <size_t>j >= <size_t>V:
            status = SCATTER_BAD_ID
    return status


cdef inline Py_ssize_t _own(const index_t* ids, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t r0,
                            Py_ssize_t m, Py_ssize_t V, int32_t* buf,
                            int* status) noexcept nogil:
    """Write the offsets i - i0 of the positions i in [i0, i1) whose id lies in [r0, r0 + m)
    into buf, without a branch per id (with several threads, which thread owns an id is a coin
    toss a branch mispredicts); flag an id outside [0, V). Returns how many."""
    cdef Py_ssize_t i, j, c = 0
    cdef int bad = 0
    for i in range(i0, i1):
        j = _load(ids, i)
        buf[c] = <int32_t>(i - i0)
        c += <size_t>(j - r0) < <size_t>m
        bad |= <size_t>j >= <size_t>V
    if bad:
        status[0] = SCATTER_BAD_ID
    return c


cdef int _scatter_rows_f32(const float* G, const index_t* ids, Py_ssize_t n,
                           float* dW, Py_ssize_t V, Py_ssize_t D, bint zeroed,
                           Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """dW[r0:r1] for float32: every row equals the float64 sum of its contributions in id order,
    rounded once to float32. Three ways to the same bits, by the slice's rows per id:

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
    passes visit the slice's own positions, found CHUNK ids at a time by _own (all of them
    when the slice is the whole table)."""
    cdef Py_ssize_t i, i0, i1, ch, p, q, j, k, s, x, m = r1 - r0, nheavy = 0, nslots = 0
    cdef int32_t c, w
    cdef uint8_t b
    cdef bint counted, inr, whole = r0 == 0 and r1 == V  # one thread: every id is its own
    cdef int bad = 0
    cdef uint8_t* cnt = NULL
    cdef float* row
    cdef const float* g
    cdef double* acc = NULL
    cdef double* a
    cdef Py_ssize_t* rows = NULL
    cdef int32_t buf[CHUNK]
    cdef int status = SCATTER_OK
    if m <= 0:
        return status
    if 2 * m <= n and m * D * <Py_ssize_t>sizeof(double) <= DENSE_BYTES:
        acc = <double*>calloc(m * D, sizeof(double))
        if acc == NULL:
            return SCATTER_NO_MEMORY
        for ch in range((n + CHUNK - 1) // CHUNK):
            i0 = ch * CHUNK
            i1 = min(n, i0 + CHUNK)
            q = (i1 - i0) if whole else _own(ids, i0, i1, r0, m, V, buf, &status)
            for p in range(q):
                i = i0 + (p if whole else buf[p])
                j = _load(ids, i)
                if <size_t>(j - r0) >= <size_t>m:  # only if ids changed since _own
                    status = SCATTER_BAD_ID
                    continue
                a = acc + (j - r0) * D
                g = G + i * D
                for k in range(D):
                    a[k] += g[k]
        for i in range(m):
            row = dW + (r0 + i) * D
            a = acc + i * D
            for k in range(D):
                row[k] = <float>a[k]
        free(acc)
        return status
    if not zeroed:
        memset(dW + r0 * D, 0, m * D * sizeof(float))
    counted = m <= COUNTED_ROWS_PER_ID * n
    # pass 1: count
    if counted:
        cnt = <uint8_t*>calloc(m + 1, 1)  # cnt[m]: where the other slices' ids are counted
        if cnt == NULL:
            return SCATTER_NO_MEMORY
        for i in range(n):
            j = _load(ids, i)
            inr = <size_t>(j - r0) < <size_t>m
            x = (j - r0) if inr else m
            b = cnt[x]
            cnt[x] = b + (b < 3)
            nheavy += inr & (b == 2)
            bad |= <size_t>j >= <size_t>V
        if bad:
            status = SCATTER_BAD_ID
    else:
        for ch in range((n + CHUNK - 1) // CHUNK):
            i0 = ch * CHUNK
            i1 = min(n, i0 + CHUNK)
            q = (i1 - i0) if whole else _own(ids, i0, i1, r0, m, V, buf, &status)
            for p in range(q):
                j = _load(ids, i0 + (p if whole else buf[p]))
                if <size_t>(j - r0) >= <size_t>m:  # only if ids changed since _own
                    status = SCATTER_BAD_ID
                    continue
                row = dW + j * D
                memcpy(&c, row, 4)
                if c == 0 or c == 1:
                    c = c + 1
                    memcpy(row, &c, 4)
                    nheavy += c == 2
    if nheavy >= INT32_MAX:
        free(cnt)
        return SCATTER_NO_MEMORY
    if nheavy:
        acc = <double*>calloc(nheavy * D, sizeof(double))
        rows = <Py_ssize_t*>malloc(nheavy * sizeof(Py_ssize_t))
        if acc == NULL or rows == NULL:
            free(acc)
            free(rows)
            free(cnt)
            return SCATTER_NO_MEMORY
    # pass 2: add (rows prefetched 8 positions ahead: the count decides a branch per id, which
    # otherwise stalls the overlapping of the random row reads)
    for ch in range((n + CHUNK - 1) // CHUNK):
        i0 = ch * CHUNK
        i1 = min(n, i0 + CHUNK)
        q = (i1 - i0) if whole else _own(ids, i0, i1, r0, m, V, buf, &status)
        for p in range(q):
            if p + 8 < q:
                k = _load(ids, i0 + ((p + 8) if whole else buf[p + 8]))
                if <size_t>(k - r0) < <size_t>m:
                    ek_prefetch_w(<char*>(dW + k * D))
            i = i0 + (p if whole else buf[p])
            j = _load(ids, i)
            if <size_t>(j - r0) >= <size_t>m:  # only if ids changed since _own
                status = SCATTER_BAD_ID
                continue
            row = dW + j * D
            g = G + i * D
            if counted:
                b = cnt[j - r0]
                if b == 1 or b == 2:
                    for k in range(D):
                        row[k] += g[k]
                    continue
                if b == 3 and nslots < nheavy:
                    s = nslots
                    nslots += 1
                    rows[s] = j
                    w = <int32_t>s
                    memcpy(row, &w, 4)
                    cnt[j - r0] = 4
                elif b == 4:
                    memcpy(&w, row, 4)
                    s = w
                    if not 0 <= s < nslots:  # only if ids changed between the passes
                        status = SCATTER_BAD_ID
                        continue
                else:  # only if ids changed between the passes
                    status = SCATTER_BAD_ID
                    continue
            else:
                memcpy(&c, row, 4)
                if c == 1:
                    for k in range(D):
                        row[k] = <float>0.0 + g[k]
                    continue
                if c == 2 and nslots < nheavy:
                    s = nslots
                    nslots += 1
                    rows[s] = j
                    c = <int32_t>(-1 - s)
                    memcpy(row, &c, 4)
                elif c < 0 and -1 - <Py_ssize_t>c < nslots:
                    s = -1 - <Py_ssize_t>c
                else:  # only if ids changed between the passes
                    status = SCATTER_BAD_ID
                    continue
            a = acc + s * D
            for k in range(D):
                a[k] += g[k]
    # flush
    for s in range(nslots):
        row = dW + rows[s] * D
        a = acc + s * D
        for k in range(D):
            row[k] = <float>a[k]
    free(acc)
    free(rows)
    free(cnt)
    return status


cdef int _scatter(const floating* G, const index_t* ids, Py_ssize_t n, floating* dW,
                  Py_ssize_t V, Py_ssize_t D, bint zeroed, int nthreads) noexcept nogil:
    cdef Py_ssize_t c
    cdef int t, status = SCATTER_OK
    cdef int st[MAX_THREADS]
    if nthreads <= 1:  # no OpenMP region at all (forked children rely on it)
        if floating is float:
            return _scatter_rows_f32(G, ids, n, dW, V, D, zeroed, 0, V)
        else:
            return _scatter_rows(G, ids, n, dW, V, D, zeroed, 0, V)
    for c in prange(nthreads, nogil=True, num_threads=nthreads, schedule="static", chunksize=1):
        if floating is float:
            st[c] = _scatter_rows_f32(G, ids, n, dW, V, D, zeroed,
                                      V * c // nthreads, V * (c + 1) // nthreads)
        else:
            st[c] = _scatter_rows(G, ids, n, dW, V, D, zeroed,
                                  V * c // nthreads, V * (c + 1) // nthreads)
    for t in range(nthreads):
        status = max(status, st[t])
    return status


def gather(cnp.ndarray W not None, cnp.ndarray ids not None, cnp.ndarray out not None,
           int nthreads, int prefetch=0, bint stream=False, bint check=False):
    """out[i] = W[ids[i]]; returns the number of threads that did work.

    prefetch: fetch the row this many ids ahead (0: none; pays off when the table is beyond L2).
    stream: write out with non-temporal stores where its rows allow it (contiguous rows of
    float32 or float64, 32-byte aligned, a multiple of 32 bytes; a CPU with AVX), else as usual.
    check: each thread checks the bounds of its share of the ids before any thread writes;
    IdsOutOfRange (nothing written) if one is outside [0, V).
    nthreads <= 1 runs without starting an OpenMP region.
    Raises RuntimeError if an id read in the loop was outside [0, V) (ids changed meanwhile)."""
    cdef gather_job job
    job.W = <const char*>cnp.PyArray_DATA(W)
    job.row_stride = cnp.PyArray_STRIDE(W, 0)
    job.col_stride = cnp.PyArray_STRIDE(W, 1)
    job.out = cnp.PyArray_DATA(out)
    job.D = cnp.PyArray_DIM(W, 1)
    job.f32 = cnp.PyArray_TYPE(W) == cnp.NPY_FLOAT32
    job.prefetch = prefetch
    job.stream = stream
    return _run_over_ids(&job.head, _gather_share, ids, cnp.PyArray_DIM(W, 0), nthreads, check)


def scatter_add(cnp.ndarray G not None, cnp.ndarray ids not None, cnp.ndarray dW not None,
                bint zeroed, int nthreads):
    """dW[r] = sum of G[i] over ids[i] == r, rows split among threads (zeroed: dW is zero).

    float32: each row is the float64 sum in id order rounded once (see _scatter_rows_f32);
    float64: the sum in id order. The same bits for any thread count.
    Raises RuntimeError if an id read in the loops was outside [0, V) (ids changed meanwhile),
    MemoryError if the float64 scratch could not be allocated."""
    cdef void* g = cnp.PyArray_DATA(G)
    cdef void* p = cnp.PyArray_DATA(ids)
    cdef void* d = cnp.PyArray_DATA(dW)
    cdef Py_ssize_t n = cnp.PyArray_DIM(ids, 0)
    cdef Py_ssize_t V = cnp.PyArray_DIM(dW, 0), D = cnp.PyArray_DIM(dW, 1)
    cdef bint f32 = cnp.PyArray_TYPE(G) == cnp.NPY_FLOAT32
    cdef bint i32 = cnp.PyArray_ITEMSIZE(ids) == 4
    cdef int status
    nthreads = max(1, min(nthreads, MAX_THREADS))
    with nogil:
        if f32 and i32:
            status = _scatter(<const float*>g, <const int32_t*>p, n, <float*>d, V, D, zeroed,
                              nthreads)
        elif f32:
            status = _scatter(<const float*>g, <const int64_t*>p, n, <float*>d, V, D, zeroed,
                              nthreads)
        elif i32:
            status = _scatter(<const double*>g, <const int32_t*>p, n, <double*>d, V, D, zeroed,
                              nthreads)
        else:
            status = _scatter(<const double*>g, <const int64_t*>p, n, <double*>d, V, D, zeroed,
                              nthreads)
    if status == SCATTER_NO_MEMORY:
        raise MemoryError("cython_gather: no memory for the float64 scratch rows of the gradient")
    if status == SCATTER_BAD_ID:
        raise ids_changed_error(V)


# ---------------------------------------------------------------------------------------------
# Bags: each bag summed (or maxed) in id order in its own accumulator, then divided by its
# divisor (a float64 count, sum of weights or sqrt of the sum of squares, rounded to the table's
# dtype): the same arithmetic, in the same order, as numba_gather's _bag_range, so the same bits.
# Unweighted bags of the common row sizes accumulate in vector registers and store them straight
# to out; an AVX-512 (x86-64-v4: 32 vector registers) or AVX2 clone is picked at load time where
# the CPU has it (no FMA: the build turns contraction off, as a fused multiply-add would round
# differently from numba_gather). Measured against the AVX2 clone alone at n = 65,536, 1
# thread, in a standalone C harness: 5-8% faster at D = 256 (ratios to torch in one run).
cdef extern from *:
    """
    #include <math.h>
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    #define EK_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
    #else
    #define EK_CLONES
    #endif
    enum { EK_SUM = 0, EK_MEAN = 1, EK_MAX = 2, EK_SQRTN = 3 };

    #define EK_BAG_FINISH(T, ROW, DIM, CNT, WSUM, WEIGHTED) \\
        if (mode == EK_MEAN || mode == EK_SQRTN) { \\
            double d_ = (WEIGHTED) ? (WSUM) : (double)(CNT); \\
            if (mode == EK_SQRTN) d_ = sqrt(d_); \\
            if (d_ == 0.0) { for (k = 0; k < (DIM); k++) ROW[k] = (T)0; } \\
            else { T dd_ = (T)d_; for (k = 0; k < (DIM); k++) ROW[k] = ROW[k] / dd_; } \\
        }

    /* Unweighted sum / mean / sqrtn with the row size a compile-time constant: the bag's sum
       lives in DIM / lanes vector accumulators (GCC vector extensions: 32-byte vectors, two SSE
       registers each in the default clone), rows loaded unaligned. Each element is still the
       sequential sum in id order (the same bits as the scalar loops), stored straight to out
       (staging it in a local array cost a rep movs a bag). Rows wider than
       EK_BAG_BLOCK vectors are summed a block of columns at a time, each pass over the bag's
       rows (after the first, they come from L1), so the sums stay in registers (16 vectors
       a pass measured faster than 8 at D = 128, 0.61 against 0.98 ms; adding four rows per step
       was slower). The row `prefetch` ids ahead is prefetched one cache line per two vectors
       added, plus the line holding the block's last byte (TAIL: a table 16 bytes off a line
       boundary, as NumPy's often are, spreads each block over one line more) unless the table
       is 64-byte aligned and the block one line (measured, aligned V = 1e6, D = 16, bags of 8,
       2 threads: 0.110 ms with the second prefetch of the line, 0.092 without, torch 0.106; at
       D = 64 the repeated prefetch of the last line measured 3-8% faster, so it stays); near
       the end of the ids the current row is named instead (no branch in the loop). */
    typedef float ek_vf __attribute__((vector_size(32)));
    typedef double ek_vd __attribute__((vector_size(32)));
    #define EK_BAG_BLOCK 16  /* vector accumulators per pass (a power of two) */
    #define EK_BAG_FIXED_(T, VT, VB, DIM, LOAD, PF, TAIL) \
        EK_BAGS_FROM(b0) \
        for (b = b0; b < b1; b++) { \
            enum { NV = (DIM) * (int)sizeof(T) / (VB), \
                   NB = NV < EK_BAG_BLOCK ? NV : EK_BAG_BLOCK }; \
            T* row = out + b * (DIM); \
            Py_ssize_t cnt = 0; \
            EK_BAG_BOUNDS(b) \
            for (Py_ssize_t v0 = 0; v0 < NV; v0 += NB) { \
                VT acc[NB]; \
                for (k = 0; k < NB; k++) acc[k] = (VT){0}; \
                cnt = 0; \
                for (i = lo_; i < hi_; i++) { \
                    j = LOAD(&ids[i]); \
                    if (j == pad) continue; \
                    if ((size_t)j >= (size_t)V) { if (v0 == 0) bad++; continue; } \
                    const char* src = W + j * rs + v0 * (VB); \
                    const char* pf = (PF && i + prefetch < n) \
                        ? W + (Py_ssize_t)ids[i + prefetch] * rs + v0 * (VB) : src; \
                    for (k = 0; k < NB; k++) { \
                        VT x; \
                        if (PF && ((k * (VB)) & 63) == 0) __builtin_prefetch(pf + k * (VB), 0, 3); \
                        memcpy(&x, src + k * (VB), (VB)); \
                        acc[k] += x; \
                    } \
                    if (PF && (TAIL || NB * (VB) > 64)) __builtin_prefetch(pf + NB * (VB) - 1, 0, 3); \
                    cnt++; \
                } \
                _Pragma("GCC unroll 16") \
                for (k = 0; k < NB; k++) \
                    memcpy((char*)row + (v0 + k) * (VB), &acc[k], (VB)); \
            } \
            EK_BAG_FINISH(T, row, DIM, cnt, 0.0, 0) \
        }
    /* Compiled three times: with the row prefetch (and the tail line, for tables off a line
       boundary), and without it for tables in cache (where the prefetch instructions, aimed at
       the current row, outnumbered the additions). */
    #define EK_BAG_FIXED(T, VT, VB, DIM, LOAD) \
        if (prefetch && (((uintptr_t)W | (uintptr_t)rs) & 63)) \
            { EK_BAG_FIXED_(T, VT, VB, DIM, LOAD, 1, 1) } \
        else if (prefetch) { EK_BAG_FIXED_(T, VT, VB, DIM, LOAD, 1, 0) } \
        else { EK_BAG_FIXED_(T, VT, VB, DIM, LOAD, 0, 0) }


    /* Pool one row SRC (D values of T) into the bag's output row: max (torch's rule: the first
       row, then strictly greater), weighted (w * e, and the divisor's sum), or added. */
    #define EK_POOL_ROW(T, SRC) \\
        if (mode == EK_MAX) { \\
            if (cnt == 0) { for (k = 0; k < D; k++) row[k] = (SRC)[k]; } \\
            else { for (k = 0; k < D; k++) if ((SRC)[k] > row[k]) row[k] = (SRC)[k]; } \\
        } else if (psw != NULL) { \\
            T w = psw[i]; \\
            double wf = (double)w; \\
            for (k = 0; k < D; k++) row[k] += w * (SRC)[k]; \\
            wsum += (mode == EK_SQRTN) ? wf * wf : wf; \\
        } else { \\
            for (k = 0; k < D; k++) row[k] += (SRC)[k]; \\
        } \\
        cnt++;

    /* float32 rows of 16, 64, 128 and 256 values summed in 64-byte (AVX-512) vectors where the
       CPU has them: measured in a C harness (1 thread, bags of 8, n = 65,536) 17% faster than
       32-byte ones at V = 2e6, D = 64, 7-10% at D = 128; at D = 16, on an aligned table
       (V = 1e6, 2 threads), 0.091 against 0.096 ms. D = 256 (one pass of 16 vectors, not two
       of 32-byte ones) measured slower in that harness on an earlier machine; on an AMD Zen 5
       (2 threads, three in-process A/B runs of 11 rounds) it was 1.12-1.25x faster beyond the
       caches (V = 2e6, bags of 8 and 64), 1.05-1.14x at V = 1e4 in bags of 8, and 0.93x in
       bags of 64 there, and it put these bags level with or ahead of torch's (0.84-0.94x
       before, beyond the caches). */
    typedef float ek_vf16 __attribute__((vector_size(64)));
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
    static int ek_use_avx512;
    #define EK_DEFINE_BAG512(NAME, IDX_T, LOAD) \\
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq"))) static Py_ssize_t NAME( \\
            const char* W, Py_ssize_t V, Py_ssize_t rs, const IDX_T* ids, Py_ssize_t n, \\
            const ek_bags* offsets, Py_ssize_t b0, Py_ssize_t b1, float* out, Py_ssize_t D, \\
            int mode, Py_ssize_t pad, int prefetch) { \\
        Py_ssize_t b, i, j, k, bad = 0; \\
        if (D == 16) { EK_BAG_FIXED(float, ek_vf16, 64, 16, LOAD) } \\
        else if (D == 64) { EK_BAG_FIXED(float, ek_vf16, 64, 64, LOAD) } \\
        else if (D == 128) { EK_BAG_FIXED(float, ek_vf16, 64, 128, LOAD) } \\
        else { EK_BAG_FIXED(float, ek_vf16, 64, 256, LOAD) } \\
        return bad; \\
    }
    EK_DEFINE_BAG512(ek_bag512_f32_i32, int32_t, ek_load_i32)
    EK_DEFINE_BAG512(ek_bag512_f32_i64, int64_t, ek_load_i64)
    #define EK_TRY_BAG512(NAME) \\
        if (ek_use_avx512 && sizeof(*out) == 4 && psw == NULL && mode != EK_MAX \\
                && (D == 16 || D == 64 || D == 128 || D == 256)) \\
            return NAME(W, V, rs, ids, n, offsets, b0, b1, (float*)out, D, mode, pad, prefetch);
    #else
    #define EK_TRY_BAG512(NAME)
    #endif

    /* A negative prefetch distance asks for every line of each row: in the decoding loops
       (ek_prefetch_all; their portable loops take its size, their first line) and in the float
       bags of one id (whose rows are otherwise prefetched by their first line; the other float
       bag loops prefetch every line at any distance). */
    #define EK_PF_ALL int pf_all = prefetch < 0; if (pf_all) prefetch = -prefetch; (void)pf_all;

    /* Bags of one id each (no offsets, N = 1), unweighted, not max: bag b is id b, its row
       + 0 (as the sum from +0 makes it: -0.0 becomes +0.0; a mean or sqrtn divides by 1), a
       padding id zeros. A gather's loop: the bag loop's per-bag work made the bag of one
       1.4x the lookup at D = 16, and 1.22-1.40x at D = 128 and 256 (V = 2e6 and 1e4, n =
       65,536, 2 threads, a 12 GB/s AMD EPYC; 0.90-1.02x with this loop). */
    /* Inside a loop over bags of one id: j = the id of bag b; a padding id (or one outside
       [0, V), counted) zeros the bag's NBYTES of ROW and goes on to the next bag. */
    #define EK_SINGLE_ID(LOAD, ROW, NBYTES) \\
            j = LOAD(&ids[b]); \\
            EK_PAD_OR_BAD_ZEROS(memset(ROW, 0, NBYTES))
    #define EK_SINGLES(T, VT, DIM, LOAD, STREAM1, COPY1) { \\
        if (offsets->stream && sizeof(T) == 4 && ek_can_stream(out, (DIM) * sizeof(T))) \\
            return STREAM1(W, V, rs, ids, (char*)out, b0, b1, (DIM) * 4, pad, prefetch); \\
        if (sizeof(T) == 4 && ek_has_avx()) \\
            return COPY1(W, V, rs, ids, (char*)out, b0, b1, (DIM) * 4, pad, prefetch); \\
        for (b = b0; b < b1; b++) { \\
            T* row = out + b * (DIM); \\
            if (prefetch && b + prefetch < n) { \\
                const char* pf = W + (Py_ssize_t)ids[b + prefetch] * rs; \\
                if (pf_all) { \\
                    for (k = 0; k < (Py_ssize_t)((DIM) * sizeof(T)); k += 64) EK_PREFETCH(pf + k); \\
                } else EK_PREFETCH(pf); \\
            } \\
            EK_SINGLE_ID(LOAD, row, (DIM) * sizeof(T)) \\
            const char* src = W + j * rs; \\
            for (k = 0; k < (Py_ssize_t)((DIM) * sizeof(T)); k += 32) { \\
                VT x; \\
                memcpy(&x, src + k, 32); \\
                x += (VT){0}; \\
                memcpy((char*)row + k, &x, 32); \\
            } \\
        } }

    #define EK_DEFINE_BAG(NAME, T, VT, IDX_T, LOAD, NAME512, STREAM1, COPY1) \\
    EK_CLONES static Py_ssize_t NAME( \\
            const char* W, Py_ssize_t V, Py_ssize_t rs, const IDX_T* ids, Py_ssize_t n, \\
            const ek_bags* offsets, Py_ssize_t b0, Py_ssize_t b1, T* out, Py_ssize_t D, \\
            int mode, const T* psw, Py_ssize_t pad, int prefetch) { \\
        Py_ssize_t b, i, j, k, bad = 0; \\
        EK_PF_ALL \\
        if (offsets->off == NULL && offsets->N == 1 && psw == NULL && mode != EK_MAX) { \\
            switch (D) { \\
            case 8: EK_SINGLES(T, VT, 8, LOAD, STREAM1, COPY1) return bad; \\
            case 16: EK_SINGLES(T, VT, 16, LOAD, STREAM1, COPY1) return bad; \\
            case 32: EK_SINGLES(T, VT, 32, LOAD, STREAM1, COPY1) return bad; \\
            case 64: EK_SINGLES(T, VT, 64, LOAD, STREAM1, COPY1) return bad; \\
            case 128: EK_SINGLES(T, VT, 128, LOAD, STREAM1, COPY1) return bad; \\
            case 256: EK_SINGLES(T, VT, 256, LOAD, STREAM1, COPY1) return bad; \\
            default: break; \\
            } \\
        } \\
        EK_TRY_BAG512(NAME512) \\
        if (psw == NULL && mode != EK_MAX) { \\
            switch (D) { \\
            case 8: EK_BAG_FIXED(T, VT, 32, 8, LOAD) return bad; \\
            case 16: EK_BAG_FIXED(T, VT, 32, 16, LOAD) return bad; \\
            case 32: EK_BAG_FIXED(T, VT, 32, 32, LOAD) return bad; \\
            case 64: EK_BAG_FIXED(T, VT, 32, 64, LOAD) return bad; \\
            case 128: EK_BAG_FIXED(T, VT, 32, 128, LOAD) return bad; \\
            case 256: EK_BAG_FIXED(T, VT, 32, 256, LOAD) return bad; \\
            default: break; \\
            } \\
        } \\
        EK_BAGS_FROM(b0) \\
        for (b = b0; b < b1; b++) { \\
            T* row = out + b * D; \\
            Py_ssize_t cnt = 0; \\
            double wsum = 0.0; \\
            for (k = 0; k < D; k++) row[k] = (T)0; \\
            EK_BAG_BOUNDS(b) \\
            for (i = lo_; i < hi_; i++) { \\
                if (prefetch && i + prefetch < n) \\
                    ek_prefetch_row(W + (Py_ssize_t)ids[i + prefetch] * rs); \\
                j = LOAD(&ids[i]); \\
                if (j == pad) continue; \\
                if ((size_t)j >= (size_t)V) { bad++; continue; } \\
                const T* src = (const T*)(W + j * rs); \\
                EK_POOL_ROW(T, src) \\
            } \\
            EK_BAG_FINISH(T, row, D, cnt, wsum, psw != NULL) \\
        } \\
        return bad; \\
    }
    EK_DEFINE_BAG(ek_bag_f32_i32, float, ek_vf, int32_t, ek_load_i32, ek_bag512_f32_i32,
                  ek_stream_singles_i32, ek_copy_singles_i32)
    EK_DEFINE_BAG(ek_bag_f32_i64, float, ek_vf, int64_t, ek_load_i64, ek_bag512_f32_i64,
                  ek_stream_singles_i64, ek_copy_singles_i64)
    EK_DEFINE_BAG(ek_bag_f64_i32, double, ek_vd, int32_t, ek_load_i32, ek_bag512_f32_i32,
                  ek_stream_singles_i32, ek_copy_singles_i32)
    EK_DEFINE_BAG(ek_bag_f64_i64, double, ek_vd, int64_t, ek_load_i64, ek_bag512_f32_i64,
                  ek_stream_singles_i64, ek_copy_singles_i64)
    """
    Py_ssize_t ek_bag_f32_i32(const char* W, Py_ssize_t V, Py_ssize_t rs, const int32_t* ids,
                              Py_ssize_t n, const ek_bags* offsets, Py_ssize_t b0, Py_ssize_t b1,
                              float* out, Py_ssize_t D, int mode, const float* psw,
                              Py_ssize_t pad, int prefetch) noexcept nogil
    Py_ssize_t ek_bag_f32_i64(const char* W, Py_ssize_t V, Py_ssize_t rs, const int64_t* ids,
                              Py_ssize_t n, const ek_bags* offsets, Py_ssize_t b0, Py_ssize_t b1,
                              float* out, Py_ssize_t D, int mode, const float* psw,
                              Py_ssize_t pad, int prefetch) noexcept nogil
    Py_ssize_t ek_bag_f64_i32(const char* W, Py_ssize_t V, Py_ssize_t rs, const int32_t* ids,
                              Py_ssize_t n, const ek_bags* offsets, Py_ssize_t b0, Py_ssize_t b1,
                              double* out, Py_ssize_t D, int mode, const double* psw,
                              Py_ssize_t pad, int prefetch) noexcept nogil
    Py_ssize_t ek_bag_f64_i64(const char* W, Py_ssize_t V, Py_ssize_t rs, const int64_t* ids,
                              Py_ssize_t n, const ek_bags* offsets, Py_ssize_t b0, Py_ssize_t b1,
                              double* out, Py_ssize_t D, int mode, const double* psw,
                              Py_ssize_t pad, int prefetch) noexcept nogil


cdef Py_ssize_t _bag_range(const char* W, Py_ssize_t V, Py_ssize_t rs, const void* ids,
                           bint i32, Py_ssize_t n, const ek_bags* offsets, Py_ssize_t b0,
                           Py_ssize_t b1, void* out, bint f32, Py_ssize_t D, int mode,
                           const void* psw, Py_ssize_t pad, int prefetch) noexcept nogil:
    if f32 and i32:
        return ek_bag_f32_i32(W, V, rs, <const int32_t*>ids, n, offsets, b0, b1, <float*>out, D,
                              mode, <const float*>psw, pad, prefetch)
    if f32:
        return ek_bag_f32_i64(W, V, rs, <const int64_t*>ids, n, offsets, b0, b1, <float*>out, D,
                              mode, <const float*>psw, pad, prefetch)
    if i32:
        return ek_bag_f64_i32(W, V, rs, <const int32_t*>ids, n, offsets, b0, b1, <double*>out,
                              D, mode, <const double*>psw, pad, prefetch)
    return ek_bag_f64_i64(W, V, rs, <const int64_t*>ids, n, offsets, b0, b1, <double*>out, D,
                          mode, <const double*>psw, pad, prefetch)


cdef inline Py_ssize_t _bag_start(const ek_bags* g, Py_ssize_t b) noexcept nogil:
    """Where bag b's ids start (clamped as the loops read it); n for b >= B."""
    return ek_bag_start(g, b)


cdef Py_ssize_t _first_bag_from(const ek_bags* g, Py_ssize_t target) noexcept nogil:
    """The first bag b < B starting at or after target, else B (np.searchsorted, side left,
    on the bags' starts)."""
    cdef Py_ssize_t lo = 0, hi = g.B, mid
    while lo < hi:
        mid = (lo + hi) // 2
        if _bag_start(g, mid) < target:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef int _bags_of(ek_bags* g, offsets, Py_ssize_t B, Py_ssize_t n) except -1:
    """Fill g for B bags over n ids: offsets an int64 array of at least B starts (a B + 1th
    value, if any, is not read), or None for B bags of n / B ids each."""
    g.B = B
    g.n = n
    g.N = n // B if B else 0
    g.off = NULL
    g.stream = 0
    if offsets is not None:
        if (cnp.PyArray_NDIM(<cnp.ndarray>offsets) != 1
                or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>offsets)
                or cnp.PyArray_TYPE(<cnp.ndarray>offsets) != cnp.NPY_INT64
                or cnp.PyArray_DIM(<cnp.ndarray>offsets, 0) < B):
            raise ValueError("bag offsets must be a C-contiguous int64 array of at least B values")
        g.off = <const int64_t*>cnp.PyArray_DATA(<cnp.ndarray>offsets)
    elif g.N * B != n:
        raise ValueError("without offsets the ids must split into B bags of equal length")
    return 0


cdef void _split_bags(const ek_bags* g, Py_ssize_t* bd, int nthreads) noexcept nogil:
    """bd[0..nthreads]: each thread's first bag, split by the ids the bags hold (non-decreasing
    even if the offsets change meanwhile)."""
    cdef int c
    bd[0] = 0
    bd[nthreads] = g.B
    for c in range(1, nthreads):
        bd[c] = max(bd[c - 1], _first_bag_from(g, g.n * c // nthreads))


cdef inline int _bag_ids_bad(const void* ids, bint i32, const ek_bags* g, Py_ssize_t b0,
                             Py_ssize_t b1, Py_ssize_t V) noexcept nogil:
    """Whether an id of bags b0..b1-1 is outside [0, V) (_ids_bad over their ids)."""
    cdef Py_ssize_t lo = _bag_start(g, b0), hi = _bag_start(g, b1)
    return _ids_bad(ids, i32, lo, max(lo, hi), V)


def bag(cnp.ndarray W not None, cnp.ndarray ids not None, offsets, int mode, psw,
        Py_ssize_t pad, cnp.ndarray out not None, int nthreads, int prefetch=0,
        bint check=False, bint stream=False):
    """out[b] = bag b reduced (mode: 0 sum, 1 mean, 2 max, 3 sqrtn), weighted by psw (an array
    or None), ids equal to pad (or -1) left out. W has contiguous rows; B = len(out); offsets
    are the bags' int64 starts, read in place (ek_bags: a B + 1th value is not read, n ends the
    last bag), or None for B bags of equal length. prefetch: rows this many ids ahead (0: none;
    negative: bags of one id prefetch every line of a row, not only its first, as
    kernels._cpu.bag_prefetch asks beyond the last-level cache). Threads, check, stream and
    errors: _run_bags."""
    cdef const char* w = <const char*>cnp.PyArray_DATA(W)
    cdef Py_ssize_t rs = cnp.PyArray_STRIDE(W, 0)
    cdef Py_ssize_t V = cnp.PyArray_DIM(W, 0), D = cnp.PyArray_DIM(W, 1)
    cdef Py_ssize_t n = cnp.PyArray_DIM(ids, 0)
    cdef const void* p = cnp.PyArray_DATA(ids)
    cdef const void* pw = NULL
    if psw is not None:
        pw = cnp.PyArray_DATA(<cnp.ndarray>psw)
    _run_bags(0, w, V, rs, 0, p, cnp.PyArray_ITEMSIZE(ids) == 4, n, offsets,
              cnp.PyArray_DATA(out), cnp.PyArray_DIM(out, 0),
              cnp.PyArray_TYPE(W) == cnp.NPY_FLOAT32, D, mode, pw, pad, prefetch, nthreads,
              check, stream)


# -- low-precision tables: rows decoded to float32 inside the gather ----------------------------

cdef extern from *:
    """
    /* The decoders of kernels/_numba_lowp.py, in C: the same values bit for bit (the build turns
       off floating-point contraction, so q * scale + bias is two roundings, never an FMA). */
    enum { EK_F16 = 1, EK_BF16 = 2, EK_I8 = 3, EK_I4 = 4 };

    /* A half's float32 bits, without a branch (so loops of it vectorize): normal halves
       rebias the exponent (+112), infinities and NaNs get exponent 255 (payload kept), and
       subnormals are their 10-bit integer times 2**-24 (exact; no subnormal float is ever an
       operand, so flush-to-zero modes cannot change it). */
    static inline uint32_t ek_half_bits(uint32_t h) {
        uint32_t e = (h >> 10) & 31u, m = h & 1023u, s = (h & 0x8000u) << 16;
        float sub = (float)(int32_t)m * 0x1p-24f;  /* signed: AVX2 converts only those */
        uint32_t sub_bits;
        memcpy(&sub_bits, &sub, 4);
        uint32_t is_sub = 0u - (uint32_t)(e == 0u);  /* masks, not ?: (GCC left those as jumps) */
        uint32_t normal = ((e + 112u + 112u * (uint32_t)(e == 31u)) << 23) | (m << 13);
        return s | (sub_bits & is_sub) | (normal & ~is_sub);
    }

    static inline float ek_half(uint32_t h) {
        uint32_t bits = ek_half_bits(h);
        float v;
        memcpy(&v, &bits, 4);
        return v;
    }

    /* A row's scale S and bias B (float32) from its tail bytes, for a row of DIM values:
       int8's float32 pair, int4's float16 pair; NONE for the half formats (unused). */
    #define EK_SB_I8(ROW, DIM, S, B) { memcpy(&S, (ROW) + (DIM), 4); \\
        memcpy(&B, (ROW) + (DIM) + 4, 4); }
    #define EK_SB_I4(ROW, DIM, S, B) { uint16_t hs_, hb_; memcpy(&hs_, (ROW) + (DIM) / 2, 2); \\
        memcpy(&hb_, (ROW) + (DIM) / 2 + 2, 2); S = ek_half(hs_); B = ek_half(hb_); }
    #define EK_SB_NONE(ROW, DIM, S, B) { S = 0.0f; B = 0.0f; }

    static inline void ek_dec_bf16(const char* restrict row, Py_ssize_t D,
                                  float* restrict dst) {
        const uint16_t* h = (const uint16_t*)row;
        for (Py_ssize_t k = 0; k < D; k++) {
            uint32_t bits = (uint32_t)h[k] << 16;
            memcpy(dst + k, &bits, 4);
        }
    }

    static inline void ek_dec_f16_int(const uint16_t* restrict h, Py_ssize_t D,
                                      float* restrict dst) {
        for (Py_ssize_t k = 0; k < D; k++) {
            uint32_t bits = ek_half_bits(h[k]);
            memcpy(dst + k, &bits, 4);
        }
    }

    /* With F16C, 8 halves a vcvtph2ps (measured 1.5x slower than the float32 lookup in cache
       with the integer form alone); its NaN lanes are replaced by the integer form's bits, since
       the instruction quiets a signalling NaN and NumPy's conversion does not. */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
    #include <immintrin.h>
    #define EK_HAVE_F16C_PATH 1
    static int ek_use_f16c = 0;
    __attribute__((target("avx2,f16c"), always_inline)) static inline void ek_dec_f16_f16c(
            const uint16_t* h, Py_ssize_t D, float* dst) {
        const __m256i mag = _mm256_set1_epi32(0x7fff), inf = _mm256_set1_epi32(0x7c00);
        Py_ssize_t k = 0;
        for (; k + 8 <= D; k += 8) {
            __m128i x = _mm_loadu_si128((const __m128i*)(h + k));
            __m256 f = _mm256_cvtph_ps(x);
            __m256i w = _mm256_cvtepu16_epi32(x);
            __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(w, mag), inf);
            if (!_mm256_testz_si256(nan, nan)) {
                __m256i sign = _mm256_slli_epi32(
                    _mm256_and_si256(w, _mm256_set1_epi32(0x8000)), 16);
                __m256i man = _mm256_slli_epi32(
                    _mm256_and_si256(w, _mm256_set1_epi32(1023)), 13);
                __m256i bits = _mm256_or_si256(
                    _mm256_or_si256(sign, man), _mm256_set1_epi32(0x7f800000));
                f = _mm256_blendv_ps(f, _mm256_castsi256_ps(bits), _mm256_castsi256_ps(nan));
            }
            _mm256_storeu_ps(dst + k, f);
        }
        ek_dec_f16_int(h + k, D - k, dst + k);
    }
    /* The whole float16 lookup loop in F16C code, so the row decoder inlines. */
    #define EK_DEFINE_F16C_GATHER(NAME, IDX_T, LOAD) \\
    __attribute__((target("avx2,f16c"))) static Py_ssize_t NAME(const char* W, Py_ssize_t V, \\
            Py_ssize_t rs, Py_ssize_t rowbytes, const IDX_T* ids, float* out, Py_ssize_t D, \\
            Py_ssize_t lo, Py_ssize_t hi, int prefetch) { \\
        Py_ssize_t i, j, bad = 0; \\
        for (i = lo; i < hi; i++) { \\
            if (prefetch && i + prefetch < hi) \\
                ek_prefetch_row(W + (Py_ssize_t)ids[i + prefetch] * rs); \\
            j = LOAD(&ids[i]); \\
            if ((size_t)j >= (size_t)V) { bad++; j = 0; } \\
            ek_dec_f16_f16c((const uint16_t*)(W + j * rs), D, out + i * D); \\
        } \\
        return bad; \\
    }
    EK_DEFINE_F16C_GATHER(ek_f16c_gather_i32, int32_t, ek_load_i32)
    EK_DEFINE_F16C_GATHER(ek_f16c_gather_i64, int64_t, ek_load_i64)
    #define EK_TRY_F16C(NAME) \\
        if (ek_use_f16c) return NAME(W, V, rs, rowbytes, ids, out, D, lo, hi, prefetch);
    __attribute__((target("avx2,f16c"))) static void ek_dec_f16_f16c_row(
            const uint16_t* h, Py_ssize_t D, float* dst) {
        ek_dec_f16_f16c(h, D, dst);
    }

    /* Eight decoded values (elements k0 .. k0 + 7 of a row) in one register, by the scalar
       decoders' operations (q * s + b in two roundings; the half's NaN patch), so a bag adds
       the same bits. AVX2 code with intrinsics: GCC 12 turned the generic vector conversion
       of eight bytes into 24 scalar instructions. */
    #define EK_AVX2 __attribute__((target("avx2,f16c"), always_inline)) static inline
    EK_AVX2 __m256 ek_vdec_i8(const char* row, Py_ssize_t k0, float s, float b) {
        __m256 x = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
            _mm_loadl_epi64((const __m128i*)(row + k0))));
        return _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(s)), _mm256_set1_ps(b));
    }
    /* int4's codes q as floats, eight at a time (bytes m hold elements 2m, low nibble, and
       2m + 1): shared by the lookup (q * s + b) and the bag (q into an FMA). */
    EK_AVX2 __m256 ek_vq_i4(const char* row, Py_ssize_t k0) {
        int32_t four;
        memcpy(&four, row + k0 / 2, 4);
        __m256i w = _mm256_permutevar8x32_epi32(_mm256_cvtepu8_epi32(_mm_cvtsi32_si128(four)),
                                                _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
        w = _mm256_and_si256(_mm256_srlv_epi32(w, _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4)),
                             _mm256_set1_epi32(15));
        return _mm256_cvtepi32_ps(w);
    }
    EK_AVX2 __m256 ek_vdec_i4(const char* row, Py_ssize_t k0, float s, float b) {
        return _mm256_add_ps(_mm256_mul_ps(ek_vq_i4(row, k0), _mm256_set1_ps(s)),
                             _mm256_set1_ps(b));
    }
    EK_AVX2 __m256 ek_vdec_bf16(const char* row, Py_ssize_t k0, float s, float b) {
        (void)s; (void)b;
        __m128i h = _mm_loadu_si128((const __m128i*)(row + 2 * k0));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    EK_AVX2 __m256 ek_vdec_f16(const char* row, Py_ssize_t k0, float s, float b) {
        (void)s; (void)b;
        __m128i x = _mm_loadu_si128((const __m128i*)(row + 2 * k0));
        __m256 f = _mm256_cvtph_ps(x);
        /* a lane is NaN after the conversion exactly when its half is: one compare on the
           common path, the integer form only for a vector holding a NaN */
        if (_mm256_movemask_ps(_mm256_cmp_ps(f, f, _CMP_UNORD_Q))) {
            __m256i w = _mm256_cvtepu16_epi32(x);
            __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q));
            __m256i sign = _mm256_slli_epi32(_mm256_and_si256(w, _mm256_set1_epi32(0x8000)), 16);
            __m256i man = _mm256_slli_epi32(_mm256_and_si256(w, _mm256_set1_epi32(1023)), 13);
            __m256i bits = _mm256_or_si256(_mm256_or_si256(sign, man),
                                           _mm256_set1_epi32(0x7f800000));
            f = _mm256_blendv_ps(f, _mm256_castsi256_ps(bits), _mm256_castsi256_ps(nan));
        }
        return f;
    }

    /* The same, sixteen values in one AVX-512 register: half the instructions, which is what
       limits a decoded bag in cache (measured in a C harness, int8 D = 64, 1 thread: 0.27
       against 0.39 ms). */
    #define EK_AVX512 "avx512f,avx512vl,avx512bw,avx512dq,avx2,f16c"
    #define EK_AVX512_INLINE __attribute__((target(EK_AVX512), always_inline)) static inline
    EK_AVX512_INLINE __m512 ek_vdec16_i8(const char* row, Py_ssize_t k0, float s, float b) {
        __m512 x = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(
            _mm_loadu_si128((const __m128i*)(row + k0))));
        return _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(s)), _mm512_set1_ps(b));
    }
    /* Sixteen int4 codes: the nibbles split and interleaved in one 128-bit register, then
       widened once (fewer 512-bit operations than widening, duplicating and shifting; int4
       bags of 8 in cache, D = 64: 0.224 -> 0.178 ms with ek_vq16_i4 in the bag's FMA instead
       of q * 1 + 0). */
    EK_AVX512_INLINE __m512 ek_vq16_i4(const char* row, Py_ssize_t k0) {
        const __m128i low4 = _mm_set1_epi8(15);
        __m128i x = _mm_loadl_epi64((const __m128i*)(row + k0 / 2));
        __m128i e = _mm_unpacklo_epi8(_mm_and_si128(x, low4),
                                      _mm_and_si128(_mm_srli_epi16(x, 4), low4));
        return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(e));
    }
    EK_AVX512_INLINE __m512 ek_vdec16_i4(const char* row, Py_ssize_t k0, float s, float b) {
        return _mm512_add_ps(_mm512_mul_ps(ek_vq16_i4(row, k0), _mm512_set1_ps(s)),
                             _mm512_set1_ps(b));
    }
    EK_AVX512_INLINE __m512 ek_vdec16_bf16(const char* row, Py_ssize_t k0, float s, float b) {
        (void)s; (void)b;
        __m256i h = _mm256_loadu_si256((const __m256i*)(row + 2 * k0));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    /* The NaN lanes' bits, out of line: inlined, its constants and temporaries made GCC keep a
       D = 256 bag's sixteen accumulators in memory (float16 bags 2x bfloat16's). */
    __attribute__((target(EK_AVX512), noinline, cold)) static __m512 ek_f16_nan16(
            __m256i x, __m512 f, __mmask16 nan) {
        __m512i w = _mm512_cvtepu16_epi32(x);
        __m512i bits = _mm512_or_si512(_mm512_or_si512(
            _mm512_slli_epi32(_mm512_and_si512(w, _mm512_set1_epi32(0x8000)), 16),
            _mm512_slli_epi32(_mm512_and_si512(w, _mm512_set1_epi32(1023)), 13)),
            _mm512_set1_epi32(0x7f800000));
        return _mm512_mask_blend_ps(nan, f, _mm512_castsi512_ps(bits));
    }
    EK_AVX512_INLINE __m512 ek_vdec16_f16(const char* row, Py_ssize_t k0, float s, float b) {
        (void)s; (void)b;
        __m256i x = _mm256_loadu_si256((const __m256i*)(row + 2 * k0));
        __m512 f = _mm512_cvtph_ps(x);
        __mmask16 nan = _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q);
        return __builtin_expect(nan != 0, 0) ? ek_f16_nan16(x, f, nan) : f;
    }

    /* int4's scale and bias in F16C code (one vcvtph2ps for the pair): ek_half's bit
       operations, twice a row, were most of an int4 row's work at D = 64. The same values:
       exact for every half, NaNs quieted, which q * S + B quiets in either form. */
    #define EK_SB_I4V(ROW, DIM, S, B) { int32_t sb_; memcpy(&sb_, (ROW) + (DIM) / 2, 4); \\
        __m128 f_ = _mm_cvtph_ps(_mm_cvtsi32_si128(sb_)); S = _mm_cvtss_f32(f_); \\
        B = _mm_cvtss_f32(_mm_shuffle_ps(f_, f_, 1)); }

    /* A bag adds a row to its accumulators: half formats add the decoded values; int8 and int4
       rows are added as torch's quantized bag ops (FBGEMM) add them, acc = fma(s, q, acc + b),
       one rounding fewer than decoding first, and measured bit for bit equal to torch's
       (kernels._bag_math.quantized_bag_sum is the definition; tests/test_formats.py). */
    #define EK_AVX2_FMA __attribute__((target("avx2,f16c,fma"), always_inline)) static inline
    EK_AVX2_FMA __m256 ek_vpool_i8(__m256 acc, const char* row, Py_ssize_t k0, float s,
                                    float b) {
        __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
            _mm_loadl_epi64((const __m128i*)(row + k0))));
        return _mm256_fmadd_ps(q, _mm256_set1_ps(s), _mm256_add_ps(acc, _mm256_set1_ps(b)));
    }
    EK_AVX2_FMA __m256 ek_vpool_i4(__m256 acc, const char* row, Py_ssize_t k0, float s,
                                    float b) {
        __m256 q = ek_vq_i4(row, k0);
        return _mm256_fmadd_ps(q, _mm256_set1_ps(s), _mm256_add_ps(acc, _mm256_set1_ps(b)));
    }
    EK_AVX2_FMA __m256 ek_vpool_bf16(__m256 acc, const char* row, Py_ssize_t k0, float s,
                                      float b) {
        return _mm256_add_ps(acc, ek_vdec_bf16(row, k0, s, b));
    }
    /* No NaN check here, unlike ek_vdec_f16: the addition quiets a signaling NaN exactly as
       the conversion does, so a pooled NaN has the same bits either way (a bag of one adds it
       to +0). The check's compare, mask move and branch per vector made float16 the slowest
       format in bags (V = 2e6, D = 256, bags of 8: 7.0 ms against bfloat16's 5.3). */
    EK_AVX2_FMA __m256 ek_vpool_f16(__m256 acc, const char* row, Py_ssize_t k0, float s,
                                     float b) {
        (void)s; (void)b;
        return _mm256_add_ps(acc, _mm256_cvtph_ps(
            _mm_loadu_si128((const __m128i*)(row + 2 * k0))));
    }
    #define EK_AVX512_FMA __attribute__((target(EK_AVX512 ",fma"), always_inline)) static inline
    EK_AVX512_FMA __m512 ek_vpool16_i8(__m512 acc, const char* row, Py_ssize_t k0, float s,
                                        float b) {
        __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(
            _mm_loadu_si128((const __m128i*)(row + k0))));
        return _mm512_fmadd_ps(q, _mm512_set1_ps(s), _mm512_add_ps(acc, _mm512_set1_ps(b)));
    }
    EK_AVX512_FMA __m512 ek_vpool16_i4(__m512 acc, const char* row, Py_ssize_t k0, float s,
                                        float b) {
        __m512 q = ek_vq16_i4(row, k0);
        return _mm512_fmadd_ps(q, _mm512_set1_ps(s), _mm512_add_ps(acc, _mm512_set1_ps(b)));
    }
    EK_AVX512_FMA __m512 ek_vpool16_bf16(__m512 acc, const char* row, Py_ssize_t k0, float s,
                                          float b) {
        return _mm512_add_ps(acc, ek_vdec16_bf16(row, k0, s, b));
    }
    EK_AVX512_FMA __m512 ek_vpool16_f16(__m512 acc, const char* row, Py_ssize_t k0, float s,
                                         float b) {
        (void)s; (void)b;  /* no NaN check: see ek_vpool_f16 */
        return _mm512_add_ps(acc, _mm512_cvtph_ps(
            _mm256_loadu_si256((const __m256i*)(row + 2 * k0))));
    }

    /* Bags of one id each (no offsets, N = 1): bag b is row ids[b] pooled into zeros (the
       same VPOOL, so the same bits; a mean or sqrtn divides by 1), a padding id zeros. A
       gather's loop without the per-bag work (bounds, block and count), which made int8 bags
       of one 1.4x the int8 lookup (V = 2e6, D = 64: 0.30 against 0.22 ms). */
    /* NT: how the vector loops store a vector when they stream their output (ek_can_stream,
       and 64-byte aligned rows for AVX-512: ek_can_stream_vl): a non-temporal store, of 32 or
       64 bytes. (The AVX-512 loops had stored as usual: on an AMD Zen 5, V = 2e6, D = 256,
       n = 65,536, that made int8 lookups 1.16x the streamed float32 lookup's speed where the
       AVX2 loops' streamed stores gave 1.39x, read for ownership doubling the output's
       traffic.) */
    #define EK_NT_AVX2(DST, X) _mm256_stream_ps((float*)(DST), (__m256)(X))
    #define EK_NT_AVX512(DST, X) _mm512_stream_ps((float*)(DST), (__m512)(X))
    static inline int ek_can_stream_vl(const void* out, Py_ssize_t rowbytes, int vl) {
        return ek_can_stream(out, rowbytes)
            && !(((uintptr_t)out | (uintptr_t)rowbytes) & (uintptr_t)(vl * 4 - 1));
    }
    #define EK_NT_NONE(DST, X) memcpy((DST), &(X), sizeof(X))
    /* Store the vector X at DST: with NT when STREAM, else as usual. */
    #define EK_PUT(STREAM, NT, DST, X) { if (STREAM) NT((DST), X); else EK_NT_NONE((DST), X); }
    #define EK_DECODE_SINGLES_VEC(VPOOL, SB, VT, VL, LOAD, DIM, NT) { \\
        const int stream_ = offsets->stream && ek_can_stream_vl(out, (DIM) * 4, (VL)); \\
        for (b = b0; b < b1; b++) { \\
            char* row = (char*)(out + b * (DIM)); EK_OPAQUE(row); \\
            if (prefetch && b + prefetch < n) { \\
                if (pf_all) ek_prefetch_all(rowbytes, W + (Py_ssize_t)ids[b + prefetch] * rs); \\
                else ek_prefetch_packed(rowbytes, W + (Py_ssize_t)ids[b + prefetch] * rs); } \\
            EK_SINGLE_ID(LOAD, row, (DIM) * sizeof(float)) \\
            const char* src = W + j * rs; EK_OPAQUE(src); \\
            float s_, b_; \\
            SB(src, (DIM), s_, b_) \\
            _Pragma("GCC unroll 32") \\
            for (k = 0; k < (DIM) / (VL); k++) { \\
                VT x = VPOOL((VT){0}, src, k * (VL), s_, b_); \\
                EK_PUT(stream_, NT, row + k * (VL) * 4, x) \\
            } \\
        } \\
        if (stream_) ek_stream_fence(); }

    /* Unweighted sum / mean / sqrtn, D a compile-time constant, in AVX2 or AVX-512 code: the float32
       bag's loop (EK_BAG_FIXED: vector accumulators in registers, a block of columns a pass)
       with each row added in registers (VPOOL: ek_vpool_*), nothing staged in memory. The same
       additions in the same order as the general loop, so the same bits. */
    /* One pass over a bag's rows: NBX accumulators from vector V0 of each row. Beyond the
       last-level cache (pf_all), and for rows of several passes wherever rows are prefetched,
       each pass prefetches, for the row `prefetch` ids ahead, the lines at multiples of 64
       bytes within the bytes it reads (the last pass also the row's last byte: its scale and
       bias), as FBGEMM's JIT bag spreads them over its blocks. A/B in one process (bags of 8,
       2 threads, per-round median old/new of 11-15 rounds): beyond L3 (V = 2e6), against the
       first pass fetching every line (ek_prefetch_all), D = 256 int8 1.03, int4 1.11, float16
       1.09, bfloat16 1.15, D = 128 int8 1.26, float16 1.08, bfloat16 1.10, int4 0.95; within
       L3 (V = 1e4), against the first line only, D = 256 1.07-1.33, D = 128 float16 1.13,
       bfloat16 1.17, int4 1.01, int8 0.96. Half-format rows of one pass (D <= 128 in AVX-512
       code) in L3 prefetch their first line (every line measured 0.91-1.01); int8 and int4 rows
       of one pass every line, since their scale and bias, at the row's end, begin each row's
       additions (AMD Zen 5, AVX-512, V = 1e4 and 1e5, 2 threads, against the first line only:
       int8 D = 128 bags of 8 1.06-1.12x faster, D = 256 1.12-1.33x, D = 64 at V = 1e5 1.13-
       1.20x; int4 0.96-1.19x). */
    #define EK_DECODE_PASS(VPOOL, SB, HB, VT, VL, LOAD, DIM, V0, NBX) { \\
                VT acc[NBX]; \\
                for (k = 0; k < (NBX); k++) acc[k] = (VT){0}; \\
                cnt = 0; \\
                for (i = lo_; i < hi_; i++) { \\
                    if (prefetch && i + prefetch < n) { \\
                        const char* pf_ = W + (Py_ssize_t)ids[i + prefetch] * rs; \\
                        if (pf_all || NV > NB || (HB) <= 2) { \\
                            for (Py_ssize_t o_ = ((V0) * (VL) * (HB) / 2 + 63) & ~(Py_ssize_t)63; \\
                                 o_ < ((V0) + (NBX)) * (VL) * (HB) / 2; o_ += 64) \\
                                EK_PREFETCH(pf_ + o_); \\
                            if (((V0) + (NBX)) * (VL) * (HB) / 2 >= (DIM) * (HB) / 2) \\
                                EK_PREFETCH(pf_ + rowbytes - 1); \\
                        } else if ((V0) == 0) ek_prefetch_row(pf_); } \\
                    j = LOAD(&ids[i]); \\
                    if (pad >= 0 && j == pad) continue; \\
                    if ((size_t)j >= (size_t)V) { bad++; continue; } \\
                    const char* src = W + j * rs; \\
                    float s_, b_; \\
                    SB(src, (DIM), s_, b_) \\
                    const char* at = src + (V0) * (VL) * (HB) / 2; \\
                    EK_OPAQUE(at); \\
                    for (k = 0; k < (NBX); k++) acc[k] = VPOOL(acc[k], at, k * (VL), s_, b_); \\
                    cnt++; \\
                } \\
                /* unrolled: as a loop, GCC kept acc[] on the stack and copied it to out */ \\
                _Pragma("GCC unroll 16") \\
                for (k = 0; k < (NBX); k++) \\
                    memcpy((char*)row + ((V0) + k) * (VL) * 4, &acc[k], sizeof(VT)); \\
            }
    /* Passes of NBLOCK accumulators, then one of the rest (a D = 256 int8 row in 13 + 13 + 6
       AVX2 vectors, as FBGEMM's JIT bag blocks it, not 4 x 8). */
    #define EK_DECODE_BAG_VEC(VPOOL, SB, HB, NBLOCK, VT, VL, LOAD, DIM, NT) \\
        if (offsets->off == NULL && offsets->N == 1) { \\
            EK_DECODE_SINGLES_VEC(VPOOL, SB, VT, VL, LOAD, DIM, NT) \\
        } else { EK_BAGS_FROM(b0) for (b = b0; b < b1; b++) { \\
            enum { NV = (DIM) / (VL), NB = NV < (NBLOCK) ? NV : (NBLOCK), NFULL = NV / NB, \\
                   NREM = NV % NB }; \\
            float* row = out + b * (DIM); \\
            Py_ssize_t cnt = 0; \\
            EK_BAG_BOUNDS(b) \\
            for (Py_ssize_t v0 = 0; v0 < NFULL * NB; v0 += NB) \\
                EK_DECODE_PASS(VPOOL, SB, HB, VT, VL, LOAD, DIM, v0, NB) \\
            if (NREM) \\
                EK_DECODE_PASS(VPOOL, SB, HB, VT, VL, LOAD, DIM, NFULL * NB, (NREM ? NREM : 1)) \\
            EK_BAG_FINISH(float, row, (DIM), cnt, 0.0, 0) \\
        } }

    /* One function a format and row size (EK_DEFINE_VEC_BAG_DIM), and in it one loop for each
       way of prefetching (none, as EK_DECODE_PASS chooses, every line): with the prefetch
       distance and pf_all tested in the loop, the rows loop reloaded them and three more
       locals from the stack every row. Measured with the every-line change of EK_DECODE_PASS
       against the build before both (AVX-512, bags of 8 and 64, 2 threads, per-round medians
       of 9 rounds): within L3 1.00-1.33x, in L2 (V = 1e4, D = 64, no prefetch) 1.00-1.08x;
       beyond L3 0.97-1.02x. Sums without a padding id (mode and pad constants: no divisor test
       a bag, no padding test a row) have loops of their own as well: D = 64 bags of 8
       1.03-1.08x faster again with the mode constant, other sizes 0.99-1.04x; without the
       padding test int8 bags of 8 and 64, D = 64-256, V = 1e4, 1.00-1.03x. */
    #define EK_VEC_BAG_ARGS(IDX_T) const char* W, Py_ssize_t V, Py_ssize_t rs, \\
            Py_ssize_t rowbytes, const IDX_T* ids, Py_ssize_t n, const ek_bags* offsets, \\
            Py_ssize_t b0, Py_ssize_t b1, float* out, int mode, Py_ssize_t pad, int prefetch, \\
            int pf_all
    #define EK_VEC_BAG_PASS W, V, rs, rowbytes, ids, n, offsets, b0, b1, out, mode, pad, prefetch, \\
            pf_all
    #define EK_DECODE_BAG_PF(VPOOL, SB, HB, NBLOCK, VT, VL, LOAD, DIM, NT) \\
        if (!prefetch) { const int pf_all = 0; \\
            EK_DECODE_BAG_VEC(VPOOL, SB, HB, NBLOCK, VT, VL, LOAD, DIM, NT) } \\
        else if (pf_all) { const int pf_all = 1; \\
            EK_DECODE_BAG_VEC(VPOOL, SB, HB, NBLOCK, VT, VL, LOAD, DIM, NT) } \\
        else { const int pf_all = 0; \\
            EK_DECODE_BAG_VEC(VPOOL, SB, HB, NBLOCK, VT, VL, LOAD, DIM, NT) }
    #define EK_DEFINE_VEC_BAG_DIM(NAME, IDX_T, LOAD, TARGET, VPOOL, SB, HB, NBLOCK, VT, VL, \\
                                  DIM, NT) \\
    __attribute__((target(TARGET), noinline)) static Py_ssize_t NAME(EK_VEC_BAG_ARGS(IDX_T)) { \\
        Py_ssize_t b, i, j, k, bad = 0; \\
        if (mode == EK_SUM && pad < 0) { const int mode = EK_SUM; const Py_ssize_t pad = -1; \\
            EK_DECODE_BAG_PF(VPOOL, SB, HB, NBLOCK, VT, VL, LOAD, DIM, NT) } \\
        else { EK_DECODE_BAG_PF(VPOOL, SB, HB, NBLOCK, VT, VL, LOAD, DIM, NT) } \\
        return bad; \\
    }
    /* HB: half-bytes per element (int4 1, int8 2, half formats 4). */
    #define EK_DEFINE_VEC_BAG_FMT(NAME, IDX_T, LOAD, TARGET, VPOOL, SB, HB, NBLOCK, VT, VL, NT) \\
    EK_DEFINE_VEC_BAG_DIM(NAME##_16, IDX_T, LOAD, TARGET, VPOOL, SB, HB, NBLOCK, VT, VL, 16, NT) \\
    EK_DEFINE_VEC_BAG_DIM(NAME##_32, IDX_T, LOAD, TARGET, VPOOL, SB, HB, NBLOCK, VT, VL, 32, NT) \\
    EK_DEFINE_VEC_BAG_DIM(NAME##_64, IDX_T, LOAD, TARGET, VPOOL, SB, HB, NBLOCK, VT, VL, 64, NT) \\
    EK_DEFINE_VEC_BAG_DIM(NAME##_128, IDX_T, LOAD, TARGET, VPOOL, SB, HB, NBLOCK, VT, VL, 128, NT) \\
    EK_DEFINE_VEC_BAG_DIM(NAME##_256, IDX_T, LOAD, TARGET, VPOOL, SB, HB, NBLOCK, VT, VL, 256, NT) \\
    static Py_ssize_t NAME(EK_VEC_BAG_ARGS(IDX_T), Py_ssize_t D) { \\
        switch (D) { \\
        case 16: return NAME##_16(EK_VEC_BAG_PASS); \\
        case 32: return NAME##_32(EK_VEC_BAG_PASS); \\
        case 64: return NAME##_64(EK_VEC_BAG_PASS); \\
        case 128: return NAME##_128(EK_VEC_BAG_PASS); \\
        default: return NAME##_256(EK_VEC_BAG_PASS); \\
        } \\
    }
    #define EK_I8_BLOCK 13
    /* NBLOCK accumulators a pass: 8 AVX2 registers of the 16 (16 spilled some to the stack),
       13 for int8 (its decoding needs only scale, bias and one temporary: FBGEMM's JIT bag
       keeps 13 too), 16 AVX-512 registers of the 32 (every row size in one pass). */
    #define EK_DEFINE_VEC_BAG(NAME, IDX_T, LOAD, TARGET, NBLOCK, NBLOCK_I8, VT, VL, POOL, NT) \\
    EK_DEFINE_VEC_BAG_FMT(NAME##_f16, IDX_T, LOAD, TARGET, POOL##f16, EK_SB_NONE, 4, NBLOCK, \\
                          VT, VL, NT) \\
    EK_DEFINE_VEC_BAG_FMT(NAME##_bf16, IDX_T, LOAD, TARGET, POOL##bf16, EK_SB_NONE, 4, NBLOCK, \\
                          VT, VL, NT) \\
    EK_DEFINE_VEC_BAG_FMT(NAME##_i8, IDX_T, LOAD, TARGET, POOL##i8, EK_SB_I8, 2, NBLOCK_I8, \\
                          VT, VL, NT) \\
    EK_DEFINE_VEC_BAG_FMT(NAME##_i4, IDX_T, LOAD, TARGET, POOL##i4, EK_SB_I4V, 1, NBLOCK, \\
                          VT, VL, NT) \\
    static Py_ssize_t NAME(int fmt, const char* W, \\
            Py_ssize_t V, Py_ssize_t rs, Py_ssize_t rowbytes, const IDX_T* ids, Py_ssize_t n, \\
            const ek_bags* offsets, Py_ssize_t b0, Py_ssize_t b1, float* out, Py_ssize_t D, \\
            int mode, Py_ssize_t pad, int prefetch, int pf_all) { \\
        switch (fmt) { \\
        case EK_F16: return NAME##_f16(EK_VEC_BAG_PASS, D); \\
        case EK_BF16: return NAME##_bf16(EK_VEC_BAG_PASS, D); \\
        case EK_I8: return NAME##_i8(EK_VEC_BAG_PASS, D); \\
        default: return NAME##_i4(EK_VEC_BAG_PASS, D); \\
        } \\
    }
    EK_DEFINE_VEC_BAG(ek_vec_bag_i32, int32_t, ek_load_i32, "avx2,f16c,fma", 8, EK_I8_BLOCK, ek_vf, 8,
                      ek_vpool_, EK_NT_AVX2)
    EK_DEFINE_VEC_BAG(ek_vec_bag_i64, int64_t, ek_load_i64, "avx2,f16c,fma", 8, EK_I8_BLOCK, ek_vf, 8,
                      ek_vpool_, EK_NT_AVX2)
    EK_DEFINE_VEC_BAG(ek_vec512_bag_i32, int32_t, ek_load_i32, EK_AVX512 ",fma", 16, 16, ek_vf16,
                      16, ek_vpool16_, EK_NT_AVX512)
    EK_DEFINE_VEC_BAG(ek_vec512_bag_i64, int64_t, ek_load_i64, EK_AVX512 ",fma", 16, 16, ek_vf16,
                      16, ek_vpool16_, EK_NT_AVX512)

    /* Lookups of the same row sizes: each row decoded in registers and stored to out. A row's
       start (the row `prefetch` ids ahead prefetched; an id outside [0, V), only if ids changed
       after the check, decodes row 0 and is counted): */
    #define EK_DECODE_ROW_START(LOAD, DIM) \\
        if (prefetch && i + prefetch < hi) { \\
            if (pf_all) ek_prefetch_all(rowbytes, W + (Py_ssize_t)ids[i + prefetch] * rs); \\
            else ek_prefetch_packed(rowbytes, W + (Py_ssize_t)ids[i + prefetch] * rs); } \\
        j = LOAD(&ids[i]); \\
        if ((size_t)j >= (size_t)V) { bad++; j = 0; } \\
        const char* src = W + j * rs; EK_OPAQUE(src); \\
        char* dst = (char*)(out + i * (DIM)); EK_OPAQUE(dst);
    #define EK_DECODE_ROWS_VEC(VDEC, SB, VT, VL, LOAD, DIM, NT) \\
        for (i = lo; i < hi; i++) { \\
            EK_DECODE_ROW_START(LOAD, DIM) \\
            float s_, b_; \\
            SB(src, (DIM), s_, b_) \\
            _Pragma("GCC unroll 32") \\
            for (k = 0; k < (DIM) / (VL); k++) { \\
                VT x = VDEC(src, k * (VL), s_, b_); \\
                EK_PUT(stream, NT, dst + k * (VL) * 4, x) \\
            } \\
        }
    #define EK_VEC_ROWS_DIMS_(ROWS, VDEC, SB, VT, VL, LOAD, NT) \\
        switch (D) { \\
        case 16: ROWS(VDEC, SB, VT, VL, LOAD, 16, NT) break; \\
        case 32: ROWS(VDEC, SB, VT, VL, LOAD, 32, NT) break; \\
        case 64: ROWS(VDEC, SB, VT, VL, LOAD, 64, NT) break; \\
        case 128: ROWS(VDEC, SB, VT, VL, LOAD, 128, NT) break; \\
        default: ROWS(VDEC, SB, VT, VL, LOAD, 256, NT) \\
        }
    #define EK_VEC_ROWS_DIMS(VDEC, SB, VT, VL, LOAD, NT) \\
        EK_VEC_ROWS_DIMS_(EK_DECODE_ROWS_VEC, VDEC, SB, VT, VL, LOAD, NT)
    /* float16 rows in AVX2: converted and stored, NaN looked for once a row (one unordered
       compare per two vectors), and a row holding one decoded again by ek_vdec_f16, which
       keeps a signaling NaN's bits as NumPy's conversion does. A check per vector (compare,
       mask move, branch) made these lookups slower than bfloat16's. DIM / 8 is even. */
    #define EK_DECODE_ROWS_F16(VDEC, SB, VT, VL, LOAD, DIM, NT) \\
        for (i = lo; i < hi; i++) { \\
            EK_DECODE_ROW_START(LOAD, DIM) \\
            __m256 nan = _mm256_setzero_ps(); \\
            _Pragma("GCC unroll 32") \\
            for (k = 0; k < (DIM) / 8; k += 2) { \\
                __m256 x0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(src + 16 * k))); \\
                __m256 x1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(src + 16 * k + 16))); \\
                nan = _mm256_or_ps(nan, _mm256_cmp_ps(x0, x1, _CMP_UNORD_Q)); \\
                EK_PUT(stream, NT, dst + 32 * k, x0) \\
                EK_PUT(stream, NT, dst + 32 * k + 32, x1) \\
            } \\
            if (__builtin_expect(_mm256_movemask_ps(nan) != 0, 0)) \\
                for (k = 0; k < (DIM) / 8; k++) { \\
                    __m256 x = VDEC(src, k * 8, 0.0f, 0.0f); \\
                    EK_PUT(stream, NT, dst + 32 * k, x) \\
                } \\
        }
    /* The same in AVX-512: each vector's unordered self-compare ORed into one mask, a row
       holding a NaN decoded again by ek_vdec16_f16. (Its per-vector test and branch made
       float16 lookups 1.5x bfloat16's time beyond the caches on a Zen 5: V = 2e6, D = 256.) */
    #define EK_DECODE_ROWS_F16_512(VDEC, SB, VT, VL, LOAD, DIM, NT) \\
        for (i = lo; i < hi; i++) { \\
            EK_DECODE_ROW_START(LOAD, DIM) \\
            __mmask16 nan = 0; \\
            _Pragma("GCC unroll 32") \\
            for (k = 0; k < (DIM) / 16; k++) { \\
                __m512 x = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(src + 32 * k))); \\
                nan |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q); \\
                EK_PUT(stream, NT, dst + 64 * k, x) \\
            } \\
            if (__builtin_expect(nan != 0, 0)) \\
                for (k = 0; k < (DIM) / 16; k++) { \\
                    __m512 x = VDEC(src, k * 16, 0.0f, 0.0f); \\
                    EK_PUT(stream, NT, dst + 64 * k, x) \\
                } \\
        }
    /* stream: rows stored with non-temporal stores (the caller checked ek_can_stream_vl). */
    #define EK_DEFINE_VEC_GATHER(NAME, IDX_T, LOAD, TARGET, VT, VL, SUF, NT, F16ROWS) \\
    __attribute__((target(TARGET))) static Py_ssize_t NAME(int fmt, const char* W, \\
            Py_ssize_t V, Py_ssize_t rs, Py_ssize_t rowbytes, const IDX_T* ids, float* out, \\
            Py_ssize_t D, Py_ssize_t lo, Py_ssize_t hi, int prefetch, int pf_all, int stream) { \\
        Py_ssize_t i, j, k, bad = 0; \\
        switch (fmt) { \\
        case EK_F16: EK_VEC_ROWS_DIMS_(F16ROWS, SUF##f16, EK_SB_NONE, VT, VL, LOAD, NT) break; \\
        case EK_BF16: EK_VEC_ROWS_DIMS(SUF##bf16, EK_SB_NONE, VT, VL, LOAD, NT) break; \\
        case EK_I8: EK_VEC_ROWS_DIMS(SUF##i8, EK_SB_I8, VT, VL, LOAD, NT) break; \\
        default: EK_VEC_ROWS_DIMS(SUF##i4, EK_SB_I4V, VT, VL, LOAD, NT) \\
        } \\
        if (stream) ek_stream_fence(); \\
        return bad; \\
    }
    EK_DEFINE_VEC_GATHER(ek_vec_gather_i32, int32_t, ek_load_i32, "avx2,f16c", ek_vf, 8,
                         ek_vdec_, EK_NT_AVX2, EK_DECODE_ROWS_F16)
    EK_DEFINE_VEC_GATHER(ek_vec_gather_i64, int64_t, ek_load_i64, "avx2,f16c", ek_vf, 8,
                         ek_vdec_, EK_NT_AVX2, EK_DECODE_ROWS_F16)
    EK_DEFINE_VEC_GATHER(ek_vec512_gather_i32, int32_t, ek_load_i32, EK_AVX512, ek_vf16, 16,
                         ek_vdec16_, EK_NT_AVX512, EK_DECODE_ROWS_F16_512)
    EK_DEFINE_VEC_GATHER(ek_vec512_gather_i64, int64_t, ek_load_i64, EK_AVX512, ek_vf16, 16,
                         ek_vdec16_, EK_NT_AVX512, EK_DECODE_ROWS_F16_512)
    #define EK_TRY_VEC_GATHER(NAME, NAME512) \\
        if (ek_use_f16c && (D == 16 || D == 32 || D == 64 || D == 128 || D == 256)) \\
            return (ek_use_avx512 ? NAME512 : NAME)(fmt, W, V, rs, rowbytes, ids, out, D, lo, \\
                hi, prefetch, pf_all, stream && ek_can_stream_vl(out, D * 4, \\
                                                                 ek_use_avx512 ? 16 : 8));
    static int ek_use_avx512, ek_use_fma;
    #define EK_TRY_VEC_BAG(NAME, NAME512) \\
        if (ek_use_fma && psw == NULL && mode != EK_MAX \\
                && (D == 16 || D == 32 || D == 64 || D == 128 || D == 256)) \\
            return (ek_use_avx512 ? NAME512 : NAME)(fmt, W, V, rs, rowbytes, ids, n, offsets, \\
                                                    b0, b1, out, D, mode, pad, prefetch, pf_all);

    static void ek_init_cpu(void) {
        __builtin_cpu_init();
        ek_use_f16c = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
        ek_use_fma = ek_use_f16c && __builtin_cpu_supports("fma");
        ek_use_avx512 = ek_use_fma && __builtin_cpu_supports("avx512f")
            && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")
            && __builtin_cpu_supports("avx512dq");
    }
    /* Tests: level 0 keeps the decoders' portable loops, 1 allows AVX2/F16C, 2 AVX-512 too
       (each only where the CPU has it). */
    static void ek_set_isa(int level) {
        ek_init_cpu();
        if (level < 2) ek_use_avx512 = 0;
        if (level < 1) ek_use_f16c = ek_use_fma = 0;
    }
    #else
    #define EK_TRY_F16C(NAME)
    #define EK_TRY_VEC_BAG(NAME, NAME512)
    #define EK_TRY_VEC_GATHER(NAME, NAME512)
    static void ek_init_cpu(void) {}
    static void ek_set_isa(int level) { (void)level; }
    #endif

    static inline void ek_dec_f16_int_row(const char* restrict row, Py_ssize_t D,
                                  float* restrict dst) {
        ek_dec_f16_int((const uint16_t*)row, D, dst);
    }

    static inline void ek_dec_f16(const char* restrict row, Py_ssize_t D,
                                  float* restrict dst) {
        const uint16_t* h = (const uint16_t*)row;
    #ifdef EK_HAVE_F16C_PATH
        if (ek_use_f16c) { ek_dec_f16_f16c_row(h, D, dst); return; }
    #endif
        ek_dec_f16_int(h, D, dst);
    }

    static inline void ek_dec_i8(const char* restrict row, Py_ssize_t D,
                                  float* restrict dst) {
        const uint8_t* q = (const uint8_t*)row;
        float s, b;
        EK_SB_I8(row, D, s, b)
        for (Py_ssize_t k = 0; k < D; k++) dst[k] = (float)q[k] * s + b;
    }

    static inline void ek_dec_i4(const char* restrict row, Py_ssize_t D,
                                  float* restrict dst) {
        const uint8_t* q = (const uint8_t*)row;
        float s, b;
        EK_SB_I4(row, D, s, b)
        for (Py_ssize_t m = 0; m < D / 2; m++) {
            dst[2 * m] = (float)(q[m] & 15u) * s + b;
            dst[2 * m + 1] = (float)(q[m] >> 4) * s + b;
        }
    }

    #define EK_DECODE_LOOP(DEC, LOAD) \\
        for (i = lo; i < hi; i++) { \\
            if (prefetch && i + prefetch < hi) \\
                ek_prefetch_row(W + (Py_ssize_t)ids[i + prefetch] * rs); \\
            j = LOAD(&ids[i]); \\
            if ((size_t)j >= (size_t)V) { bad++; j = 0; } \\
            DEC(W + j * rs, D, out + i * D); \\
        }

    #define EK_DEFINE_DECODE_GATHER(NAME, IDX_T, LOAD, F16C_NAME, VEC_NAME, VEC512_NAME) \\
    EK_CLONES static Py_ssize_t NAME(int fmt, const char* W, Py_ssize_t V, Py_ssize_t rs, \\
            Py_ssize_t rowbytes, const IDX_T* ids, float* out, Py_ssize_t D, Py_ssize_t lo, \\
            Py_ssize_t hi, int prefetch, int stream) { \\
        Py_ssize_t i, j, bad = 0; \\
        (void)stream; \\
        EK_PF_ALL \\
        EK_TRY_VEC_GATHER(VEC_NAME, VEC512_NAME) \\
        switch (fmt) { \\
        case EK_F16: EK_TRY_F16C(F16C_NAME) EK_DECODE_LOOP(ek_dec_f16, LOAD) break; \\
        case EK_BF16: EK_DECODE_LOOP(ek_dec_bf16, LOAD) break; \\
        case EK_I8: EK_DECODE_LOOP(ek_dec_i8, LOAD) break; \\
        default: EK_DECODE_LOOP(ek_dec_i4, LOAD) \\
        } \\
        return bad; \\
    }
    EK_DEFINE_DECODE_GATHER(ek_decode_i32, int32_t, ek_load_i32, ek_f16c_gather_i32,
                            ek_vec_gather_i32, ek_vec512_gather_i32)
    EK_DEFINE_DECODE_GATHER(ek_decode_i64, int64_t, ek_load_i64, ek_f16c_gather_i64,
                            ek_vec_gather_i64, ek_vec512_gather_i64)

    /* The id at position i of a decoded bag into j (the row `prefetch` ids ahead prefetched);
       padding and (only if ids changed since their check) out-of-range ids skipped. */
    #define EK_DECODE_BAG_ID(LOAD) \\
        if (prefetch && i + prefetch < n) \\
            ek_prefetch_row(W + (Py_ssize_t)ids[i + prefetch] * rs); \\
        j = LOAD(&ids[i]); \\
        if (j == pad) continue; \\
        if ((size_t)j >= (size_t)V) { bad++; continue; }

    /* acc += an int8 or int4 row as torch adds it (the vector paths' ek_vpool_i8/_i4):
       acc[k] = fmaf(s, q[k], acc[k] + b), s and b first multiplied by the weight (rounded). */
    static inline void ek_pool_codes(int fmt, const char* restrict row, Py_ssize_t D,
                                     float* restrict acc, float w, int weighted) {
        const uint8_t* q = (const uint8_t*)row;
        float s, b;
        if (fmt == EK_I8) EK_SB_I8(row, D, s, b)
        else EK_SB_I4(row, D, s, b)
        if (weighted) { s = w * s; b = w * b; }
        if (fmt == EK_I8) {
            for (Py_ssize_t k = 0; k < D; k++) acc[k] = fmaf(s, (float)q[k], acc[k] + b);
        } else {
            for (Py_ssize_t m = 0; m < D / 2; m++) {
                acc[2 * m] = fmaf(s, (float)(q[m] & 15u), acc[2 * m] + b);
                acc[2 * m + 1] = fmaf(s, (float)(q[m] >> 4), acc[2 * m + 1] + b);
            }
        }
    }

    /* Bags of decoded rows (the portable path; int8 and int4 sums fused by ek_pool_codes): each
       row decoded into tmp, then pooled exactly as a float32 table's row
       is (ek_bag_f32_*: the sequential float32 sum from +0 in id order, w * e then added,
       max from the first row with a strict >, the float64 divisor rounded to float32). */
    #define EK_DECODE_BAG_LOOP(DEC, LOAD) \\
        { EK_BAGS_FROM(b0) for (b = b0; b < b1; b++) { \\
            float* row = out + b * D; \\
            Py_ssize_t cnt = 0; \\
            double wsum = 0.0; \\
            for (k = 0; k < D; k++) row[k] = 0.0f; \\
            EK_BAG_BOUNDS(b) \\
            for (i = lo_; i < hi_; i++) { \\
                EK_DECODE_BAG_ID(LOAD) \\
                if ((fmt == EK_I8 || fmt == EK_I4) && mode != EK_MAX) { \\
                    float w_ = psw != NULL ? psw[i] : 0.0f; \\
                    ek_pool_codes(fmt, W + j * rs, D, row, w_, psw != NULL); \\
                    if (psw != NULL) wsum += (mode == EK_SQRTN) ? (double)w_ * w_ : (double)w_; \\
                    cnt++; \\
                    continue; \\
                } \\
                DEC(W + j * rs, D, tmp); \\
                EK_POOL_ROW(float, tmp) \\
            } \\
            EK_BAG_FINISH(float, row, D, cnt, wsum, psw != NULL) \\
        } }

    /* Unweighted sum / mean / sqrtn with D a compile-time constant: the bag's sum in a local
       array the compiler keeps in registers (or L1), each decoded row added to it, written to
       out once; the same additions in the same order as the general loop. */
    #define EK_DECODE_BAG_FIXED(DEC, LOAD, DIM) \\
        { EK_BAGS_FROM(b0) for (b = b0; b < b1; b++) { \\
            float acc[DIM]; \\
            Py_ssize_t cnt = 0; \\
            for (k = 0; k < (DIM); k++) acc[k] = 0.0f; \\
            EK_BAG_BOUNDS(b) \\
            for (i = lo_; i < hi_; i++) { \\
                EK_DECODE_BAG_ID(LOAD) \\
                DEC(W + j * rs, (DIM), tmp); \\
                for (k = 0; k < (DIM); k++) acc[k] += tmp[k]; \\
                cnt++; \\
            } \\
            EK_BAG_FINISH(float, acc, (DIM), cnt, 0.0, 0) \\
            memcpy(out + b * (DIM), acc, (DIM) * sizeof(float)); \\
        } }

    #define EK_DECODE_BAG_DIMS(DEC, LOAD) \\
        if (psw == NULL && mode != EK_MAX) { \\
            switch (D) { \\
            case 32: EK_DECODE_BAG_FIXED(DEC, LOAD, 32) return bad; \\
            case 64: EK_DECODE_BAG_FIXED(DEC, LOAD, 64) return bad; \\
            case 128: EK_DECODE_BAG_FIXED(DEC, LOAD, 128) return bad; \\
            case 256: EK_DECODE_BAG_FIXED(DEC, LOAD, 256) return bad; \\
            default: break; \\
            } \\
        } \\
        EK_DECODE_BAG_LOOP(DEC, LOAD)

    #define EK_DEFINE_DECODE_BAG(NAME, IDX_T, LOAD, VEC_NAME, VEC512_NAME) \\
    EK_CLONES static Py_ssize_t NAME(int fmt, const char* W, Py_ssize_t V, Py_ssize_t rs, \\
            Py_ssize_t rowbytes, const IDX_T* ids, Py_ssize_t n, const ek_bags* offsets, \\
            Py_ssize_t b0, Py_ssize_t b1, float* out, Py_ssize_t D, int mode, \\
            const float* psw, Py_ssize_t pad, int prefetch, float* tmp) { \\
        Py_ssize_t b, i, j, k, bad = 0; \\
        EK_PF_ALL \\
        EK_TRY_VEC_BAG(VEC_NAME, VEC512_NAME) \\
        switch (fmt) { \\
        case EK_F16: EK_DECODE_BAG_DIMS(ek_dec_f16_int_row, LOAD) break; \\
        case EK_BF16: EK_DECODE_BAG_DIMS(ek_dec_bf16, LOAD) break; \\
        case EK_I8: EK_DECODE_BAG_LOOP(ek_dec_i8, LOAD) break; \\
        default: EK_DECODE_BAG_LOOP(ek_dec_i4, LOAD) \\
        } \\
        return bad; \\
    }
    EK_DEFINE_DECODE_BAG(ek_decode_bag_i32, int32_t, ek_load_i32, ek_vec_bag_i32, ek_vec512_bag_i32)
    EK_DEFINE_DECODE_BAG(ek_decode_bag_i64, int64_t, ek_load_i64, ek_vec_bag_i64, ek_vec512_bag_i64)
    """
    void ek_init_cpu() noexcept nogil
    void ek_set_isa(int level) noexcept nogil
    Py_ssize_t ek_decode_i32(int fmt, const char* W, Py_ssize_t V, Py_ssize_t rs,
                             Py_ssize_t rowbytes, const int32_t* ids, float* out, Py_ssize_t D,
                             Py_ssize_t lo, Py_ssize_t hi, int prefetch,
                             int stream) noexcept nogil
    Py_ssize_t ek_decode_i64(int fmt, const char* W, Py_ssize_t V, Py_ssize_t rs,
                             Py_ssize_t rowbytes, const int64_t* ids, float* out, Py_ssize_t D,
                             Py_ssize_t lo, Py_ssize_t hi, int prefetch,
                             int stream) noexcept nogil
    Py_ssize_t ek_decode_bag_i32(int fmt, const char* W, Py_ssize_t V, Py_ssize_t rs,
                                 Py_ssize_t rowbytes, const int32_t* ids, Py_ssize_t n,
                                 const ek_bags* offsets, Py_ssize_t b0, Py_ssize_t b1,
                                 float* out, Py_ssize_t D, int mode, const float* psw,
                                 Py_ssize_t pad, int prefetch, float* tmp) noexcept nogil
    Py_ssize_t ek_decode_bag_i64(int fmt, const char* W, Py_ssize_t V, Py_ssize_t rs,
                                 Py_ssize_t rowbytes, const int64_t* ids, Py_ssize_t n,
                                 const ek_bags* offsets, Py_ssize_t b0, Py_ssize_t b1,
                                 float* out, Py_ssize_t D, int mode, const float* psw,
                                 Py_ssize_t pad, int prefetch, float* tmp) noexcept nogil


ek_init_cpu()


def set_isa(int level):
    """For tests: decode low-precision rows with the portable loops only (0), with AVX2 and
    F16C where the CPU has them (1), or with AVX-512 too (2, the default)."""
    ek_set_isa(level)


cdef Py_ssize_t _decode_range(int fmt, const char* W, Py_ssize_t V, Py_ssize_t rs,
                              Py_ssize_t rowbytes, const void* ids, bint i32, float* out,
                              Py_ssize_t D, Py_ssize_t lo, Py_ssize_t hi,
                              int prefetch, bint stream) noexcept nogil:
    if i32:
        return ek_decode_i32(fmt, W, V, rs, rowbytes, <const int32_t*>ids, out, D, lo, hi,
                             prefetch, stream)
    return ek_decode_i64(fmt, W, V, rs, rowbytes, <const int64_t*>ids, out, D, lo, hi, prefetch,
                         stream)


ctypedef struct decode_job:
    ids_job head
    int fmt
    const char* W
    Py_ssize_t rs
    Py_ssize_t rowbytes
    float* out
    Py_ssize_t D
    int prefetch
    bint stream


cdef Py_ssize_t _decode_share(const void* job, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """_decode_range over rows lo..hi-1 of a decode_job."""
    cdef const decode_job* j = <const decode_job*>job
    return _decode_range(j.fmt, j.W, j.head.V, j.rs, j.rowbytes, j.head.ids, j.head.i32, j.out,
                         j.D, lo, hi, j.prefetch, j.stream)


def decode_gather(int fmt, cnp.ndarray W not None, cnp.ndarray ids not None,
                  cnp.ndarray out not None, int nthreads, int prefetch=0, bint stream=False,
                  bint check=False):
    """out[i] = row ids[i] of a low-precision table decoded to float32 (fmt: 1 float16,
    2 bfloat16, 3 int8, 4 int4; W its storage with contiguous rows: (V, D) uint16 or
    (V, row bytes) uint8; out (n, D) float32). stream: non-temporal stores where the vector
    loops run and out allows (as gather's; 64-byte aligned rows for the AVX-512 loops).
    check: as gather's (each thread checks its share of the ids before any thread writes;
    IdsOutOfRange, nothing written). Raises RuntimeError if an id read was outside [0, V)
    (ids changed meanwhile)."""
    cdef decode_job job
    job.fmt = fmt
    job.W = <const char*>cnp.PyArray_DATA(W)
    job.rs = cnp.PyArray_STRIDE(W, 0)
    job.rowbytes = cnp.PyArray_DIM(W, 1) * cnp.PyArray_ITEMSIZE(W)
    job.out = <float*>cnp.PyArray_DATA(out)
    job.D = cnp.PyArray_DIM(out, 1)
    job.prefetch = prefetch
    job.stream = stream
    _run_over_ids(&job.head, _decode_share, ids, cnp.PyArray_DIM(W, 0), nthreads, check)


cdef Py_ssize_t _decode_bag_range(int fmt, const char* W, Py_ssize_t V, Py_ssize_t rs,
                                  Py_ssize_t rowbytes, const void* ids, bint i32, Py_ssize_t n,
                                  const ek_bags* offsets, Py_ssize_t b0, Py_ssize_t b1,
                                  float* out, Py_ssize_t D, int mode, const float* psw,
                                  Py_ssize_t pad, int prefetch) noexcept nogil:
    """Returns the number of bad ids, or -1 without memory for the decoded row."""
    cdef Py_ssize_t bad
    cdef float* tmp = <float*>malloc(max(D, 1) * sizeof(float))
    if tmp == NULL:
        return -1
    if i32:
        bad = ek_decode_bag_i32(fmt, W, V, rs, rowbytes, <const int32_t*>ids, n, offsets, b0, b1,
                                out, D, mode, psw, pad, prefetch, tmp)
    else:
        bad = ek_decode_bag_i64(fmt, W, V, rs, rowbytes, <const int64_t*>ids, n, offsets, b0, b1,
                                out, D, mode, psw, pad, prefetch, tmp)
    free(tmp)
    return bad


def decode_bag(int fmt, cnp.ndarray W not None, cnp.ndarray ids not None, offsets, int mode,
               psw, Py_ssize_t pad, cnp.ndarray out not None, int nthreads, int prefetch=0,
               bint check=False, bint stream=False):
    """bag() for a low-precision table (see decode_gather for fmt and W): each row decoded to
    float32 and pooled as a float32 table's row, int8 and int4 rows fused as torch adds them;
    check as bag()'s. Raises RuntimeError if an id read was outside [0, V) (ids changed
    meanwhile), MemoryError without memory for a decoded row."""
    cdef const char* w = <const char*>cnp.PyArray_DATA(W)
    cdef Py_ssize_t rs = cnp.PyArray_STRIDE(W, 0)
    cdef Py_ssize_t rowbytes = cnp.PyArray_DIM(W, 1) * cnp.PyArray_ITEMSIZE(W)
    cdef Py_ssize_t V = cnp.PyArray_DIM(W, 0), D = cnp.PyArray_DIM(out, 1)
    cdef Py_ssize_t n = cnp.PyArray_DIM(ids, 0)
    cdef const void* p = cnp.PyArray_DATA(ids)
    cdef const void* pw = NULL
    if psw is not None:
        pw = cnp.PyArray_DATA(<cnp.ndarray>psw)
    _run_bags(fmt, w, V, rs, rowbytes, p, cnp.PyArray_ITEMSIZE(ids) == 4, n, offsets,
              cnp.PyArray_DATA(out), cnp.PyArray_DIM(out, 0), True, D, mode, pw, pad, prefetch,
              nthreads, check, stream)


cdef Py_ssize_t _range_of(int fmt, const char* w, Py_ssize_t V, Py_ssize_t rs,
                          Py_ssize_t rowbytes, const void* p, bint i32, Py_ssize_t n,
                          const ek_bags* g, Py_ssize_t b0, Py_ssize_t b1, void* o, bint f32,
                          Py_ssize_t D, int mode, const void* pw, Py_ssize_t pad,
                          int prefetch) noexcept nogil:
    """Bags b0..b1-1 of a float table (fmt 0) or a low-precision one (fmt: EK_F16 ...): the
    number of bad ids, or -1 without memory for a decoded row."""
    if fmt == 0:
        return _bag_range(w, V, rs, p, i32, n, g, b0, b1, o, f32, D, mode, pw, pad, prefetch)
    return _decode_bag_range(fmt, w, V, rs, rowbytes, p, i32, n, g, b0, b1, <float*>o, D, mode,
                             <const float*>pw, pad, prefetch)


ctypedef struct bags_job:
    ids_job head
    ek_bags g
    int fmt
    const char* w
    Py_ssize_t rs
    Py_ssize_t rowbytes
    Py_ssize_t n
    void* o
    bint f32
    Py_ssize_t D
    int mode
    const void* pw
    Py_ssize_t pad
    int prefetch


cdef bint _bag_share_bad(const void* job, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    """_bag_ids_bad over bags b0..b1-1 of a bags_job."""
    cdef const bags_job* j = <const bags_job*>job
    return _bag_ids_bad(j.head.ids, j.head.i32, &j.g, b0, b1, j.head.V)


cdef Py_ssize_t _bags_share(const void* job, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    """_range_of over bags b0..b1-1 of a bags_job."""
    cdef const bags_job* j = <const bags_job*>job
    return _range_of(j.fmt, j.w, j.head.V, j.rs, j.rowbytes, j.head.ids, j.head.i32, j.n, &j.g,
                     b0, b1, j.o, j.f32, j.D, j.mode, j.pw, j.pad, j.prefetch)


cdef int _run_bags(int fmt, const char* w, Py_ssize_t V, Py_ssize_t rs, Py_ssize_t rowbytes,
                   const void* p, bint i32, Py_ssize_t n, offsets, void* o, Py_ssize_t B,
                   bint f32, Py_ssize_t D, int mode, const void* pw, Py_ssize_t pad,
                   int prefetch, int nthreads, bint check, bint stream=False) except -1:
    """bag() and decode_bag(): the B bags split among nthreads threads by the ids they hold,
    each bag whole on one thread (nthreads <= 1: no OpenMP region); with check, each thread
    first checks its ids' bounds and nothing is written if one is bad (IdsOutOfRange); with
    stream, bags of one id (no offsets, unweighted, not max) of float32 rows are written with
    non-temporal stores where out allows (as gather's). Raises MemoryError without memory for a
    decoded row, RuntimeError if an id read was outside [0, V) (ids changed meanwhile)."""
    cdef bags_job job
    cdef Py_ssize_t bd[MAX_THREADS + 1]
    cdef int flags[MAX_THREADS]
    cdef Py_ssize_t bad
    _bags_of(&job.g, offsets, B, n)
    job.g.stream = stream
    job.head.ids = p
    job.head.i32 = i32
    job.head.V = V
    job.fmt = fmt
    job.w = w
    job.rs = rs
    job.rowbytes = rowbytes
    job.n = n
    job.o = o
    job.f32 = f32
    job.D = D
    job.mode = mode
    job.pw = pw
    job.pad = pad
    job.prefetch = prefetch
    nthreads = max(1, min(nthreads, MAX_THREADS))
    with nogil:
        _split_bags(&job.g, bd, nthreads)
        _checked_shares(&job, check, _bag_share_bad, _bags_share, bd, nthreads, flags, &bad)
    if _any(flags, nthreads):
        raise IdsOutOfRange()
    if bad < 0:
        raise MemoryError("no memory for a decoded row of a low-precision bag")
    if bad:
        raise ids_changed_error(V)
    return 0

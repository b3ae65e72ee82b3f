# cython: language_level=3
"""Compiled core of cython_gather. Arguments arrive checked by kernels._validate: no bounds
checks here. Weights may have any strides (byte strides are used); ids are 1-D C-contiguous
int32/int64; out and dW are C-contiguous."""
cimport numpy as cnp
from cython.parallel cimport prange, threadid
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memcpy, memset

cnp.import_array()

ctypedef fused floating:
    float
    double

ctypedef fused index_t:
    int32_t
    int64_t

cdef enum:
    MAX_THREADS = 256

cdef extern from *:
    """
    #include <string.h>
    #include <stdint.h>
    #if defined(__GNUC__)
    #define EK_PREFETCH(p) __builtin_prefetch((p), 0, 3)
    #else
    #define EK_PREFETCH(p) ((void)0)
    #endif

    static inline void ek_prefetch_row(const char* p, Py_ssize_t nbytes) {
        Py_ssize_t off;
        for (off = 0; off < nbytes; off += 64) EK_PREFETCH(p + off);
    }

    /* Constant-size memcpy of small rows is inlined as vector moves; larger rows call libc's
       memcpy, which picks the widest vector moves at run time (measured faster from 256 bytes). */
    #define EK_COPY_LOOP(NB) \\
        for (i = lo; i < hi; i++) { \\
            if (prefetch && i + prefetch < hi) \\
                ek_prefetch_row(W + (Py_ssize_t)ids[i + prefetch] * rs, NB); \\
            memcpy(out + i * (NB), W + (Py_ssize_t)ids[i] * rs, NB); \\
        }

    #define EK_DEFINE_GATHER(NAME, IDX_T) \\
    static void NAME(const char* W, Py_ssize_t rs, const IDX_T* ids, char* out, \\
                     Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t rowbytes, int prefetch) { \\
        Py_ssize_t i; \\
        switch (rowbytes) { \\
        case 32: EK_COPY_LOOP(32) break; \\
        case 64: EK_COPY_LOOP(64) break; \\
        case 128: EK_COPY_LOOP(128) break; \\
        default: EK_COPY_LOOP(rowbytes) \\
        } \\
    }
    EK_DEFINE_GATHER(ek_gather_i32, int32_t)
    EK_DEFINE_GATHER(ek_gather_i64, int64_t)
    """
    void ek_gather_i32(const char* W, Py_ssize_t rs, const int32_t* ids, char* out,
                       Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t rowbytes,
                       int prefetch) noexcept nogil
    void ek_gather_i64(const char* W, Py_ssize_t rs, const int64_t* ids, char* out,
                       Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t rowbytes,
                       int prefetch) noexcept nogil


cdef inline void _copy_row(floating* dst, const char* src, Py_ssize_t D,
                           Py_ssize_t col_stride) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(D):
        dst[k] = (<const floating*>(src + k * col_stride))[0]


cdef inline void _gather_range(const char* W, Py_ssize_t row_stride, Py_ssize_t col_stride,
                               const index_t* ids, floating* out, Py_ssize_t D,
                               Py_ssize_t lo, Py_ssize_t hi, int prefetch) noexcept nogil:
    cdef Py_ssize_t i
    if col_stride == sizeof(floating):
        if index_t is int32_t:
            ek_gather_i32(W, row_stride, ids, <char*>out, lo, hi, D * sizeof(floating), prefetch)
        else:
            ek_gather_i64(W, row_stride, ids, <char*>out, lo, hi, D * sizeof(floating), prefetch)
    else:
        for i in range(lo, hi):
            _copy_row(out + i * D, W + ids[i] * row_stride, D, col_stride)


cdef int _gather(const char* W, Py_ssize_t row_stride, Py_ssize_t col_stride,
                 const index_t* ids, Py_ssize_t n, floating* out, Py_ssize_t D,
                 int nthreads, int prefetch) noexcept nogil:
    cdef Py_ssize_t c
    cdef int t, used = 0
    cdef int worker[MAX_THREADS]
    if nthreads <= 1:  # no OpenMP region at all (forked children rely on it)
        _gather_range(W, row_stride, col_stride, ids, out, D, 0, n, prefetch)
        return 1
    for t in range(nthreads):
        worker[t] = 0
    for c in prange(nthreads, nogil=True, num_threads=nthreads, schedule="static", chunksize=1):
        _gather_range(W, row_stride, col_stride, ids, out, D,
                      n * c // nthreads, n * (c + 1) // nthreads, prefetch)
        worker[threadid()] = 1
    for t in range(nthreads):
        used = used + worker[t]
    return used


cdef void _scatter_rows(const floating* G, const index_t* ids, Py_ssize_t n,
                        floating* dW, Py_ssize_t D, bint zeroed,
                        Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t i, k
    cdef index_t j
    cdef floating* row
    cdef const floating* g
    if not zeroed:
        memset(dW + r0 * D, 0, (r1 - r0) * D * sizeof(floating))
    for i in range(n):
        j = ids[i]
        if r0 <= j < r1:
            row = dW + j * D
            g = G + i * D
            for k in range(D):
                row[k] += g[k]


cdef void _scatter(const floating* G, const index_t* ids, Py_ssize_t n, floating* dW,
                   Py_ssize_t V, Py_ssize_t D, bint zeroed, int nthreads) noexcept nogil:
    cdef Py_ssize_t c
    if nthreads <= 1:  # no OpenMP region at all (forked children rely on it)
        _scatter_rows(G, ids, n, dW, D, zeroed, 0, V)
        return
    for c in prange(nthreads, nogil=True, num_threads=nthreads, schedule="static", chunksize=1):
        _scatter_rows(G, ids, n, dW, D, zeroed, V * c // nthreads, V * (c + 1) // nthreads)


def gather(cnp.ndarray W not None, cnp.ndarray ids not None, cnp.ndarray out not None,
           int nthreads, int prefetch=0):
    """out[i] = W[ids[i]]; returns the number of threads that did work.

    prefetch: fetch the row this many ids ahead (0: none; pays off when the table is beyond L2)."""
    cdef const char* w = <const char*>cnp.PyArray_DATA(W)
    cdef Py_ssize_t rs = cnp.PyArray_STRIDE(W, 0), cs = cnp.PyArray_STRIDE(W, 1)
    cdef Py_ssize_t n = cnp.PyArray_DIM(ids, 0), D = cnp.PyArray_DIM(W, 1)
    cdef void* o = cnp.PyArray_DATA(out)
    cdef void* p = cnp.PyArray_DATA(ids)
    cdef bint f32 = cnp.PyArray_TYPE(W) == cnp.NPY_FLOAT32
    cdef bint i32 = cnp.PyArray_ITEMSIZE(ids) == 4
    cdef int used
    nthreads = max(1, min(nthreads, MAX_THREADS))
    with nogil:
        if f32 and i32:
            used = _gather(w, rs, cs, <const int32_t*>p, n, <float*>o, D, nthreads, prefetch)
        elif f32:
            used = _gather(w, rs, cs, <const int64_t*>p, n, <float*>o, D, nthreads, prefetch)
        elif i32:
            used = _gather(w, rs, cs, <const int32_t*>p, n, <double*>o, D, nthreads, prefetch)
        else:
            used = _gather(w, rs, cs, <const int64_t*>p, n, <double*>o, D, nthreads, prefetch)
    return used


def scatter_add(cnp.ndarray G not None, cnp.ndarray ids not None, cnp.ndarray dW not None,
                bint zeroed, int nthreads):
    """dW[r] = sum of G[i] over ids[i] == r, rows split among threads (zeroed: dW is zero)."""
    cdef void* g = cnp.PyArray_DATA(G)
    cdef void* p = cnp.PyArray_DATA(ids)
    cdef void* d = cnp.PyArray_DATA(dW)
    cdef Py_ssize_t n = cnp.PyArray_DIM(ids, 0)
    cdef Py_ssize_t V = cnp.PyArray_DIM(dW, 0), D = cnp.PyArray_DIM(dW, 1)
    cdef bint f32 = cnp.PyArray_TYPE(G) == cnp.NPY_FLOAT32
    cdef bint i32 = cnp.PyArray_ITEMSIZE(ids) == 4
    nthreads = max(1, min(nthreads, MAX_THREADS))
    with nogil:
        if f32 and i32:
            _scatter(<const float*>g, <const int32_t*>p, n, <float*>d, V, D, zeroed, nthreads)
        elif f32:
            _scatter(<const float*>g, <const int64_t*>p, n, <float*>d, V, D, zeroed, nthreads)
        elif i32:
            _scatter(<const double*>g, <const int32_t*>p, n, <double*>d, V, D, zeroed, nthreads)
        else:
            _scatter(<const double*>g, <const int64_t*>p, n, <double*>d, V, D, zeroed, nthreads)

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

DEF MAX_THREADS = 256


cdef inline void _copy_row(floating* dst, const char* src, Py_ssize_t D,
                           Py_ssize_t col_stride) noexcept nogil:
    cdef Py_ssize_t k
    if col_stride == sizeof(floating):
        memcpy(dst, src, D * sizeof(floating))
    else:
        for k in range(D):
            dst[k] = (<const floating*>(src + k * col_stride))[0]


cdef int _gather(const char* W, Py_ssize_t row_stride, Py_ssize_t col_stride,
                 const index_t* ids, Py_ssize_t n, floating* out, Py_ssize_t D,
                 int nthreads) noexcept nogil:
    cdef Py_ssize_t c, i, lo, hi
    cdef int t, used = 0
    cdef int worker[MAX_THREADS]
    if nthreads <= 1:
        for i in range(n):
            _copy_row(out + i * D, W + ids[i] * row_stride, D, col_stride)
        return 1
    for t in range(nthreads):
        worker[t] = 0
    for c in prange(nthreads, nogil=True, num_threads=nthreads, schedule="static", chunksize=1):
        lo = n * c // nthreads
        hi = n * (c + 1) // nthreads
        for i in range(lo, hi):
            _copy_row(out + i * D, W + ids[i] * row_stride, D, col_stride)
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
    if nthreads <= 1:
        _scatter_rows(G, ids, n, dW, D, zeroed, 0, V)
        return
    for c in prange(nthreads, nogil=True, num_threads=nthreads, schedule="static", chunksize=1):
        _scatter_rows(G, ids, n, dW, D, zeroed, V * c // nthreads, V * (c + 1) // nthreads)


def gather(cnp.ndarray W not None, cnp.ndarray ids not None, cnp.ndarray out not None,
           int nthreads):
    """out[i] = W[ids[i]]; returns the number of threads that did work."""
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
            used = _gather(w, rs, cs, <const int32_t*>p, n, <float*>o, D, nthreads)
        elif f32:
            used = _gather(w, rs, cs, <const int64_t*>p, n, <float*>o, D, nthreads)
        elif i32:
            used = _gather(w, rs, cs, <const int32_t*>p, n, <double*>o, D, nthreads)
        else:
            used = _gather(w, rs, cs, <const int64_t*>p, n, <double*>o, D, nthreads)
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

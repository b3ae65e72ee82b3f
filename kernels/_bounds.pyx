# cython: language_level=3
"""One-pass min/max of a 1-D C-contiguous integer array (the shared bounds check)."""
cimport numpy as cnp
from libc.stdint cimport (int8_t, int16_t, int32_t, int64_t,
                          uint8_t, uint16_t, uint32_t, uint64_t)

cnp.import_array()

ctypedef fused anyint:
    int8_t
    int16_t
    int32_t
    int64_t
    uint8_t
    uint16_t
    uint32_t
    uint64_t


cdef inline (anyint, anyint) _minmax(const anyint* p, Py_ssize_t n) noexcept nogil:
    cdef anyint lo = p[0], hi = p[0], v
    cdef Py_ssize_t i
    for i in range(1, n):
        v = p[i]
        lo = v if v < lo else lo
        hi = v if v > hi else hi
    return lo, hi


def minmax(cnp.ndarray ids not None):
    """Return (min, max) of a non-empty 1-D C-contiguous native integer array, as Python ints."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(ids)
    cdef void* p = cnp.PyArray_DATA(ids)
    cdef int t = cnp.PyArray_TYPE(ids)
    cdef int size = cnp.PyArray_ITEMSIZE(ids)
    cdef bint signed = cnp.PyArray_ISSIGNED(ids)
    cdef int64_t slo = 0, shi = 0
    cdef uint64_t ulo = 0, uhi = 0
    if (n == 0 or cnp.PyArray_NDIM(ids) != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(ids)
            or not cnp.PyArray_ISNOTSWAPPED(ids) or not cnp.PyArray_ISINTEGER(ids)):
        raise ValueError("minmax needs a non-empty 1-D C-contiguous native integer array")
    with nogil:
        if signed:
            if size == 8:
                slo, shi = _minmax(<const int64_t*>p, n)
            elif size == 4:
                slo, shi = _minmax(<const int32_t*>p, n)
            elif size == 2:
                slo, shi = _minmax(<const int16_t*>p, n)
            else:
                slo, shi = _minmax(<const int8_t*>p, n)
        else:
            if size == 8:
                ulo, uhi = _minmax(<const uint64_t*>p, n)
            elif size == 4:
                ulo, uhi = _minmax(<const uint32_t*>p, n)
            elif size == 2:
                ulo, uhi = _minmax(<const uint16_t*>p, n)
            else:
                ulo, uhi = _minmax(<const uint8_t*>p, n)
    if signed:
        return slo, shi
    return ulo, uhi

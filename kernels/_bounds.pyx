# cython: language_level=3
"""The shared bounds check: is any id of a 1-D C-contiguous integer array outside [0, V)?

One branch-free pass: an id is out of range exactly when, reinterpreted as an unsigned 64-bit
number, it is >= V (a negative id becomes a huge one). On x86-64 with GCC the loop is compiled
twice, for AVX2 and for the baseline, and the CPU picks at load time (no -march flags: the build
runs on any x86-64); AVX2 compares four int64 ids at once, baseline SSE2 has no 64-bit compare.
"""
cimport numpy as cnp
from libc.stdint cimport uint64_t

cnp.import_array()

cdef extern from *:
    """
    #include <stdint.h>
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    #define EK_CLONES __attribute__((target_clones("avx2", "default")))
    #else
    #define EK_CLONES
    #endif

    #define EK_DEFINE_CHECK(NAME, T, WIDEN) \\
    EK_CLONES static int NAME(const void* data, Py_ssize_t n, uint64_t V) { \\
        const T* p = (const T*)data; \\
        uint64_t bad = 0; \\
        Py_ssize_t i; \\
        for (i = 0; i < n; i++) bad |= (uint64_t)(WIDEN)p[i] >= V; \\
        return bad != 0; \\
    }
    EK_DEFINE_CHECK(ek_check_i8, int8_t, int64_t)
    EK_DEFINE_CHECK(ek_check_i16, int16_t, int64_t)
    EK_DEFINE_CHECK(ek_check_i32, int32_t, int64_t)
    EK_DEFINE_CHECK(ek_check_i64, int64_t, int64_t)
    EK_DEFINE_CHECK(ek_check_u8, uint8_t, uint64_t)
    EK_DEFINE_CHECK(ek_check_u16, uint16_t, uint64_t)
    EK_DEFINE_CHECK(ek_check_u32, uint32_t, uint64_t)
    EK_DEFINE_CHECK(ek_check_u64, uint64_t, uint64_t)
    """
    int ek_check_i8(const void* data, Py_ssize_t n, uint64_t V) noexcept nogil
    int ek_check_i16(const void* data, Py_ssize_t n, uint64_t V) noexcept nogil
    int ek_check_i32(const void* data, Py_ssize_t n, uint64_t V) noexcept nogil
    int ek_check_i64(const void* data, Py_ssize_t n, uint64_t V) noexcept nogil
    int ek_check_u8(const void* data, Py_ssize_t n, uint64_t V) noexcept nogil
    int ek_check_u16(const void* data, Py_ssize_t n, uint64_t V) noexcept nogil
    int ek_check_u32(const void* data, Py_ssize_t n, uint64_t V) noexcept nogil
    int ek_check_u64(const void* data, Py_ssize_t n, uint64_t V) noexcept nogil


def any_out_of_range(cnp.ndarray ids not None, Py_ssize_t vocab_size):
    """True if some id of a 1-D C-contiguous native integer array is < 0 or >= vocab_size."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(ids)
    cdef const void* p = cnp.PyArray_DATA(ids)
    cdef int size = cnp.PyArray_ITEMSIZE(ids)
    cdef bint signed = cnp.PyArray_ISSIGNED(ids)
    cdef uint64_t V = <uint64_t>vocab_size
    cdef int bad
    if (cnp.PyArray_NDIM(ids) != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(ids)
            or not cnp.PyArray_ISNOTSWAPPED(ids) or not cnp.PyArray_ISINTEGER(ids)
            or vocab_size < 0):
        raise ValueError("any_out_of_range needs a 1-D C-contiguous native integer array "
                         "and vocab_size >= 0")
    with nogil:
        if signed:
            if size == 8:
                bad = ek_check_i64(p, n, V)
            elif size == 4:
                bad = ek_check_i32(p, n, V)
            elif size == 2:
                bad = ek_check_i16(p, n, V)
            else:
                bad = ek_check_i8(p, n, V)
        else:
            if size == 8:
                bad = ek_check_u64(p, n, V)
            elif size == 4:
                bad = ek_check_u32(p, n, V)
            elif size == 2:
                bad = ek_check_u16(p, n, V)
            else:
                bad = ek_check_u8(p, n, V)
    return bool(bad)

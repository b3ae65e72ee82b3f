# cython: language_level=3
"""The shared bounds check: is any id of a 1-D C-contiguous integer array outside [0, V)?

One branch-free pass: an id is out of range exactly when, reinterpreted as an unsigned 64-bit
number, it is >= V (a negative id becomes a huge one). On x86-64 with GCC the loop is compiled
twice, for AVX2 and for the baseline, and the CPU picks at load time (no -march flags: the build
runs on any x86-64); AVX2 compares four int64 ids at once, baseline SSE2 has no 64-bit compare.
"""
cimport numpy as cnp
import numpy as np

from kernels._cpu import empty_output
from libc.stdint cimport int64_t, uint64_t

cnp.import_array()

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    #define EK_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
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
    /* Ids narrower than 64 bits are checked in their own width, a max or min per 32 bytes of
       them, not widened to 64 bits as above: 65,536 ids, old build / new in one process (21
       interleaved rounds, AMD EPYC), int32 2.3-2.7x faster (15.1 -> 6.7 us), uint32 2.5-2.9x,
       int16 5.7-6.3x. Cast to the unsigned type UT a negative id is at least 2**(bits - 1),
       so while V is at most that, the unsigned maximum is at least V exactly when some id is
       bad; a larger V is above every non-negative id, and only the sign of the minimum
       decides. */
    #define EK_DEFINE_CHECK_NARROW(NAME, T, UT, SIGNED) \\
    EK_CLONES static int NAME(const void* data, Py_ssize_t n, uint64_t V) { \\
        const T* p = (const T*)data; \\
        Py_ssize_t i; \\
        if (n <= 0) return 0; \\
        if (SIGNED && V > ((uint64_t)1 << (8 * sizeof(T) - 1))) { \\
            T lo = 0; \\
            for (i = 0; i < n; i++) lo = p[i] < lo ? p[i] : lo; \\
            return lo < 0; \\
        } \\
        UT hi = 0; \\
        for (i = 0; i < n; i++) { UT x = (UT)p[i]; hi = x > hi ? x : hi; } \\
        return (uint64_t)hi >= V; \\
    }
    EK_DEFINE_CHECK_NARROW(ek_check_i8, int8_t, uint8_t, 1)
    EK_DEFINE_CHECK_NARROW(ek_check_i16, int16_t, uint16_t, 1)
    EK_DEFINE_CHECK_NARROW(ek_check_i32, int32_t, uint32_t, 1)
    EK_DEFINE_CHECK(ek_check_i64, int64_t, int64_t)
    EK_DEFINE_CHECK_NARROW(ek_check_u8, uint8_t, uint8_t, 0)
    EK_DEFINE_CHECK_NARROW(ek_check_u16, uint16_t, uint16_t, 0)
    EK_DEFINE_CHECK_NARROW(ek_check_u32, uint32_t, uint32_t, 0)
    EK_DEFINE_CHECK(ek_check_u64, uint64_t, uint64_t)

    /* Whether any of m int64 bag bounds is past n or below its predecessor (bit 1), and
       whether they are not all i * N (bit 2; N < 0: not asked); copied into r unless r is
       NULL (the copy is what is checked). Bounds that are all i * N (N = n / B: never past n, never decreasing) are told by
       a lighter pass, a block of EK_SCAN_BLOCK at a time until one differs (65,536 bounds:
       4 against 15 us); the full scan follows only then. */
    #define EK_SCAN_BLOCK 1024
    EK_CLONES static int ek_scan_offsets(const int64_t* p, int64_t* r, Py_ssize_t m, int64_t n,
                                         int64_t N) {
        uint64_t bad = 0, uneven = 1;
        Py_ssize_t i, i0;
        if (r != NULL && m > 0) {  /* check the copy: the caller's array may change meanwhile */
            memcpy(r, p, (size_t)m * sizeof(int64_t));
            p = r;
        }
        if (N >= 0) {
            uneven = 0;
            for (i0 = 0; i0 < m && !uneven; i0 += EK_SCAN_BLOCK) {
                Py_ssize_t i1 = i0 + EK_SCAN_BLOCK < m ? i0 + EK_SCAN_BLOCK : m;
                int64_t x = (int64_t)i0 * N;  /* i * N as a running sum: vectorizes */
                for (i = i0; i < i1; i++, x += N) uneven |= (uint64_t)(p[i] ^ x);
            }
            if (!uneven) return 0;
        }
        for (i = 1; i < m; i++) {
            int64_t x = p[i];
            bad |= (uint64_t)((x > n) | (x < p[i - 1]));
        }
        return (bad != 0) | 2;
    }
    """
    int ek_check_i8(const void* data, Py_ssize_t n, uint64_t V) noexcept nogil
    int ek_check_i16(const void* data, Py_ssize_t n, uint64_t V) noexcept nogil
    int ek_check_i32(const void* data, Py_ssize_t n, uint64_t V) noexcept nogil
    int ek_check_i64(const void* data, Py_ssize_t n, uint64_t V) noexcept nogil
    int ek_check_u8(const void* data, Py_ssize_t n, uint64_t V) noexcept nogil
    int ek_check_u16(const void* data, Py_ssize_t n, uint64_t V) noexcept nogil
    int ek_check_u32(const void* data, Py_ssize_t n, uint64_t V) noexcept nogil
    int ek_check_u64(const void* data, Py_ssize_t n, uint64_t V) noexcept nogil
    int ek_scan_offsets(const int64_t* p, int64_t* r, Py_ssize_t m, int64_t n,
                        int64_t N) noexcept nogil


cdef int ids_out_of_range(const void* p, Py_ssize_t n, int size, bint signed,
                          Py_ssize_t vocab_size) noexcept nogil:
    """Whether one of the n ids at p (integers of `size` bytes, signed or not) is outside
    [0, vocab_size): the pass any_out_of_range runs, for compiled callers (cimport)."""
    cdef uint64_t V = <uint64_t>vocab_size
    if signed:
        if size == 8:
            return ek_check_i64(p, n, V)
        if size == 4:
            return ek_check_i32(p, n, V)
        if size == 2:
            return ek_check_i16(p, n, V)
        return ek_check_i8(p, n, V)
    if size == 8:
        return ek_check_u64(p, n, V)
    if size == 4:
        return ek_check_u32(p, n, V)
    if size == 2:
        return ek_check_u16(p, n, V)
    return ek_check_u8(p, n, V)


def any_out_of_range(cnp.ndarray ids not None, Py_ssize_t vocab_size):
    """True if some id of a 1-D C-contiguous native integer array is < 0 or >= vocab_size."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(ids)
    cdef const void* p = cnp.PyArray_DATA(ids)
    cdef int size = cnp.PyArray_ITEMSIZE(ids)
    cdef bint signed = cnp.PyArray_ISSIGNED(ids)
    cdef int bad
    if (cnp.PyArray_NDIM(ids) != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(ids)
            or not cnp.PyArray_ISNOTSWAPPED(ids) or not cnp.PyArray_ISINTEGER(ids)
            or vocab_size < 0):
        raise ValueError("any_out_of_range needs a 1-D C-contiguous native integer array "
                         "and vocab_size >= 0")
    with nogil:
        bad = ids_out_of_range(p, n, size, signed, vocab_size)
    return bool(bad)


def _name_bad_offset(cnp.ndarray off, Py_ssize_t n):
    """Raise the ValueError naming the first offset past n, else the first decrease, of off (a
    1-D int64 array found bad); a generic one if off no longer holds either (rewritten)."""
    cdef const cnp.int64_t* r = <const cnp.int64_t*>cnp.PyArray_DATA(off)
    cdef Py_ssize_t m = cnp.PyArray_DIM(off, 0), i, past = -1, down = -1
    for i in range(1, m):
        if past < 0 and r[i] > n:
            past = i
        if down < 0 and r[i] < r[i - 1]:
            down = i
    if past >= 0:
        raise ValueError(f"offset {r[past]} at position {past} is past len(ids) = {n}")
    if down >= 0:
        raise ValueError(f"offsets must be non-decreasing: offsets[{down}] = {r[down]} < "
                         f"offsets[{down - 1}] = {r[down - 1]}")
    raise ValueError("offsets changed while they were checked")


cdef inline int _scan_in_place(const int64_t* p, Py_ssize_t m, Py_ssize_t n,
                               bint include_last) noexcept nogil:
    """ek_scan_offsets of m bounds read in place, asking whether the B bags all hold n / B ids:
    bit 1 bad, bit 2 not all of one length (0: all n / B long)."""
    cdef Py_ssize_t B = m - 1 if include_last else m
    cdef int64_t N = n // B if B and n % B == 0 else -1
    return ek_scan_offsets(p, NULL, m, n, N)


def bag_offsets(cnp.ndarray off not None, Py_ssize_t n, bint include_last, bint copy=True):
    """The B + 1 int64 bag bounds of checked offsets: a new array (a private copy), off with n
    appended unless include_last. `off` is 1-D C-contiguous native int64 (B starts, or B + 1
    bounds with include_last). ValueError naming the first problem: the last bound is not n
    (include_last), offsets[0] != 0, an offset past n, a decrease (each with its position).
    copy=False checks the same and returns off itself (for code that reads each bound once and
    clamps it, as the compiled bags do), or None when the B bags all hold n / B ids (then
    no bound need be read at all)."""
    cdef Py_ssize_t m = cnp.PyArray_DIM(off, 0), B
    cdef int64_t N
    cdef const cnp.int64_t* p = <const cnp.int64_t*>cnp.PyArray_DATA(off)
    cdef cnp.ndarray result
    cdef cnp.int64_t* r
    cdef int bad
    if (cnp.PyArray_NDIM(off) != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(off)
            or cnp.PyArray_TYPE(off) != cnp.NPY_INT64 or not cnp.PyArray_ISNOTSWAPPED(off)):
        raise ValueError("bag_offsets needs a 1-D C-contiguous native int64 array")
    if include_last:
        if m == 0:
            raise ValueError("offsets must hold at least one value (the end) with "
                             "include_last_offset=True")
        if p[m - 1] != n:
            raise ValueError(f"with include_last_offset=True the last offset must equal "
                             f"len(ids) = {n}, got {p[m - 1]}")
    elif m == 0:
        if n:
            raise ValueError(f"offsets is empty but ids holds {n} ids: each id must be in a bag")
        return np.zeros(1, np.int64) if copy else off
    if p[0] != 0:
        raise ValueError(f"offsets[0] must be 0, got {p[0]}")
    if not copy:
        with nogil:
            bad = _scan_in_place(<const int64_t*>p, m, n, include_last)
        if bad & 1:
            _name_bad_offset(off, n)
        return None if not bad else off
    result = np.empty(m + (0 if include_last else 1), np.int64)
    r = <cnp.int64_t*>cnp.PyArray_DATA(result)
    with nogil:
        bad = ek_scan_offsets(<const int64_t*>p, <int64_t*>r, m, n, -1)
    if bad & 1:
        _name_bad_offset(result[:m], n)
    if not include_last:
        r[m] = n
    return result


cdef inline bint _c_array(object x, int ndim):
    """x is exactly a numpy.ndarray of ndim dimensions, C-contiguous, native byte order."""
    return (type(x) is cnp.ndarray and cnp.PyArray_NDIM(<cnp.ndarray>x) == ndim
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>x)
            and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>x))


cdef inline bint _apart(cnp.ndarray a, cnp.ndarray b):
    """The bytes of two C-contiguous arrays do not overlap (np.may_share_memory is False)."""
    cdef const char* pa = <const char*>cnp.PyArray_DATA(a)
    cdef const char* pb = <const char*>cnp.PyArray_DATA(b)
    cdef Py_ssize_t na = cnp.PyArray_NBYTES(a), nb = cnp.PyArray_NBYTES(b)
    return na == 0 or nb == 0 or pa + na <= pb or pb + nb <= pa


def plain_bags(weights, ids, offsets, bint include_last, out, Py_ssize_t dim=-1):
    """The checked arguments of a plain bag call, or None when it is not one (the general checks
    of kernels._validate then run, and name any problem): (flat ids, offsets, B, out) as
    LookupBag.prepare(private_offsets=False, bounds=False) returns them, out a new array when
    None. Plain: weights a C-contiguous native float32/float64 ndarray of 2 dims (or, with
    dim >= 0, a low-precision table's checked storage, whose bags are float32 rows of dim); ids a 1-D
    C-contiguous native int32/int64 ndarray with 1-D C-contiguous native int64 offsets that
    bag_offsets(copy=False) accepts, or 2-D such ids with offsets None; at least one bag and one
    id; out None or a C-contiguous writeable ndarray (exactly) of shape (B, D) and the weights'
    dtype, overlapping neither. One C pass over the offsets, no Python-level checks: the common
    call's checks cost 10 us in Python (and more after a large call left the caches cold)."""
    cdef int wt, it
    cdef Py_ssize_t m = 0, n, B
    cdef const int64_t* p = NULL
    cdef int bad
    cdef cnp.ndarray flat
    if not _c_array(weights, 2):
        return None
    if dim >= 0:
        wt = cnp.NPY_FLOAT32
    else:
        wt = cnp.PyArray_TYPE(<cnp.ndarray>weights)
        if wt != cnp.NPY_FLOAT32 and wt != cnp.NPY_FLOAT64:
            return None
        dim = cnp.PyArray_DIM(<cnp.ndarray>weights, 1)
    if offsets is None:
        if not _c_array(ids, 2) or include_last:
            return None
        B = cnp.PyArray_DIM(<cnp.ndarray>ids, 0)
        n = B * cnp.PyArray_DIM(<cnp.ndarray>ids, 1)
        flat = (<cnp.ndarray>ids).reshape(-1)
    else:
        if not _c_array(ids, 1) or not _c_array(offsets, 1):
            return None
        if cnp.PyArray_TYPE(<cnp.ndarray>offsets) != cnp.NPY_INT64:
            return None
        flat = <cnp.ndarray>ids
        n = cnp.PyArray_DIM(flat, 0)
        m = cnp.PyArray_DIM(<cnp.ndarray>offsets, 0)
        B = m - 1 if include_last else m
        p = <const int64_t*>cnp.PyArray_DATA(<cnp.ndarray>offsets)
        if B <= 0 or p[0] != 0 or (include_last and p[m - 1] != n):
            return None
    it = cnp.PyArray_TYPE(flat)
    if n == 0 or B == 0 or (it != cnp.NPY_INT32 and it != cnp.NPY_INT64):
        return None
    if out is not None and (
            not _c_array(out, 2) or cnp.PyArray_TYPE(<cnp.ndarray>out) != wt
            or cnp.PyArray_DIM(<cnp.ndarray>out, 0) != B
            or cnp.PyArray_DIM(<cnp.ndarray>out, 1) != dim
            or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out)
            or not _apart(<cnp.ndarray>out, <cnp.ndarray>weights)
            or not _apart(<cnp.ndarray>out, flat)):
        return None
    off = None
    if p != NULL:  # the one pass over the offsets, after every cheaper refusal
        with nogil:
            bad = _scan_in_place(p, m, n, include_last)
        if bad & 1:
            return None
        if bad:
            off = offsets
    if out is None:
        out = empty_output((B, dim), np.float32 if wt == cnp.NPY_FLOAT32 else np.float64,
                           weights)
    return flat, off, B, out

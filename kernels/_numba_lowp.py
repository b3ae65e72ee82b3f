"""Numba row decoders for the low-precision table formats (kernels._formats): each writes one
table row as float32 into a destination row, exactly as the format's `dequantize()` defines it,
so that every kernel that gathers the decoded rows gives the same bits.

- float16: the exact float32 value of each half (every half is a float32), NaN payloads kept;
- bfloat16: the bits shifted into the high half of a float32 (exact, NaN payloads kept);
- int8 (torch's fused 8-bit rows: D bytes, float32 scale, float32 bias): float32(q) * scale,
  rounded, + bias, rounded: two roundings, no fused multiply-add;
- int4 (torch's fused 4-bit rows: D / 2 bytes, low nibble first, float16 scale and bias): the
  same formula with the halves converted exactly.

`decode_row(fmt, W, j, dst)` decodes (W holds the format's storage: uint16 for float16 and
bfloat16, uint8 rows for int8 and int4); `row_of(W, j, scratch, fmt)` is what the bag loops
read a row through: a float table's own row W[j] (the loops compile exactly as before for float
tables: measured, a branch on fmt in the loop instead cost the float32 sum bag 35-55%), or the
decoded row written into scratch. `pool_row` is what they add a row through: int8 and int4 rows
are fused into the sum as torch's quantized bag ops do (`add_codes`), other rows added.
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

from kernels._numba_intrinsics import fma32

FLOAT16, BFLOAT16, INT8, INT4 = 1, 2, 3, 4
"""Format codes of the compiled decoders (0: a float32/float64 table, no decoding)."""

CODES = {"float16": FLOAT16, "bfloat16": BFLOAT16, "int8": INT8, "int4": INT4}


def storage(W):
    """A table's storage as the compiled decoders (Numba's and C's) read it: halves as uint16
    bits, rowwise formats as their uint8 rows (kernels._validate has checked it C-contiguous)."""
    return W.view(np.uint16) if W.dtype.itemsize == 2 else W


def _half_scales():
    """T[h >> 10] for a half h whose exponent field e is below 31: (-1)**sign * 2**(max(e, 1)
    - 25), so that float32(mantissa + (1024 if e else 0)) * T is the half's value, exactly (a
    power-of-two product of an 11-bit integer)."""
    t = np.empty(64, np.float32)
    for top in range(64):
        e = top & 31
        t[top] = (-1.0 if top & 32 else 1.0) * 2.0 ** (max(e, 1) - 25)
    return t


_HALF_SCALES = _half_scales()


@njit(cache=True, nogil=True)
def half_value(h):
    """(value, special, bits) of the half with bits h (an unsigned integer < 2**16): its exact
    float32 value, or for an infinity or NaN (special) the float32 bits to store (payload kept).
    Scalars only: a helper taking the output arrays paid a reference count per element (10x)."""
    top = h >> 10
    e = top & 31
    m = h & 1023
    if e == 31:
        return np.float32(0), True, (np.uint32(h & 0x8000) << 16) | np.uint32(0x7F800000) | \
            (np.uint32(m) << 13)
    return np.float32(m + (1024 if e else 0)) * _HALF_SCALES[top], False, np.uint32(0)


@njit(cache=True, nogil=True)
def half_to_float(h, out, bits, i, k):
    """out[i, k] = the half with bits h, exactly; bits is out viewed as uint32."""
    v, special, b = half_value(h)
    if special:
        bits[i, k] = b
    else:
        out[i, k] = v


@njit(cache=True, nogil=True)
def _le(W, j, c, nbytes):
    """The little-endian unsigned integer of W[j, c:c + nbytes]."""
    u = np.uint32(0)
    for t in range(nbytes):
        u |= np.uint32(W[j, c + t]) << np.uint32(8 * t)
    return u


@njit(cache=True, nogil=True)
def _scale_bias(fmt, W, j, D, tmp, tmp_bits):
    """(scale, bias) of row j of an int8 (float32 pair) or int4 (float16 pair) table of row
    size D, read from the row's tail bytes through tmp (float32 (1, 2)) and its uint32 view."""
    if fmt == INT8:
        tmp_bits[0, 0] = _le(W, j, D, 4)
        tmp_bits[0, 1] = _le(W, j, D + 4, 4)
    else:
        h = D // 2
        half_to_float(_le(W, j, h, 2), tmp, tmp_bits, 0, 0)
        half_to_float(_le(W, j, h + 2, 2), tmp, tmp_bits, 0, 1)
    return tmp[0, 0], tmp[0, 1]


@njit(cache=True, nogil=True)
def decode_row(fmt, W, j, out, bits, i, tmp, tmp_bits):
    """out[i, :D] (float32; bits: out viewed as uint32) = row j of a low-precision table W (its
    storage). tmp (float32, shape (1, 2)) and tmp_bits (its uint32 view) carry a row's scale and
    bias from their bytes to floats: indexing only, no per-row array views (each costs a
    reference count)."""
    D = out.shape[1]
    if fmt == BFLOAT16:
        for k in range(D):
            bits[i, k] = np.uint32(W[j, k]) << 16
    elif fmt == FLOAT16:
        for k in range(D):
            v, special, b = half_value(np.uint32(W[j, k]))
            if special:
                bits[i, k] = b
            else:
                out[i, k] = v
    elif fmt == INT8:
        scale, bias = _scale_bias(fmt, W, j, D, tmp, tmp_bits)
        for k in range(D):
            out[i, k] = np.float32(W[j, k]) * scale + bias
    else:
        scale, bias = _scale_bias(fmt, W, j, D, tmp, tmp_bits)
        for m in range(D // 2):
            b = np.uint32(W[j, m])
            out[i, 2 * m] = np.float32(b & 15) * scale + bias
            out[i, 2 * m + 1] = np.float32(b >> 4) * scale + bias


@njit(cache=True, nogil=True)
def scratch(D):
    """(row (1, D) float32, its uint32 view, its first row, tmp (1, 2), tmp's uint32 view)."""
    row = np.empty((1, D), np.float32)
    tmp = np.empty((1, 2), np.float32)
    return row, row.view(np.uint32), row[0], tmp, tmp.view(np.uint32)


def row_of(W, j, fmt, s):
    """Row j of table W as a float row (compiled only: an overload): W[j] of a float table, or
    the decoded row in scratch s (scratch(D))."""
    raise NotImplementedError("row_of runs in compiled code only")


@overload(row_of)
def _row_of(W, j, fmt, s):
    if isinstance(W.dtype, types.Float):
        return lambda W, j, fmt, s: W[j]

    def decoded(W, j, fmt, s):
        decode_row(fmt, W, j, s[0], s[1], 0, s[3], s[4])
        return s[2]

    return decoded


@njit(cache=True, nogil=True)
def add_codes(fmt, W, j, acc, w, weighted, tmp, tmp_bits):
    """acc += row j of an int8 or int4 table W (its storage) as torch's quantized bag ops add
    it: acc[k] = fma(scale, q[k], acc[k] + bias), scale and bias first multiplied by w
    (rounded) when weighted (kernels._bag_math.quantized_bag_sum is the NumPy form)."""
    D = acc.shape[0]
    scale, bias = _scale_bias(fmt, W, j, D, tmp, tmp_bits)
    if weighted:
        scale = np.float32(w * scale)
        bias = np.float32(w * bias)
    if fmt == INT8:
        for k in range(D):
            acc[k] = fma32(scale, np.float32(W[j, k]), acc[k] + bias)
    else:
        for m in range(D // 2):
            b = W[j, m]
            acc[2 * m] = fma32(scale, np.float32(b & 15), acc[2 * m] + bias)
            acc[2 * m + 1] = fma32(scale, np.float32(b >> 4), acc[2 * m + 1] + bias)


def pool_row(W, j, fmt, s, acc, w, weighted):
    """acc += row j of table W (times w when weighted), compiled only (an overload): a float
    table's row or a half format's decoded one (in scratch s) added as float32 rows are, an
    int8 or int4 row fused as torch adds it (add_codes)."""
    raise NotImplementedError("pool_row runs in compiled code only")


@overload(pool_row, inline="always")
def _pool_row(W, j, fmt, s, acc, w, weighted):
    if W.dtype == types.uint8:
        def fused(W, j, fmt, s, acc, w, weighted):
            add_codes(fmt, W, j, acc, w, weighted, s[3], s[4])
        return fused

    def added(W, j, fmt, s, acc, w, weighted):
        src = row_of(W, j, fmt, s)
        if weighted:
            for k in range(acc.shape[0]):
                acc[k] += w * src[k]
        else:
            for k in range(acc.shape[0]):
                acc[k] += src[k]
    return added

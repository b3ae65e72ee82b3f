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
decoded row written into scratch.
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

FLOAT16, BFLOAT16, INT8, INT4 = 1, 2, 3, 4
"""Format codes of the compiled decoders (0: a float32/float64 table, no decoding)."""

CODES = {"float16": FLOAT16, "bfloat16": BFLOAT16, "int8": INT8, "int4": INT4}


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
def half_to_float(h, bits_out, out, k):
    """out[k] = the half with bits h (an unsigned integer < 2**16), exactly; bits_out is out
    viewed as uint32 (infinities and NaNs are written as bits, payload kept)."""
    top = h >> 10
    e = top & 31
    m = h & 1023
    if e == 31:
        bits_out[k] = (np.uint32(h & 0x8000) << 16) | np.uint32(0x7F800000) | \
            (np.uint32(m) << 13)
    else:
        out[k] = np.float32(m + (1024 if e else 0)) * _HALF_SCALES[top]


@njit(cache=True, nogil=True)
def _half_scalar(lo_byte, hi_byte, tmp, tmp_bits):
    half_to_float(np.uint32(lo_byte) | (np.uint32(hi_byte) << 8), tmp_bits, tmp, 0)
    return tmp[0]


@njit(cache=True, nogil=True)
def decode_row(fmt, W, j, dst):
    """dst (float32, C-contiguous, D values) = row j of a low-precision table W (its storage)."""
    D = dst.shape[0]
    row = W[j]
    bits = dst.view(np.uint32)
    if fmt == BFLOAT16:
        for k in range(D):
            bits[k] = np.uint32(row[k]) << 16
    elif fmt == FLOAT16:
        for k in range(D):
            half_to_float(np.uint32(row[k]), bits, dst, k)
    elif fmt == INT8:
        scale = row[D:D + 4].view(np.float32)[0]
        bias = row[D + 4:D + 8].view(np.float32)[0]
        for k in range(D):
            dst[k] = np.float32(row[k]) * scale + bias
    else:
        h = D // 2
        tmp = np.empty(1, np.float32)
        tmp_bits = tmp.view(np.uint32)
        scale = _half_scalar(row[h], row[h + 1], tmp, tmp_bits)
        bias = _half_scalar(row[h + 2], row[h + 3], tmp, tmp_bits)
        for m in range(h):
            b = np.uint32(row[m])
            dst[2 * m] = np.float32(b & 15) * scale + bias
            dst[2 * m + 1] = np.float32(b >> 4) * scale + bias


def row_of(W, j, scratch, fmt):
    """Row j of table W as a float row (compiled only: an overload)."""
    raise NotImplementedError("row_of runs in compiled code only")


@overload(row_of)
def _row_of(W, j, scratch, fmt):
    if isinstance(W.dtype, types.Float):
        return lambda W, j, scratch, fmt: W[j]

    def decoded(W, j, scratch, fmt):
        decode_row(fmt, W, j, scratch)
        return scratch

    return decoded

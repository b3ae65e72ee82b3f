"""The loops of kernels.quantize for the row-wise formats, as FBGEMM's AVX2 prepack runs them
(src/QuantUtilsAvx2.cc: FloatOrHalfToFused8BitRowwiseQuantizedSBFloatAvx2 and
FloatOrHalfToFusedNBitRowwiseQuantizedSBHalfAvx2), so that the bytes equal torch's
`embedding_bag_byte_prepack` / `embedding_bag_4bit_prepack`. The per-row parameters between the
two loops are float32 NumPy arithmetic in kernels._tables.

Inputs are checked finite float32 rows; no loop here checks anything.
"""
import numpy as np
from numba import njit

_LANES = 8
"""FBGEMM's vector width (8 floats): the row minimum and maximum are taken per lane."""
_FLT_MAX = np.float32(np.finfo(np.float32).max)


@njit(cache=True)
def row_min_max(X, mins, maxs):
    """mins[r], maxs[r] = the minimum and maximum of row r, with FBGEMM's choice between -0.0
    and +0.0 when both occur: lane j of the first D // 8 * 8 columns keeps its later equal value
    (vminps / vmaxps return the second operand on ties), the lanes are then combined in order
    from FLT_MAX (std::min keeps the earlier of equals), then the remaining columns one by one."""
    n, D = X.shape
    vec = D // _LANES * _LANES
    for r in range(n):
        lo = _FLT_MAX
        hi = -_FLT_MAX
        if vec:
            for lane in range(_LANES):
                lane_lo = _FLT_MAX
                lane_hi = -_FLT_MAX
                for c in range(lane, vec, _LANES):
                    x = X[r, c]
                    lane_lo = lane_lo if lane_lo < x else x
                    lane_hi = lane_hi if lane_hi > x else x
                lo = lane_lo if lane_lo < lo else lo
                hi = lane_hi if hi < lane_hi else hi
        for c in range(vec, D):
            x = X[r, c]
            lo = x if x < lo else lo
            hi = x if hi < x else hi
        mins[r] = lo
        maxs[r] = hi


@njit(cache=True)
def quantize_8bit(X, mins, inverse_scales, out):
    """out[r, c] = round-half-even((X[r, c] - mins[r]) * inverse_scales[r]), float32
    arithmetic (always within [0, 255] for finite rows: see kernels._tables)."""
    n, D = X.shape
    for r in range(n):
        m = mins[r]
        inv = inverse_scales[r]
        for c in range(D):
            out[r, c] = np.uint8(np.rint((X[r, c] - m) * inv))


@njit(cache=True)
def quantize_4bit(X, mins, inverse_scales, out):
    """Two values a byte, the even column in the low nibble: each value
    round-half-even((X - min) * inverse_scale) in float32, clamped to [0, 15] as FBGEMM
    saturates it."""
    n, D = X.shape
    for r in range(n):
        m = mins[r]
        inv = inverse_scales[r]
        for b in range(D // 2):
            lo = np.rint((X[r, 2 * b] - m) * inv)
            hi = np.rint((X[r, 2 * b + 1] - m) * inv)
            lo = min(max(lo, np.float32(0)), np.float32(15))
            hi = min(max(hi, np.float32(0)), np.float32(15))
            out[r, b] = np.uint8(lo) | (np.uint8(hi) << np.uint8(4))


@njit(cache=True)
def to_float16_bits(X, bits, out):
    """out = the IEEE binary16 bits of X rounded to nearest, ties to even (NumPy's astype's
    result, at 2-5x its speed here), for finite X below 65520 in magnitude; `bits` is X viewed
    as uint32. Normal results: the exponent rebiased and 13 mantissa bits rounded off;
    subnormal ones (|x| < 2**-14): rint(|x| * 2**24) units of 2**-24."""
    n, D = X.shape
    for r in range(n):
        for c in range(D):
            b = np.int64(bits[r, c])
            a = b & 0x7FFFFFFF
            if a < 0x38800000:
                h = np.int64(np.rint(abs(X[r, c]) * np.float32(16777216.0)))
            else:
                h = (a - 0x38000000 + 0xFFF + ((a >> 13) & 1)) >> 13
            out[r, c] = np.uint16(((b >> 16) & 0x8000) | h)

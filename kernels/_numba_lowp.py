"""Numba row decoders for the low-precision table formats (kernels._formats): each writes one
table row as float32 into a destination row, exactly as the format's `dequantize()` defines it,
so that every kernel that gathers the decoded rows gives the same bits.

- float16: the exact float32 value of each half (every half is a float32), NaN payloads kept;
- bfloat16: the bits shifted into the high half of a float32 (exact, NaN payloads kept);
- int8 (torch's fused 8-bit rows: D bytes, float32 scale, float32 bias): float32(q) * scale,
  rounded, + bias, rounded: two roundings, no fused multiply-add;
- int4 (torch's fused 4-bit rows: D / 2 bytes, low nibble first, float16 scale and bias): the
  same formula with the halves converted exactly.

`decode_row(fmt, W, j, out, i)` decodes (W holds the format's storage: uint16 for float16
and bfloat16, uint8 rows for int8 and int4); `row_of(W, j, fmt, scratch)` is what the bag loops
read a row through: a float table's own row W[j] (the loops compile exactly as before for float
tables: measured, a branch on fmt in the loop instead cost the float32 sum bag 35-55%), or the
decoded row written into scratch. `pool_row` is what they add a row through: int8 and int4 rows
are fused into the sum as torch's quantized bag ops do, half rows converted as they are added,
float rows added. decode_row and pool_row are inlined into the kernels' loops.
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

from kernels._numba_intrinsics import f32_of_bits, fma32, half_to_f32

FLOAT16, BFLOAT16, INT8, INT4 = 1, 2, 3, 4
"""Format codes of the compiled decoders (0: a float32/float64 table, no decoding)."""

CODES = {"float16": FLOAT16, "bfloat16": BFLOAT16, "int8": INT8, "int4": INT4}


def storage(W):
    """A table's storage as the compiled decoders (Numba's and C's) read it: halves as uint16
    bits, rowwise formats as their uint8 rows (kernels._validate has checked it C-contiguous)."""
    return W.view(np.uint16) if W.dtype.itemsize == 2 else W


@njit(cache=True, nogil=True, inline="always")
def _le16(W, j, c):
    """The little-endian uint16 of W[j, c:c + 2], as a uint32."""
    return np.uint32(W[j, c]) | (np.uint32(W[j, c + 1]) << np.uint32(8))


@njit(cache=True, nogil=True, inline="always")
def _le32(W, j, c):
    """The little-endian uint32 of W[j, c:c + 4]."""
    return _le16(W, j, c) | (_le16(W, j, c + 2) << np.uint32(16))


@njit(cache=True, nogil=True, inline="always")
def decode_row(fmt, W, j, out, i):
    """out[i, :D] (float32) = row j of a low-precision table W (its storage).

    Inlined, each format's loop vectorizes: no per-row call, array arguments or reference
    counts, which made these lookups 10-17x slower (single thread, V = 1e4, D = 64)."""
    D = out.shape[1]
    if fmt == BFLOAT16:
        for k in range(D):
            out[i, k] = f32_of_bits(np.uint32(W[j, k]) << np.uint32(16))
    elif fmt == FLOAT16:
        for k in range(D):
            out[i, k] = half_to_f32(W[j, k])
    elif fmt == INT8:  # scale and bias: the row's tail, float32 (int8) or float16 (int4)
        s8 = f32_of_bits(_le32(W, j, D))
        b8 = f32_of_bits(_le32(W, j, D + 4))
        for k in range(D):
            out[i, k] = np.float32(W[j, k]) * s8 + b8
    else:
        s4 = half_to_f32(_le16(W, j, D // 2))
        b4 = half_to_f32(_le16(W, j, D // 2 + 2))
        for m in range(D // 2):
            b = W[j, m]
            out[i, 2 * m] = np.float32(b & 15) * s4 + b4
            out[i, 2 * m + 1] = np.float32(b >> 4) * s4 + b4


@njit(cache=True, nogil=True)
def scratch(D):
    """(row (1, D) float32, its first row): where row_of decodes a row."""
    row = np.empty((1, D), np.float32)
    return row, row[0]


def row_of(W, j, fmt, s):
    """Row j of table W as a float row (compiled only: an overload): W[j] of a float table, or
    the decoded row in scratch s (scratch(D))."""
    raise NotImplementedError("row_of runs in compiled code only")


@overload(row_of)
def _row_of(W, j, fmt, s):
    if isinstance(W.dtype, types.Float):
        return lambda W, j, fmt, s: W[j]

    def decoded(W, j, fmt, s):
        decode_row(fmt, W, j, s[0], 0)
        return s[1]

    return decoded


def pool_row(W, j, fmt, s, acc, w, weighted):
    """acc += row j of table W (times w when weighted; w must be 1 when not), compiled only
    (an overload): a float table's row added, a half format's row converted and added in one
    loop, an int8 or int4 row fused as torch adds it."""
    raise NotImplementedError("pool_row runs in compiled code only")


@overload(pool_row, inline="always")
def _pool_row(W, j, fmt, s, acc, w, weighted):
    # The loops are written here, not called: inlined in one step, each vectorizes in the bag
    # loop (as calls, half-format bags of 8 took 2x as long; as nested inlined functions, Numba
    # warned that the IR broke its assumptions).
    if W.dtype == types.uint8:
        def fused(W, j, fmt, s, acc, w, weighted):
            # int8 and int4 rows as torch's quantized bag ops add them: acc[k] = fma(scale,
            # q[k], acc[k] + bias), scale and bias first multiplied by w and rounded (exact for
            # the w = 1 of an unweighted bag; kernels._bag_math.quantized_bag_sum is the NumPy
            # form). No variable is assigned twice, nor a function with two returns inlined here:
            # Numba warned that either broke its IR's assumptions.
            D = acc.shape[0]
            if fmt == INT8:
                s8 = np.float32(w * f32_of_bits(_le32(W, j, D)))
                b8 = np.float32(w * f32_of_bits(_le32(W, j, D + 4)))
                for k in range(D):
                    acc[k] = fma32(s8, np.float32(W[j, k]), acc[k] + b8)
            else:
                s4 = np.float32(w * half_to_f32(_le16(W, j, D // 2)))
                b4 = np.float32(w * half_to_f32(_le16(W, j, D // 2 + 2)))
                for m in range(D // 2):
                    b = W[j, m]
                    acc[2 * m] = fma32(s4, np.float32(b & 15), acc[2 * m] + b4)
                    acc[2 * m + 1] = fma32(s4, np.float32(b >> 4), acc[2 * m + 1] + b4)
        return fused
    if W.dtype == types.uint16:
        def halves(W, j, fmt, s, acc, w, weighted):
            # each half converted exactly, then (times w) added: the bits of adding the row
            # decoded
            if fmt == FLOAT16:
                if weighted:
                    for k in range(acc.shape[0]):
                        acc[k] += w * half_to_f32(W[j, k])
                else:
                    for k in range(acc.shape[0]):
                        acc[k] += half_to_f32(W[j, k])
            elif weighted:
                for k in range(acc.shape[0]):
                    acc[k] += w * f32_of_bits(np.uint32(W[j, k]) << np.uint32(16))
            else:
                for k in range(acc.shape[0]):
                    acc[k] += f32_of_bits(np.uint32(W[j, k]) << np.uint32(16))
        return halves

    def added(W, j, fmt, s, acc, w, weighted):
        src = W[j]
        if weighted:
            for k in range(acc.shape[0]):
                acc[k] += w * src[k]
        else:
            for k in range(acc.shape[0]):
                acc[k] += src[k]
    return added

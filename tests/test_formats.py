"""Low-precision tables (issue 15): kernels.quantize and its four formats, read by every kernel
that registers them.

* quantize: int8 / int4 bytes equal torch's prepack ops byte for byte (random rows, constant
  rows, tiny ranges, large magnitudes, signed zeros, V = 0); the round-trip error bound; what it
  refuses (inf/NaN, odd D for int4, values a format cannot hold);
* tables: from_packed wraps torch's buffers without a copy, ours work in torch's quantized bag
  ops; Keras' int8 scheme imports within its stated bound;
* every kernel that implements a format (read from the registry, so kernels registered later are
  tested too): lookups equal table.dequantize()[ids] bit for bit and torch's ops within one
  float32 rounding; bags in every mode it has within the float64 summation bound; out_dtype
  float16; every bad input leaves `out` and the table bitwise unchanged;
* a table is for inference: gradients and optimizers refuse it with a TypeError.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import kernels
import kernels.optim
from conftest import assert_bitwise_equal, assert_untouched, sentinel_like
from kernels import LOOKUP, LOOKUP_BAG
from kernels._formats import FORMATS, LOW_PRECISION
from kernels._numba_lowp import CODES
from kernels._validate import BAG_MODES

FORMAT_NAMES = [f.name for f in LOW_PRECISION]
ROWWISE = ["int8", "int4"]
EPS32 = 2.0**-23


def table_values(V, D, seed=0):
    """A float32 (V, D) table of standard normal values, no zeros."""
    W = np.random.default_rng(seed).standard_normal((V, D)).astype(np.float32)
    W[W == 0] = 1.0
    return W


def hard_rows(D, seed=0):
    """Rows that test the rounding and constant-row rules: random, constant, all +0/-0, signed
    zeros mixed with values, tiny ranges, large magnitudes, a min that float16 rounds up."""
    rng = np.random.default_rng(seed)
    rows = [
        rng.standard_normal(D),
        np.full(D, 1.5), np.full(D, -3.25), np.zeros(D), np.full(D, -0.0),
        rng.choice([0.0, -0.0], D), rng.choice([0.0, -0.0, 1.0], D),
        rng.choice([0.0, -0.0, -1.0], D), rng.choice([0.0, -0.0, 2.0, -2.0, 0.5], D),
        1e-9 * rng.standard_normal(D), 3e-6 * rng.standard_normal(D),
        1000.3 + 1e-4 * rng.standard_normal(D),
        5e4 * np.clip(rng.standard_normal(D), -1.2, 1.2),
        np.full(D, -1e-40),
    ]
    return np.array(rows, dtype=np.float32)


def implementing_cases(op, fmt):
    return [pytest.param(name, fmt, id=f"{name}-{fmt}") for name, k in kernels.KERNELS.items()
            if k.implements(op, fmt)]


LOOKUP_CASES = [c for f in FORMAT_NAMES for c in implementing_cases("lookup", f)]
BAG_CASES = [c for f in FORMAT_NAMES for c in implementing_cases("lookup_bag", f)]


# --------------------------------------------------------------------------
# quantize: torch's bytes
# --------------------------------------------------------------------------


PREPACK = {"int8": "embedding_bag_byte_prepack", "int4": "embedding_bag_4bit_prepack"}


def torch_prepack(fmt, W):
    torch = pytest.importorskip("torch")
    return getattr(torch.ops.quantized, PREPACK[fmt])(torch.from_numpy(W)).numpy()


@pytest.mark.parametrize("fmt", ROWWISE)
@pytest.mark.parametrize("D", [2, 4, 6, 8, 10, 16, 30, 32, 34, 64, 66, 128, 130])
def test_quantize_equals_torch_prepack_byte_for_byte(fmt, D):
    W = np.concatenate([table_values(40, D, seed=D), hard_rows(D, seed=D)])
    ours = kernels.quantize(W, fmt).packed
    assert_bitwise_equal(ours, torch_prepack(fmt, W), f"{fmt} D={D}")


@pytest.mark.parametrize("D", [1, 3, 7, 9, 17, 33, 65])
def test_int8_odd_widths_equal_torch_prepack(D):
    W = np.concatenate([table_values(30, D, seed=D), hard_rows(D, seed=D)])
    assert_bitwise_equal(kernels.quantize(W, "int8").packed, torch_prepack("int8", W))


@pytest.mark.parametrize("fmt", ROWWISE)
def test_signed_zero_rows_equal_torch_prepack(fmt):
    """Which zero becomes the bias (its sign bit) follows FBGEMM's lane-wise minimum."""
    rng = np.random.default_rng(7)
    for D in (2, 8, 16, 24, 40):
        W = rng.choice([0.0, -0.0, 0.5, -0.5], (200, D)).astype(np.float32)
        assert_bitwise_equal(kernels.quantize(W, fmt).packed, torch_prepack(fmt, W))


def test_int8_large_magnitudes_equal_torch_prepack():
    W = (1e30 * np.random.default_rng(3).standard_normal((50, 64))).astype(np.float32)
    assert_bitwise_equal(kernels.quantize(W, "int8").packed, torch_prepack("int8", W))


@pytest.mark.parametrize("fmt", ROWWISE)
def test_empty_table_equals_torch_prepack(fmt):
    W = np.zeros((0, 16), np.float32)
    T = kernels.quantize(W, fmt)
    assert T.shape == (0, 16) and T.packed.shape == (0, FORMATS[fmt].row_bytes(16))
    assert_bitwise_equal(T.packed, torch_prepack(fmt, W))


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_empty_table_looks_up_nothing(fmt):
    T = kernels.quantize(np.zeros((0, 6), np.float32), fmt)
    assert T.dequantize().shape == (0, 6) and T.nbytes == 0
    for k in kernels.KERNELS.values():
        if k.implements("lookup", fmt):
            assert k.lookup(T, np.zeros(0, np.int64)).shape == (0, 6)


def test_constant_rows_int8_scale_zero_bias_the_value():
    W = np.array([[1.5] * 8, [-2.0] * 8, [0.0] * 8], np.float32)
    P = kernels.quantize(W, "int8").packed
    assert (P[:, :8] == 0).all()
    sb = P[:, 8:].copy().view(np.float32)
    assert_bitwise_equal(sb[:, 0], np.zeros(3, np.float32))
    assert_bitwise_equal(sb[:, 1], W[:, 0])
    assert_bitwise_equal(kernels.quantize(W, "int8").dequantize(), W)


def test_constant_rows_int4_scale_one_bias_the_float16_value():
    """(A constant value float16 cannot hold, 0.1, leaves a tiny range above its rounded bias
    and gets a tiny scale instead, as in torch.)"""
    W = np.array([[1.5] * 8, [-0.375] * 8], np.float32)
    P = kernels.quantize(W, "int4").packed
    sb = P[:, 4:].copy().view(np.float16)
    assert_bitwise_equal(sb[:, 0], np.ones(2, np.float16))
    assert_bitwise_equal(sb[:, 1], W[:, 0].astype(np.float16))
    assert_bitwise_equal(kernels.quantize(W, "int4").dequantize(),
                         np.repeat(W[:, :1].astype(np.float16).astype(np.float32), 8, axis=1))


# --------------------------------------------------------------------------
# quantize: error bounds
# --------------------------------------------------------------------------


def row_params(T):
    """(scale, bias) per row as float64 columns."""
    P = T.packed
    dt = np.float32 if T.format == "int8" else np.float16
    sb = P[:, P.shape[1] - 2 * np.dtype(dt).itemsize:].copy().view(dt).astype(np.float64)
    return sb[:, :1], sb[:, 1:]


def test_int8_round_trip_within_half_a_scale():
    """|x - deq(q(x))| <= scale / 2 + 1e-8 (torch's epsilon in 255 / (range + 1e-8), which
    shortens tiny ranges) + float32 rounding of (x - min) * inverse scale and of q*scale + bias."""
    W = np.concatenate([table_values(500, 64, seed=1), 100 * table_values(50, 64, seed=2),
                        hard_rows(64)[:12]])
    T = kernels.quantize(W, "int8")
    scale, bias = row_params(T)
    x = W.astype(np.float64)
    err = np.abs(x - T.dequantize())
    tol = scale / 2 * (1 + 256 * 4 * 2.0**-24) + 1e-8 + 2 * 2.0**-24 * (np.abs(x) + np.abs(bias))
    assert (err <= tol).all(), float((err - tol).max())


def test_int4_round_trip_within_half_a_scale_plus_the_float16_roundings():
    """|x - deq| <= scale / 2 + |min - bias| (bias = min rounded to float16: values below it
    clamp to q = 0) + 15 * |(max - bias) / 15 - scale| (scale rounded to float16: the top values
    clamp to q = 15) + float32 rounding."""
    W = np.concatenate([table_values(500, 64, seed=3), 100 * table_values(50, 64, seed=4),
                        hard_rows(64)[:13]])
    T = kernels.quantize(W, "int4")
    scale, bias = row_params(T)
    x = W.astype(np.float64)
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    err = np.abs(x - T.dequantize())
    tol = (scale / 2 + np.abs(lo - bias) + 15 * np.abs((hi - bias) / 15 - scale)
           + 4 * 2.0**-24 * (np.abs(x) + np.abs(bias) + 15 * np.abs(scale)))
    assert (err <= tol).all(), float((err - tol).max())


@pytest.mark.parametrize("fmt, bits", [("float16", 11), ("bfloat16", 8)])
def test_half_formats_round_to_nearest(fmt, bits):
    W = np.concatenate([table_values(200, 32, seed=5), 1e3 * table_values(20, 32, seed=6)])
    T = kernels.quantize(W, fmt)
    want = W.astype(np.float16 if fmt == "float16" else ml_dtypes.bfloat16)
    assert_bitwise_equal(T.packed.view(np.uint16), want.view(np.uint16))
    assert (np.abs(T.dequantize() - W) <= np.maximum(np.abs(W) * 2.0**-bits, 2.0**-25)).all()


def test_float16_rounding_matches_numpy_on_hard_values():
    """The compiled float16 rounding against NumPy's cast: ties, subnormals, the largest finite
    values, signed zeros (exhaustively checked once over every finite float32 below 65520)."""
    rng = np.random.default_rng(8)
    bits = rng.integers(0, 0x477FF000, 200_000, dtype=np.uint32)
    x = bits.view(np.float32)
    special = np.array([0.0, -0.0, 65504, -65504, 65519.996, 2.0**-24, 2.0**-25, 3 * 2.0**-26,
                        2.0**-14, 2.0**-14 * (1 - 2.0**-11), 1 + 2.0**-11, 1 + 3 * 2.0**-11,
                        1e-45, -1e-45], np.float32)
    x = np.concatenate([x, -x, special]).reshape(-1, 2)
    got = kernels.quantize(x, "float16").packed
    assert_bitwise_equal(got.view(np.uint16), x.astype(np.float16).view(np.uint16))


def test_float64_input_is_rounded_to_float32_first():
    W = table_values(20, 8).astype(np.float64) + 1e-12
    for fmt in ROWWISE:
        assert_bitwise_equal(kernels.quantize(W, fmt).packed,
                             kernels.quantize(W.astype(np.float32), fmt).packed)


# --------------------------------------------------------------------------
# quantize: what it refuses
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_rows_are_a_value_error_naming_the_first(fmt, bad):
    W = table_values(3000, 8)
    W[2500, 3] = bad
    W[2700, 1] = bad
    with pytest.raises(ValueError, match=r"non-finite value .* in row 2500\b"):
        kernels.quantize(W, fmt)


def test_odd_dim_for_int4_is_a_value_error():
    with pytest.raises(ValueError, match="D must be even, got D = 5"):
        kernels.quantize(table_values(4, 5), "int4")


@pytest.mark.parametrize("fmt, value", [("float16", 70000.0), ("float16", -65520.0),
                                        ("int4", 1e6), ("int4", -1e5)])
def test_values_a_format_cannot_store_are_a_value_error(fmt, value):
    W = table_values(10, 8)
    W[6, 2] = value
    with pytest.raises(ValueError, match=r"row 6\b"):
        kernels.quantize(W, fmt)


def test_int8_row_spanning_beyond_float32_is_a_value_error():
    W = table_values(10, 8)
    W[4, :2] = [-3e38, 3e38]
    with pytest.raises(ValueError, match=r"row 4 .*overflows"):
        kernels.quantize(W, "int8")


@pytest.mark.parametrize("call, error", [
    (lambda: kernels.quantize(np.ones((2, 2), np.float32), "int2"), ValueError),
    (lambda: kernels.quantize(np.ones((2, 2), np.float32), "float32"), ValueError),
    (lambda: kernels.quantize(np.ones((2, 2), np.int32), "int8"), TypeError),
    (lambda: kernels.quantize(np.ones(4, np.float32), "int8"), ValueError),
    (lambda: kernels.Int8Table(np.zeros((2, 10), np.uint8)), TypeError),
], ids=["unknown_format", "plain_format", "int_table", "1d_table", "constructor"])
def test_bad_quantize_calls_name_the_problem(call, error):
    with pytest.raises(error):
        call()


# --------------------------------------------------------------------------
# tables: storage, torch's buffers, Keras
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_table_attributes(fmt):
    W = table_values(10, 8)
    T = kernels.quantize(W, fmt)
    assert T.format == fmt and T.shape == (10, 8) and len(T) == 10
    assert T.packed.flags.c_contiguous
    assert T.nbytes == T.packed.nbytes == 10 * FORMATS[fmt].row_bytes(8)
    assert T.dequantize().dtype == np.float32 and T.dequantize().shape == (10, 8)
    assert isinstance(T, kernels.Table)


@pytest.mark.parametrize("fmt, cls", [("int8", kernels.Int8Table), ("int4", kernels.Int4Table)])
def test_from_packed_wraps_torchs_buffer_without_a_copy(fmt, cls):
    W = table_values(100, 16)
    buf = torch_prepack(fmt, W)
    T = cls.from_packed(buf)
    assert np.shares_memory(T.packed, buf) and T.shape == (100, 16)
    assert_bitwise_equal(T.packed, kernels.quantize(W, fmt).packed)
    torch = pytest.importorskip("torch")
    t = getattr(torch.ops.quantized, PREPACK[fmt])(torch.from_numpy(W))
    assert np.shares_memory(cls.from_packed(t.numpy()).packed, t.numpy())


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_from_packed_round_trips_our_storage(fmt):
    T = kernels.quantize(table_values(9, 6), fmt)
    U = type(T).from_packed(T.packed)
    assert np.shares_memory(U.packed, T.packed) and U.shape == T.shape
    assert_bitwise_equal(U.dequantize(), T.dequantize())


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_quantize_places_its_storage_on_a_cache_line(fmt):
    """A quantized table's storage starts on a 64-byte boundary, as torch places a tensor
    (NumPy's large arrays start 16 bytes past one: a row then spans a line more), writeable
    and C-contiguous, its bytes those of the format."""
    W = table_values(3000, 64)
    T = kernels.quantize(W, fmt)
    assert T.packed.ctypes.data % 64 == 0
    assert T.packed.flags.c_contiguous and T.packed.flags.writeable
    assert_bitwise_equal(T.dequantize(), type(T).from_packed(T.packed.copy()).dequantize())


@pytest.mark.parametrize("buf, error", [
    (np.zeros((4, 12), np.int8), TypeError),
    (np.zeros(12, np.uint8), ValueError),
    (np.zeros((4, 24), np.uint8)[:, ::2], ValueError),
    (np.zeros((4, 7), np.uint8), ValueError),
], ids=["dtype", "1d", "strided", "short_rows"])
def test_from_packed_refuses_what_is_not_int8_storage(buf, error):
    with pytest.raises(error):
        kernels.Int8Table.from_packed(buf)


def test_a_storage_reshaped_in_place_is_refused_before_any_read():
    T = kernels.quantize(table_values(10, 8), "int8")
    T.packed.shape = (5, 32)
    with pytest.raises(ValueError, match="storage changed"):
        kernels.lookup(T, [9])


@pytest.mark.parametrize("kernel_name, fmt", [c for c in BAG_CASES if c.values[1] in ROWWISE])
@pytest.mark.parametrize("D", [8, 16, 32, 64, 256, 42])
def test_int_bags_equal_torchs_quantized_bag_ops_bit_for_bit(kernel_name, fmt, D, cython_isa):
    """int8 and int4 sums (with and without per_sample_weights, empty bags, every bag length,
    the compiled row sizes and others) are torch's, bit for bit: acc = fma(scale, q, acc + bias)
    a row (kernels._bag_math.quantized_bag_sum), at every decoding path of cython_gather."""
    torch = pytest.importorskip("torch")
    if cython_isa != 2 and kernel_name != "cython_gather":
        pytest.skip("the ISA levels are cython_gather's")
    op = {"int8": torch.ops.quantized.embedding_bag_byte_rowwise_offsets,
          "int4": torch.ops.quantized.embedding_bag_4bit_rowwise_offsets}[fmt]
    T = check_table(300, D, fmt, seed=D)
    rng = np.random.default_rng(D)
    ids = rng.integers(0, 300, 3000)
    offsets = np.sort(rng.integers(0, 3000, 300))
    offsets[0] = 0
    offsets[7] = offsets[8]
    k = kernels.KERNELS[kernel_name]
    for psw in (None, rng.uniform(-2, 2, 3000).astype(np.float32)):
        theirs = op(torch.from_numpy(T.packed), torch.from_numpy(ids),
                    torch.from_numpy(offsets), mode=0,
                    per_sample_weights=None if psw is None else torch.from_numpy(psw)).numpy()
        ours = k.lookup_bag(T, ids, offsets, per_sample_weights=psw)
        assert_bitwise_equal(ours, theirs, f"{kernel_name} {fmt} D={D}")


def keras_abs_max_quantize(x):
    """Keras 3's keras.quantizers.abs_max_quantize(x, axis=-1, to_numpy=True), in NumPy."""
    scale = np.divide(127, np.add(np.max(np.abs(x), axis=-1, keepdims=True), 1e-7))
    q = np.clip(np.round(np.multiply(x, scale)), -127, 127).astype(np.int8)
    return q, np.squeeze(scale, axis=-1).astype(np.float32)


def test_from_keras_int8_reads_q_over_scale_within_its_bound():
    x = np.concatenate([table_values(300, 32, seed=11), np.zeros((1, 32), np.float32),
                        1e-3 * table_values(5, 32, seed=12)])
    q, k = keras_abs_max_quantize(x)
    T = kernels.from_keras_int8(q, k)
    assert isinstance(T, kernels.Int8Table) and T.shape == x.shape
    exact = q.astype(np.float64) / k.astype(np.float64)[:, None]
    bound = 2.0**-24 * (3 * np.abs(q.astype(np.float64)) + 128) / k[:, None] * (1 + 2.0**-20)
    assert (np.abs(T.dequantize() - exact) <= bound).all()
    assert (np.abs(T.dequantize() - x) <= 0.5 / k[:, None] * (1 + 2.0**-10)).all()


def test_from_keras_int8_covers_all_int8_codes():
    q = np.arange(-128, 128, dtype=np.int8).reshape(2, 128)
    k = np.array([3.0, 0.01], np.float32)
    got = kernels.from_keras_int8(q, k).dequantize()
    q64 = q.astype(np.float64)
    exact = q64 / k.astype(np.float64)[:, None]
    assert (np.abs(got - exact) <= 2.0**-24 * (3 * np.abs(q64) + 128) / k[:, None] * 1.001).all()


@pytest.mark.parametrize("q, scale", [
    (np.zeros((2, 3), np.int16), np.ones(2, np.float32)),
    (np.zeros((2, 3), np.int8), np.ones(3, np.float32)),
    (np.zeros((2, 3), np.int8), np.array([1.0, 0.0], np.float32)),
    (np.zeros((2, 3), np.int8), np.array([1.0, np.inf], np.float32)),
], ids=["q_dtype", "scale_shape", "scale_zero", "scale_inf"])
def test_from_keras_int8_refuses_what_keras_does_not_make(q, scale):
    with pytest.raises(ValueError):
        kernels.from_keras_int8(q, scale)


# --------------------------------------------------------------------------
# every kernel that implements a format
# --------------------------------------------------------------------------


def check_table(V, D, fmt, seed=0):
    W = table_values(V, D, seed)
    W[:3] = hard_rows(D)[[1, 3, 9]][:min(3, V)]  # a constant row, zeros, a tiny range
    return kernels.quantize(W, fmt)


def expected_lookup(kernel, T, ids):
    """table.dequantize()[ids]; a one-hot kernel returns -0.0 as +0.0 (kernels/onehot_*.py)."""
    want = T.dequantize()[ids]
    return want + np.float32(0) if kernel.family == "onehot" else want


@pytest.mark.parametrize("kernel_name, fmt", LOOKUP_CASES)
@pytest.mark.parametrize("V, D, shape", [(1, 2, (5,)), (50, 16, (7, 9)), (1000, 64, (3000,)),
                                         (300, 130, (257,)), (200, 32, (300,)),
                                         (300, 128, (500,)), (300, 256, (400,))])
def test_lookup_equals_dequantize_bit_for_bit(kernel_name, fmt, V, D, shape):
    T = check_table(V, D, fmt)
    ids = np.random.default_rng(V + D).integers(0, V, shape)
    k = kernels.KERNELS[kernel_name]
    got = k.lookup(T, ids)
    assert_bitwise_equal(got, expected_lookup(k, T, ids), f"{kernel_name} {fmt}")
    if k.family == "gather":
        LOOKUP.assert_matches(got, T, ids)


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_every_kernel_of_a_format_agrees_bit_for_bit(fmt):
    T = check_table(500, 48, fmt, seed=4)
    ids = np.random.default_rng(4).integers(0, 500, 2000)
    names = [n for n, k in kernels.KERNELS.items() if k.implements("lookup", fmt)]
    for n in names:
        k = kernels.KERNELS[n]
        assert_bitwise_equal(k.lookup(T, ids), expected_lookup(k, T, ids), n)
    auto = kernels.for_call(LOOKUP, 500, 48, ids.shape[0], FORMATS[fmt])
    assert_bitwise_equal(kernels.lookup(T, ids, kernel="auto"), expected_lookup(auto, T, ids))
    bags = ids.reshape(400, 5)
    LOOKUP_BAG.assert_matches(kernels.lookup_bag(T, bags, mode="mean", kernel="auto"), T, bags,
                              mode="mean")


@pytest.mark.parametrize("kernel_name, fmt", [c for c in LOOKUP_CASES if c.values[1] in ROWWISE])
def test_lookup_matches_torch_within_one_float32_rounding(kernel_name, fmt):
    """torch (bags of one id) computes fma(q, scale, bias): one rounding of q * scale less."""
    torch = pytest.importorskip("torch")
    op = {"int8": torch.ops.quantized.embedding_bag_byte_rowwise_offsets,
          "int4": torch.ops.quantized.embedding_bag_4bit_rowwise_offsets}[fmt]
    T = check_table(400, 64, fmt, seed=6)
    ids = np.random.default_rng(6).integers(0, 400, 1000)
    theirs = op(torch.from_numpy(T.packed), torch.from_numpy(ids),
                torch.arange(1000), mode=0).numpy()
    ours = kernels.KERNELS[kernel_name].lookup(T, ids)
    _, bias = row_params(T)
    tol = EPS32 * (2 * np.abs(ours) + np.abs(bias[ids]))
    assert (np.abs(ours - theirs) <= tol).all()


def bag_layout(seed, V, n=600, B=80):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, n)
    offsets = np.sort(rng.integers(0, n, B))
    offsets[0] = 0
    return ids, offsets


@pytest.mark.parametrize("kernel_name, fmt", BAG_CASES)
@pytest.mark.parametrize("mode", BAG_MODES)
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "psw"])
@pytest.mark.parametrize("padding", [None, 3], ids=["nopad", "pad"])
def test_bags_within_the_float64_summation_bound(kernel_name, fmt, mode, weighted, padding):
    k = kernels.KERNELS[kernel_name]
    if mode not in k.bag_modes or (weighted and mode == "max"):
        pytest.skip(f"{kernel_name} has no {mode} bags" if mode not in k.bag_modes else
                    "max takes no weights")
    T = check_table(200, 24, fmt, seed=7)
    ids, offsets = bag_layout(7, 200)
    ids[::5] = 3
    psw = np.random.default_rng(8).uniform(0.25, 2, ids.shape).astype(np.float32) \
        if weighted else None
    got = k.lookup_bag(T, ids, offsets, mode=mode, per_sample_weights=psw, padding_idx=padding)
    LOOKUP_BAG.assert_matches(got, T, ids, offsets, mode, psw, padding)


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_gather_kernels_bag_sums_agree_bit_for_bit(fmt):
    """Every gather kernel of a format sums the same float32 rows in bag order."""
    names = [n for n, k in kernels.KERNELS.items()
             if k.family == "gather" and k.implements("lookup_bag", fmt)]
    T = check_table(300, 40, fmt, seed=9)
    ids, offsets = bag_layout(9, 300, n=2000, B=300)
    psw = np.random.default_rng(9).uniform(-1, 1, ids.shape).astype(np.float32)
    for mode in ("sum", "mean", "sqrtn", "max"):
        w = None if mode == "max" else psw
        results = [kernels.lookup_bag(T, ids, offsets, mode=mode, per_sample_weights=w,
                                      padding_idx=5, kernel=n) for n in names]
        for n, r in zip(names, results):
            assert_bitwise_equal(r, results[0], f"{fmt} {mode}: {n} vs {names[0]}")


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@pytest.mark.parametrize("D", [16, 32, 64, 128, 256])
def test_gather_kernels_agree_bit_for_bit_at_the_compiled_row_sizes(fmt, D):
    """The row sizes with compiled fixed-size bag loops (decoded into vector registers) give
    the bits of every other gather kernel, padding, empty bags and a bag longer than the
    prefetch distance included."""
    names = [n for n, k in kernels.KERNELS.items()
             if k.family == "gather" and k.implements("lookup_bag", fmt)]
    T = check_table(300, D, fmt, seed=D)
    ids, offsets = bag_layout(D, 300, n=3000, B=200)
    offsets[5] = offsets[6] = offsets[4]
    for mode in ("sum", "mean", "sqrtn"):
        results = [kernels.lookup_bag(T, ids, offsets, mode=mode, padding_idx=5, kernel=n)
                   for n in names]
        for n, r in zip(names, results):
            assert_bitwise_equal(r, results[0], f"{fmt} D={D} {mode}: {n} vs {names[0]}")
        LOOKUP_BAG.assert_matches(results[0], T, ids, offsets, mode, None, 5)


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@pytest.mark.parametrize("D", [16, 32, 64, 128, 256])
def test_cython_decoders_agree_at_every_isa_level(fmt, D, cython_isa):
    """Each of cython_gather's decoding paths gives numba_gather's bits (lookups: the
    dequantized table's), bags of the compiled row sizes and a row size without one."""
    for dim in (D, D + 8):
        T = check_table(300, dim, fmt, seed=dim)
        ids, offsets = bag_layout(dim, 300, n=3000, B=200)
        assert_bitwise_equal(kernels.lookup(T, ids, kernel="cython_gather"),
                             T.dequantize()[ids], f"{fmt} D={dim} lookup")
        for mode in ("sum", "mean", "sqrtn", "max"):
            got = kernels.lookup_bag(T, ids, offsets, mode=mode, padding_idx=5,
                                     kernel="cython_gather")
            want = kernels.lookup_bag(T, ids, offsets, mode=mode, padding_idx=5,
                                      kernel="numba_gather")
            assert_bitwise_equal(got, want, f"{fmt} D={dim} {mode}")


@pytest.mark.parametrize("kernel_name, fmt", LOOKUP_CASES)
def test_out_dtype_float16_is_the_float32_result_rounded_once(kernel_name, fmt):
    k = kernels.KERNELS[kernel_name]
    T = check_table(100, 16, fmt, seed=10)
    ids = np.random.default_rng(10).integers(0, 100, (20, 3))
    want = k.lookup(T, ids).astype(np.float16)
    assert_bitwise_equal(k.lookup(T, ids, out_dtype=np.float16), want)
    out = np.empty((20, 3, 16), np.float16)
    assert k.lookup(T, ids, out=out, out_dtype="float16") is out
    assert_bitwise_equal(out, want)
    if k.implements("lookup_bag", fmt):
        bags = ids.reshape(20, 3)
        assert_bitwise_equal(k.lookup_bag(T, bags, mode="mean", out_dtype=np.float16),
                             k.lookup_bag(T, bags, mode="mean").astype(np.float16))


def test_out_dtype_is_checked():
    T = kernels.quantize(table_values(10, 4), "int8")
    W = table_values(10, 4)
    for weights, dtype in ((T, np.float64), (T, np.int8), (W, np.float16), (W, np.float64)):
        out = sentinel_like((2, 4), np.float32)
        with pytest.raises(ValueError, match="out_dtype must be"):
            kernels.lookup(weights, [1, 2], out=out, out_dtype=dtype)
        assert_untouched(out)
    out = sentinel_like((2, 4), np.float32)
    with pytest.raises(ValueError, match="out must have dtype float16"):
        kernels.lookup(T, [1, 2], out=out, out_dtype=np.float16)
    assert_untouched(out)
    assert kernels.lookup(W, [1], out_dtype=np.float32).dtype == np.float32


def test_a_float16_ndarray_is_not_a_table():
    with pytest.raises(TypeError, match=r"kernels.quantize\(W, 'float16'\)"):
        kernels.lookup(np.ones((3, 2), np.float16), [0])
    with pytest.raises(TypeError, match=r"kernels.quantize\(W, 'bfloat16'\)"):
        kernels.lookup(np.ones((3, 2), ml_dtypes.bfloat16), [0])


def bad_calls(T, V, D):
    """(label, call(out), error type) of bad inputs to a table's forward operations."""
    flat = T.packed.reshape(-1)
    n_items = 2 * D * 4 // flat.itemsize
    overlapping = flat[:n_items].view(np.float32).reshape(2, D)
    return [
        ("id_out_of_range", lambda k, o: k.lookup(T, [0, V], out=o), IndexError),
        ("id_negative", lambda k, o: k.lookup(T, [-1, 0], out=o), IndexError),
        ("out_shape", lambda k, o: k.lookup(T, [0], out=o), ValueError),
        ("out_dtype_float64", lambda k, o: k.lookup(T, [0, 1], out=o.astype(np.float64)),
         ValueError),
        ("out_overlaps_storage", lambda k, o: k.lookup(T, [0, 1], out=overlapping), ValueError),
        ("bag_id_out_of_range", lambda k, o: k.lookup_bag(T, [0, V], [0, 1], out=o),
         IndexError),
        ("bag_offsets_decreasing", lambda k, o: k.lookup_bag(T, [0, 1, 2], [1, 0], out=o),
         ValueError),
        ("bag_mode", lambda k, o: k.lookup_bag(T, [0, 1], [0, 1], mode="median", out=o),
         ValueError),
        ("bag_psw_float64", lambda k, o: k.lookup_bag(
            T, [0, 1], [0, 1], per_sample_weights=np.ones(2), out=o), TypeError),
        ("bag_padding_idx", lambda k, o: k.lookup_bag(T, [0, 1], [0, 1], padding_idx=V, out=o),
         ValueError),
        ("bag_out_overlaps_storage", lambda k, o: k.lookup_bag(T, [0, 1], [0, 1],
                                                               out=overlapping), ValueError),
    ]


@pytest.mark.parametrize("kernel_name, fmt", LOOKUP_CASES)
def test_every_bad_input_leaves_out_and_the_table_unchanged(kernel_name, fmt):
    k = kernels.KERNELS[kernel_name]
    V, D = 16, 8
    T = check_table(V, D, fmt, seed=11)
    before = T.packed.copy()
    for label, call, error in bad_calls(T, V, D):
        if label.startswith("bag") and not k.implements("lookup_bag", fmt):
            continue
        out = sentinel_like((2, D), np.float32)
        with pytest.raises(error):
            call(k, out)
        assert_untouched(out)
        assert_bitwise_equal(T.packed, before, f"{label}: the table changed")


@pytest.mark.parametrize("fmt", ROWWISE)
def test_one_hot_kernels_name_the_kernels_of_integer_rows(fmt):
    T = kernels.quantize(table_values(4, 4), fmt)
    have = kernels.kernels_implementing("lookup", fmt)
    assert "numpy_take" in have
    for name in ("onehot_dense", "onehot_sparse"):
        with pytest.raises(NotImplementedError, match=", ".join(have)):
            kernels.lookup(T, [1], kernel=name)
        with pytest.raises(NotImplementedError, match=", ".join(have)):
            kernels.lookup_bag(T, [1], [0], kernel=name)


def test_moved_bytes_counts_the_formats_row_bytes():
    assert LOOKUP.moved_bytes(10, 100, 64, fmt="int8") == 10 * (72 + 256)
    assert LOOKUP.moved_bytes(10, 100, 64, fmt="int4") == 10 * (36 + 256)
    assert LOOKUP.moved_bytes(10, 100, 64, fmt="float16") == 10 * (128 + 256)
    assert LOOKUP.moved_bytes(10, 100, 64) == LOOKUP.moved_bytes(10, 100, 64, fmt="float32")
    assert LOOKUP_BAG.moved_bytes(80, 100, 128, 4, 8, fmt="bfloat16") == 80 * 256 + 10 * 512


# --------------------------------------------------------------------------
# inference only
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_gradients_refuse_a_table_before_writing(fmt):
    T = kernels.quantize(table_values(5, 4), fmt)
    G = np.ones((2, 4), np.float32)
    for name in kernels.KERNELS:
        out = sentinel_like((5, 4), np.float32)
        for call in (
            lambda: kernels.lookup_grad(T, [0, 1], 5, kernel=name),
            lambda: kernels.lookup_bag_grad(G, [0, 1], [0, 1], 5, weights=T, out=out,
                                            kernel=name),
            lambda: kernels.lookup_bag_grad(G, [0, 1], [0, 1], weights=T, mode="max",
                                            kernel=name),
            lambda: kernels.lookup_bag_grad(G, [0, 1], [0, 1], 5, weights=T, sparse=True,
                                            kernel=name),
            lambda: kernels.lookup_bag_grad(G, [0, 1], [0, 1], 5, weights=T, kernel="auto"),
        ):
            with pytest.raises(TypeError, match="for inference; train a float32 master table"):
                call()
            assert_untouched(out)


@pytest.mark.parametrize("opt", ["SGD", "Adagrad", "RowwiseAdagrad", "SparseAdam"])
def test_optimizers_refuse_a_table(opt):
    T = kernels.quantize(table_values(5, 4), "int8")
    before = T.packed.copy()
    with pytest.raises(TypeError, match="for inference; train a float32 master table"):
        getattr(kernels.optim, opt)(T, lr=0.1)
    assert_bitwise_equal(T.packed, before)


def test_train_float32_then_requantize():
    """The README's recipe: steps update the float32 master; the table is re-made from it."""
    W = table_values(50, 8)
    opt = kernels.optim.SGD(W, lr=0.5)
    ids = np.array([1, 2, 2])
    opt.step(ids, np.ones((3, 8), np.float32))
    T = kernels.quantize(W, "int8")
    assert_bitwise_equal(kernels.lookup(T, ids), T.dequantize()[ids])
    scale, _ = row_params(T)
    assert (np.abs(kernels.lookup(T, ids) - W[ids]) <= scale[ids] * 0.51 + 1e-8).all()


@pytest.mark.parametrize("D", [16, 64, 256])
def test_int4_rows_of_any_half_scale_and_bias_decode_alike_at_every_isa_level(D, cython_isa):
    """int4 scale and bias are halves: the vector loops convert them with F16C, the portable
    loops bit by bit (as table.dequantize does). Subnormal, infinite, signed-zero and NaN (quiet
    and signalling) scales and biases, as a packed table from elsewhere may hold, give the same
    bits on every path (a NaN only through q * scale + bias, which quiets it either way)."""
    halves = np.array([0x0001, 0x03FF, 0x8001, 0x7C00, 0xFC00, 0x8000, 0x0000, 0x7E00, 0x7C01,
                       0xFD55, 0x3C00, 0x0400], np.uint16)
    rng = np.random.default_rng(D)
    V = len(halves) ** 2
    packed = np.empty((V, D // 2 + 4), np.uint8)
    packed[:, :D // 2] = rng.integers(0, 256, (V, D // 2))
    sb = packed[:, D // 2:].view(np.uint16)
    sb[:, 0] = np.repeat(halves, len(halves))
    sb[:, 1] = np.tile(halves, len(halves))
    T = kernels.Int4Table.from_packed(packed)
    ids, offsets = bag_layout(D, V, n=2000, B=150)
    with np.errstate(invalid="ignore"):  # inf * 0: NumPy warns, the kernels do not
        want = T.dequantize()[ids]
    assert np.isnan(want).any() and np.isinf(want).any()
    assert_bitwise_equal(kernels.lookup(T, ids, kernel="cython_gather"), want, f"D={D} lookup")
    got = kernels.lookup_bag(T, ids, offsets, kernel="cython_gather")
    from kernels import _cython_gather

    _cython_gather.set_isa(0)
    try:
        portable = kernels.lookup_bag(T, ids, offsets, kernel="cython_gather")
    finally:
        _cython_gather.set_isa(cython_isa)
    # a bag adding several NaNs returns one of them, which one depends on the loop's operand
    # order (as for any sum): NaN where NaN, the same bits elsewhere
    nan = np.isnan(portable)
    assert nan.any() and (np.isnan(got) == nan).all()
    assert_bitwise_equal(np.where(nan, 0, got), np.where(nan, 0, portable), f"D={D} bag")


@pytest.mark.parametrize("D", [16, 32, 64, 128, 256, 24])
def test_every_float16_value_decodes_as_numpy_at_every_isa_level(D, cython_isa):
    """All 65,536 float16 bit patterns (quiet and signalling NaNs of either sign, infinities,
    subnormals, -0.0) as a table. cython_gather's lookups give NumPy's float32 bits (a
    signalling NaN kept signalling) with regular and streamed stores, int32 and int64 ids.
    Its bags pool the converted values without a NaN check: a bag of one gives the row plus
    +0.0 (the addition quiets a signalling NaN as the conversion does), a longer bag
    numba_gather's bits, NaN compared by position (which of several NaNs a sum returns
    depends on its operand order)."""
    from kernels import _cython_gather

    halves = np.resize(np.arange(1 << 16, dtype=np.uint16), -(-(1 << 16) // D) * D)
    T = kernels.Float16Table.from_packed(halves.view(np.float16).reshape(-1, D))
    V = T.shape[0]
    ids = np.random.default_rng(D).permutation(V)
    want = T.dequantize()[ids]
    assert np.isnan(want).any() and np.isinf(want).any()
    assert_bitwise_equal(kernels.lookup(T, ids, kernel="cython_gather"), want, f"D={D} lookup")
    for idx in (np.int32, np.int64):
        for nthreads in (1, 2):
            out = kernels.aligned_empty((V, D))
            _cython_gather.decode_gather(CODES["float16"], T.packed.view(np.uint16),
                                         ids.astype(idx), out, nthreads, 16, True)
            assert_bitwise_equal(out, want, f"D={D} streamed {idx.__name__} {nthreads}")
    with np.errstate(invalid="ignore"):
        plus0 = want + np.float32(0)
    assert_bitwise_equal(kernels.lookup_bag(T, ids[:, None], kernel="cython_gather"), plus0,
                         f"D={D} bags of one")
    offsets = np.arange(0, V, 8)
    got = kernels.lookup_bag(T, ids, offsets, kernel="cython_gather")
    ref = kernels.lookup_bag(T, ids, offsets, kernel="numba_gather")
    nan = np.isnan(ref)
    assert nan.any() and (np.isnan(got) == nan).all()
    assert_bitwise_equal(np.where(nan, 0, got), np.where(nan, 0, ref), f"D={D} bags of 8")


@pytest.mark.parametrize("D", [16, 24, 64])
def test_every_float16_value_decodes_as_numpy_in_numba(D):
    """All 65,536 float16 bit patterns through numba_gather's vectorized conversion
    (kernels._numba_intrinsics.half_to_f32): lookups give NumPy's float32 bits (a signalling
    NaN kept signalling, subnormals exact, -0.0 kept), single-threaded and parallel; weighted
    bags of one give each value times its weight, NaN by position."""
    halves = np.resize(np.arange(1 << 16, dtype=np.uint16), -(-(1 << 16) // D) * D)
    T = kernels.Float16Table.from_packed(halves.view(np.float16).reshape(-1, D))
    V = T.shape[0]
    ids = np.random.default_rng(D).permutation(V)
    want = T.dequantize()[ids]
    assert (want.view(np.uint32) & 0x7FC00000 == 0x7F800000).any()  # signalling NaNs in it
    assert_bitwise_equal(kernels.lookup(T, ids, kernel="numba_gather"), want, f"D={D}")
    assert_bitwise_equal(kernels.lookup(T, ids[:7], kernel="numba_gather"), want[:7], "one thread")
    w = np.linspace(-2, 3, V, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        ref = np.float32(0) + w[:, None] * want
    got = kernels.lookup_bag(T, ids[:, None], per_sample_weights=w[:, None],
                             kernel="numba_gather")
    nan = np.isnan(ref)
    assert (np.isnan(got) == nan).all()
    assert_bitwise_equal(np.where(nan, 0, got), np.where(nan, 0, ref), f"D={D} weighted")


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@pytest.mark.parametrize("D", [16, 64, 256])
def test_bags_of_one_id_decode_as_the_general_bag_at_every_isa_level(fmt, D, cython_isa):
    """Bags of one id each (2-D (B, 1) ids, or offsets 0, 1, ..., B - 1) take cython_gather's
    gather-like loop: every mode and padding give numba_gather's bits, and a bag list with one
    longer bag (the general loop) agrees on the bags of one."""
    T = check_table(400, D, fmt, seed=D)
    ids = np.random.default_rng(D).integers(0, 400, 3000)
    ids[::7] = 5
    for mode in ("sum", "mean", "sqrtn"):
        want = kernels.lookup_bag(T, ids[:, None], mode=mode, padding_idx=5,
                                  kernel="numba_gather")
        assert not want[::7].any()
        for form in (ids[:, None], ids):
            offsets = None if form.ndim == 2 else np.arange(ids.shape[0])
            got = kernels.lookup_bag(T, form, offsets, mode=mode, padding_idx=5,
                                     kernel="cython_gather")
            assert_bitwise_equal(got, want, f"{fmt} D={D} {mode} {form.ndim}-D")
        last_of_three = np.arange(ids.shape[0])  # the last bag holds ids[-1], 1 and 2
        longer = kernels.lookup_bag(T, np.append(ids, [1, 2]), last_of_three, mode=mode,
                                    padding_idx=5, kernel="cython_gather")
        assert_bitwise_equal(longer[:-1], want[:-1], f"{fmt} D={D} {mode} general loop")


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@pytest.mark.parametrize("D", [16, 64, 128, 256])
def test_cython_decoders_give_the_same_bits_whatever_they_prefetch(fmt, D, monkeypatch):
    """The decoding loops' prefetch (none, first lines, every line of a row as for tables beyond
    the last-level cache) changes no bit: lookups, bags of one and bags of 8 and uneven bags."""
    from kernels import cython_gather

    T = check_table(300, D, fmt, seed=D + 1)
    ids, offsets = bag_layout(D, 300, n=3000, B=200)
    ones = np.arange(3000)
    eights = np.arange(0, 3000, 8)

    def run():
        return [kernels.lookup(T, ids, kernel="cython_gather")] + [
            kernels.lookup_bag(T, ids, off, kernel="cython_gather")
            for off in (offsets, ones, eights)]

    results = {}
    for distance in (0, 16, -16, -1, -128):
        monkeypatch.setattr(cython_gather, "decode_prefetch", lambda S, bag=False, d=distance: d)
        results[distance] = run()
    for distance, got in results.items():
        for what, r, want in zip(("lookup", "bags", "bags of one", "bags of 8"), got,
                                 results[0]):
            assert_bitwise_equal(r, want, f"{fmt} D={D} {what}, prefetch {distance}")


def test_cython_decoding_bags_ask_for_the_far_distance_unless_each_bag_holds_one_id(monkeypatch):
    """kernels._cpu.decode_prefetch(S, bag=True) (far beyond the last-level cache) for bags of
    several ids; lookups and bags of one id each (1-D with offsets 0, 1, ..., or (B, 1) ids)
    keep the lookup's distance."""
    from kernels import cython_gather

    seen = []
    monkeypatch.setattr(cython_gather, "decode_prefetch",
                        lambda S, bag=False: (seen.append(bag), 0)[1])
    T = kernels.quantize(table_values(50, 16), "int8")
    ids = np.random.default_rng(5).integers(0, 50, 64)
    kernels.lookup(T, ids, kernel="cython_gather")
    kernels.lookup_bag(T, ids, np.arange(0, 64, 8), kernel="cython_gather")
    kernels.lookup_bag(T, ids, np.arange(64), kernel="cython_gather")
    kernels.lookup_bag(T, ids[:, None], kernel="cython_gather")
    kernels.lookup_bag(T, ids.reshape(16, 4), kernel="cython_gather")
    assert seen == [False, True, False, False, True]


def test_decode_prefetch_asks_for_every_line_only_beyond_the_last_level_cache(monkeypatch):
    from kernels import _cpu

    S = np.zeros((1000, 72), np.uint8)
    monkeypatch.setattr(_cpu, "L2_BYTES", 1000)
    monkeypatch.setattr(_cpu, "L3_BYTES", 100_000)
    assert _cpu.decode_prefetch(S) == _cpu.DECODE_PREFETCH_DISTANCE > 0
    monkeypatch.setattr(_cpu, "L3_BYTES", 50_000)
    assert _cpu.decode_prefetch(S) == -_cpu.DECODE_PREFETCH_DISTANCE
    assert _cpu.decode_prefetch(S, bag=True) == -(_cpu.FAR_PREFETCH_BYTES // 72)
    monkeypatch.setattr(_cpu, "L2_BYTES", 100_000)
    monkeypatch.setattr(_cpu, "L3_BYTES", 200_000)
    assert _cpu.decode_prefetch(S) == 0

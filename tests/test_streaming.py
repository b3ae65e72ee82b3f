"""cython_gather's lookups with non-temporal (streaming) stores: the same bits as regular stores
for every table format, ISA level, id width and output alignment, and kernels._cpu.stream_output's
rule for when they are used (large outputs with 32-byte aligned rows only)."""
from __future__ import annotations

import numpy as np
import pytest

import kernels
import kernels._cpu as cpu
from conftest import assert_bitwise_equal
from kernels import _cython_gather
from kernels._numba_lowp import CODES, storage


def _out(n, D, offset_bytes):
    """An (n, D) float32 array starting offset_bytes past a 64-byte boundary, filled with NaN."""
    buf = cpu.aligned_empty(n * D * 4 + 64, np.uint8)
    out = buf[offset_bytes:offset_bytes + n * D * 4].view(np.float32).reshape(n, D)
    out.fill(np.nan)
    return out


@pytest.mark.parametrize("offset", [0, 16, 32])
@pytest.mark.parametrize("D", [8, 16, 32, 64, 100, 128, 256])
@pytest.mark.parametrize("idx", [np.int32, np.int64])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_float_gather_streams_the_same_bits(offset, D, idx, nthreads):
    rng = np.random.default_rng(D)
    W = rng.standard_normal((50, D)).astype(np.float32)
    ids = rng.integers(0, 50, 999).astype(idx)
    out = _out(999, D, offset)
    _cython_gather.gather(W, ids, out, nthreads, 4, True)
    assert_bitwise_equal(out, W[ids], f"D={D} offset={offset}")


@pytest.mark.parametrize("fmt", sorted(CODES))
@pytest.mark.parametrize("D", [16, 64, 128, 256, 42])
@pytest.mark.parametrize("offset", [0, 16, 32])  # 32: the AVX-512 loops' 64-byte stores refuse it
def test_decoding_gather_streams_the_same_bits_at_every_isa_level(fmt, D, offset, cython_isa):
    rng = np.random.default_rng(D)
    T = kernels.quantize(rng.standard_normal((60, D)).astype(np.float32), fmt)
    S = storage(T.packed if hasattr(T, "packed") else T)
    ids = rng.integers(0, 60, 777)
    want = T.dequantize()[ids]
    for nthreads in (1, 2):
        for prefetch in (0, 16, -16):
            out = _out(777, D, offset)
            _cython_gather.decode_gather(CODES[fmt], S, ids, out, nthreads, prefetch, True)
            assert_bitwise_equal(out, want, f"{fmt} D={D} offset={offset} pf={prefetch}")


def test_stream_output_wants_a_large_aligned_output(monkeypatch):
    monkeypatch.setattr(cpu, "STREAM_MIN_BYTES", 4096)
    assert cpu.stream_output(_out(64, 16, 0))             # 4 KiB, aligned
    assert not cpu.stream_output(_out(63, 16, 0))         # under the size
    assert not cpu.stream_output(_out(64, 16, 16))        # rows 16 bytes off
    assert not cpu.stream_output(_out(64, 17, 0)[:, :16])  # not contiguous
    assert not cpu.stream_output(_out(128, 4, 0))         # 16-byte rows: every other unaligned
    monkeypatch.undo()
    assert cpu.STREAM_MIN_BYTES == cpu.L3_BYTES
    assert not cpu.stream_output(_out(64, 16, 0))


def test_stream_output_takes_half_the_cache_beside_a_table_it_does_not_fit_with(monkeypatch):
    monkeypatch.setattr(cpu, "L3_BYTES", 8192)
    monkeypatch.setattr(cpu, "STREAM_MIN_BYTES", 8192)
    monkeypatch.setattr(cpu, "STREAM_BESIDE_TABLE_MIN_BYTES", 4096)
    out = _out(64, 16, 0)                                   # 4 KiB, aligned
    assert not cpu.stream_output(out)                       # no table: under the L3
    assert not cpu.stream_output(out, 4096)                 # fits beside the table
    assert cpu.stream_output(out, 4097)                     # does not
    assert not cpu.stream_output(_out(63, 16, 0), 10**9)    # under half the L3
    assert not cpu.stream_output(_out(64, 16, 16), 10**9)   # rows 16 bytes off
    assert cpu.stream_output(_out(128, 16, 0))              # the L3 itself, with no table
    aligned = cpu.empty_output((64, 16), np.float32, 4097)  # streamed: aligned_empty's view
    assert aligned.ctypes.data % 64 == 0 and aligned.base is not None
    assert cpu.empty_output((64, 16), np.float32, 4096).base is None  # NumPy's own
    monkeypatch.undo()
    assert cpu.STREAM_BESIDE_TABLE_MIN_BYTES == cpu._beside_table_min_bytes(
        cpu._amd_family(cpu.cpuinfo()))


def test_outputs_under_the_cache_keep_regular_stores_on_the_cpu_families_measured_so():
    """On an AMD family 26 (Zen 5) the beside-a-table rule takes the whole last-level cache, so
    no output under it is streamed; on family 25 and any other CPU, half of it."""
    text = "processor\t: 0\nvendor_id\t: {}\ncpu family\t: {}\nmodel\t\t: 2\n"
    assert cpu._amd_family(cpu.cpuinfo(text.format("AuthenticAMD", 26))) == 26
    assert cpu._amd_family(cpu.cpuinfo(text.format("AuthenticAMD", 25))) == 25
    assert cpu._amd_family(cpu.cpuinfo(text.format("GenuineIntel", 6))) is None
    assert cpu._amd_family(cpu.cpuinfo("")) is None
    two = text.format("AuthenticAMD", 26) + "\n" + text.format("GenuineIntel", 6)
    assert cpu.cpuinfo(two)["vendor_id"] == "AuthenticAMD"  # the first processor's fields
    assert cpu._beside_table_min_bytes(26) == cpu.L3_BYTES
    for family in (25, 23, None):
        assert cpu._beside_table_min_bytes(family) == cpu.L3_BYTES // 2
    out = _out(2 * 1024, 16, 0)  # 128 KiB, aligned
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cpu, "L3_BYTES", 256 * 1024)
        mp.setattr(cpu, "STREAM_MIN_BYTES", 256 * 1024)
        for family, streams in ((25, True), (26, False)):
            mp.setattr(cpu, "STREAM_BESIDE_TABLE_MIN_BYTES", cpu._beside_table_min_bytes(family))
            assert cpu.stream_output(out, 10**9) is streams


def test_lookup_streams_a_half_cache_output_beside_a_large_table(monkeypatch):
    """Through kernels.lookup and lookup_bag (bags of one): the kernel is asked to stream just
    when stream_output says so for the table it reads, and gives W[ids] either way."""
    seen = []
    real_gather, real_bag = _cython_gather.gather, _cython_gather.bag
    monkeypatch.setattr(_cython_gather, "gather",  # (W, ids, out, threads, prefetch, stream, ...)
                        lambda *a: (seen.append(a[5]), real_gather(*a))[1])
    monkeypatch.setattr(_cython_gather, "bag",
                        lambda *a: (seen.append(a[-1]), real_bag(*a))[1])
    monkeypatch.setattr(cpu, "L3_BYTES", 64 * 1024)
    monkeypatch.setattr(cpu, "STREAM_MIN_BYTES", 64 * 1024)
    monkeypatch.setattr(cpu, "STREAM_BESIDE_TABLE_MIN_BYTES", 32 * 1024)
    rng = np.random.default_rng(8)
    ids = rng.integers(0, 100, 128)                            # 128 x 64 float32: 32 KiB out
    for V, streams in ((100, False), (200, True)):             # 25 / 50 KiB tables
        W = rng.standard_normal((V, 64)).astype(np.float32)
        seen.clear()
        got = kernels.lookup(W, ids, kernel="cython_gather")
        bags = kernels.lookup_bag(W, ids.reshape(-1, 1), kernel="cython_gather")
        assert seen == [streams, streams], V
        assert_bitwise_equal(got, W[ids], f"V={V}")
        assert_bitwise_equal(bags, W[ids] + np.float32(0), f"V={V} bags")


@pytest.mark.parametrize("fmt", ["float32", "float16", "bfloat16", "int8", "int4"])
def test_lookups_that_stream_give_w_ids(monkeypatch, fmt):
    """Through kernels.lookup with every output streamed (the threshold lowered): out given
    aligned or not, or allocated by the call (cache-line aligned)."""
    monkeypatch.setattr(cpu, "STREAM_MIN_BYTES", 0)
    rng = np.random.default_rng(5)
    W = rng.standard_normal((300, 64)).astype(np.float32)
    T = W if fmt == "float32" else kernels.quantize(W, fmt)
    want = W if fmt == "float32" else T.dequantize()
    ids = rng.integers(0, 300, (40, 30))
    got = kernels.lookup(T, ids, kernel="cython_gather")
    assert got.ctypes.data % 64 == 0
    assert_bitwise_equal(got, want[ids], fmt)
    for offset in (0, 16):
        out = _out(1200, 64, offset).reshape(40, 30, 64)
        assert kernels.lookup(T, ids, kernel="cython_gather", out=out) is out
        assert_bitwise_equal(out, want[ids], f"{fmt} offset={offset}")


@pytest.mark.parametrize("fmt", ["float32", "float16", "bfloat16", "int8", "int4"])
@pytest.mark.parametrize("D", [8, 16, 64, 256, 42])
@pytest.mark.parametrize("offset", [0, 16, 32])
def test_bags_of_one_stream_the_same_bits(fmt, D, offset, cython_isa):
    """Bags of one id (no offsets) with stream set give the bits of regular stores: the row + 0
    (-0.0 as +0.0), a padding id's bag zeros, every mode but max; bags of 8 ignore stream."""
    if fmt == "int4" and D % 2:
        pytest.skip("int4 rows have an even D")
    rng = np.random.default_rng(D)
    W = rng.standard_normal((60, D)).astype(np.float32)
    W[7] = -0.0
    T = W if fmt == "float32" else kernels.quantize(W, fmt)
    ids = rng.integers(0, 60, 512)
    ids[:5] = 7
    for mode in ("sum", "mean", "sqrtn", "max"):
        for offsets in (None, np.arange(0, 512, 8)):
            got, want = [], []
            for stream in (False, True):
                B = 512 if offsets is None else 64
                out = _out(B, D, offset)
                args = (ids, offsets, kernels._validate.MODE_CODES[mode], None, 3, out, 2, 16,
                        False, stream)
                if fmt == "float32":
                    _cython_gather.bag(T, *args)
                else:
                    _cython_gather.decode_bag(CODES[fmt], storage(T.packed if hasattr(
                        T, "packed") else T), *args)
                (got if stream else want).append(out)
            assert_bitwise_equal(got[0], want[0], f"{fmt} D={D} {mode} offset={offset}")


def test_the_table_beside_an_output_is_measured_only_when_its_size_decides(monkeypatch):
    """stream_output and empty_output take the table itself and count its bytes only for an
    output between half the last-level cache and all of it: every call asks, most are small."""
    monkeypatch.setattr(cpu, "L3_BYTES", 8192)
    monkeypatch.setattr(cpu, "STREAM_MIN_BYTES", 8192)
    monkeypatch.setattr(cpu, "STREAM_BESIDE_TABLE_MIN_BYTES", 4096)

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the table's {name} was read")

    assert not cpu.stream_output(_out(63, 16, 0), Untouchable())   # under half the L3
    assert cpu.stream_output(_out(128, 16, 0), Untouchable())      # the L3 itself
    assert cpu.empty_output((63, 16), np.float32, Untouchable()).base is None
    table = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (4097, 1), (1, 1))
    assert cpu.stream_output(_out(64, 16, 0), table)                # 4 KiB + 4,097 > 8 KiB
    assert not cpu.stream_output(_out(64, 16, 0), table[:4096])     # 4 KiB + 4,096 fit
    assert cpu.stream_output(_out(64, 16, 0), np.int64(4097))       # or the bytes, as NumPy's
    assert cpu.empty_output((64, 16), np.float32, table).base is not None


@pytest.mark.parametrize("fmt", ["float32", "int8"])
def test_lookup_bag_of_one_through_the_api_streams(monkeypatch, fmt):
    """Streamed (threshold lowered) and not (this small output, by default) give the same bits
    (int8 bags add fma(s, q, 0 + b), as torch's, not the dequantized row)."""
    rng = np.random.default_rng(6)
    W = rng.standard_normal((300, 64)).astype(np.float32)
    T = W if fmt == "float32" else kernels.quantize(W, fmt)
    ids = rng.integers(0, 300, (1000, 1))
    assert not cpu.stream_output(np.empty((1000, 64), np.float32))
    want = kernels.lookup_bag(T, ids, kernel="cython_gather", padding_idx=4)
    monkeypatch.setattr(cpu, "STREAM_MIN_BYTES", 0)
    got = kernels.lookup_bag(T, ids, kernel="cython_gather", padding_idx=4)
    assert got.ctypes.data % 64 == 0 and cpu.stream_output(got)
    assert_bitwise_equal(got, want, fmt)
    if fmt == "float32":
        expected = W[ids[:, 0]] + np.float32(0)
        expected[ids[:, 0] == 4] = 0
        assert_bitwise_equal(got, expected, fmt)


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("fmt", ["float32", "int8"])
@pytest.mark.parametrize("D", [16, 64, 256, 42])
@pytest.mark.parametrize("idx", [np.int32, np.int64])
def test_streamed_bags_of_one_zero_and_count_an_id_outside_the_table(fmt, D, idx, stream):
    """Called directly with an id outside [0, V) (the shared check bypassed, as when another
    thread changes ids after it), a bag of one, streamed or stored as usual (float32: the
    lookup's row loop), raises RuntimeError, the bad bag's row is zeros, every other row is its
    bag, and nothing past out is written; a float32 lookup raises too, with row 0 in the bad
    id's place."""
    rng = np.random.default_rng(D)
    W = rng.standard_normal((60, D)).astype(np.float32)
    T = W if fmt == "float32" else kernels.quantize(W, fmt)
    n = 600
    ids = rng.integers(0, 60, n).astype(idx)
    ids[[3, n - 1]] = [-5, 60]
    guard = _out(n + 4, D, 0)
    guard[n:] = 7.0
    out = guard[:n]
    args = (ids.reshape(n, 1), None, 0, None, -1, out, 2, 16, False, stream)
    with pytest.raises(RuntimeError):
        if fmt == "float32":
            _cython_gather.bag(T, *args)
        else:
            _cython_gather.decode_bag(CODES[fmt], storage(T.packed), *args)
    good = np.ones(n, bool)
    good[[3, n - 1]] = False
    want = kernels.lookup_bag(T, ids[good].astype(np.int64)[:, None], kernel="numba_gather")
    assert_bitwise_equal(out[good], want, f"{fmt} D={D}")
    assert not out[~good].any() and (guard[n:] == 7.0).all()
    if fmt == "float32":  # the streamed lookup copies row 0 for such an id
        guard[...] = 7.0
        with pytest.raises(RuntimeError):
            _cython_gather.gather(W, ids, out, 2, 16, stream)
        assert_bitwise_equal(out, W[np.where(good, ids, 0)], f"lookup D={D}")
        assert (guard[n:] == 7.0).all()

"""The compiled check of plain bag calls (kernels._bounds.plain_bags): it accepts exactly the calls
the general checks accept with the same result, and hands every other call to them (None), so
that their errors stay the only ones."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import kernels
from kernels import _ops
from kernels._bounds import plain_bags
from kernels._ops import LOOKUP_BAG
from kernels._tables import Table
from kernels._validate import plain_bag_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from tools import bag_checks  # noqa: E402

V, D = 50, 8


def _general(*args, **kw):
    """LookupBag.prepare(bounds=False, private_offsets=False) with the compiled step switched off."""
    with bag_checks.general_checks_only():
        return LOOKUP_BAG.prepare(*args, bounds=False, private_offsets=False, **kw)


def _fast(*args, **kw):
    return LOOKUP_BAG.prepare(*args, bounds=False, private_offsets=False, **kw)


def _plain_calls():
    rng = np.random.default_rng(3)
    for wdt in (np.float32, np.float64):
        W = rng.standard_normal((V, D)).astype(wdt)
        for idt in (np.int32, np.int64):
            ids = rng.integers(0, V, 24).astype(idt)
            yield f"{wdt.__name__}-{idt.__name__}-equal", W, ids, np.arange(0, 24, 4), False
            yield f"{wdt.__name__}-{idt.__name__}-uneven", W, ids, np.array([0, 0, 5, 24]), False
            yield (f"{wdt.__name__}-{idt.__name__}-last", W, ids, np.array([0, 3, 3, 24]),
                   True)
            yield f"{wdt.__name__}-{idt.__name__}-ones", W, ids, np.arange(24), False
            yield f"{wdt.__name__}-{idt.__name__}-2d", W, ids.reshape(6, 4), None, False


PLAIN = list(_plain_calls())


@pytest.mark.parametrize("name,W,ids,offsets,last", PLAIN, ids=[c[0] for c in PLAIN])
@pytest.mark.parametrize("given_out", [False, True])
def test_a_plain_call_gets_what_the_general_checks_give(name, W, ids, offsets, last, given_out):
    B = ids.shape[0] if ids.ndim == 2 else len(offsets) - last
    out = np.empty((B, D), W.dtype) if given_out else None
    args = (W, ids, offsets, "mean", None, None, last, out)
    assert plain_bags(W, ids, offsets, last, out) is not None
    fast, general = _fast(*args), _general(*args)
    assert fast[0] is W and general[0] is W and fast[1] is general[1]
    assert np.shares_memory(fast[2], ids)  # a view, never a copy
    np.testing.assert_array_equal(fast[2], general[2])
    assert (fast[3] is None) == (general[3] is None)
    if general[3] is not None:
        assert fast[3] is general[3]  # the caller's offsets, in place
    assert fast[4:7] == general[4:7] == ("mean", None, -1)
    assert fast[7].shape == general[7].shape == (B, D) and fast[7].dtype == W.dtype
    if given_out:
        assert fast[7] is out
    got = kernels.lookup_bag(W, ids, offsets, mode="mean", include_last_offset=last,
                             kernel="cython_gather", out=out)
    want = kernels.lookup_bag(W, ids, offsets, mode="mean", include_last_offset=last,
                              kernel="numpy_take")
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _not_plain():
    """(name, weights, ids, offsets, include_last, out): calls the compiled step must decline."""
    W = np.ones((V, D), np.float32)
    ids = np.arange(24, dtype=np.int64) % V
    off = np.arange(0, 24, 4)
    out = np.empty((6, D), np.float32)
    buf = np.zeros(V * D + 6 * D, np.float32)
    Wb, outb = buf[:V * D].reshape(V, D), buf[V * D - 8:V * D - 8 + 6 * D].reshape(6, D)
    ibuf = np.zeros(6 * D, np.float32)
    ids_in_out = ibuf.view(np.int64)[:24]
    ids_in_out[:] = ids
    readonly = out.copy()
    readonly.flags.writeable = False
    yield "out over weights", Wb, ids, off, False, outb
    yield "out over ids", W, ids_in_out, off, False, ibuf.reshape(6, D)
    yield "out read-only", W, ids, off, False, readonly
    yield "out wrong shape", W, ids, off, False, np.empty((5, D), np.float32)
    yield "out wrong dtype", W, ids, off, False, np.empty((6, D), np.float64)
    yield "out strided", W, ids, off, False, np.empty((6, 2 * D), np.float32)[:, ::2]
    yield "out a subclass", W, ids, off, False, np.ma.masked_array(out)
    yield "out a memmap-like list", W, ids, off, False, out.tolist()
    yield "offsets decreasing", W, ids, np.array([0, 8, 4, 12, 16, 20]), False, out
    yield "offset past n", W, ids, np.array([0, 4, 8, 12, 16, 25]), False, out
    yield "offsets not from 0", W, ids, np.array([1, 4, 8, 12, 16, 20]), False, out
    yield "last offset not n", W, ids, np.array([0, 4, 8, 12, 16, 20, 23]), True, out
    yield "offsets int32", W, ids, off.astype(np.int32), False, out
    yield "offsets a list", W, ids, off.tolist(), False, out
    yield "offsets strided", W, ids, np.arange(0, 24, 2)[::2], False, out
    yield "offsets empty", W, ids, np.zeros(0, np.int64), False, None
    yield "ids int16", W, ids.astype(np.int16), off, False, out
    yield "ids uint32", W, ids.astype(np.uint32), off, False, out
    yield "ids big-endian", W, ids.astype(">i8"), off, False, out
    yield "ids strided", W, np.repeat(ids, 2)[::2], off, False, out
    yield "ids a list", W, ids.tolist(), off, False, out
    yield "ids 2-D with offsets", W, ids.reshape(6, 4), off, False, out
    yield "ids 2-D with include_last", W, ids.reshape(6, 4), None, True, out
    yield "no ids", W, ids[:0], np.zeros(6, np.int64), False, out
    yield "weights float16", W.astype(np.float16), ids, off, False, None
    yield "weights strided", np.ones((V, 2 * D), np.float32)[:, ::2], ids, off, False, out
    yield "weights 1-D", W.reshape(-1), ids, off, False, None
    yield "weights a list", W.tolist(), ids, off, False, out
    yield "a table's bags into float64", kernels.quantize(W, "int8"), ids, off, False, \
        np.empty((6, D), np.float64)
    yield "a table's bags 2 values wide", kernels.quantize(W, "int4"), ids, off, False, \
        np.empty((6, 2), np.float32)


NOT_PLAIN = list(_not_plain())


@pytest.mark.parametrize("name,W,ids,offsets,last,out", NOT_PLAIN, ids=[c[0] for c in NOT_PLAIN])
def test_anything_else_is_left_to_the_general_checks(name, W, ids, offsets, last, out):
    W_, dim = (W.packed, W.shape[1]) if isinstance(W, Table) else (W, -1)
    assert plain_bags(W_, ids, offsets, last, out, dim) is None
    fast, general = _outcome(_fast, W, ids, offsets, last, out), \
        _outcome(_general, W, ids, offsets, last, out)
    assert fast == general


def _outcome(prepare, W, ids, offsets, last, out):
    try:
        r = prepare(W, ids, offsets, "sum", None, None, last, out)
    except (TypeError, ValueError, IndexError) as e:
        return type(e), str(e)
    return "accepted", r[2].tolist(), None if r[3] is None else r[3].tolist(), r[7].shape


@pytest.mark.parametrize("extra", [
    {"per_sample_weights": np.ones(24, np.float32)}, {"padding_idx": 3},
    {"out_dtype": np.float32}, {"include_last_offset": np.bool_(False)}])
def test_weights_padding_dtype_or_a_numpy_bool_take_the_general_checks(extra):
    W = np.ones((V, D), np.float32)
    ids = np.arange(24, dtype=np.int32)
    kw = {"per_sample_weights": None, "padding_idx": None, "include_last_offset": False,
          "out_dtype": None, **extra}
    assert plain_bag_args(W, ids, np.arange(0, 24, 4), "sum", kw["per_sample_weights"],
                          kw["padding_idx"], kw["include_last_offset"], None,
                          kw["out_dtype"]) is None
    kw_plain = {**kw, **{k: None for k in extra if k != "include_last_offset"}}
    if "include_last_offset" in extra:
        kw_plain["include_last_offset"] = False
    assert plain_bag_args(W, ids, np.arange(0, 24, 4), "sum", kw_plain["per_sample_weights"],
                          kw_plain["padding_idx"], kw_plain["include_last_offset"], None,
                          kw_plain["out_dtype"]) is not None


def test_a_bad_mode_in_a_plain_call_gets_the_general_error():
    W = np.ones((V, D), np.float32)
    ids = np.arange(24, dtype=np.int32)
    with pytest.raises(ValueError, match="mode must be one of"):
        kernels.lookup_bag(W, ids, np.arange(0, 24, 4), mode="median", kernel="cython_gather")


@pytest.mark.parametrize("fmt", ["float16", "bfloat16", "int8", "int4"])
@pytest.mark.parametrize("given_out", [False, True])
def test_a_plain_call_on_a_low_precision_table_gets_what_the_general_checks_give(fmt, given_out):
    rng = np.random.default_rng(5)
    table = kernels.quantize(rng.standard_normal((V, D)).astype(np.float32), fmt)
    ids = rng.integers(0, V, 24).astype(np.int32)
    offsets = np.array([0, 2, 2, 9, 24])
    out = np.empty((5, D), np.float32) if given_out else None
    args = (table, ids, offsets, "sum", None, None, False, out)
    assert plain_bags(table.packed, ids, offsets, False, out, D) is not None
    fast, general = _fast(*args), _general(*args)
    assert fast[0] is table.packed and general[0] is table.packed and fast[1] is general[1]
    assert fast[2] is ids and fast[3] is offsets and general[3] is offsets
    assert fast[7].shape == general[7].shape == (5, D) and fast[7].dtype == np.float32
    assert (fast[7] is out) if given_out else fast[7] is not general[7]
    got = kernels.lookup_bag(table, ids, offsets, kernel="cython_gather", out=out)
    want = kernels.lookup_bag(table, ids, offsets, kernel="numpy_take")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_bag_checks_script_times_both_paths_and_switches_the_compiled_one_off():
    W = np.ones((V, D), np.float32)
    ids = np.arange(24, dtype=np.int32)
    offsets = np.arange(0, 24, 4)
    with bag_checks.general_checks_only():
        assert plain_bag_args(W, ids, offsets, "sum", None, None, False, None, None) is not None
        assert _ops.plain_bag_args(W, ids, offsets, "sum", None, None, False, None,
                                   None) is None
    assert _ops.plain_bag_args is plain_bag_args
    rows = bag_checks.measure([(100, 16, 4)], n=64, rounds=2, number=1)
    (v, d, L, t), = rows
    assert (v, d, L) == (100, 16, 4)
    assert {"compiled check", "general checks"} <= set(t)
    assert all(x > 0 for x in t.values())

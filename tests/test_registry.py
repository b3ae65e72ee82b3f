"""The registry of operations x table formats, the decision table's validation, and the
one-definition rule for the facts the suite shares."""
from __future__ import annotations

import json
import os
import pathlib
import re
import time
import warnings

import numpy as np
import pytest

import kernels
from kernels import _registry, decisions
from kernels._formats import FLOAT32, FLOAT64
from kernels._kernel import Kernel
from kernels._ops import LOOKUP, LOOKUP_GRAD

ROOT = pathlib.Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------
# the registry


def test_every_registered_kernel_implements_every_operation_for_both_float_formats():
    assert list(kernels.KERNELS) == _registry.names()
    for k in kernels.KERNELS.values():
        pairs = set(k.pairs())
        assert {(op, f) for op in kernels.OPERATIONS for f in ("float32", "float64")} <= pairs
        low_precision = {(op, f) for op, f in pairs if f not in ("float32", "float64")}
        assert {op for op, _ in low_precision} <= {"lookup", "lookup_bag"}, k.name  # inference
        assert k.family in ("gather", "onehot") and isinstance(k.compiled, bool)
        assert re.fullmatch(r"#[0-9a-f]{6}", k.colour), k.name
    assert kernels.kernels_implementing("lookup", "float32") == list(kernels.KERNELS)


def _partial_kernel():
    def gather(W, ids, out):
        np.take(W, ids, axis=0, out=out)

    return Kernel("only_lookup_f32", "lookup of float32 tables only", {(LOOKUP, FLOAT32): gather},
                  compiled=False, family="gather", colour="#000000")


def test_a_pair_a_kernel_does_not_implement_raises_naming_the_kernels_that_do():
    k = _partial_kernel()
    W = np.ones((4, 3), np.float64)
    out = np.full((2, 3), 7.0)
    with pytest.raises(NotImplementedError) as exc:
        k.lookup(W, np.array([0, 1]), out=out)
    message = str(exc.value)
    assert "'only_lookup_f32' does not implement lookup for float64 tables" in message
    assert all(name in message for name in kernels.KERNELS), message
    assert (out == 7.0).all()
    with pytest.raises(NotImplementedError, match="lookup_grad for float32"):
        k.lookup_grad(np.ones((2, 3), np.float32), np.array([0, 1]), 4)
    got = k.lookup(W.astype(np.float32), np.array([3, 0]))
    assert (got == 1).all() and got.shape == (2, 3)
    assert k.implements(LOOKUP, FLOAT32) and not k.implements("lookup", FLOAT64)


def test_register_refuses_a_second_kernel_of_the_same_name_and_auto():
    with pytest.raises(ValueError, match="already registered"):
        _registry.register(kernels.KERNELS["numpy_take"])
    auto = _partial_kernel()
    auto.name = "auto"
    with pytest.raises(ValueError, match="reserved"):
        _registry.register(auto)
    assert "auto" not in kernels.KERNELS


def test_unknown_operation_and_format_are_named():
    with pytest.raises(ValueError, match="unknown operation 'bag'.*lookup, lookup_grad"):
        kernels.fastest(10, 4, op="bag")
    with pytest.raises(ValueError, match="unknown table format.*float32, float64"):
        kernels.fastest(10, 4, dtype=np.float16)
    with pytest.raises(ValueError, match="unknown kernel 'nope'"):
        kernels.lookup(np.ones((2, 2)), [0], kernel="nope")


# --------------------------------------------------------------------------
# kernels.fastest keyed by operation


@pytest.fixture
def shipped_only(tmp_path, monkeypatch):
    monkeypatch.setenv("KERNELS_DECISION_TABLE", str(tmp_path / "none.json"))
    decisions.reload()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decisions.explain(1, 1)  # load the table, warnings out of the way
    yield tmp_path
    decisions.reload()


def test_backward_true_is_a_deprecated_alias_of_op_lookup_grad(shipped_only):
    for V, D in [(100, 8), (10**6, 512), (3000, 64)]:
        with pytest.warns(DeprecationWarning, match="op='lookup_grad'"):
            old = kernels.fastest(V, D, backward=True)
        assert old is kernels.fastest(V, D, op="lookup_grad")
        assert old is kernels.fastest(V, D, op=kernels.OPERATIONS["lookup_grad"])


def test_fastest_returns_the_registry_object_and_explain_says_why_without_mutating_it(shipped_only):
    before = {name: repr(k) for name, k in kernels.KERNELS.items()}
    k = kernels.fastest(100_000, 128)
    d = kernels.explain(100_000, 128)
    assert k is d.kernel and k is kernels.KERNELS[k.name]
    assert d.op == "lookup" and d.point["vocab_size"] == 100_000 and d.point["dim"] == 128
    assert "shipped table" in str(d) and k.name in str(d)
    assert not hasattr(k, "decision")
    assert {name: repr(k) for name, k in kernels.KERNELS.items()} == before


def test_the_decision_cache_stays_bounded(shipped_only):
    for V in range(1, 3 * decisions.MAX_CACHED):
        kernels.fastest(V, 8)
    assert len(decisions._CACHE) <= decisions.MAX_CACHED


def test_auto_accepts_what_every_named_kernel_accepts():
    W = np.arange(12, dtype=np.float32).reshape(4, 3)
    for ids in ([np.int64(1), np.uint64(3)], (0, 3, 2), np.array([[1, 2]], np.uint8)):
        want = kernels.lookup(W, ids, kernel="numpy_take")
        assert (kernels.lookup(W, ids, kernel="auto") == want).all()


# --------------------------------------------------------------------------
# odd decision tables: warn and fall back, never raise or hang


def _table(rows_lookup, rows_grad=None):
    return {"format": 2, "source": "test", "machine": "m", "commit": "c", "date": "d",
            "ops": {"lookup": rows_lookup, "lookup_grad": rows_grad or []}, "copy": {}}


def _row(V, D, times, **kw):
    return dict({"vocab_size": V, "dim": D, "n_ids": 16384, "dtype": "float32", "times": times},
                **kw)


def _use_local(tmp_path, monkeypatch, content):
    path = tmp_path / "local.json"
    if isinstance(content, (dict, list)):
        path.write_text(json.dumps(content))
    elif content is not None:
        path.write_text(content)
    monkeypatch.setenv("KERNELS_DECISION_TABLE", str(path))
    decisions.reload()
    return path


BAD_ROWS = {
    "vocab-zero": _row(0, 8, {"numba_gather": 1e-6}),
    "vocab-negative": _row(-5, 8, {"numba_gather": 1e-6}),
    "vocab-huge": _row(1e400, 8, {"numba_gather": 1e-6}),
    "vocab-string": _row("many", 8, {"numba_gather": 1e-6}),
    "dim-float": _row(100, 8.5, {"numba_gather": 1e-6}),
    "unknown-kernels-only": _row(100, 8, {"renamed_gather": 1e-9}),
    "times-negative": _row(100, 8, {"numba_gather": -1.0}),
    "format-unknown": _row(100, 8, {"numba_gather": 1e-6}, dtype="int3"),
    "not-an-object": [1, 2],
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_a_bad_row_is_skipped_with_one_warning_and_good_rows_still_decide(tmp_path, monkeypatch, case):
    good = _row(1000, 8, {"cython_gather": 2e-6, "numba_gather": 1e-6})
    _use_local(tmp_path, monkeypatch, _table([BAD_ROWS[case], good]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = [kernels.fastest(V, 8) for V in (10, 1000, 10**6)]
        kernels.fastest(5, 8)
    assert all(k is kernels.KERNELS["numba_gather"] for k in got)
    messages = [str(w.message) for w in caught if "skipped 1 of the 'lookup' rows" in str(w.message)]
    assert len(messages) == 1, [str(w.message) for w in caught]
    decisions.reload()


def _shipped_decides(tmp_path, monkeypatch, content, match):
    path = _use_local(tmp_path, monkeypatch, content)
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        k = kernels.fastest(100, 8)
    assert time.monotonic() - t0 < 30, "reading the table took far too long"
    assert any(re.search(match, str(w.message)) for w in caught), [str(w.message) for w in caught]
    assert "shipped table" in str(kernels.explain(100, 8))
    assert k is kernels.KERNELS[k.name]
    decisions.reload()
    return path


def test_a_table_that_is_a_list_or_has_only_bad_rows_falls_back_to_the_shipped_one(tmp_path, monkeypatch):
    _shipped_decides(tmp_path, monkeypatch, [1, 2, 3], "not a decision table")
    _shipped_decides(tmp_path, monkeypatch, _table([_row(0, 8, {"x": 1})]), "no usable rows")
    _shipped_decides(tmp_path, monkeypatch, "[" * 100_000 + "]" * 100_000, "nested too deeply")
    _shipped_decides(tmp_path, monkeypatch, "{not json", "Error parsing JSON")


def _warnings_reading(path, monkeypatch):
    monkeypatch.setenv("KERNELS_DECISION_TABLE", str(path))
    decisions.reload()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kernels.fastest(100, 8)
    decisions.reload()
    return [str(w.message) for w in caught]


def test_a_fifo_named_as_the_table_does_not_block(tmp_path, monkeypatch):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    assert any("not a regular file" in m for m in _warnings_reading(fifo, monkeypatch))


def test_a_table_linked_to_dev_zero_or_too_large_is_not_read(tmp_path, monkeypatch):
    link = tmp_path / "zero.json"
    link.symlink_to("/dev/zero")
    assert any("not a regular file" in m for m in _warnings_reading(link, monkeypatch))
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(decisions.MAX_TABLE_BYTES + 1)
    assert any("more than the" in m for m in _warnings_reading(big, monkeypatch))


def test_a_missing_table_named_by_the_environment_warns(tmp_path, monkeypatch):
    _shipped_decides(tmp_path, monkeypatch, None, "names .* which does not exist")


# --------------------------------------------------------------------------
# one definition of each shared fact


def _sources():
    for folder in ("kernels", "benchmarks", "tools"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path.read_text()


def _defining(pattern):
    return [name for name, text in _sources() if re.search(pattern, text, re.M)]


def test_each_byte_formula_budget_timing_loop_and_kernel_list_is_defined_once():
    assert _defining(r"^\s+def moved_bytes\(") == ["kernels/_ops.py"]
    assert sum(len(re.findall(r"^\s+def moved_bytes\(", t, re.M)) for _, t in _sources()) == 5
    assert _defining(r"^DENSE_MAX_MACS\s*=") == ["kernels/onehot_dense.py"]
    assert _defining(r"perf_counter\(\)|timeit\.") == ["kernels/_timing.py"]
    five = r"\[\s*\"onehot_dense\",\s*\"onehot_sparse\",\s*\"numpy_take\""
    assert _defining(five) == []
    assert _defining(r"^\s+register\(|^def register\(") == ["kernels/__init__.py",
                                                             "kernels/_registry.py"]


def test_import_kernels_and_running_every_operation_never_imports_torch():
    code = (
        "import sys, numpy as np, kernels\n"
        "W = np.ones((10, 4), np.float32)\n"
        "for k in kernels.KERNELS:\n"
        "    kernels.lookup(W, [1, 2], kernel=k)\n"
        "    kernels.lookup_bag(W, [[1, 2]], kernel=k)\n"
        "    kernels.lookup_bag_grad(np.ones((1, 4), np.float32), [[1, 2]], None, 10, kernel=k)\n"
        "kernels.lookup_bag(W, [[1, 2]], mode='max', kernel='auto')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'fbgemm_gpu')))\n"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

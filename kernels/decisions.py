"""Pick the fastest kernel for an operation at a size, from a decision table of measurements.

    kernels.fastest(100_000, 128)                   # -> the Kernel the registry holds
    kernels.fastest(100_000, 128, op="lookup_grad")
    kernels.explain(100_000, 128)                   # which measurement decided, and its source
    kernels.lookup(W, ids, kernel="auto")           # uses it, cached per size bucket

At run time the package reads one decision table and nothing else: the local table (written from
this machine's asv results by `python -m kernels --write-local`, which `make bench` runs; its
path is `local_table_path()`), else the table shipped with the package. Neither the working
directory nor asv results are looked at. A size between grid points takes the decision of the
nearest measured point in log(V), log(row bytes) (and log(n ids) where several were measured);
float64 rows count as twice the bytes of float32 rows, since what a gather moves is bytes.

A table that cannot be used (missing, unreadable, malformed rows, unknown kernels) never makes a
call fail: each problem is warned about once and the next source decides (local, shipped, then
the default kernel numpy_take).
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import numpy as np

from kernels._asv_results import ResultsError, is_time, read_json_file
from kernels._formats import FLOAT32, Format, format_named
from kernels._ops import LOOKUP, LOOKUP_GRAD, OPERATIONS, Operation, operation_named

SHIPPED_TABLE = os.path.join(os.path.dirname(__file__), "decision_table.json")
DEFAULT_N_IDS = 16_384
DEFAULT_KERNEL = "numpy_take"
TABLE_FORMAT = 2
MAX_TABLE_BYTES = 16 * 2**20
MAX_ROWS = 10_000
MAX_CACHED = 4096
"""Decisions kept per process; past this the cache starts again (its size stays bounded)."""
_MAX_SIZE = 2**63


class NoMeasurements(FileNotFoundError):
    """Neither a local nor a shipped decision table."""


def local_table_path() -> str:
    """Where this machine's decision table lives: $KERNELS_DECISION_TABLE, else
    $XDG_CACHE_HOME/embedding-kernels/decision_table.json (default ~/.cache/...)."""
    env = os.environ.get("KERNELS_DECISION_TABLE")
    if env:
        return env
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "embedding-kernels", "decision_table.json")


_warned: set = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(f"kernels.fastest: {message}", stacklevel=3)


def _size(x, name):
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"{name} is {x!r}, not a number")
    if not (is_time(x) and x < _MAX_SIZE and x == int(x)):
        raise ValueError(f"{name} is {x!r}, not a positive whole number below 2**63")
    return int(x)


def _clean_row(row, op: Operation):
    """A validated copy of one table row, keeping only registered kernels that implement the
    operation for the row's format; ValueError saying why a row cannot be used."""
    from kernels._registry import KERNELS

    if not isinstance(row, dict):
        raise ValueError(f"a row is a {type(row).__name__}, not an object")
    fmt = format_named(row.get("dtype", "float32"))
    times = row.get("times")
    if not isinstance(times, dict):
        raise ValueError("a row has no 'times' object")
    kept = {k: float(t) for k, t in times.items()
            if k in KERNELS and KERNELS[k].implements(op, fmt) and is_time(t)}
    if not kept:
        names = ", ".join(sorted(map(str, times))) or "none"
        raise ValueError(f"no registered kernel with a measured time in a row (kernels: {names})")
    return {"vocab_size": _size(row.get("vocab_size"), "vocab_size"),
            "dim": _size(row.get("dim"), "dim"),
            "n_ids": _size(row.get("n_ids", DEFAULT_N_IDS), "n_ids"),
            "dtype": fmt.name, "times": kept}


def validate_table(table, source: str) -> dict:
    """The usable part of a decision table: rows checked, unknown kernels dropped, each problem
    warned about once. ValueError if nothing usable is left."""
    if not isinstance(table, dict):
        raise ValueError(f"{source}: a JSON {type(table).__name__}, not a decision table")
    ops = table.get("ops")
    if not isinstance(ops, dict):
        raise ValueError(f"{source}: no 'ops' mapping (not a decision table of format "
                         f"{TABLE_FORMAT})")
    clean = {}
    for name, op in OPERATIONS.items():
        rows = ops.get(name) or []
        if not isinstance(rows, list):
            _warn_once(f"{source}: '{name}' is not a list of rows; ignored")
            continue
        good, problems = [], []
        for row in rows[:MAX_ROWS]:
            try:
                good.append(_clean_row(row, op))
            except ValueError as e:
                problems.append(str(e))
        if len(rows) > MAX_ROWS:
            problems.append(f"{len(rows) - MAX_ROWS} rows beyond the first {MAX_ROWS}")
        if problems:
            _warn_once(f"{source}: skipped {len(problems)} of the '{name}' rows "
                       f"(first: {problems[0]})")
        if good:
            clean[name] = good
    if not clean:
        raise ValueError(f"{source}: no usable rows")
    copy = table.get("copy") if isinstance(table.get("copy"), dict) else {}
    return {
        "source": table.get("source") if isinstance(table.get("source"), str) else source,
        "machine": str(table.get("machine", "?")),
        "commit": str(table.get("commit", "?")),
        "date": str(table.get("date", "?")),
        "ops": clean,
        "copy": {str(k): float(v) for k, v in copy.items() if is_time(v)},
    }


def read_table(path: str) -> dict:
    """A decision table file, validated (see validate_table); ValueError/ResultsError if not
    usable, NoMeasurements if there is no file."""
    if not os.path.lexists(path):
        raise NoMeasurements(f"no decision table {path}")
    data = read_json_file(path, "decision table", MAX_TABLE_BYTES)
    return validate_table(data, path)


def load_table() -> dict:
    """The decision table in use: the local one, else the shipped one, else none (every
    decision is then the default kernel). Its "source" says which file it came from."""
    tried = []
    for path, kind in ((local_table_path(), "local table"), (SHIPPED_TABLE, "shipped table")):
        try:
            table = read_table(path)
        except NoMeasurements:
            if kind == "local table" and os.environ.get("KERNELS_DECISION_TABLE"):
                _warn_once(f"KERNELS_DECISION_TABLE names {path}, which does not exist; "
                           f"using the shipped table")
            tried.append(f"no {kind} {path}")
            continue
        except (ResultsError, ValueError) as e:
            _warn_once(f"cannot use the {kind} ({e}); falling back")
            tried.append(f"{kind} {path} unusable")
            continue
        table["source"] = (f"{kind} {path} (measured on {table['machine']}, {table['date']}, "
                           f"from {table['source']})")
        return table
    _warn_once(f"no usable decision table ({'; '.join(tried)}); every decision is "
               f"{DEFAULT_KERNEL}")
    return {"source": f"none ({'; '.join(tried)}): the default kernel {DEFAULT_KERNEL}",
            "machine": "?", "commit": "?", "date": "?", "ops": {}, "copy": {}}


@dataclass(frozen=True)
class Decision:
    """Which kernel "auto" runs for an operation at a size, and the measurement behind it."""

    kernel: object  # the registry's Kernel
    op: str
    point: dict | None  # the measured row that decided (None: no table)
    source: str

    def __str__(self) -> str:
        if self.point is None:
            return f"{self.kernel.name}: {self.op}, no measurement ({self.source})"
        p = self.point
        return (f"{self.kernel.name}: fastest {self.op} at the nearest measured point "
                f"V={p['vocab_size']}, D={p['dim']}, n={p['n_ids']}, {p['dtype']}; "
                f"source: {self.source}")


_TABLE: list = []  # [table] once loaded


def _table() -> dict:
    if not _TABLE:
        _TABLE.append(load_table())
    return _TABLE[0]


def _nearest(rows, vocab_size, dim, n_ids, fmt: Format):
    several_n = len({r["n_ids"] for r in rows}) > 1
    row_bytes = fmt.row_bytes(max(1, dim))

    def distance(row):
        d = math.log(max(1, vocab_size) / row["vocab_size"]) ** 2
        d += math.log(row_bytes / format_named(row["dtype"]).row_bytes(row["dim"])) ** 2
        if several_n:
            d += math.log(max(1, n_ids) / row["n_ids"]) ** 2
        return d

    return min(rows, key=distance)


def decide(table, vocab_size, dim, n_ids=DEFAULT_N_IDS, fmt=FLOAT32, op=LOOKUP) -> Decision:
    """The Decision of a table for this size: the nearest measured point's fastest kernel that
    implements (op, format); the operation's own rows, else the lookup's."""
    from kernels._registry import KERNELS

    op, fmt = operation_named(op), format_named(fmt)
    for rows in (table["ops"].get(op.name), table["ops"].get(LOOKUP.name)):
        candidates = [r for r in rows or ()
                      if any(KERNELS[k].implements(op, fmt) for k in r["times"] if k in KERNELS)]
        if candidates:
            row = _nearest(candidates, vocab_size, dim, n_ids, fmt)
            times = {k: t for k, t in row["times"].items()
                     if k in KERNELS and KERNELS[k].implements(op, fmt)}
            return Decision(KERNELS[min(times, key=times.get)], op.name, row, table["source"])
    return Decision(KERNELS[DEFAULT_KERNEL], op.name, None, table["source"])


def _int_size(x, name):
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {x!r}")
    try:
        v = int(x)
    except (TypeError, ValueError, OverflowError):
        raise TypeError(f"{name} must be an integer, got {x!r}") from None
    if v != x or v < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {x!r}")
    return v


_CACHE: dict = {}


def _cached(op_name, vocab_size, dim, n_bucket, fmt_name) -> Decision:
    key = (op_name, vocab_size, dim, n_bucket, fmt_name)
    d = _CACHE.get(key)
    if d is None:
        if len(_CACHE) >= MAX_CACHED:
            _CACHE.clear()
        d = _CACHE[key] = decide(_table(), vocab_size, dim, 2**n_bucket, fmt_name, op_name)
    return d


def _resolve(vocab_size, dim, n_ids, dtype, op, backward):
    if backward is not None:
        warnings.warn("fastest(..., backward=True) is deprecated: use op='lookup_grad'",
                      DeprecationWarning, stacklevel=3)
        if backward:
            op = LOOKUP_GRAD
    op, fmt = operation_named(op), format_named(dtype)
    n = _int_size(n_ids, "n_ids")
    return (op.name, _int_size(vocab_size, "vocab_size"), _int_size(dim, "dim"),
            n.bit_length(), fmt.name)


def explain(vocab_size: int, dim: int, n_ids: int = DEFAULT_N_IDS, dtype=np.float32, *,
            op="lookup", backward: bool | None = None) -> Decision:
    """The Decision behind fastest(...) with the same arguments: the kernel, the measured point
    that chose it and the table it came from."""
    return _cached(*_resolve(vocab_size, dim, n_ids, dtype, op, backward))


def fastest(vocab_size: int, dim: int, n_ids: int = DEFAULT_N_IDS, dtype=np.float32, *,
            op="lookup", backward: bool | None = None):
    """The Kernel (the registry's own object) measured fastest for `op` at these sizes on this
    machine. `dtype` names the table format (float32, float64). `backward=True` is a deprecated
    alias of op="lookup_grad". kernels.explain says which measurement decided."""
    return explain(vocab_size, dim, n_ids, dtype, op=op, backward=backward).kernel


def for_call(op: Operation, vocab_size: int, dim: int, n_ids: int, fmt: Format, *,
             bag_length=None, mode=None):
    """fastest() for a call about to run, its sizes already checked: one dict look-up."""
    d = _CACHE.get((op.name, vocab_size, dim, n_ids.bit_length(), fmt.name))
    if d is None:
        d = _cached(op.name, vocab_size, dim, n_ids.bit_length(), fmt.name)
    if mode is not None and mode not in d.kernel.bag_modes:
        from kernels._registry import KERNELS

        return KERNELS[DEFAULT_KERNEL]  # TODO(bags): decide among the kernels that have the mode
    return d.kernel


def reload() -> None:
    """Forget the loaded table and every cached decision (after writing a new table)."""
    _TABLE.clear()
    _CACHE.clear()
    _warned.clear()

"""Pick the fastest kernel for an operation at a size, from a decision table of measurements.

    kernels.fastest(100_000, 128)                   # -> the Kernel the registry holds
    kernels.fastest(100_000, 128, op="lookup_grad")
    kernels.fastest(100_000, 64, 65_536, op="lookup_bag", bag_length=8, mode="max")
    kernels.explain(100_000, 128)                   # which measurement decided, and its source
    kernels.lookup(W, ids, kernel="auto")           # uses it, cached per size bucket

At run time the package reads one decision table and nothing else: the local table (written from
this machine's asv results by `python -m kernels --write-local`, which `make bench` runs; its
path is `local_table_path()`), else the table shipped with the package. Neither the working
directory nor asv results are looked at. A size between grid points takes the decision of the
nearest measured point in log(V), log(row bytes) (and log(n ids) where several were measured);
float64 rows count as twice the bytes of float32 rows, since what a gather moves is bytes.

Bags (the operations with `extra_param = "bag_length"`) have rows per (V, D, bag length); where
they hold several bag lengths, log(bag length) counts in the distance too. A bag decision only
chooses among kernels that implement the operation for the format AND have the call's mode (the
`bag_modes` trait: mode="max" never picks a one-hot kernel), from the operation's own rows, else
the rows of the operation it falls back to (FALLBACK_OPS: a table without bag rows still decides
bags from its lookup rows), else numpy_take. Decisions are cached per power-of-two bucket of
n ids and of bag length (a bag length in [2**k, 2**(k+1)) decides as 2**k), and per mode.

A table that cannot be used (missing, unreadable, malformed rows, unknown kernels) never makes a
call fail: each problem is warned about once and the next source decides (local, shipped, then
the default kernel numpy_take).
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, replace

import numpy as np

from kernels._asv_results import ResultsError, is_time, read_json_file
from kernels._formats import FLOAT32, Format, format_named
from kernels._ops import LOOKUP, LOOKUP_BAG, LOOKUP_BAG_GRAD, LOOKUP_GRAD, OPERATIONS, \
    Operation, operation_named
from kernels._validate import BAG_MODES, check_mode

SHIPPED_TABLE = os.path.join(os.path.dirname(__file__), "decision_table.json")
DEFAULT_N_IDS = 16_384
DEFAULT_KERNEL = "numpy_take"
DEFAULT_BAG_LENGTH = 1
"""A bag row without "bag_length", and fastest(op="lookup_bag") without bag_length=."""
DEFAULT_MODE = "sum"
"""fastest(op="lookup_bag") without mode= (lookup_bag's own default, the benchmark's mode)."""
FALLBACK_OPS = {
    LOOKUP_GRAD.name: (LOOKUP.name,),
    LOOKUP_BAG.name: (LOOKUP.name,),
    LOOKUP_BAG_GRAD.name: (LOOKUP_GRAD.name, LOOKUP.name),
}
"""Whose rows decide, in order, when an operation's own rows hold no usable kernel."""
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
    clean = {"vocab_size": _size(row.get("vocab_size"), "vocab_size"),
             "dim": _size(row.get("dim"), "dim"),
             "n_ids": _size(row.get("n_ids", DEFAULT_N_IDS), "n_ids"),
             "dtype": fmt.name, "times": kept}
    extra = op.extra_param
    if extra is not None:
        clean[extra] = _size(row.get(extra, DEFAULT_BAG_LENGTH), extra)
    return clean


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
    mode: str | None = None  # bags: the mode the kernel had to have
    bag_lengths: tuple | None = None  # bags: (lo, hi), the bag lengths this decision is for
    rows_op: str | None = None  # whose rows decided (op, or the one it fell back to)

    def __str__(self) -> str:
        what = self.op
        if self.mode is not None:
            lo, hi = self.bag_lengths or (None, None)
            length = f"bag length {lo}" if lo == hi else f"bag lengths {lo}-{hi}"
            what = f"{self.op} (mode {self.mode!r}, {length})"
        if self.point is None:
            return f"{self.kernel.name}: {what}, no measurement ({self.source})"
        p = self.point
        bag = f", bag length {p['bag_length']}" if "bag_length" in p else ""
        if self.rows_op in (None, self.op):
            where = "the nearest measured point"
        else:
            mode = f" with mode {self.mode!r}" if self.mode is not None else ""
            where = (f"the nearest {self.rows_op} measurement (no {self.op} measurement of a "
                     f"kernel{mode})")
        return (f"{self.kernel.name}: fastest {what} at {where} V={p['vocab_size']}, "
                f"D={p['dim']}{bag}, n={p['n_ids']}, {p['dtype']}; source: {self.source}")


_TABLE: list = []  # [table] once loaded


def _table() -> dict:
    if not _TABLE:
        _TABLE.append(load_table())
    return _TABLE[0]


def _nearest(rows, vocab_size, dim, n_ids, fmt: Format, bag_length=None):
    several_n = len({r["n_ids"] for r in rows}) > 1
    several_b = bag_length is not None and len({r.get("bag_length") for r in rows}) > 1
    row_bytes = fmt.row_bytes(max(1, dim))

    def distance(row):
        d = math.log(max(1, vocab_size) / row["vocab_size"]) ** 2
        d += math.log(row_bytes / format_named(row["dtype"]).row_bytes(row["dim"])) ** 2
        if row["dtype"] != fmt.name:
            d += 1.0  # another format's row counts as e times farther in size
        if several_n:
            d += math.log(max(1, n_ids) / row["n_ids"]) ** 2
        if several_b:
            d += math.log(max(1, bag_length) / row.get("bag_length", DEFAULT_BAG_LENGTH)) ** 2
        return d

    return min(rows, key=distance)


def decide(table, vocab_size, dim, n_ids=DEFAULT_N_IDS, fmt=FLOAT32, op=LOOKUP, *,
           bag_length=None, mode=None) -> Decision:
    """The Decision of a table for this size: the nearest measured point's fastest kernel that
    implements (op, format) -- and, for a bag, has `mode` (default "sum") -- from the
    operation's own rows, else those of FALLBACK_OPS, else the default kernel."""
    from kernels._registry import KERNELS

    op, fmt = operation_named(op), format_named(fmt)
    bag = op.extra_param is not None
    if bag:
        mode = DEFAULT_MODE if mode is None else mode
        bag_length = DEFAULT_BAG_LENGTH if bag_length is None else bag_length
        extra = {"mode": mode, "bag_lengths": (bag_length, bag_length)}
    else:
        mode = bag_length = None
        extra = {}

    def usable(name):
        k = KERNELS.get(name)
        return k is not None and k.implements(op, fmt) and (mode is None or mode in k.bag_modes)

    for rows_op in (op.name, *FALLBACK_OPS.get(op.name, ())):
        candidates = [r for r in table["ops"].get(rows_op) or () if any(map(usable, r["times"]))]
        if candidates:
            row = _nearest(candidates, vocab_size, dim, n_ids, fmt, bag_length)
            times = {k: t for k, t in row["times"].items() if usable(k)}
            return Decision(KERNELS[min(times, key=times.get)], op.name, row, table["source"],
                            rows_op=rows_op, **extra)
    return Decision(KERNELS[DEFAULT_KERNEL], op.name, None, table["source"], **extra)


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


def _bucket_range(bucket: int) -> tuple:
    """The bag lengths of one cache bucket (their bit_length): (lo, hi), both included."""
    return (0, 0) if bucket == 0 else (2 ** (bucket - 1), 2**bucket - 1)


def _cached(key) -> Decision:
    """The Decision of a cache key: (op, V, D, n bucket, format) for the lookups, plus
    (bag-length bucket, mode) for bags."""
    d = _CACHE.get(key)
    if d is None:
        if len(_CACHE) >= MAX_CACHED:
            _CACHE.clear()
        op_name, vocab_size, dim, n_bucket, fmt_name, *bag = key
        if bag:
            lo, hi = _bucket_range(bag[0])
            d = decide(_table(), vocab_size, dim, 2**n_bucket, fmt_name, op_name,
                       bag_length=lo, mode=bag[1])
            d = replace(d, bag_lengths=(lo, hi))
        else:
            d = decide(_table(), vocab_size, dim, 2**n_bucket, fmt_name, op_name)
        _CACHE[key] = d
    return d


def _resolve(vocab_size, dim, n_ids, dtype, op, backward, bag_length, mode):
    if backward is not None:
        warnings.warn("fastest(..., backward=True) is deprecated: use op='lookup_grad'",
                      DeprecationWarning, stacklevel=3)
        if backward:
            op = LOOKUP_GRAD
    op, fmt = operation_named(op), format_named(dtype)
    n = _int_size(n_ids, "n_ids")
    key = (op.name, _int_size(vocab_size, "vocab_size"), _int_size(dim, "dim"),
           n.bit_length(), fmt.name)
    if op.extra_param is None:
        if bag_length is not None or mode is not None:
            given = [f"{k}=" for k, v in (("bag_length", bag_length), ("mode", mode))
                     if v is not None]
            bags = ", ".join(o.name for o in OPERATIONS.values() if o.extra_param is not None)
            raise TypeError(f"{' and '.join(given)} {'are' if len(given) > 1 else 'is'} for the "
                            f"bag operations ({bags}), not op={op.name!r}")
        return key
    b = DEFAULT_BAG_LENGTH if bag_length is None else _int_size(bag_length, "bag_length")
    return key + (b.bit_length(), check_mode(DEFAULT_MODE if mode is None else mode))


def explain(vocab_size: int, dim: int, n_ids: int = DEFAULT_N_IDS, dtype=np.float32, *,
            op="lookup", backward: bool | None = None, bag_length: int | None = None,
            mode: str | None = None) -> Decision:
    """The Decision behind fastest(...) with the same arguments: the kernel, the measured point
    that chose it and the table it came from."""
    return _cached(_resolve(vocab_size, dim, n_ids, dtype, op, backward, bag_length, mode))


def fastest(vocab_size: int, dim: int, n_ids: int = DEFAULT_N_IDS, dtype=np.float32, *,
            op="lookup", backward: bool | None = None, bag_length: int | None = None,
            mode: str | None = None):
    """The Kernel (the registry's own object) measured fastest for `op` at these sizes on this
    machine. `dtype` names the table format (float32, float64). `backward=True` is a deprecated
    alias of op="lookup_grad". For the bag operations, `bag_length` (ids per bag, default 1)
    and `mode` (default "sum"; only kernels that have it are chosen); for the others they are
    a TypeError. kernels.explain says which measurement decided."""
    return explain(vocab_size, dim, n_ids, dtype, op=op, backward=backward,
                   bag_length=bag_length, mode=mode).kernel


def for_call(op: Operation, vocab_size: int, dim: int, n_ids: int, fmt: Format, *,
             bag_length=None, mode=None):
    """fastest() for a call about to run, its sizes already checked: one dict look-up. A bag
    call passes its mode and bag length (n_ids // bags); a mode lookup_bag does not know gets
    the default kernel, whose own checks then name the problem."""
    if mode is None:
        key = (op.name, vocab_size, dim, n_ids.bit_length(), fmt.name)
    elif isinstance(mode, str) and mode in BAG_MODES:
        key = (op.name, vocab_size, dim, n_ids.bit_length(), fmt.name, bag_length.bit_length(),
               mode)
    else:
        from kernels._registry import KERNELS

        return KERNELS[DEFAULT_KERNEL]
    d = _CACHE.get(key)
    if d is None:
        d = _cached(key)
    return d.kernel


def reload() -> None:
    """Forget the loaded table and every cached decision (after writing a new table)."""
    _TABLE.clear()
    _CACHE.clear()
    _warned.clear()

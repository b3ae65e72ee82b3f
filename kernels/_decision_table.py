"""Writing and printing decision tables: `python -m kernels`.

    python -m kernels                    # the winners at each measured size, from this
                                         # machine's asv results (else the table in use)
    python -m kernels --write-local      # this machine's table, from its asv results (make bench)
    python -m kernels --write-table      # the table shipped with the package, from them

The asv results are read with kernels._asv_results (the same reader as the crossover page):
the config is --config, else $KERNELS_ASV_CONFIG, else ./asv.conf.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import warnings

from kernels import _asv_results as results
from kernels import decisions as F
from kernels._formats import FLOAT32
from kernels._ops import LOOKUP, LOOKUP_BAG, LOOKUP_BAG_GRAD, OPERATIONS

COPY_BENCHMARK = "bench_lookup.Roofline.time_copy"
"""The plain copy of an output's size: the bandwidth ceiling the table's % copy compares with."""

BENCHMARK_N_IDS = {op.name: op.benchmark_n_ids for op in (LOOKUP_BAG, LOOKUP_BAG_GRAD)}
"""n ids of each operation's benchmark where it is not decisions.DEFAULT_N_IDS."""


def _point_order(item):
    point, _ = item
    numeric = all(isinstance(x, (int, float)) for x in point)
    return (0, *point, "") if numeric else (1, *(0 for _ in point), repr(point))


def benchmark_params(op) -> list:
    """The parameters of an operation's benchmark, in the contract's order: kernel, vocab_size,
    dim, then the operation's extra_param (bag_length for bags) if it has one."""
    extra = op.extra_param
    return ["kernel", "vocab_size", "dim"] + ([extra] if extra else [])


def _op_points(run: results.Run, op) -> dict:
    """{(V, D[, extra]): {kernel: seconds}} of an operation's benchmark: its parameters by name
    where asv's benchmarks.json names them, else by position (kernel, vocab_size, dim[, extra]).
    A benchmark with other parameters is not read."""
    r = run.records(op.benchmark)
    if r is None:
        return {}
    names, recs = r
    axes = benchmark_params(op)
    if set(names) == set(axes):
        rename = {n: n for n in names}
    elif names == [f"param{i}" for i in range(len(axes))]:
        rename = dict(zip(names, axes))  # no benchmarks.json: the contract's order
    else:
        return {}
    grid = {}
    for params, t in recs:
        if t is not None:
            values = {rename[k]: v for k, v in params.items()}
            point = tuple(values[a] for a in axes[1:])
            grid.setdefault(point, {})[str(values["kernel"])] = t
    return grid


def _format_rows(run: results.Run, op) -> list:
    """Decision rows of the low-precision formats from the operation's format_benchmark
    (parameters format, kernel, vocab_size, dim); float32 points are left to the operation's own
    benchmark."""
    r = run.records(op.format_benchmark) if op.format_benchmark else None
    if r is None:
        return []
    names, recs = r
    axes = ["format", "kernel", "vocab_size", "dim"]
    if names != axes and names != [f"param{i}" for i in range(len(axes))]:
        return []
    grid = {}
    for params, t in recs:
        values = dict(zip(axes, params.values()))
        if t is not None and values["format"] != FLOAT32.name:
            key = (str(values["format"]), values["vocab_size"], values["dim"])
            grid.setdefault(key, {})[str(values["kernel"])] = t
    rows = []
    for (fmt, V, D), times in sorted(grid.items(), key=lambda kv: (kv[0][0], *kv[0][1:])):
        row = {"vocab_size": V, "dim": D, "n_ids": op.format_benchmark_n_ids, "dtype": fmt,
               "times": times}
        if op.extra_param:
            row[op.extra_param] = op.format_bag_length
        rows.append(row)
    return rows


def build_table(run: results.Run) -> dict:
    """A decision table from one asv results file: for every operation, the times of its
    benchmark (parameters kernel, vocab_size, dim, and the operation's extra_param -- bag_length
    for bags) at each measured point."""
    ops = {}
    for name, op in OPERATIONS.items():
        grid = _op_points(run, op)
        extra = op.extra_param
        n = BENCHMARK_N_IDS.get(name, F.DEFAULT_N_IDS)
        rows = []
        for point, times in sorted(grid.items(), key=_point_order):
            row = {"vocab_size": point[0], "dim": point[1], "n_ids": n, "dtype": FLOAT32.name,
                   "times": times}
            if extra:
                row[extra] = point[2]
            rows.append(row)
        rows += _format_rows(run, op)
        if rows:
            ops[name] = rows
    copy = {str(c[0]): t for c, t in run.points(COPY_BENCHMARK).items() if len(c) == 1}
    date = (datetime.datetime.fromtimestamp(run.date / 1000, datetime.timezone.utc)
            .strftime("%Y-%m-%d") if run.date else "?")
    return {"format": F.TABLE_FORMAT, "source": run.path, "machine": run.machine,
            "commit": run.commit, "date": date, "ops": ops, "copy": copy}


def table_from_results(config_path: str | None = None, machine: str | None = None) -> dict:
    """The validated decision table of the newest usable asv results (NoResults if none);
    every results file skipped is warned about, by name."""
    config_path = config_path or default_config()
    if not config_path:
        raise results.NoResults("no asv.conf.json here and KERNELS_ASV_CONFIG is not set")
    conf = results.read_config(config_path)
    try:
        run = results.latest_run(conf["results_dir"], machine)
    except results.NoResults as e:
        warnings.warn(f"python -m kernels: {e}", stacklevel=2)
        raise
    for note in run.notes:
        warnings.warn(f"python -m kernels: {note}", stacklevel=2)
    table = build_table(run)
    if not table["ops"].get(LOOKUP.name):
        message = f"results file {run.path}: no usable {LOOKUP.benchmark} results"
        warnings.warn(f"python -m kernels: {message}", stacklevel=2)
        raise results.NoResults(message)
    F.validate_table(table, run.path)  # refuses a results file with nothing usable
    return table


def default_config() -> str | None:
    """$KERNELS_ASV_CONFIG, else asv.conf.json in the working directory (the command line only:
    at run time the package never reads asv results)."""
    env = os.environ.get("KERNELS_ASV_CONFIG")
    if env:
        return env
    return "asv.conf.json" if os.path.isfile("asv.conf.json") else None


def write_table(table: dict, path: str, source: str) -> None:
    """Write a table as JSON (atomically: a reader never sees half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(dict(table, source=source), f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def winners(table: dict, op_name: str, fmt: str = FLOAT32.name) -> dict:
    """{(V, D): fastest kernel} of one operation's rows of one table format (float32 by
    default: the crossover page's); {(V, D, bag_length): ...} for bags."""
    extra = OPERATIONS[op_name].extra_param
    return {(r["vocab_size"], r["dim"]) + ((r.get(extra, F.DEFAULT_BAG_LENGTH),) if extra else ()):
            min(r["times"], key=r["times"].get)
            for r in table["ops"].get(op_name, []) if r.get("dtype", FLOAT32.name) == fmt}


def format_table(table: dict) -> str:
    """Text: V x D (x bag length) -> fastest kernel, its time, GB/s (and % of copy), runner-up,
    a section per operation."""
    lines = [f"source: {table['source']}",
             f"machine: {table['machine']}, commit {table['commit']}, {table['date']}"]
    for name, op in OPERATIONS.items():
        all_rows = table["ops"].get(name) or []
        for dtype in dict.fromkeys(r.get("dtype", FLOAT32.name) for r in all_rows):
            rows = [r for r in all_rows if r.get("dtype", FLOAT32.name) == dtype]
            lines += _format_section(name, op, rows, table)
    return "\n".join(lines)


def _format_section(name, op, rows, table) -> list:
    """The lines of one operation's rows of one table format."""
    lines = []
    extra = op.extra_param
    if extra:
        rows = sorted(rows, key=lambda r: (r.get(extra, F.DEFAULT_BAG_LENGTH),
                                           r["vocab_size"], r["dim"]))
    lines.append(f"\n{name} (n = {rows[0]['n_ids']:,} ids, {rows[0]['dtype']}; "
                 "% copy = Roofline.time_copy / time, runner-up = its time / the fastest's):")
    lines.append(f"{'vocab_size':>10} {'dim':>5} " + (f"{extra:>10} " if extra else "")
                 + f" {'fastest':<14} {'time':>10} {'GB/s':>7} {'% copy':>7}  runner-up")
    for row in rows:
        times = row["times"]
        best = min(times, key=times.get)
        t = times[best]
        V, D, n = row["vocab_size"], row["dim"], row["n_ids"]
        itemsize = FLOAT32.storage_dtype.itemsize
        fmt = {} if row["dtype"] == FLOAT32.name else {"fmt": row["dtype"]}
        if extra:
            b = row.get(extra, F.DEFAULT_BAG_LENGTH)
            nbytes = op.moved_bytes(n, V, D, itemsize, **{extra: b}, **fmt)
        else:
            nbytes = op.moved_bytes(n, V, D, itemsize, **fmt)
        copy = table.get("copy", {}).get(str(D))
        pct = f"{copy / t * 100:6.0f}%" if copy and name == "lookup" else "    n/a"
        others = sorted((s, k) for k, s in times.items() if k != best)
        runner = f"{others[0][1]} x{others[0][0] / t:.2f}" if others else "-"
        lines.append(f"{V:>10} {D:>5} " + (f"{b:>10} " if extra else "")
                     + f" {best:<14} {t * 1e6:>8.1f}us "
                     f"{nbytes / t / 1e9:>7.1f} {pct}  {runner}")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m kernels",
                                description="Which kernel is fastest at each measured size.")
    p.add_argument("--config", help="asv.conf.json whose results to read "
                                     "(default: $KERNELS_ASV_CONFIG, else ./asv.conf.json)")
    p.add_argument("--machine", help="asv machine name (default: asv's own name for this one)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write-local", action="store_true",
                   help="write this machine's table (what kernel='auto' reads first)")
    g.add_argument("--write-table", action="store_true",
                   help=f"write the table shipped with the package ({F.SHIPPED_TABLE})")
    a = p.parse_args(argv)
    try:
        table = table_from_results(a.config, a.machine)
    except (results.ResultsError, ValueError) as e:
        if a.write_local or a.write_table:
            p.error(f"no asv results found to write the table from; run `make bench` first ({e})")
        print(f"python -m kernels: {e}; showing the table in use", file=sys.stderr)
        print(format_table(F.load_table()))
        return
    if a.write_local or a.write_table:
        path = F.local_table_path() if a.write_local else F.SHIPPED_TABLE
        source = ("asv results file " + (table["source"] if a.write_local
                                         else os.path.basename(table["source"])))
        write_table(table, path, source)
        F.reload()
        print(f"wrote {path}")
    print(format_table(table))

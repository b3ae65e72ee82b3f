"""Pick the fastest kernel for a size from measurements: this machine's asv results, else a
decision table shipped with the package.

    kernels.fastest(100_000, 128)                # -> the Kernel the registry holds
    kernels.lookup(W, ids, kernel="auto")        # uses it, cached per size bucket
    python -m kernels                            # prints the table and where it came from
    python -m kernels --write-table              # regenerates the shipped table from asv results

The measurements are the asv suite's `Lookup.time_lookup` (forward) and
`LookupGrad.time_lookup_grad` (backward) on the vocab_size x dim grid, plus `Roofline.time_copy`
for the bandwidth ceiling. A size between grid points takes the decision of the nearest measured
point in log(V), log(row bytes) (and log(n ids) when several were measured); float64 rows count
as twice the bytes of float32 rows, since what a gather moves is bytes per row.
"""
import argparse
import functools
import glob
import json
import math
import os
import platform
import warnings

import numpy as np

FORWARD = "bench_lookup.Lookup.time_lookup"
BACKWARD = "bench_grad.LookupGrad.time_lookup_grad"
COPY = "bench_lookup.Roofline.time_copy"
SHIPPED_TABLE = os.path.join(os.path.dirname(__file__), "decision_table.json")
DEFAULT_N_IDS = 16_384


class NoMeasurements(FileNotFoundError):
    """Neither asv results nor a shipped decision table."""


class ResultsError(ValueError):
    """An asv results file that cannot be read as this suite's results."""


def _default_config():
    """asv.conf.json of the checkout this package runs from, or in the working directory."""
    env = os.environ.get("KERNELS_ASV_CONFIG")
    if env:
        return env
    for base in (os.getcwd(), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))):
        path = os.path.join(base, "asv.conf.json")
        if os.path.exists(path):
            return path
    return None


def _strip_comments(text):
    """JSON text without // comments (whole-line or trailing; not inside strings)."""
    out = []
    for line in text.splitlines():
        in_str = esc = False
        for i, ch in enumerate(line):
            if in_str:
                esc = (ch == "\\") and not esc
                if ch == '"' and not esc:
                    in_str = False
            elif ch == '"':
                in_str = True
            elif line.startswith("//", i):
                line = line[:i]
                break
        out.append(line)
    return "\n".join(out)


def results_dir_of(config_path):
    """The results_dir that an asv.conf.json names (asv's default "results" if it names none)."""
    with open(config_path) as f:
        text = f.read()
    conf = json.loads(_strip_comments(text))
    return os.path.join(os.path.dirname(os.path.abspath(config_path)), conf.get("results_dir", "results"))


def _is_time(value):
    """Whether an asv result value is a measured time (not null, NaN or a failure)."""
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _parse_values(values):
    out = []
    for v in values:
        try:
            out.append(json.loads(v.replace("'", '"')))
        except (ValueError, AttributeError):
            out.append(v)
    return out


def _benchmark_points(data, name):
    """{param tuple: seconds} for one benchmark of one asv results dict (n/a points left out)."""
    columns = data["result_columns"]
    row = data["results"].get(name)
    if row is None:
        return {}
    result = row[columns.index("result")]
    params = row[columns.index("params")]
    if result is None:
        return {}
    combos = [()]
    for values in params:
        combos = [c + (v,) for c in combos for v in _parse_values(values)]
    if len(combos) != len(result):
        raise ResultsError(f"{name}: {len(result)} results for {len(combos)} parameter sets")
    points = {}
    for combo, value in zip(combos, result):
        if _is_time(value):
            points[combo] = float(value)
    return points


def table_from_results(data, source):
    """A decision table (the shipped format) from one asv results dict."""
    try:
        forward = _benchmark_points(data, FORWARD)
        backward = _benchmark_points(data, BACKWARD)
        copy = _benchmark_points(data, COPY)
        machine = data["params"].get("machine", "?")
        date = data.get("date")
        commit = data.get("commit_hash", "?")
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as e:
        raise ResultsError(f"{source}: not an asv results file of this suite ({e!r})") from None
    if not forward:
        raise ResultsError(f"{source}: no {FORWARD} results")

    def rows(points):
        grid = {}
        for (kernel, V, D), t in points.items():
            grid.setdefault((V, D), {})[kernel] = t
        return [
            {"vocab_size": V, "dim": D, "n_ids": DEFAULT_N_IDS, "dtype": "float32", "times": times}
            for (V, D), times in sorted(grid.items())
        ]

    return {
        "source": source,
        "machine": machine,
        "commit": commit,
        "date": _iso(date),
        "forward": rows(forward),
        "backward": rows(backward),
        "copy": {str(D): t for (D,), t in sorted(copy.items())},
    }


def _iso(ms):
    if not isinstance(ms, (int, float)):
        return "?"
    import datetime

    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d")


def _has_forward_results(data):
    """Whether an asv results dict holds at least one Lookup measurement (a failed build holds none)."""
    row = data["results"].get(FORWARD)
    if row is None:
        return False
    if not isinstance(row, list):
        raise ValueError(f"{FORWARD}: a {type(row).__name__}, not an asv result row")
    result = row[data["result_columns"].index("result")]
    return isinstance(result, list) and any(_is_time(v) for v in result)


def latest_results_file(results_dir, machine=None):
    """This machine's results file of the newest commit that holds Lookup results, or None."""
    machine = machine or platform.node()
    files = glob.glob(os.path.join(results_dir, machine, "*.json"))
    best = None
    for path in files:
        if os.path.basename(path) == "machine.json":
            continue
        try:
            with open(path) as f:
                data = json.load(f)
            if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
                raise ValueError("not an asv results file (no 'results' mapping)")
            date = data.get("date") or 0
            if not isinstance(date, (int, float)):
                raise ValueError(f"'date' is {date!r}, not a timestamp")
            has = _has_forward_results(data)
        except (OSError, ValueError, AttributeError, KeyError, TypeError, IndexError) as e:
            warnings.warn(f"kernels.fastest: skipping unreadable asv results file {path}: {e}")
            continue
        if has and (best is None or date > best[0]):
            best = (date, path, data)
    return None if best is None else (best[1], best[2])


def load_table(config_path=None, machine=None):
    """The decision table: from this machine's latest asv results, else the shipped one."""
    config_path = config_path or _default_config()
    if config_path and os.path.exists(config_path):
        try:
            found = latest_results_file(results_dir_of(config_path), machine)
            if found:
                return table_from_results(found[1], found[0])
        except (OSError, ValueError) as e:
            warnings.warn(
                f"kernels.fastest: cannot use the asv results ({e}); "
                f"falling back to the shipped table {SHIPPED_TABLE}"
            )
    if not os.path.exists(SHIPPED_TABLE):
        raise NoMeasurements(f"no asv results for this machine and no shipped table {SHIPPED_TABLE}")
    with open(SHIPPED_TABLE) as f:
        table = json.load(f)
    table["source"] = f"shipped table {SHIPPED_TABLE} (measured on {table['machine']}, {table['date']})"
    return table


def _row_bytes(dim, itemsize):
    return max(1, dim) * itemsize


def _nearest(rows, vocab_size, dim, n_ids, itemsize):
    several_n = len({r["n_ids"] for r in rows}) > 1

    def distance(row):
        d = math.log(max(1, vocab_size) / row["vocab_size"]) ** 2
        row_itemsize = np.dtype(row["dtype"]).itemsize
        d += math.log(_row_bytes(dim, itemsize) / _row_bytes(row["dim"], row_itemsize)) ** 2
        if several_n:
            d += math.log(max(1, n_ids) / row["n_ids"]) ** 2
        return d

    return min(rows, key=distance)


def decide(table, vocab_size, dim, n_ids=DEFAULT_N_IDS, dtype=np.float32, backward=False):
    """(kernel name, measured row) of the nearest measured point to this size."""
    rows = table["backward" if backward else "forward"]
    if not rows:
        rows = table["forward"]
    row = _nearest(rows, vocab_size, dim, n_ids, np.dtype(dtype).itemsize)
    return _fastest_in(row), row


def _fastest_in(row):
    """The registered kernel with the smallest time in one measured row."""
    from kernels import KERNELS

    times = {k: t for k, t in row["times"].items() if k in KERNELS}
    return min(times, key=times.get)


def moved_bytes(pass_name, n_ids, vocab_size, dim, itemsize=4):
    """Bytes one call must move, as this project counts them for GB/s: forward 2*n*D (rows read,
    output written); backward 3*n*D + V*D (grad read, dW rows read and written, dW zeroed)."""
    if pass_name == "forward":
        return 2 * n_ids * dim * itemsize
    return (3 * n_ids * dim + vocab_size * dim) * itemsize


@functools.lru_cache(maxsize=None)
def _table():
    return load_table()


def _bucket(n_ids):
    """Sizes of n_ids that share a decision: n rounded down to a power of two."""
    return max(0, int(n_ids)).bit_length()


@functools.lru_cache(maxsize=4096)
def _cached(vocab_size, dim, n_bucket, dtype_char, backward):
    from kernels import KERNELS

    table = _table()
    name, row = decide(table, vocab_size, dim, 2**n_bucket, np.dtype(dtype_char), backward)
    why = (f"fastest {'backward' if backward else 'forward'} at the nearest measured point "
           f"V={row['vocab_size']}, D={row['dim']}, n={row['n_ids']}, {row['dtype']}; "
           f"source: {table['source']}")
    return KERNELS[name], why


def fastest(vocab_size, dim, n_ids=DEFAULT_N_IDS, dtype=np.float32, *, backward=False):
    """The Kernel (the registry's object) measured fastest for these sizes on this machine.

    Its `decision` attribute (shown in its repr) says which measurement chose it, and where
    that measurement came from."""
    kernel, why = _cached(int(vocab_size), int(dim), _bucket(n_ids), np.dtype(dtype).char,
                          bool(backward))
    kernel.decision = why
    return kernel


_BY_BUCKET = {}


def for_call(vocab_size, dim, n_ids, dtype_char, backward):
    """fastest() for a call about to run: one dict look-up per (sizes, n bucket, dtype, pass)."""
    key = (vocab_size, dim, n_ids.bit_length(), dtype_char, backward)  # n_ids: an int >= 0
    kernel = _BY_BUCKET.get(key)
    if kernel is None:
        kernel = _BY_BUCKET[key] = _cached(*key)[0]
    return kernel


def reload():
    """Forget cached decisions (after a new asv run)."""
    _table.cache_clear()
    _cached.cache_clear()
    _BY_BUCKET.clear()


def format_table(table):
    """Text: V x D -> fastest kernel, its time, GB/s (and % of copy) for each pass."""
    lines = [f"source: {table['source']}", f"machine: {table['machine']}, commit {table['commit']}, {table['date']}"]
    for pass_name in ("forward", "backward"):
        rows = table.get(pass_name) or []
        if not rows:
            continue
        lines.append(f"\n{pass_name} (n = {rows[0]['n_ids']:,} ids, {rows[0]['dtype']}; "
                     "% copy = Roofline.time_copy / time, runner-up = its time / the fastest's):")
        lines.append(f"{'vocab_size':>10} {'dim':>5}  {'fastest':<14} {'time':>10} {'GB/s':>7} {'% copy':>7}  runner-up")
        for row in rows:
            name = _fastest_in(row)
            t = row["times"][name]
            n, D, V = row["n_ids"], row["dim"], row["vocab_size"]
            nbytes = moved_bytes(pass_name, n, V, D, np.dtype(row["dtype"]).itemsize)
            copy = table.get("copy", {}).get(str(D))
            pct = f"{copy / t * 100:6.0f}%" if copy and pass_name == "forward" else "    n/a"
            others = sorted((s, k) for k, s in row["times"].items() if k != name)
            runner = f"{others[0][1]} x{others[0][0] / t:.2f}" if others else "-"
            lines.append(
                f"{V:>10} {D:>5}  {name:<14} {t * 1e6:>8.1f}us {nbytes / t / 1e9:>7.1f} {pct}  {runner}"
            )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m kernels", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="asv.conf.json whose results to read")
    p.add_argument("--machine", help="asv machine name (default: this host's)")
    p.add_argument("--write-table", action="store_true",
                   help=f"write the table from the asv results to {SHIPPED_TABLE}")
    a = p.parse_args(argv)
    try:
        table = load_table(a.config, a.machine)
    except NoMeasurements as e:
        p.error(f"no asv results found to write the table from; run `make bench` first ({e})"
                if a.write_table else str(e))
    if a.write_table:
        if table["source"].startswith("shipped"):
            p.error("no asv results found to write the table from; run `make bench` first")
        shipped = dict(table, source="asv results file " + os.path.basename(table["source"]))
        with open(SHIPPED_TABLE, "w") as f:
            json.dump(shipped, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"wrote {SHIPPED_TABLE}")
    print(format_table(table))


if __name__ == "__main__":
    main()

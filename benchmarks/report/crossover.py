"""The crossover page: which kernel is fastest where, from the latest asv results.

For every timing benchmark whose parameters include ``kernel``, ``vocab_size`` and ``dim``
(``Lookup.time_lookup``: forward; ``LookupGrad.time_lookup_grad``: backward;
``Distribution``'s timings: forward by id distribution ...), and for every value of its other
parameters (distribution, dtype, ...), each (vocab_size, dim) cell names

* the fastest kernel (smallest time),
* its speed-up over ``numpy_take`` (time of numpy_take / time of the fastest),
* its bandwidth (the same class's ``track_bandwidth``, GB/s) as a % of the plain copy
  (``Roofline.track_bandwidth`` at the same dim: same byte formula).

The results are those of the newest commit measured on this machine (asv's own result files
in ``results_dir/<machine>/``, read with ``asv.results.Results``).

Imports beyond the standard library (asv, matplotlib) happen inside functions: asv imports
every module under ``benchmarks/`` while discovering benchmarks.
"""
from __future__ import annotations

import ast
import dataclasses
import datetime
import html
import itertools
import json
import math
import os
import platform

REFERENCE_KERNEL = "numpy_take"
AXIS_PARAMS = ("kernel", "vocab_size", "dim")

KNOWN_PASSES = {
    # benchmark name -> (title, defaults for facets the benchmark does not vary)
    "bench_lookup.Lookup.time_lookup": ("Forward: W[ids]", {"distribution": "uniform", "dtype": "float32"}),
    "bench_grad.LookupGrad.time_lookup_grad": ("Backward: scatter-add of grad rows",
                                               {"distribution": "uniform", "dtype": "float32"}),
    "bench_distribution.Distribution.time_lookup": ("Forward: W[ids], by id distribution",
                                                    {"dtype": "float32"}),
}
"""Titles of the benchmarks the suite's contract names; others get a title from their name."""

CONTRACT_PARAM_NAMES = {
    "bench_lookup.Lookup": ["kernel", "vocab_size", "dim"],
    "bench_lookup.Roofline": ["dim"],
    "bench_grad.LookupGrad": ["kernel", "vocab_size", "dim"],
}
"""Used only when results_dir/benchmarks.json (written by asv run) is missing or unreadable."""


class NoResults(Exception):
    """Nothing usable to draw; the message is shown on stderr and on the page."""


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

def this_machine_name() -> str:
    """The machine name asv itself would use here (``asv machine`` / ~/.asv-machine.json)."""
    node = platform.node()
    path = os.path.expanduser("~/.asv-machine.json")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        d = {k: v for k, v in d.items() if k != "version" and isinstance(v, dict)}
        if node in d:
            return d[node].get("machine", node)
        if len(d) == 1:
            return next(iter(d.values())).get("machine", node)
    except (OSError, ValueError, AttributeError):
        pass
    return node


def _result_files(machine_dir: str) -> list[str]:
    return sorted(os.path.join(machine_dir, f) for f in os.listdir(machine_dir)
                  if f.endswith(".json") and f not in ("machine.json", "benchmarks.json"))


def _machines_with_results(results_dir: str) -> list[str]:
    try:
        names = sorted(os.listdir(results_dir))
    except OSError:
        return []
    return [n for n in names
            if os.path.isdir(os.path.join(results_dir, n))
            and _result_files(os.path.join(results_dir, n))]


def _load_one(path: str, machine: str):
    """asv.results.Results of one file, or raise ValueError with a one-line reason."""
    from asv import util
    from asv.results import Results
    try:
        res = Results.load(path, machine_name=machine)
        if not isinstance(res.commit_hash, str) or not res.commit_hash:
            raise ValueError("no commit_hash")
        return res
    except util.UserError as exc:
        raise ValueError(str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable")
    except Exception as exc:  # anything else in a malformed file: still one line
        raise ValueError(f"{type(exc).__name__}: {exc}".splitlines()[0])


@dataclasses.dataclass
class LatestRun:
    machine: str
    path: str
    results: object  # asv.results.Results
    notes: list  # one-line notes (skipped corrupt files, machine fallback)


def _last_started(res) -> float:
    vals = [v for v in (res.started_at or {}).values() if isinstance(v, (int, float))]
    return max(vals) if vals else 0.0


def latest_run(results_dir: str, machine: str | None = None) -> LatestRun:
    """The newest commit's result file for ``machine`` (default: this machine).

    Raises :class:`NoResults` with a one-line reason when there is none usable.
    """
    notes = []
    wanted = machine or this_machine_name()
    if not os.path.isdir(results_dir):
        raise NoResults(f"no asv results: results_dir {results_dir} does not exist "
                        f"(run `asv run` first)")
    machines = _machines_with_results(results_dir)
    if wanted not in machines:
        if machine is not None or not machines:
            others = f" (results exist for: {', '.join(machines)})" if machines else ""
            raise NoResults(f"no asv results for machine '{wanted}' in {results_dir}{others}")
        # asv names machines after the host; a renamed host still wants its latest report
        wanted_fallback = None
        best = -1.0
        for m in machines:
            for p in _result_files(os.path.join(results_dir, m)):
                try:
                    r = _load_one(p, m)
                except ValueError:
                    continue
                if _last_started(r) > best:
                    best, wanted_fallback = _last_started(r), m
        if wanted_fallback is None:
            wanted_fallback = machines[0]
        notes.append(f"no results for this machine ('{wanted}'); showing machine "
                     f"'{wanted_fallback}', the one measured last")
        wanted = wanted_fallback

    good, bad = [], []
    for p in _result_files(os.path.join(results_dir, wanted)):
        try:
            good.append((p, _load_one(p, wanted)))
        except ValueError as exc:
            bad.append(f"corrupt results file {p}: {exc}")
    notes.extend(bad)
    if not good:
        if bad:
            raise NoResults("; ".join(bad))
        raise NoResults(f"no asv results for machine '{wanted}' in {results_dir}")
    path, res = max(good, key=lambda pr: (pr[1].date or 0, _last_started(pr[1])))
    return LatestRun(wanted, path, res, notes)


def load_param_names(results_dir: str) -> dict:
    """Benchmark name -> param_names, from asv's benchmarks.json (contract names if absent)."""
    names = {}
    try:
        with open(os.path.join(results_dir, "benchmarks.json"), encoding="utf-8") as f:
            d = json.load(f)
        for key, b in d.items():
            if isinstance(b, dict) and isinstance(b.get("param_names"), list):
                names[key] = list(b["param_names"])
    except (OSError, ValueError, AttributeError):
        pass
    return names


def _param_names_for(key: str, params: list, names: dict):
    pn = names.get(key)
    if pn is None:
        pn = CONTRACT_PARAM_NAMES.get(key.rsplit(".", 1)[0])
    if pn is None or len(pn) != len(params):
        return None
    return pn


def _unrepr(s):
    """asv stores parameter values as repr strings: "'numba_gather'" -> 'numba_gather'."""
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError, TypeError):
        return s


def _finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _records(res, key: str, names: dict):
    """(param_names, [(params dict, value)]) of benchmark ``key``, or None if unusable.

    A ``table`` parameter whose values are (vocab_size, dim) pairs (the suite's benchmarks that
    do not sweep the whole grid) is split into ``vocab_size`` and ``dim``.
    """
    if key not in res.get_all_result_keys():
        return None
    params = res.get_result_params(key) or []
    if not params:
        return None
    pn = _param_names_for(key, params, names)
    if pn is None:
        return None
    values = res.get_result_value(key, params)
    if not isinstance(values, list):
        values = [values]
    combos = list(itertools.product(*[[_unrepr(v) for v in vals] for vals in params]))
    if len(combos) != len(values):
        return None
    recs = [(dict(zip(pn, c)), v) for c, v in zip(combos, values)]
    if ("table" in pn and "vocab_size" not in pn and "dim" not in pn
            and all(isinstance(p["table"], tuple) and len(p["table"]) == 2 for p, _ in recs)):
        pn = [n for n in pn if n != "table"] + ["vocab_size", "dim"]
        for p, _ in recs:
            p["vocab_size"], p["dim"] = p.pop("table")
    return pn, recs


def _key(p: dict, names) -> tuple:
    return tuple((n, p.get(n)) for n in names)


def _ordered(values):
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in out):
        out.sort()
    return out


# --------------------------------------------------------------------------------------------
# computing the grid
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Cell:
    vocab_size: object
    dim: object
    best: str | None = None
    time: float | None = None
    speedup: float | None = None  # numpy_take time / best time
    bw: float | None = None  # GB/s of the best kernel
    bw_pct: float | None = None  # % of the Roofline copy at the same dim
    times: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Grid:
    key: str
    title: str
    facets: dict  # e.g. {"distribution": "zipf", "dtype": "float32"}
    vocab_sizes: list
    dims: list
    kernels: list
    cells: dict  # (vocab_size, dim) -> Cell
    has_bandwidth: bool
    has_roofline: bool

    @property
    def label(self) -> str:
        f = ", ".join(f"{k} {v}" for k, v in self.facets.items())
        return f"{self.title}" + (f" ({f})" if f else "")

    @property
    def measured(self) -> bool:
        return any(c.best for c in self.cells.values())

    @property
    def slug(self) -> str:
        s = self.key + "".join(f"-{k}-{v}" for k, v in self.facets.items())
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in s)


def _title_for(key: str):
    if key in KNOWN_PASSES:
        return KNOWN_PASSES[key]
    cls_meth = ".".join(key.split(".")[-2:])
    direction = "Backward" if "grad" in key.lower() else "Forward"
    defaults = {"dtype": "float32"} if key.startswith("bench_distribution.") else {}
    return f"{direction}: {cls_meth}", defaults


def _roofline(res, names):
    """(param_names, {key: GB/s}) of the copy ceiling (Roofline.track_bandwidth), or None."""
    keys = [k for k in res.get_all_result_keys() if k.endswith(".Roofline.track_bandwidth")]
    keys.sort(key=lambda k: (k != "bench_lookup.Roofline.track_bandwidth", k))
    for k in keys:
        r = _records(res, k, names)
        if r is not None:
            pn, recs = r
            return pn, {_key(p, pn): v for p, v in recs}
    return None


def is_crossover_benchmark(key: str, pn, recs) -> bool:
    """A timing over kernels that include numpy_take, at (vocab_size, dim) points."""
    return (key.split(".")[-1].startswith("time_")
            and {"kernel", "vocab_size", "dim"} <= set(pn)
            and any(p["kernel"] == REFERENCE_KERNEL for p, _ in recs))


def compute_grids(res, names: dict) -> list[Grid]:
    """One :class:`Grid` per (timing benchmark over kernel x vocab_size x dim, facet values)."""
    grids = []
    roof = _roofline(res, names)
    keys = sorted(res.get_all_result_keys(),
                  key=lambda k: (list(KNOWN_PASSES).index(k) if k in KNOWN_PASSES else 99, k))
    for key in keys:
        r = _records(res, key, names)
        if r is None or not is_crossover_benchmark(key, *r):
            continue
        pn, recs = r
        times = {_key(p, pn): v for p, v in recs}
        bw_r = _records(res, key.rsplit(".", 1)[0] + ".track_bandwidth", names)
        bw = {_key(p, bw_r[0]): v for p, v in bw_r[1]} if bw_r and bw_r[0] == pn else {}
        title, defaults = _title_for(key)
        facet_names = [n for n in pn if n not in AXIS_PARAMS]
        kernels = _ordered(p["kernel"] for p, _ in recs)
        vocabs = _ordered(p["vocab_size"] for p, _ in recs)
        dims = _ordered(p["dim"] for p, _ in recs)
        for fv in _ordered(tuple(p[n] for n in facet_names) for p, _ in recs):
            facets = dict(defaults)
            facets.update(zip(facet_names, fv))
            order = ["distribution", "dtype"]
            facets = dict(sorted(facets.items(),
                                 key=lambda kv: order.index(kv[0]) if kv[0] in order else 9))
            cells = {}
            for V in vocabs:
                for D in dims:
                    cell = Cell(V, D)
                    base = dict(zip(facet_names, fv), vocab_size=V, dim=D)
                    for k in kernels:
                        v = times.get(_key(dict(base, kernel=k), pn))
                        if _finite(v):
                            cell.times[k] = v
                    if cell.times:
                        cell.best = min(cell.times, key=cell.times.get)
                        cell.time = cell.times[cell.best]
                        ref = cell.times.get(REFERENCE_KERNEL)
                        if ref is not None:
                            cell.speedup = ref / cell.time
                        b = bw.get(_key(dict(base, kernel=cell.best), pn))
                        if _finite(b):
                            cell.bw = b
                            if roof is not None and set(roof[0]) <= set(base):
                                c = roof[1].get(_key(base, roof[0]))
                                if _finite(c):
                                    cell.bw_pct = 100.0 * b / c
                    cells[(V, D)] = cell
            grids.append(Grid(key, title, facets, vocabs, dims, kernels, cells,
                              has_bandwidth=bool(bw), has_roofline=roof is not None))
    return grids


# --------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------

KERNEL_COLOURS = {
    "onehot_dense": "#d62728",
    "onehot_sparse": "#ff7f0e",
    "numpy_take": "#7f7f7f",
    "numba_gather": "#1f77b4",
    "cython_gather": "#2ca02c",
}
_EXTRA_COLOURS = ["#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]


def _colour(kernel, kernels):
    if kernel in KERNEL_COLOURS:
        return KERNEL_COLOURS[kernel]
    others = [k for k in kernels if k not in KERNEL_COLOURS]
    return _EXTRA_COLOURS[others.index(kernel) % len(_EXTRA_COLOURS)] if kernel in others else "#cccccc"


def _fmt_speedup(x):
    return "n/a" if x is None else f"{x:.2f}x"


def _speedup_text(c) -> str:
    if c.best == REFERENCE_KERNEL:
        return "(the reference)"
    return f"{_fmt_speedup(c.speedup)} vs {REFERENCE_KERNEL}"


def _fmt_pct(x):
    return "n/a" if x is None else f"{x:.0f}%"


def draw_grid(grid: Grid, path: str) -> None:
    """A heatmap-like picture: rows vocab_size, columns dim, colour = fastest kernel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    nV, nD = len(grid.vocab_sizes), len(grid.dims)
    fig, ax = plt.subplots(figsize=(1.9 * nD + 2.6, 0.85 * nV + 1.9))
    for i, V in enumerate(grid.vocab_sizes):
        for j, D in enumerate(grid.dims):
            c = grid.cells[(V, D)]
            colour = _colour(c.best, grid.kernels) if c.best else "#f0f0f0"
            ax.add_patch(Rectangle((j, i), 1, 1, facecolor=colour, edgecolor="white",
                                   linewidth=2, alpha=0.85 if c.best else 1.0))
            if c.best:
                text = f"{c.best}\n{_speedup_text(c)}\n{_fmt_pct(c.bw_pct)} of copy"
                ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=7.5,
                        color="white" if c.best != "numpy_take" else "black", weight="bold")
            else:
                ax.text(j + 0.5, i + 0.5, "n/a", ha="center", va="center", fontsize=8,
                        color="#666666")
    ax.set_xlim(0, nD)
    ax.set_ylim(nV, 0)
    ax.set_xticks([j + 0.5 for j in range(nD)], [str(d) for d in grid.dims])
    ax.set_yticks([i + 0.5 for i in range(nV)], [f"{v:,}" if isinstance(v, int) else str(v)
                                                 for v in grid.vocab_sizes])
    ax.set_xlabel("dim")
    ax.set_ylabel("vocab_size")
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set_title(grid.label, fontsize=10)
    present = [k for k in grid.kernels if any(c.best == k for c in grid.cells.values())]
    if present:
        ax.legend(handles=[Patch(facecolor=_colour(k, grid.kernels), label=k) for k in present],
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
                  title="fastest", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------

PAGE_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.5em 2em;
       color: #222; max-width: 1100px; }
h1 { font-size: 1.5em; margin-bottom: .2em; }
h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
.meta { color: #555; font-size: .9em; }
.meta td { padding: 0 1em 0 0; }
.notice { background: #fff3cd; border: 1px solid #e0c36b; padding: .6em 1em; margin: 1em 0; }
.error { background: #f8d7da; border: 1px solid #d9868e; padding: .8em 1em; margin: 1em 0; }
table.grid { border-collapse: collapse; margin: .8em 0; font-size: .85em; }
table.grid th, table.grid td { border: 1px solid #ccc; padding: .3em .6em; text-align: center; }
table.grid th { background: #f4f4f4; }
td .k { font-weight: bold; display: block; }
td.na { color: #999; }
img.grid { max-width: 100%; height: auto; border: 1px solid #eee; }
a.back { font-size: .9em; }
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _date(ms) -> str:
    if not isinstance(ms, (int, float)):
        return "unknown"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")


def _grid_table(grid: Grid) -> str:
    rows = ["<table class=\"grid\"><thead><tr><th>vocab_size \\ dim</th>"
            + "".join(f"<th>{_e(d)}</th>" for d in grid.dims) + "</tr></thead><tbody>"]
    for V in grid.vocab_sizes:
        tds = []
        for D in grid.dims:
            c = grid.cells[(V, D)]
            if c.best is None:
                tds.append("<td class=\"na\">n/a</td>")
                continue
            colour = _colour(c.best, grid.kernels)
            tds.append(
                f"<td data-kernel=\"{_e(c.best)}\" style=\"border-left: 6px solid {colour}\">"
                f"<span class=\"k\">{_e(c.best)}</span>{_e(_fmt_speedup(c.speedup))}"
                f" &middot; {_e(_fmt_pct(c.bw_pct))} of copy</td>")
        label = f"{V:,}" if isinstance(V, int) else str(V)
        rows.append(f"<tr><th>{_e(label)}</th>{''.join(tds)}</tr>")
    rows.append("</tbody></table>")
    return "\n".join(rows)


def render_page(*, machine=None, commit=None, commit_date=None, run_date=None, env=None,
                source=None, grids=(), pictures=None, notes=(), error=None,
                generated=None) -> str:
    """The whole crossover.html (no external reference of any kind)."""
    pictures = pictures or {}
    generated = generated or datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")
    out = ["<!doctype html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           "<title>Kernel crossover &mdash; embedding lookup</title>",
           "<link rel=\"shortcut icon\" href=\"swallow.ico\">",
           f"<style>{PAGE_CSS}</style></head><body>",
           "<p><a class=\"back\" href=\"index.html\">&larr; all benchmarks (asv)</a></p>",
           "<h1>Kernel crossover: the fastest embedding-lookup kernel by size</h1>"]
    meta = [("machine", machine), ("commit", commit), ("commit date", commit_date),
            ("measured", run_date), ("environment", env), ("results file", source),
            ("page written", generated)]
    out.append("<table class=\"meta\" id=\"meta\">" + "".join(
        f"<tr><td>{_e(k)}</td><td><code>{_e(v)}</code></td></tr>" for k, v in meta if v)
        + "</table>")
    for n in notes:
        out.append(f"<div class=\"notice\">{_e(n)}</div>")
    if error:
        out.append(f"<div class=\"error\" id=\"no-results\"><strong>No crossover to show.</strong> "
                   f"{_e(error)}<br>Run the suite (<code>asv run</code>), then "
                   f"<code>asv publish</code> and <code>python -m benchmarks.report</code>.</div>")
    elif not grids:
        out.append("<div class=\"error\" id=\"no-results\"><strong>No crossover to show.</strong> "
                   "The latest results hold no timing benchmark over kernel &times; vocab_size "
                   "&times; dim (e.g. <code>bench_lookup.Lookup.time_lookup</code>).</div>")
    else:
        out.append(
            "<p>Each cell: the kernel with the smallest time at that (vocab_size, dim); its "
            f"speed-up over <code>{REFERENCE_KERNEL}</code> (time of {REFERENCE_KERNEL} / its "
            "time; 1.00x where numpy_take itself is fastest); its bandwidth (the benchmark's "
            "<code>track_bandwidth</code>) as a percentage of the plain copy of the same number "
            "of bytes (<code>Roofline.track_bandwidth</code> at the same dim). "
            "n/a: no kernel measured there, or the number is missing.</p>")
        out.append("<ul>" + "".join(f"<li><a href=\"#{_e(g.slug)}\">{_e(g.label)}</a></li>"
                                    for g in grids) + "</ul>")
        for g in grids:
            out.append(f"<h2 id=\"{_e(g.slug)}\">{_e(g.label)}</h2>")
            out.append(f"<p class=\"meta\">benchmark <code>{_e(g.key)}</code>"
                       + ("" if g.has_bandwidth else " &mdash; no track_bandwidth results")
                       + ("" if g.has_roofline else " &mdash; no Roofline results") + "</p>")
            if not g.measured:
                out.append("<p class=\"notice\">No kernel was measured on this grid in the "
                           "latest run.</p>")
                continue
            if g.slug in pictures:
                out.append(f"<img class=\"grid\" src=\"{_e(pictures[g.slug])}\" "
                           f"alt=\"crossover grid: {_e(g.label)}\">")
            out.append(_grid_table(g))
    out.append("</body></html>")
    return "\n".join(out) + "\n"


PICTURE_DIR = "crossover"


def write_crossover(html_dir: str, results_dir: str, machine: str | None = None,
                    log=print, warn=print) -> dict:
    """Write ``html_dir/crossover.html`` and its pictures; return a summary dict.

    Problems with the results are reported through ``warn`` (one line each) and on the page.
    """
    import shutil

    os.makedirs(html_dir, exist_ok=True)
    pic_dir = os.path.join(html_dir, PICTURE_DIR)
    shutil.rmtree(pic_dir, ignore_errors=True)
    page_path = os.path.join(html_dir, "crossover.html")
    try:
        run = latest_run(results_dir, machine)
    except NoResults as exc:
        warn(f"crossover: {exc}")
        with open(page_path, "w", encoding="utf-8") as f:
            f.write(render_page(machine=machine or this_machine_name(), error=str(exc)))
        return {"page": page_path, "grids": 0, "error": str(exc)}

    for n in run.notes:
        warn(f"crossover: {n}")
    res = run.results
    try:
        grids = compute_grids(res, load_param_names(results_dir))
    except Exception as exc:  # a file asv could load but whose numbers make no sense
        msg = (f"corrupt results file {run.path}: cannot read its numbers "
               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        warn(f"crossover: {msg}")
        with open(page_path, "w", encoding="utf-8") as f:
            f.write(render_page(machine=run.machine, commit=res.commit_hash, error=msg))
        return {"page": page_path, "grids": 0, "error": msg}
    pictures = {}
    notes = list(run.notes)
    if grids:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            notes.append("matplotlib is not installed: tables only (pip install matplotlib)")
            warn("crossover: matplotlib is not installed: pictures skipped (pip install matplotlib)")
        else:
            os.makedirs(pic_dir, exist_ok=True)
            for g in grids:
                if not g.measured:
                    continue
                rel = f"{PICTURE_DIR}/{g.slug}.svg"
                try:
                    draw_grid(g, os.path.join(html_dir, *rel.split("/")))
                except Exception as exc:
                    line = f"picture of {g.label} failed ({type(exc).__name__}: {exc})"
                    notes.append(line.splitlines()[0])
                    warn("crossover: " + line.splitlines()[0])
                    continue
                pictures[g.slug] = rel
    started = [v for v in (res.started_at or {}).values() if isinstance(v, (int, float))]
    page = render_page(
        machine=run.machine, commit=res.commit_hash, commit_date=_date(res.date),
        run_date=_date(max(started)) if started else None, env=res.env_name,
        source=os.path.relpath(run.path, os.path.dirname(os.path.abspath(results_dir))),
        grids=grids, pictures=pictures, notes=notes)
    with open(page_path, "w", encoding="utf-8") as f:
        f.write(page)
    if not grids:
        warn(f"crossover: {run.path} holds no timing benchmark over kernel x vocab_size x dim")
    log(f"crossover: {page_path} ({len(grids)} grid(s): "
        f"{', '.join(g.label for g in grids) or 'none'}) from {run.path}")
    return {"page": page_path, "grids": len(grids), "pictures": list(pictures.values()),
            "machine": run.machine, "commit": res.commit_hash, "grid_objects": grids}

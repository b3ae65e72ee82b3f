"""The crossover page: HTML (no external reference of any kind) and one picture per grid.

Colours come from the registry (each kernel's `colour` trait); names it does not hold (peers
measured beside the kernels) get one of EXTRA_COLOURS.
"""
from __future__ import annotations

import datetime
import html

import kernels

from .grid import REFERENCE_KERNEL, Grid

try:  # optional: without it the page has its tables and says why there are no pictures
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle
except ImportError:
    matplotlib = None

EXTRA_COLOURS = ["#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
"""For names the registry does not hold, in the order a grid lists them."""
NO_KERNEL_COLOUR = "#cccccc"


def colour(kernel: str, names) -> str:
    """A kernel's colour: its registry colour, else an extra colour by its place among the
    unregistered names of `names`."""
    registered = kernels.KERNELS.get(kernel)
    if registered is not None:
        return registered.colour
    others = [k for k in names if k not in kernels.KERNELS]
    if kernel not in others:
        return NO_KERNEL_COLOUR
    return EXTRA_COLOURS[others.index(kernel) % len(EXTRA_COLOURS)]


# --------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------

def _fmt_speedup(x):
    return "n/a" if x is None else f"{x:.2f}x"


def _speedup_text(c) -> str:
    if c.best == REFERENCE_KERNEL:
        return "(the reference)"
    return f"{_fmt_speedup(c.speedup)} vs {REFERENCE_KERNEL}"


def _fmt_pct(x):
    return "n/a" if x is None else f"{x:.0f}%"


def _peer_text(c) -> str:
    """The fastest peer and the fastest kernel's speed-up over it ("" without peers)."""
    return "" if c.vs_peer is None else f"{c.vs_peer:.2f}x vs peer {c.best_peer}"


def draw_grid(grid: Grid, path: str) -> None:
    """A heatmap-like picture: rows vocab_size, columns dim, colour = fastest kernel."""
    nV, nD = len(grid.vocab_sizes), len(grid.dims)
    fig, ax = plt.subplots(figsize=(1.9 * nD + 2.6, 0.85 * nV + 1.9))
    for i, V in enumerate(grid.vocab_sizes):
        for j, D in enumerate(grid.dims):
            c = grid.cells[(V, D)]
            fill = colour(c.best, grid.kernels) if c.best else "#f0f0f0"
            ax.add_patch(Rectangle((j, i), 1, 1, facecolor=fill, edgecolor="white",
                                   linewidth=2, alpha=0.85 if c.best else 1.0))
            if c.best:
                text = f"{c.best}\n{_speedup_text(c)}\n{_fmt_pct(c.bw_pct)} of copy"
                if c.vs_peer is not None:  # two short lines: the cell is narrow
                    text += f"\n{c.vs_peer:.2f}x vs peer\n{c.best_peer}"
                ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=7.5,
                        color="black" if c.best == REFERENCE_KERNEL else "white", weight="bold")
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
        ax.legend(handles=[Patch(facecolor=colour(k, grid.kernels), label=k) for k in present],
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
td .peer { display: block; color: #555; font-size: .92em; }
td.na { color: #999; }
img.grid { max-width: 100%; height: auto; border: 1px solid #eee; }
a.back { font-size: .9em; }
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def format_date(ms) -> str:
    if not isinstance(ms, (int, float)) or not ms:  # the reader's 0: no date in the file
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
            peer = ""
            if c.vs_peer is not None:
                peer = (f"<span class=\"peer\" data-peer=\"{_e(c.best_peer)}\">"
                        f"{_e(_peer_text(c))}</span>")
            tds.append(
                f"<td data-kernel=\"{_e(c.best)}\" "
                f"style=\"border-left: 6px solid {colour(c.best, grid.kernels)}\">"
                f"<span class=\"k\">{_e(c.best)}</span>{_e(_fmt_speedup(c.speedup))}"
                f" &middot; {_e(_fmt_pct(c.bw_pct))} of copy{peer}</td>")
        label = f"{V:,}" if isinstance(V, int) else str(V)
        rows.append(f"<tr><th>{_e(label)}</th>{''.join(tds)}</tr>")
    rows.append("</tbody></table>")
    return "\n".join(rows)


def _unmeasured_notice(ops) -> str:
    """One notice naming the operations the results file has no measurement of."""
    items = "".join(
        f"<li data-op=\"{_e(op.name)}\">{_e(op.title)} (<code>{_e(op.name)}</code>, benchmark "
        f"<code>{_e(op.benchmark)}</code>)</li>" for op in ops)
    bags = [op for op in ops if op.extra_param]
    what = "Bags were not measured" if bags and len(bags) == len(ops) else "Not measured"
    return (f"<div class=\"notice\" id=\"not-measured\"><strong>{what} in this run.</strong> "
            f"The results file holds no measured time of:<ul>{items}</ul>(a run from before "
            f"they were benchmarked, or their benchmarks were left out of it).</div>")


def render_page(*, machine=None, commit=None, commit_date=None, run_date=None, env=None,
                source=None, grids=(), pictures=None, notes=(), error=None,
                generated=None, unmeasured=()) -> str:
    """The whole crossover.html (no external reference of any kind). `unmeasured`: operations
    (kernels.OPERATIONS) with no grid in the results, named in a notice."""
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
                   f"<code>asv publish</code> and <code>python -m tools.report</code>.</div>")
    elif not grids:
        out.append("<div class=\"error\" id=\"no-results\"><strong>No crossover to show.</strong> "
                   "The latest results hold no timing benchmark over kernel &times; vocab_size "
                   "&times; dim (e.g. <code>bench_lookup.Lookup.time_lookup</code>).</div>")
    else:
        out.append(
            "<p>Each cell: the kernel with the smallest time at that (vocab_size, dim); its "
            f"speed-up over <code>{REFERENCE_KERNEL}</code> (time of {REFERENCE_KERNEL} / its "
            f"time; 1.00x where {REFERENCE_KERNEL} itself is fastest); its bandwidth (the "
            "benchmark's <code>track_bandwidth</code>, or where it has none the bytes the "
            "operation moves over its time) as a percentage of the plain copy of the "
            "same number of bytes (<code>Roofline.track_bandwidth</code> at the same dim). "
            "n/a: no kernel measured there, or the number is missing. Bags: one grid per "
            "bag length (ids per bag). Where peers were measured on the same data (torch's "
            "and FBGEMM's forms, by <code>make bench-peers</code>), the cell also names the "
            "fastest peer and the fastest kernel's speed-up over it (the peer's time / the "
            "kernel's; below 1.00x the peer is faster). A peer is never a cell's winner: "
            "<code>kernel=\"auto\"</code> chooses among this package's kernels.</p>")
        if unmeasured:
            out.append(_unmeasured_notice(unmeasured))
        out.append("<ul>" + "".join(f"<li><a href=\"#{_e(g.slug)}\">{_e(g.label)}</a></li>"
                                    for g in grids) + "</ul>")
        for g in grids:
            out.append(f"<h2 id=\"{_e(g.slug)}\">{_e(g.label)}</h2>")
            out.append(f"<p class=\"meta\">benchmark <code>{_e(g.key)}</code>"
                       + (f"; peers <code>{_e(g.peer_key)}</code>" if g.peer_key else "")
                       + ("" if g.has_bandwidth else " &mdash; no track_bandwidth results")
                       + (" &mdash; bandwidth from its times (no track_bandwidth: the moved "
                          "bytes over the median time, lower than a track's best of three "
                          "medians)" if g.bandwidth_from_times else "")
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

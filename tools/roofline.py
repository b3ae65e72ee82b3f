"""Side-by-side bandwidth of every lookup kernel against a plain copy (the roofline).

    python -m tools.roofline                  # default grid, forward and backward
    python -m tools.roofline --vocab 1000 --dims 16 --rounds 2   # a small look
    python -m tools.roofline --id-sets 8      # 8 sets of ids in turn: rows not left in L3
    python -m tools.roofline --bags [--quick] # bags against the row-read floor (tools.bag_roofline)

For each (V, D) it times, interleaved in one process and in several rounds, a plain copy of an
array of the output's size, every kernel into a preallocated output, the best NumPy form, and
torch when it is importable; it keeps each method's best per-round median, then prints GB/s,
% of copy and ratios, and draws GB/s against V, one panel per D, the copy as the ceiling.
Every method reads the same ids each call, or with --id-sets K the next of K sets
(kernels._timing.in_turn), so that the rows a call reads are not the ones the call before
left in the last-level cache (with one set they are at D <= 64: 16 MB of rows or less).

The registry supplies the facts: the kernels (kernels.KERNELS; the compiled ones are those with
the `compiled` trait), each kernel's limits (its `over_budget` trait: a kernel over budget at a
size is not run there and shows n/a), its colour, and the bytes one call moves (the operation's
`moved_bytes`: forward 2*n*D*itemsize, rows read + output written; backward
(3*n*D + V*D)*itemsize, grad read, dW rows read and written, dW zeroed). Timing is
kernels._timing.interleaved_best, the one timing loop of the tools.
"""
import argparse
import datetime
import json
import os
import platform
import sys

import numpy as np

import kernels
from kernels._cpu import cpuinfo
from kernels._timing import as_id_sets, calls_in_turn, interleaved_best
from tools import bag_roofline

PASS_OPERATION = {"forward": kernels.OPERATIONS["lookup"],
                  "backward": kernels.OPERATIONS["lookup_grad"]}
"""Each pass of the tables (and of the saved rows) is one operation of the registry."""


def compiled_kernels():
    """Names of the registered kernels with the `compiled` trait, in registry order."""
    return [k.name for k in kernels.KERNELS.values() if k.compiled]


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def forward_methods(W, ids, out, torch):
    """Name -> zero-argument callable for every forward method at this size; ids one 1-D
    array, or a list of them that each method takes in turn, one a call."""
    sets = as_id_sets(ids)
    n, D = out.shape
    V = W.shape[0]
    src = np.ones_like(out)
    methods = {"copy": lambda: np.copyto(out, src)}
    op = PASS_OPERATION["forward"]
    for name, k in kernels.KERNELS.items():
        if k.over_budget(op, V, D, n, W.itemsize) is None:  # within the kernel's own limits
            methods[name] = calls_in_turn(lambda i, k=k: k.lookup(W, i, out=out), sets)
    methods["np.take raw"] = calls_in_turn(lambda i: np.take(W, i, axis=0, out=out, mode="clip"),
                                        sets)
    methods["W[ids]"] = calls_in_turn(lambda i: W[i], sets)
    if torch is not None:
        Wt, ot = torch.from_numpy(W), torch.from_numpy(out)
        tsets = [torch.from_numpy(i) for i in sets]
        methods["torch embedding"] = calls_in_turn(
            lambda i: torch.nn.functional.embedding(i, Wt), tsets)
        methods["torch index_select(out=)"] = calls_in_turn(
            lambda i: torch.index_select(Wt, 0, i, out=ot), tsets)
    return methods


def backward_methods(G, ids, dW, torch):
    """Name -> zero-argument callable for every backward method at this size; ids as
    forward_methods takes them."""
    sets = as_id_sets(ids)
    V, D = dW.shape
    n = sets[0].shape[0]
    op = PASS_OPERATION["backward"]
    # a copy that moves as many bytes as the formula counts (it reads and writes each element,
    # so half as many elements): its GB/s is the ceiling
    src = np.ones(op.moved_bytes(n, V, D, dW.itemsize) // (2 * dW.itemsize), dW.dtype)
    dst = np.empty_like(src)
    methods = {"copy": lambda: np.copyto(dst, src)}
    for name, k in kernels.KERNELS.items():
        if k.over_budget(op, V, D, n, dW.itemsize) is None:
            methods[name] = calls_in_turn(lambda i, k=k: k.lookup_grad(G, i, V, out=dW), sets)

    def add_at(i):
        dW.fill(0)
        np.add.at(dW, i, G)

    methods["np.add.at"] = calls_in_turn(add_at, sets)
    if torch is not None:
        Gt, dWt = torch.from_numpy(G), torch.from_numpy(dW)

        def index_add(i):
            dWt.zero_()
            dWt.index_add_(0, i, Gt)

        methods["torch index_add_"] = calls_in_turn(index_add, [torch.from_numpy(i) for i in sets])
    return methods


def measure(vocab_sizes, dims, n, rounds, reps, backward, seed=0, id_sets=1):
    """Rows of {'pass','V','D', method: seconds} with the best per-round median of each method
    (id_sets sets of n ids at each size, each method taking them in turn)."""
    rng = np.random.default_rng(seed)
    torch = _torch()
    rows = []
    for V in vocab_sizes:
        for D in dims:
            W = kernels.aligned_empty((V, D))  # as torch allocates its peers' tables
            W[...] = rng.standard_normal((V, D), dtype=np.float32)
            ids = [rng.integers(0, V, n) for _ in range(id_sets)]
            out = np.empty((n, D), np.float32)
            passes = [("forward", forward_methods(W, ids, out, torch))]
            if backward:
                G = rng.standard_normal((n, D), dtype=np.float32)
                dW = np.empty((V, D), np.float32)
                passes.append(("backward", backward_methods(G, ids, dW, torch)))
            for pass_name, methods in passes:
                best = interleaved_best(methods, rounds, reps)
                rows.append({"pass": pass_name, "V": V, "D": D, "n": n, **best})
                print(f"  measured {pass_name} V={V:.0e} D={D}", flush=True)
    return rows


def nbytes(row):
    """Bytes one call moves: the pass's operation's moved_bytes (float32 rows)."""
    return PASS_OPERATION[row["pass"]].moved_bytes(row["n"], row["V"], row["D"],
                                                   np.dtype(np.float32).itemsize)


def _gbps(x):
    """GB/s with one decimal, or two significant digits below 0.1 (never a bare 0.0)."""
    return f"{x:.1f}" if x >= 0.1 else f"{x:.2g}"


def table(rows):
    """A Markdown table: GB/s and % of copy per method, and the speed-up of the best compiled."""
    lines = []
    for pass_name in ("forward", "backward"):
        sel = [r for r in rows if r["pass"] == pass_name]
        if not sel:
            continue
        methods = list(dict.fromkeys(m for r in sel for m in r if m not in ("pass", "V", "D", "n")))
        numpy_ref = ("np.take raw", "W[ids]") if pass_name == "forward" else ("numpy_take", "np.add.at")
        torch_ref = (
            ("torch embedding", "torch index_select(out=)")
            if pass_name == "forward"
            else ("torch index_add_",)
        )
        head = ["V", "D"] + [f"{m} GB/s" for m in methods] + ["best compiled % copy"]
        head += ["x best NumPy"] + [f"x {t}" for t in torch_ref if t in sel[0]]
        if pass_name == "backward":
            head.append("x np.add.at")
        lines.append(f"\n### {pass_name} (n = {sel[0]['n']:,} ids, float32)\n")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        compiled = compiled_kernels()
        for r in sel:
            b = nbytes(r)
            best_c = min(r[c] for c in compiled if c in r)
            cells = [f"{r['V']:.0e}", str(r["D"])]
            cells += [_gbps(b / r[m] / 1e9) if m in r else "n/a" for m in methods]
            cells.append(f"{r['copy'] / best_c * 100:.0f}%")
            cells.append(f"{min(r[m] for m in numpy_ref if m in r) / best_c:.2f}")
            cells += [f"{r[t] / best_c:.2f}" for t in torch_ref if t in r]
            if pass_name == "backward":
                cells.append(f"{r['np.add.at'] / best_c:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows, path, title=""):
    """GB/s against V, one line per method, one panel per D, copy dashed as the ceiling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    passes = [p for p in ("forward", "backward") if any(r["pass"] == p for r in rows)]
    dims = sorted({r["D"] for r in rows})
    skip = ("pass", "V", "D", "n", "copy")
    methods = list(dict.fromkeys(m for r in rows for m in r if m not in skip))
    # a registered kernel has its registry colour; every other method a tab20 colour that no
    # kernel has
    taken = {k.colour.lower() for k in kernels.KERNELS.values()}
    palette = [c for c in map(matplotlib.colors.to_hex, plt.get_cmap("tab20").colors)
               if c not in taken]
    others = [m for m in methods if m not in kernels.KERNELS]
    color = {m: kernels.KERNELS[m].colour if m in kernels.KERNELS
             else palette[others.index(m) % len(palette)] for m in methods}
    compiled_names = set(compiled_kernels())
    fig, axes = plt.subplots(
        len(passes), len(dims), figsize=(4 * len(dims) + 2.2, 3.6 * len(passes)), squeeze=False
    )
    handles = {}
    for i, p in enumerate(passes):
        for j, D in enumerate(dims):
            ax = axes[i][j]
            sel = sorted((r for r in rows if r["pass"] == p and r["D"] == D), key=lambda r: r["V"])
            for m in methods:
                pts = [(r["V"], nbytes(r) / r[m] / 1e9) for r in sel if m in r]
                if pts:
                    compiled = m in compiled_names
                    (line,) = ax.plot(*zip(*pts), "-o" if compiled else "--.", color=color[m],
                                      lw=2.2 if compiled else 1, label=m)
                    handles.setdefault(m, line)
            ceiling = [nbytes(r) / r["copy"] / 1e9 for r in sel]
            (line,) = ax.plot([r["V"] for r in sel], ceiling, "k:", lw=2,
                              label="plain copy (ceiling)")
            handles.setdefault("plain copy (ceiling)", line)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{p}, D = {D}")
            ax.set_xlabel("vocab size V")
            ax.set_ylabel("GB/s")
            ax.grid(True, which="both", alpha=0.3)
    fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=8)
    fig.suptitle(f"embedding lookup bandwidth, n = {rows[0]['n']:,} ids, float32, "
                 f"{title}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 2.2 / (4 * len(dims) + 2.2), 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _machine():
    cpu = cpuinfo().get("model name") or platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, {datetime.date.today()}"


def _blas():
    """Which BLAS kernel numpy ran (the dense one-hot's speed depends on it)."""
    try:
        import threadpoolctl
    except ImportError:
        return "BLAS: unknown (threadpoolctl not installed)"
    info = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    env = os.environ.get("OPENBLAS_CORETYPE")
    return "BLAS: " + ", ".join(
        f"{i.get('internal_api')} {i.get('version')} kernel {i.get('architecture')}, "
        f"{i.get('num_threads')} threads" for i in info
    ) + (f" (OPENBLAS_CORETYPE={env} set in the environment)" if env else "")


SECTION_DEFAULTS = {
    "lookup": {"vocab": "1000,10000,100000,1000000", "dims": "8,16,64,256", "rounds": 5,
               "reps": 7, "plot": "docs/roofline.png", "markdown": "docs/roofline.md",
               "json": "docs/roofline.json"},
    "bags": {"plot": "", "markdown": "docs/roofline_bags.md", "json": "docs/roofline_bags.json"},
}
"""Each section's defaults for the options not given (the bags grid: tools.bag_roofline)."""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    lookup, bags, quick = SECTION_DEFAULTS["lookup"], bag_roofline.FULL, bag_roofline.QUICK

    def listed(values):
        return ",".join(str(v) for v in values)

    p.add_argument("--vocab", help=f"comma-separated V (default {lookup['vocab']}; "
                                   f"--bags: {listed(bags['vocab'])})")
    p.add_argument("--dims", help=f"comma-separated D (default {lookup['dims']}; "
                                  f"--bags: {listed(bags['dims'])})")
    p.add_argument("-n", type=int, default=65_536, help="number of ids")
    p.add_argument("--rounds", type=int, help=f"interleaved rounds (default {lookup['rounds']}; "
                                              f"--bags: {bags['rounds']})")
    p.add_argument("--reps", type=int, help=f"calls per method and round (default "
                                            f"{lookup['reps']}; --bags: {bags['reps']})")
    p.add_argument("--no-backward", action="store_true")
    p.add_argument("--bags", action="store_true",
                   help="the bags section instead: every lookup_bag, torch's embedding_bag and "
                        "the plain lookup against the row-read floor (tools.bag_roofline)")
    p.add_argument("--bag-lengths", help="with --bags: comma-separated bag lengths (default "
                                         f"{listed(bags['bag_lengths'])})")
    p.add_argument("--passes", type=int,
                   help=f"with --bags: visit the grid this many times, the rounds shared among "
                        f"the visits (default {bags['passes']})")
    p.add_argument("--id-sets", type=int, default=1,
                   help="sets of ids each method takes in turn, one a call (default 1: the same "
                        "ids every call, whose rows stay cached when they fit)")
    p.add_argument("--quick", action="store_true",
                   help=f"with --bags: V {listed(quick['vocab'])} x D {listed(quick['dims'])} x "
                        f"bag length {listed(quick['bag_lengths'])}, {quick['rounds']} rounds of "
                        f"{quick['reps']} in {quick['passes']} passes")
    p.add_argument("--plot", help="picture path (default docs/roofline.png; --bags: none)")
    p.add_argument("--markdown", help="table path (default docs/roofline.md; --bags: "
                                      "docs/roofline_bags.md; '' for none)")
    p.add_argument("--json", help="where the measured rows go (default docs/roofline.json; "
                                  "--bags: docs/roofline_bags.json; '' for none)")
    p.add_argument("--replot", action="store_true",
                   help="do not measure: redraw the table and picture from --json")
    argv = sys.argv[1:] if argv is None else list(argv)
    a = p.parse_args(argv)
    if a.id_sets < 1:
        p.error(f"--id-sets must be at least 1, got {a.id_sets}")
    section = "bags" if a.bags else "lookup"
    for key, value in SECTION_DEFAULTS[section].items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.bags:
        return bags_main(a, argv)
    if a.replot:
        with open(a.json) as f:
            saved = json.load(f)
        rows, header = saved["rows"], saved["header"]
    else:
        vocab = [int(float(v)) for v in a.vocab.split(",")]
        dims = [int(d) for d in a.dims.split(",")]
        rows = measure(vocab, dims, a.n, a.rounds, a.reps, not a.no_backward,
                       id_sets=a.id_sets)
        header = _header(argv)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"header": header, "rows": rows}, f, indent=0)
    text = header + "\n" + table(rows)
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text + "\n")
    if a.plot:
        plot(rows, a.plot, header.split(", `")[0].replace("Measured ", ""))
        print(f"picture: {a.plot}")


def _header(argv):
    return (f"Measured {_machine()}, {kernels.get_num_threads()} threads, "
            f"`python -m tools.roofline {' '.join(argv or [])}`; {_blas()}")


def bags_main(a, argv):
    """The bags section of main(): measure (or reload) and print the table; returns the rows."""
    br = bag_roofline
    if a.replot:
        with open(a.json) as f:
            saved = json.load(f)
        rows, header, skipped = saved["rows"], saved["header"], saved["skipped"]
    else:
        grid = br.QUICK if a.quick else br.FULL
        vocab = [int(float(v)) for v in a.vocab.split(",")] if a.vocab else grid["vocab"]
        dims = [int(d) for d in a.dims.split(",")] if a.dims else grid["dims"]
        lengths = ([int(x) for x in a.bag_lengths.split(",")] if a.bag_lengths
                   else grid["bag_lengths"])
        rows, skipped = br.measure_bags(vocab, dims, lengths, a.n, a.rounds or grid["rounds"],
                                        a.reps or grid["reps"], a.passes or grid["passes"],
                                        id_sets=a.id_sets)
        torch = br._torch()
        header = _header(argv) + (
            f"; torch {torch.__version__} on {torch.get_num_threads()} threads"
            if torch is not None else "; torch not importable")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"header": header, "rows": rows, "skipped": skipped}, f, indent=0)
    text = header + "\n" + br.bag_table(rows)
    if skipped:
        text += "\n\nNot timed:\n" + br.skipped_text(skipped)
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text + "\n")
    return rows


if __name__ == "__main__":
    main()

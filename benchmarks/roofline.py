"""Side-by-side bandwidth of every lookup kernel against a plain copy (the roofline).

    python -m benchmarks.roofline                  # default grid, forward and backward
    python -m benchmarks.roofline --vocab 1000 --dims 16 --rounds 2   # a small look

For each (V, D) it times, interleaved in one process and in several rounds, a plain copy of an
array of the output's size, every kernel into a preallocated output, the best NumPy form, and
torch when it is importable; it keeps each method's best per-round median, then prints GB/s,
% of copy and ratios, and draws GB/s against V, one panel per D, the copy as the ceiling.

Bytes counted: forward 2*n*D*itemsize (rows read + output written); backward
(3*n*D + V*D)*itemsize (grad read, dW rows read and written, dW zeroed).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import time

import numpy as np

import kernels
from kernels.fastest import moved_bytes

ONEHOT_DENSE_MAX_FLOPS = 2e9
"""The dense one-hot is skipped where one call costs more multiply-adds than this."""


def median_time(fn, reps):
    """Median seconds of `reps` single calls of fn."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def forward_methods(W, ids, out, torch):
    """Name -> zero-argument callable for every forward method at this size."""
    n, D = out.shape
    V = W.shape[0]
    src = np.ones_like(out)
    methods = {"copy": lambda: np.copyto(out, src)}
    for name, k in kernels.KERNELS.items():
        if name == "onehot_dense" and n * V * D > ONEHOT_DENSE_MAX_FLOPS:
            continue
        if name == "onehot_sparse" and V * D > 64e6:
            continue
        methods[name] = lambda k=k: k.lookup(W, ids, out=out)
    methods["np.take raw"] = lambda: np.take(W, ids, axis=0, out=out, mode="clip")
    methods["W[ids]"] = lambda: W[ids]
    if torch is not None:
        Wt, it, ot = torch.from_numpy(W), torch.from_numpy(ids), torch.from_numpy(out)
        methods["torch embedding"] = lambda: torch.nn.functional.embedding(it, Wt)
        methods["torch index_select(out=)"] = lambda: torch.index_select(Wt, 0, it, out=ot)
    return methods


def backward_methods(G, ids, dW, torch):
    """Name -> zero-argument callable for every backward method at this size."""
    V, D = dW.shape
    n = ids.shape[0]
    # a copy that moves as many bytes as the formula counts: its GB/s is the ceiling
    src = np.ones((3 * n * D + V * D) // 2, dW.dtype)
    dst = np.empty_like(src)
    methods = {"copy": lambda: np.copyto(dst, src)}
    for name, k in kernels.KERNELS.items():
        if name == "onehot_dense" and n * V * D > ONEHOT_DENSE_MAX_FLOPS:
            continue
        methods[name] = lambda k=k: k.lookup_grad(G, ids, V, out=dW)

    def add_at():
        dW.fill(0)
        np.add.at(dW, ids, G)

    methods["np.add.at"] = add_at
    if torch is not None:
        Gt, it, dWt = torch.from_numpy(G), torch.from_numpy(ids), torch.from_numpy(dW)

        def index_add():
            dWt.zero_()
            dWt.index_add_(0, it, Gt)

        methods["torch index_add_"] = index_add
    return methods


def measure(vocab_sizes, dims, n, rounds, reps, backward, seed=0):
    """Rows of {'pass','V','D', method: seconds} with the best per-round median of each method."""
    rng = np.random.default_rng(seed)
    torch = _torch()
    rows = []
    for V in vocab_sizes:
        for D in dims:
            W = rng.standard_normal((V, D), dtype=np.float32)
            ids = rng.integers(0, V, n)
            out = np.empty((n, D), np.float32)
            passes = [("forward", forward_methods(W, ids, out, torch))]
            if backward:
                G = rng.standard_normal((n, D), dtype=np.float32)
                dW = np.empty((V, D), np.float32)
                passes.append(("backward", backward_methods(G, ids, dW, torch)))
            for pass_name, methods in passes:
                for fn in methods.values():
                    fn()  # JIT compile, first touch
                best = {name: float("inf") for name in methods}
                for _ in range(rounds):
                    for name, fn in methods.items():
                        best[name] = min(best[name], median_time(fn, reps))
                rows.append({"pass": pass_name, "V": V, "D": D, "n": n, **best})
                print(f"  measured {pass_name} V={V:.0e} D={D}", flush=True)
    return rows


def nbytes(row):
    """Bytes one call moves (see the module docstring)."""
    return moved_bytes(row["pass"], row["n"], row["V"], row["D"])


COMPILED = ("numba_gather", "cython_gather")


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
        for r in sel:
            b = nbytes(r)
            best_c = min(r[c] for c in COMPILED)
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
    palette = plt.get_cmap("tab20").colors
    color = {m: palette[(2 * i) % 20 + (2 * i) // 20] for i, m in enumerate(methods)}
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
                    compiled = m in COMPILED
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
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", default="1000,10000,100000,1000000", help="comma-separated V")
    p.add_argument("--dims", default="8,16,64,256", help="comma-separated D")
    p.add_argument("-n", type=int, default=65_536, help="number of ids")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--no-backward", action="store_true")
    p.add_argument("--plot", default="docs/roofline.png")
    p.add_argument("--markdown", default="docs/roofline.md")
    p.add_argument("--json", default="docs/roofline.json", help="where the measured rows go")
    p.add_argument("--replot", action="store_true",
                   help="do not measure: redraw the table and picture from --json")
    a = p.parse_args(argv)
    if a.replot:
        with open(a.json) as f:
            saved = json.load(f)
        rows, header = saved["rows"], saved["header"]
    else:
        vocab = [int(float(v)) for v in a.vocab.split(",")]
        dims = [int(d) for d in a.dims.split(",")]
        rows = measure(vocab, dims, a.n, a.rounds, a.reps, not a.no_backward)
        header = (f"Measured {_machine()}, {kernels.get_num_threads()} threads, "
                  f"`python -m benchmarks.roofline {' '.join(argv or [])}`; {_blas()}")
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


if __name__ == "__main__":
    main()

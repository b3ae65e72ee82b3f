"""kernel="auto" against every kernel at sizes between the measured grid points (held out).

    python -m tools.check_auto [-n 16384] [--backward]

For each held-out (V, D) it times, interleaved in one process over several rounds (in a new
random order each round: kernels._timing.interleaved_best), every kernel within its own limits
(its `over_budget` trait) and `kernels.lookup(..., kernel="auto")` into a preallocated output,
keeps each one's best per-round median, and prints auto / best (1.00 = auto picked the fastest;
the target is <= 1.10) and, to separate the decision from timing noise and auto's per-call cost,
the chosen kernel called directly / best.
"""
import argparse

import numpy as np

import kernels
from kernels._timing import interleaved_best

HELD_OUT = [(V, D) for V in (300, 3_000, 30_000, 300_000) for D in (16, 64, 256)]
"""Between the suite's grid points: V in 1e2 ... 1e6, D in 8 ... 512 (log-spaced)."""


def measure(V, D, n, backward, rounds, reps, rng):
    """(best per-round median seconds per method, the kernel auto chose)."""
    W = rng.standard_normal((V, D), dtype=np.float32)
    ids = rng.integers(0, V, n)
    op = kernels.OPERATIONS["lookup_grad" if backward else "lookup"]
    chosen = kernels.fastest(V, D, n, np.float32, op=op.name)
    within = {name: k for name, k in kernels.KERNELS.items()
              if k.over_budget(op, V, D, n, W.itemsize) is None}
    methods = {}
    if backward:
        G = rng.standard_normal((n, D), dtype=np.float32)
        dW = np.empty((V, D), np.float32)
        for name, k in within.items():
            methods[name] = lambda k=k: k.lookup_grad(G, ids, V, out=dW)
        methods["auto"] = lambda: kernels.lookup_grad(G, ids, V, kernel="auto", out=dW)
    else:
        out = np.empty((n, D), np.float32)
        for name, k in within.items():
            methods[name] = lambda k=k: k.lookup(W, ids, out=out)
        methods["auto"] = lambda: kernels.lookup(W, ids, kernel="auto", out=out)
    # a new order each round: no method always runs right after the BLAS threads of onehot_dense
    return interleaved_best(methods, rounds, reps, rng=rng), chosen


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=16_384)
    p.add_argument("--backward", action="store_true")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=7)
    a = p.parse_args(argv)
    rng = np.random.default_rng(1)
    op = "lookup_grad" if a.backward else "lookup"
    print(f"decisions from: {kernels.explain(*HELD_OUT[0], a.n, op=op).source}")
    print(f"{'backward' if a.backward else 'forward'}, n = {a.n}, float32; best per-round median")
    print(f"{'V':>8} {'D':>4}  {'auto chose':<14} {'fastest':<14} {'auto us':>9} {'best us':>9}"
          f"  auto/best  chosen/best")
    worst = worst_choice = 0.0
    for V, D in HELD_OUT:
        best, chosen = measure(V, D, a.n, a.backward, a.rounds, a.reps, rng)
        auto = best.pop("auto")
        top = min(best, key=best.get)
        ratio = auto / best[top]
        worst = max(worst, ratio)
        if chosen.name in best:
            choice = best[chosen.name] / best[top]
            worst_choice = max(worst_choice, choice)
            choice_text = f"{choice:11.2f}"
        else:  # auto chose a kernel beyond its own limits here: not timed directly
            choice_text = f"{'not run':>11}"
        print(f"{V:>8} {D:>4}  {chosen.name:<14} {top:<14} {auto * 1e6:9.1f} {best[top] * 1e6:9.1f}"
              f"  {ratio:9.2f}  {choice_text}")
    print(f"worst auto/best: {worst:.2f} (target <= 1.10); worst chosen kernel called directly / "
          f"best: {worst_choice:.2f} (the decision alone, without auto's per-call cost)")


if __name__ == "__main__":
    main()

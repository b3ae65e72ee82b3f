"""Per-call overhead of every kernel on a tiny call, and of kernel="auto" over its choice.

    python -m tools.overhead [-n 16] [--dim 64] [--vocab 1000]

Times, interleaved in one process over several rounds, `W[ids]`, each kernel (validation
included) and `kernels.lookup(..., kernel="auto")` against a direct call of the kernel "auto"
chose. Each sample is the mean of `number` back-to-back calls (a single call is too short to
time); prints the best per-round median of each in microseconds and the difference to `W[ids]`.
"""
import argparse

import numpy as np

import kernels
from kernels._timing import interleaved_best


def measure(n, dim, vocab, rounds=5, number=2000, repeat=7):
    """{name: best per-round median microseconds per call} for W[ids], every kernel and "auto"."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((vocab, dim), dtype=np.float32)
    ids = rng.integers(0, vocab, n)
    chosen = kernels.fastest(vocab, dim, n, W.dtype)
    methods = {"W[ids]": lambda: W[ids]}
    for name, k in kernels.KERNELS.items():
        methods[name] = lambda k=k: k(W, ids)
    methods[f"auto (-> {chosen.name})"] = lambda: kernels.lookup(W, ids, kernel="auto")
    methods[f"{chosen.name} direct"] = lambda: chosen.lookup(W, ids)
    best = interleaved_best(methods, rounds, repeat, number=number)
    return {name: t * 1e6 for name, t in best.items()}, chosen


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=16)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    best, chosen = measure(a.n, a.dim, a.vocab, a.rounds)
    base = best["W[ids]"]
    print(f"n = {a.n}, dim = {a.dim}, vocab = {a.vocab}, float32; best of {a.rounds} rounds")
    print(f"{'method':<28} {'us/call':>8} {'- W[ids]':>9}")
    for name, t in best.items():
        print(f"{name:<28} {t:8.2f} {t - base:+9.2f}")
    auto = best[f"auto (-> {chosen.name})"] - best[f"{chosen.name} direct"]
    print(f"auto adds {auto:+.2f} us per call over calling {chosen.name} directly")


if __name__ == "__main__":
    main()

"""What the compiled check of plain bag calls saves: cython_gather's lookup_bag as it runs (plain
calls checked by kernels._bounds.plain_bags) against the same calls through the general checks
only, and torch's embedding_bag when torch is importable, interleaved in one process.

    python -m tools.bag_checks [-n 32768] [--rounds 31] [--quick]

Prints, per (V, D, bag length), the median microseconds per call of each and the ratios; mode
sum, equal bags given as 1-D offsets, 64-byte aligned tables, a preallocated out.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics

import numpy as np

import kernels
from kernels import _ops
from kernels._timing import per_call_seconds

POINTS = ((1_000, 256, 8), (10_000, 64, 8), (10_000, 64, 64), (10_000, 256, 64),
          (1_000_000, 16, 8), (1_000_000, 64, 8), (1_000_000, 256, 64))
QUICK = ((1_000, 16, 8), (10_000, 64, 64))


@contextlib.contextmanager
def general_checks_only():
    """Within it, LookupBag.prepare takes the general checks for every call."""
    saved = _ops.plain_bag_args
    _ops.plain_bag_args = lambda *args: None
    try:
        yield
    finally:
        _ops.plain_bag_args = saved


def methods(W, ids, offsets, out, torch=None):
    """{name: zero-argument call} for one point."""
    def compiled():
        kernels.lookup_bag(W, ids, offsets, kernel="cython_gather", out=out)

    def general():
        with general_checks_only():
            kernels.lookup_bag(W, ids, offsets, kernel="cython_gather", out=out)

    m = {"compiled check": compiled, "general checks": general}
    if torch is not None:
        tW, ti, to = (torch.from_numpy(a) for a in (W, ids.astype(np.int64), offsets))
        m["torch"] = lambda: torch.nn.functional.embedding_bag(ti, tW, to, mode="sum")
    return m


def measure(points, n, rounds, number=5, seed=0, torch=None):
    """[(V, D, L, {name: median us per call})], each point's methods timed in turn, in a new
    random order each round."""
    rng = np.random.default_rng(seed)
    rows = []
    for V, D, L in points:
        W = kernels.aligned_empty((V, D))
        W[:] = rng.standard_normal((V, D), dtype=np.float32)
        B = n // L
        ids = rng.integers(0, V, B * L).astype(np.int32)
        offsets = np.arange(B, dtype=np.int64) * L
        out = np.empty((B, D), np.float32)
        m = methods(W, ids, offsets, out, torch)
        for fn in m.values():
            fn()
        samples = {name: [] for name in m}
        order = list(m)
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                samples[name].append(per_call_seconds(m[name], number) * 1e6)
        rows.append((V, D, L, {name: statistics.median(s) for name, s in samples.items()}))
    return rows


def _torch(threads):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=32_768, help="ids per call (asv's bag benchmarks)")
    p.add_argument("--rounds", type=int, default=31)
    p.add_argument("--quick", action="store_true", help="two small points, 5 rounds")
    a = p.parse_args(argv)
    points, rounds = (QUICK, 5) if a.quick else (POINTS, a.rounds)
    torch = _torch(kernels.get_num_threads())
    rows = measure(points, a.n, rounds, torch=torch)
    print(f"n = {a.n}, {kernels.get_num_threads()} threads, median us per call of {rounds} "
          f"interleaved rounds")
    for V, D, L, t in rows:
        line = (f"V={V:g} D={D} L={L}: compiled check {t['compiled check']:.1f}, general "
                f"checks {t['general checks']:.1f} (saves "
                f"{t['general checks'] - t['compiled check']:.1f})")
        if "torch" in t:
            line += (f", torch {t['torch']:.1f}; torch / ours {t['torch'] / t['compiled check']:.2f}"
                     f" (general: {t['torch'] / t['general checks']:.2f})")
        print(line)
    return rows


if __name__ == "__main__":
    main()

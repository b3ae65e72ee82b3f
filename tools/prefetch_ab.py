"""Bags of tables beyond the last-level cache with the far prefetch (kernels._cpu.far_bag_rows)
against the distances before it, side by side in one process.

    python -m tools.prefetch_ab [--kernel cython_gather] [--bag 8] [--vocab 2000000]
                                [--tables float32:16,int8:64,...] [--id-sets 16]

"before" is the same call with far_bag_rows answering what the bags took before it: float rows
kernels._cpu.bag_prefetch_rows of them, low-precision rows DECODE_PREFETCH_DISTANCE. Each line
gives both times (best per-round median) and before / far paired per round (> 1: far is
faster). --id-sets K cycles through K sets of n = 65,536 ids, one a call: with one set the
rows a call reads are the ones the call before left in L3, which is not what a batch of new
ids meets. Tables are V x D, 64-byte aligned (kernels.quantize for the formats).
"""
import argparse

import numpy as np

import kernels
from kernels import _cpu
from kernels._timing import in_turn, interleaved_rounds, paired_ratio

N = 65_536
_FAR = _cpu.far_bag_rows


def _before(row_bytes, least):
    """far_bag_rows' answer before it existed."""
    return least if least > 1 else _cpu.bag_prefetch_rows(row_bytes)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernel", default="cython_gather")
    p.add_argument("--bag", type=int, default=8)
    p.add_argument("--vocab", type=float, default=2e6)
    p.add_argument("--tables", default="float32:16,float32:64,float32:256,int8:64,int4:64,"
                                       "float16:64,int8:128,int8:256")
    p.add_argument("--id-sets", type=int, default=16)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--reps", type=int, default=7)
    a = p.parse_args(argv)
    V = int(a.vocab)
    rng = np.random.default_rng(0)
    print(f"{a.kernel}, bags of {a.bag}, V = {V:,}, n = {N:,} ids, "
          f"{kernels.get_num_threads()} threads, {a.id_sets} id set(s) in turn")
    try:
        for spec in a.tables.split(","):
            fmt, D = spec.split(":")
            D = int(D)
            W = kernels.aligned_empty((V, D))
            W[...] = rng.standard_normal((V, D), dtype=np.float32)
            T = W if fmt == "float32" else kernels.quantize(W, fmt)
            del W
            id_sets = [rng.integers(0, V, N) for _ in range(a.id_sets)]
            offsets = np.arange(0, N, a.bag)
            out = kernels.aligned_empty((N // a.bag, D))
            next_ids = in_turn(id_sets)

            def call(far):
                def run():
                    _cpu.far_bag_rows = far
                    kernels.lookup_bag(T, next_ids(), offsets, kernel=a.kernel, out=out)
                return run

            t = interleaved_rounds({"before": call(_before), "far": call(_FAR)}, a.rounds,
                                   a.reps, rng=rng)
            print(f"{fmt:8s} D={D:4d}  before {min(t['before']) * 1e3:8.4f} ms  far "
                  f"{min(t['far']) * 1e3:8.4f} ms  before/far "
                  f"{paired_ratio(t['before'], t['far']):.2f}", flush=True)
            del T
    finally:
        _cpu.far_bag_rows = _FAR


if __name__ == "__main__":
    main()

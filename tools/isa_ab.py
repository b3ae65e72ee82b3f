"""cython_gather's run-time ISA paths side by side: AVX2 (level 1) against AVX-512 (level 2).

    python -m tools.isa_ab [--vocab 10000,2000000] [--dims 64,256] [--formats float32,int8]
                           [--ops lookup,bag8,bag64] [--rounds 11] [--id-sets 1] [--torch]

For each table (V, D) and format, each op is timed at both levels in one process, round after
round in a shuffled order (kernels._timing.interleaved_rounds), and the line gives each
level's best per-round median and the ratio level 1 / level 2 paired per round (> 1: the
AVX-512 path is faster). --torch adds torch's op on the same table and ids where there is one
(embedding_bag for float32, the byte and 4-bit quantized bag ops for int8 and int4; lookups as
bags of one) and prints torch / level 2. --id-sets K cycles through K sets of ids, one a call,
so that the rows a call reads are not the ones the call before left in the cache (with one set,
n = 65,536 rows of 256 bytes, 16 MB, stay in a 32 MB L3). On a CPU without AVX-512 both levels
run the AVX2 loops and the ratio is 1 by construction: the script says so and stops.
n = 65,536 ids, outputs 64-byte aligned, tables from kernels.quantize (cache-line aligned).
"""
import argparse

import numpy as np

import kernels
from kernels import _cython_gather
from kernels._cpu import cpuinfo
from kernels._timing import in_turn, interleaved_rounds, paired_ratio

N = 65_536
_LEVEL = [2]  # the level set last (the timed calls' medians leave out the call that switches)


def _has_avx512():
    flags = set(cpuinfo().get("flags", "").split())
    return all(f in flags for f in ("avx512f", "avx512vl", "avx512bw", "avx512dq"))


def _methods(T, W32, fmt, op, id_sets, with_torch):
    """{name: zero-argument callable} for one table, format and op."""
    D = W32.shape[1]
    L = 1 if op == "lookup" else int(op[3:])
    offsets = np.arange(0, N, L)
    out = kernels.aligned_empty((N // L, D))
    next_ids = in_turn(id_sets)

    def ours(level):
        def call():
            if _LEVEL[0] != level:  # only when the level changes: the loops run as shipped
                _cython_gather.set_isa(level)
                _LEVEL[0] = level
            if op == "lookup":
                kernels.lookup(T, next_ids(), kernel="cython_gather", out=out)
            else:
                kernels.lookup_bag(T, next_ids(), offsets, kernel="cython_gather", out=out)
        return call

    methods = {"level 1": ours(1), "level 2": ours(2)}
    if with_torch and fmt in ("float32", "int8", "int4"):
        import torch

        toff = torch.from_numpy(offsets)
        torch_ids = in_turn([torch.from_numpy(i) for i in id_sets])
        if fmt == "float32":
            tW = torch.from_numpy(W32)
            methods["torch"] = lambda: torch.nn.functional.embedding_bag(
                torch_ids(), tW, toff, mode="sum")
        else:
            tP = torch.from_numpy(T.packed)
            qop = (torch.ops.quantized.embedding_bag_byte_rowwise_offsets if fmt == "int8"
                   else torch.ops.quantized.embedding_bag_4bit_rowwise_offsets)
            methods["torch"] = lambda: qop(tP, torch_ids(), toff, mode=0)
    return methods


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", default="10000,2000000")
    p.add_argument("--dims", default="64,256")
    p.add_argument("--formats", default="float32,float16,bfloat16,int8,int4")
    p.add_argument("--ops", default="lookup,bag8,bag64")
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--id-sets", type=int, default=1)
    p.add_argument("--torch", action="store_true")
    a = p.parse_args(argv)
    if not _has_avx512():
        print("this CPU has no AVX-512: both levels run the AVX2 loops, nothing to compare")
        return
    if a.torch:
        import torch

        torch.set_num_threads(kernels.get_num_threads())
    rng = np.random.default_rng(0)
    print(f"n = {N:,} ids, {kernels.get_num_threads()} threads, {a.id_sets} id set(s) in turn; "
          "ms are best per-round medians, ratios paired per round")
    try:
        for V in (int(float(v)) for v in a.vocab.split(",")):
            for D in (int(d) for d in a.dims.split(",")):
                W32 = kernels.aligned_empty((V, D))
                W32[...] = rng.standard_normal((V, D), dtype=np.float32)
                id_sets = [rng.integers(0, V, N) for _ in range(a.id_sets)]
                for fmt in a.formats.split(","):
                    T = W32 if fmt == "float32" else kernels.quantize(W32, fmt)
                    for op in a.ops.split(","):
                        ms = _methods(T, W32, fmt, op, id_sets, a.torch)
                        t = interleaved_rounds(ms, a.rounds, a.reps, rng=rng)
                        line = (f"V={V:.0e} D={D} {fmt:8s} {op:6s} level 1 "
                                f"{min(t['level 1']) * 1e3:8.4f} ms  level 2 "
                                f"{min(t['level 2']) * 1e3:8.4f} ms  1/2 "
                                f"{paired_ratio(t['level 1'], t['level 2']):.2f}")
                        if "torch" in t:
                            line += (f"  torch {min(t['torch']) * 1e3:8.4f} ms  torch/2 "
                                     f"{paired_ratio(t['torch'], t['level 2']):.2f}")
                        print(line, flush=True)
                del W32
    finally:
        _cython_gather.set_isa(2)
        _LEVEL[0] = 2


if __name__ == "__main__":
    main()

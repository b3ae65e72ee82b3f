"""Low-precision tables against the float32 table, side by side in one process: a Markdown report.

    python -m tools.formats_roofline            # V 1e4, 2e6 x D 64, 128, 256
    python -m tools.formats_roofline --quick    # V 1e4, 2e6 x D 64, 256, fewer rounds
    python -m tools.formats_roofline --id-sets 16   # rows read from memory, not left in L3

n = 65,536 uniform int64 ids: one set for every call, or with --id-sets K, K sets taken in turn,
one a call, so that the rows a call reads are not the ones the calls just before left in the
last-level cache (with one set, at V = 2e6 and D <= 64 the rows a call touches, 4-16 MB, stay
in a 32 MB L3: the table is beyond the caches, those rows are not). At each (V, D), interleaved round after round in a shuffled order
(kernels._timing.interleaved_rounds; a time in the report is the best per-round median, a ratio
the median over rounds of the two methods' times in the same round, kernels._timing
.paired_ratio):

- lookup: kernels.lookup(table, ids, kernel=K, out=out) for the float32 table and every format,
  K = numba_gather and cython_gather;
- bag: kernels.lookup_bag(table, ids, offsets, kernel=K, out=out), sum, bags of 8 and of 1;
- torch (when importable, torch.set_num_threads(kernels.get_num_threads())): its quantized bag
  ops on the same packed bytes (embedding_bag_byte_rowwise_offsets for int8,
  embedding_bag_4bit_rowwise_offsets for int4) and its float32 embedding_bag, bags of 8 and 1.
  They allocate their output (no out=).
- FBGEMM (when fbgemm_gpu is importable): its int8/int4 inference bag holding the same codes
  (benchmarks.bench_peers._fbgemm_nbit_bag: its layout has a float16 scale and bias, so int8's
  are rounded), bags of 8 and 1; reported as a ratio to ours only.

Tables are benchmarks.common.format_table's (a quantized block of rows tiled down the table), so
V = 2e6 x D = 256 needs no 2 GB float32 source for the low-precision formats (the float32 table
itself is built). Ratios in the report are float32's time over the format's, by the same kernel,
paired per round: > 1 means the format is faster.

The output is cache-line aligned, as kernels.lookup allocates its own and torch its tensors, so
cython_gather streams it where it is at least as large as the last-level cache, or half as
large beside a table it does not fit with (kernels._cpu.stream_output), for float32 and every
format alike.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import kernels
from benchmarks import bench_peers, common
from kernels._timing import in_turn, interleaved_rounds, paired_ratio

FULL = {"vocab": (10_000, 2_000_000), "dims": (64, 128, 256), "rounds": 7, "reps": 5}
QUICK = {"vocab": (10_000, 2_000_000), "dims": (64, 256), "rounds": 3, "reps": 3}
N = 65_536
KERNELS = tuple(name for name, k in kernels.KERNELS.items()
                if k.compiled and k.implements("lookup", "int8"))
FORMATS = common.FORMATS
TORCH_OPS = {"int8": "embedding_bag_byte_rowwise_offsets",
             "int4": "embedding_bag_4bit_rowwise_offsets"}


def _torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(kernels.get_num_threads())
    return torch


def _id_turns(V, id_sets, torch):
    """(next_ids, next_torch_ids): zero-argument callables that hand out id_sets sets of N
    uniform ids in turn, one a call, from one counter (torch's None without torch)."""
    sets = [common.uniform_ids(V, shape=(N,), seed=s) for s in range(id_sets)]
    if torch is None:
        return in_turn(sets), None
    pairs = in_turn([(i, torch.from_numpy(i)) for i in sets])
    return (lambda: pairs()[0]), (lambda: pairs()[1])


def methods_at(V, D, torch, id_sets=1):
    """{(op, format, who): zero-argument callable} at one (V, D)."""
    ids, tids = _id_turns(V, id_sets, torch)
    out = kernels.aligned_empty((N, D))
    bags8 = np.arange(0, N, 8, dtype=np.int64)
    bags1 = np.arange(0, N, dtype=np.int64)
    m = {}
    tables = {fmt: common.format_table(fmt, V, D) for fmt in FORMATS}
    for fmt, T in tables.items():
        for k in KERNELS:
            m[("lookup", fmt, k)] = lambda T=T, k=k: kernels.lookup(T, ids(), kernel=k, out=out)
            for L, off in ((8, bags8), (1, bags1)):
                dst = out[:off.shape[0]]
                m[(f"bag{L}", fmt, k)] = lambda T=T, k=k, off=off, dst=dst: kernels.lookup_bag(
                    T, ids(), off, kernel=k, out=dst)
    if torch is not None:
        for L, off in ((8, bags8), (1, bags1)):
            toff = torch.from_numpy(off)
            tW = torch.from_numpy(tables["float32"])
            m[(f"bag{L}", "float32", "torch")] = lambda tW=tW, toff=toff: \
                torch.nn.functional.embedding_bag(tids(), tW, toff, mode="sum")
            for fmt, name in TORCH_OPS.items():
                op = getattr(torch.ops.quantized, name)
                tP = torch.from_numpy(tables[fmt].packed)
                m[(f"bag{L}", fmt, "torch")] = lambda op=op, tP=tP, toff=toff: op(
                    tP, tids(), toff, mode=0)
        for fmt in TORCH_OPS:
            try:
                module, _ = bench_peers._fbgemm_nbit_bag(torch, tables[fmt])
            except NotImplementedError:
                break
            for L, off in ((8, bags8), (1, bags1)):
                bounds = torch.from_numpy(np.append(off, N))
                m[(f"bag{L}", fmt, "fbgemm")] = lambda module=module, bounds=bounds: module(
                    tids(), bounds)
    return m


def run(cfg, out=sys.stdout):
    torch = _torch()
    rng = np.random.default_rng(0)
    rows = []
    for V in cfg["vocab"]:
        for D in cfg["dims"]:
            common.clear_cache()
            m = methods_at(V, D, torch, cfg.get("id_sets", 1))
            rounds = interleaved_rounds(m, cfg["rounds"], cfg["reps"], rng=rng)
            for (op, fmt, who), r in rounds.items():
                rows.append({"V": V, "D": D, "op": op, "format": fmt, "who": who,
                             "ms": min(r) * 1e3, "rounds_ms": [x * 1e3 for x in r]})
            print(f"   V={V} D={D} done", file=sys.stderr)
    common.clear_cache()
    report(rows, torch, out, cfg.get("id_sets", 1))
    return rows


def _ratio(a, b):
    """a's time over b's, two rows of the same (V, D) timed in the same rounds: paired_ratio
    of their rounds."""
    return paired_ratio(a["rounds_ms"], b["rounds_ms"])


def report(rows, torch, out, id_sets=1):
    """The Markdown tables: times are best per-round medians, ratios paired per round
    (_ratio)."""
    row_of = {(r["V"], r["D"], r["op"], r["format"], r["who"]): r for r in rows}
    points = sorted({(r["V"], r["D"]) for r in rows})
    threads = kernels.get_num_threads()
    print(f"n = {N:,} uniform ids ({id_sets} set(s) in turn); {threads} threads; torch "
          f"{torch.__version__ if torch else 'not installed'}\n", file=out)
    for op in ("lookup", "bag8", "bag1"):
        title = {"lookup": "Lookup", "bag8": "Bags of 8 (sum)", "bag1": "Bags of 1 (sum)"}[op]
        print(f"### {title}: ms (float32 / format, per round)\n", file=out)
        whos = list(KERNELS) + ([] if op == "lookup" or torch is None else ["torch"])
        print("| V | D | by | " + " | ".join(FORMATS) + " |", file=out)
        print("|---:|---:|---|" + "---:|" * len(FORMATS), file=out)
        for V, D in points:
            for who in whos:
                base = row_of.get((V, D, op, "float32", who))
                cells = []
                for fmt in FORMATS:
                    r = row_of.get((V, D, op, fmt, who))
                    if r is None:
                        cells.append("")
                    elif fmt == "float32" or base is None:
                        cells.append(f"{r['ms']:.3f}")
                    else:
                        cells.append(f"{r['ms']:.3f} ({_ratio(base, r):.2f}x)")
                print(f"| {V:,} | {D} | {who} | " + " | ".join(cells) + " |", file=out)
        print(file=out)
    for peer, what in (("torch", "torch's quantized bag op"),
                       ("fbgemm", "FBGEMM's inference bag (IntNBitTableBatchedEmbeddingBags"
                                  "Codegen, float16 scale and bias)")):
        if not any(r["who"] == peer for r in rows):
            continue
        print(f"### Ours against {what} ({peer} ms / our best kernel's ms, per round)\n",
              file=out)
        print("| V | D | bag length | int8 | int4 |", file=out)
        print("|---:|---:|---:|---:|---:|", file=out)
        for V, D in points:
            for L in (8, 1):
                cells = []
                for fmt in ("int8", "int4"):
                    ours = min((row_of[V, D, f"bag{L}", fmt, k] for k in KERNELS),
                               key=lambda r: r["ms"])
                    theirs = row_of.get((V, D, f"bag{L}", fmt, peer))
                    cells.append("" if theirs is None else f"{_ratio(theirs, ours):.2f}")
                print(f"| {V:,} | {D} | {L} | " + " | ".join(cells) + " |", file=out)
        print(file=out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--id-sets", type=int, default=1)
    args = ap.parse_args(argv)
    if args.id_sets < 1:
        ap.error("--id-sets must be at least 1")
    run({**(QUICK if args.quick else FULL), "id_sets": args.id_sets})


if __name__ == "__main__":
    main()

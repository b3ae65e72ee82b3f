"""The embedding's training step against torch's sparse path (and FBGEMM's), and the sparse
backward against the dense one: a Markdown report.

    python -m tools.train_step            # V 1e5, 1e6 x D 16, 64; backward at V 1e4, 1e6, 1e7
    python -m tools.train_step --quick    # V 1e5 x D 16, 64; backward at V 1e4, 1e6; fewer rounds

n = 16,384 uniform int64 ids (1-D), G (n, D) float32 in [-1, 1), a float32 (V, D) table
(benchmarks.common's seeded makers). Step tables, one row per (optimizer, V, D):

- ours: kernels.lookup(W, ids, kernel="cython_gather", out=out), then opt.step(ids, G) with
  kernels.optim.<optimizer>(W, lr, kernel="cython_gather") (the fused backward + update);
- torch: nn.Embedding(V, D, sparse=True) (weights copied from the same table) forward,
  (out * G).sum().backward(), optimizer.step(), optimizer.zero_grad(), with
  torch.set_num_threads(kernels.get_num_threads()); for SGD, Adagrad and SparseAdam (torch's
  optim.SGD, optim.Adagrad, optim.SparseAdam, same lr and default hyperparameters);
- RowwiseAdagrad against FBGEMM's CPU table-batched op
  (SplitTableBatchedEmbeddingBagsCodegen, one table, EXACT_ROWWISE_ADAGRAD, as
  tests/test_optim.py drives it) on bags of length 1 (pooled sum of one id = the lookup):
  forward, out.backward(G), whose backward applies the update, when fbgemm_gpu imports.

Each side updates its own copy of the table; both see the same batch every call. The backward
table: kernels.lookup_grad(G, ids, V, sparse=True, kernel="cython_gather") at each V, against
the dense lookup_grad from scratch (it allocates and zeroes its (V, D) dW) at V = 1e6.

Timing: kernels._timing.interleaved_best, the one timing loop of the tools: every method of a
table point timed in turn, round after round in a shuffled order, best per-round median kept
(this machine has whole episodes where every 2-thread call takes ~8 ms longer).

Allocator state matters: the sparse backward allocates its values (nnz x D) and NumPy's
temporaries every call, and the dense one its (V, D) dW. Whether glibc serves those from its heap
(pages already faulted in) or from fresh mmap'd / trimmed memory (page faults, transparent huge
pages) depends on what the process freed before, so the same call measured 0.8 or 3.8 ms (D = 16)
and 1.2 or 13.7 ms (D = 64) in different runs. To see the allocation-free numbers, run with
GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296
(then "dense from scratch" reuses faulted-in memory too: it is no longer from scratch).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import kernels
import kernels.optim
from benchmarks import common
from kernels._timing import interleaved_best

KERNEL = "cython_gather"
LR = common.TRAINING_LR
N = common.N_IDS
FULL = {"vocab": (100_000, 1_000_000), "dims": (16, 64),
        "grad_vocab": (10_000, 1_000_000, 10_000_000), "dense_vocab": 1_000_000,
        "rounds": 9, "reps": 5}
QUICK = {"vocab": (100_000,), "dims": (16, 64), "grad_vocab": (10_000, 1_000_000),
         "dense_vocab": 1_000_000, "rounds": 4, "reps": 3}
TORCH_OPTIMIZERS = common.TORCH_OPTIMIZERS
ROWWISE = common.ROWWISE
_fbgemm_tbe = common.fbgemm_tbe
torch_step = common.torch_training_step
fbgemm_step = common.fbgemm_training_step


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def data(V, D, n):
    """(W, ids, G): a fresh (V, D) table, n uniform ids, G (n, D)."""
    return (common.make_weights(V, D), common.uniform_ids(V, shape=(n,)),
            common.make_grad(D, shape=(n,)))


def ours_step(name, W, ids, G):
    """kernels.lookup into a preallocated out, then the fused opt.step."""
    opt = getattr(kernels.optim, name)(W, LR, kernel=KERNEL)
    out = np.empty(G.shape, W.dtype)

    def step():
        kernels.lookup(W, ids, kernel=KERNEL, out=out)
        opt.step(ids, G)

    return step


def time_steps(cfg, n, torch, tbe, rng, log):
    """Rows {optimizer, V, D, peer, ours_ms, peer_ms} of the step table."""
    rows = []
    for V in cfg["vocab"]:
        for D in cfg["dims"]:
            W, ids, G = data(V, D, n)
            for name in [*TORCH_OPTIMIZERS, ROWWISE]:
                methods = {"ours": ours_step(name, W.copy(), ids, G)}
                if name == ROWWISE:
                    peer = "FBGEMM TBE" if tbe else None
                    if tbe:
                        methods["peer"] = fbgemm_step(torch, tbe, W, ids, G)
                else:
                    peer = "torch" if torch else None
                    if torch:
                        methods["peer"] = torch_step(torch, name, W, ids, G)
                best = interleaved_best(methods, cfg["rounds"], cfg["reps"], rng=rng)
                row = {"optimizer": name, "V": V, "D": D, "peer": peer or "n/a",
                       "ours_ms": best["ours"] * 1e3,
                       "peer_ms": best["peer"] * 1e3 if "peer" in best else None}
                log(row)
                rows.append(row)
                del methods
    return rows


def time_backward(cfg, n, rng, log):
    """Rows {V, D, sparse_ms} and, per D, the dense backward from scratch at dense_vocab."""
    rows, dense = [], {}
    for D in cfg["dims"]:
        G = common.make_grad(D, shape=(n,))
        methods = {}
        for V in cfg["grad_vocab"]:
            ids = common.uniform_ids(V, shape=(n,))
            methods[("sparse", V)] = (lambda ids=ids, V=V: kernels.lookup_grad(
                G, ids, V, sparse=True, kernel=KERNEL))
        Vd = cfg["dense_vocab"]
        ids_d = common.uniform_ids(Vd, shape=(n,))
        methods[("dense", Vd)] = lambda: kernels.lookup_grad(G, ids_d, Vd, kernel=KERNEL)
        best = interleaved_best(methods, cfg["rounds"], cfg["reps"], rng=rng)
        dense[D] = best[("dense", Vd)] * 1e3
        for V in cfg["grad_vocab"]:
            row = {"V": V, "D": D, "sparse_ms": best[("sparse", V)] * 1e3}
            log(row)
            rows.append(row)
    return rows, dense


def _ms(x):
    return "n/a" if x is None else f"{x:.2f}"


def table(step_rows, grad_rows, dense, dense_vocab, n):
    """The Markdown report."""
    lines = [f"### Training step (n = {n:,}, float32; ms, best per-round median)", "",
             "| optimizer | V | D | ours | peer | peer ms | peer / ours |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for r in step_rows:
        ratio = "n/a" if r["peer_ms"] is None else f"{r['peer_ms'] / r['ours_ms']:.2f}"
        lines.append(f"| {r['optimizer']} | {r['V']:,} | {r['D']} | {_ms(r['ours_ms'])} | "
                     f"{r['peer']} | {_ms(r['peer_ms'])} | {ratio} |")
    lines += ["", f"### Backward (n = {n:,}, float32; ms): sparse at each V, dense from scratch "
              f"at V = {dense_vocab:,}", "",
              "| V | D | sparse | dense from scratch | dense / sparse |",
              "|---:|---:|---:|---:|---:|"]
    for r in grad_rows:
        d = dense[r["D"]]
        lines.append(f"| {r['V']:,} | {r['D']} | {_ms(r['sparse_ms'])} | {_ms(d)} | "
                     f"{d / r['sparse_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def _ints(text):
    return tuple(int(float(x)) for x in text.split(","))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smaller grid, fewer rounds")
    p.add_argument("--vocab", type=_ints, help="step table vocab sizes, e.g. 1e5,1e6")
    p.add_argument("--dims", type=_ints, help="dims, e.g. 16,64")
    p.add_argument("--grad-vocab", type=_ints, help="sparse backward vocab sizes")
    p.add_argument("--dense-vocab", type=lambda s: int(float(s)),
                   help="vocab size of the dense backward")
    p.add_argument("-n", type=int, default=N, help=f"ids per batch (default {N})")
    p.add_argument("--rounds", type=int)
    p.add_argument("--reps", type=int)
    p.add_argument("--no-peers", action="store_true", help="time ours only (no torch, FBGEMM)")
    p.add_argument("--markdown", help="also write the report to this file")
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    for key in ("vocab", "dims", "grad_vocab", "dense_vocab", "rounds", "reps"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)

    torch = None if args.no_peers else _torch()  # after kernels: one OpenMP runtime
    tbe = None
    if torch is not None:
        torch.set_num_threads(kernels.get_num_threads())
        tbe = _fbgemm_tbe()
    rng = np.random.default_rng(0)

    def log(row):
        print("  ", row, file=sys.stderr, flush=True)

    step_rows = time_steps(cfg, args.n, torch, tbe, rng, log)
    grad_rows, dense = time_backward(cfg, args.n, rng, log)
    text = table(step_rows, grad_rows, dense, cfg["dense_vocab"], args.n)
    threads = kernels.get_num_threads()
    text = (f"kernels {KERNEL}, {threads} threads; torch "
            f"{torch.__version__ if torch else 'not installed'}; FBGEMM TBE "
            f"{'yes' if tbe else 'not importable'}\n\n") + text
    print(text)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(text)
    return text


if __name__ == "__main__":
    main()

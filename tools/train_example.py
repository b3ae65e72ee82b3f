"""Train a small recommender on synthetic clicks with torch's EmbeddingBag and with
kernels.torch's, interleaved in one process, and print the steps per second of each.

    python -m tools.train_example                  # 60 s in all, 4 tables (1e6, 1e6, 1e5, 1e5)
    python -m tools.train_example --seconds 10 --vocab 1e5,1e5

The model (benchmarks.common.recsys_model): one EmbeddingBag(V, 64, mode="sum") per table, a
batch of 2,048 samples with one bag of 8 uniform ids per table, the pooled rows concatenated into
an MLP (-> 256 -> 64 -> 1), binary cross-entropy on synthetic click labels, lr 0.05. Both sides
start from the same tables and MLP weights and see the same batches in the same order.

- torch: torch.nn.EmbeddingBag(sparse=True), torch.optim.SGD over every parameter;
- ours: kernels.torch.EmbeddingBag with fuse_optimizer(kernels.optim.SGD): the tables' rows are
  updated inside the backward, torch.optim.SGD steps the MLP.

Timed, in rounds until --seconds have passed (each round: `--chunk` steps of each method; the
side that goes first alternates), every step on its own (kernels._timing.per_call_seconds):

- training step: forward, loss, backward, optimizer step (zero_grad included);
- embedding part: the bags' forward, the backward of (pooled * G).sum() (G: fixed, small, so
  these steps barely move the model) and the tables' update, without the MLP.

Printed: steps/s (1 / the median step time) of each side and the ratio ours / torch, and the
last losses of both (they should agree: the same model trained the same way). Medians, because
this machine is shared; run it on a quiet machine for numbers worth quoting.
Both sides run on kernels.get_num_threads() threads (--threads sets both).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import kernels
import kernels.optim
from benchmarks import common
from kernels._timing import per_call_seconds

DEFAULT_VOCAB = (1_000_000, 1_000_000, 100_000, 100_000)
N_BATCHES = 8
"""Distinct batches cycled through (made before timing)."""


def _ints(text):
    return tuple(int(float(x)) for x in text.split(","))


def build(torch, vocab, dim, batch, bag_length):
    """{"torch": side, "ours": side}: each side a dict of its model, optimizers and step
    functions, from the same tables (copied: each side trains its own) and MLP seed."""
    import kernels.torch as kt

    F = torch.nn.functional
    tables = [common.recsys_table(V, dim, seed=t) for t, V in enumerate(vocab)]
    batches = []
    for s in range(N_BATCHES):
        ids, offsets, labels = common.recsys_batch(vocab, batch, bag_length, seed=s)
        batches.append(([torch.from_numpy(i) for i in ids], torch.from_numpy(offsets),
                        torch.from_numpy(labels)))
    G = torch.from_numpy(common.make_grad(dim * len(vocab), shape=(batch,))) * 1e-4

    sides = {}
    for name, bag_class in (("torch", torch.nn.EmbeddingBag), ("ours", kt.EmbeddingBag)):
        own = [kernels.aligned_empty(W.shape, W.dtype) for W in tables]
        for W, mine in zip(tables, own):
            mine[...] = W
        model = common.recsys_model(torch, bag_class, own, sparse=True)
        if name == "ours":
            for bag in model.bags:
                bag.fuse_optimizer(kernels.optim.SGD, lr=common.RECSYS_LR)
            opt = torch.optim.SGD(model.mlp.parameters(), lr=common.RECSYS_LR)
            bag_opt = None
        else:
            opt = torch.optim.SGD(model.parameters(), lr=common.RECSYS_LR)
            bag_opt = torch.optim.SGD(model.bags.parameters(), lr=common.RECSYS_LR)
        side = {"model": model, "losses": [], "step": [], "embedding": [], "i": 0}

        def train_step(model=model, opt=opt, side=side):
            ids, offsets, labels = batches[side["i"] % N_BATCHES]
            side["i"] += 1
            opt.zero_grad(set_to_none=True)
            loss = F.binary_cross_entropy_with_logits(model(ids, offsets), labels)
            loss.backward()
            opt.step()
            side["losses"].append(loss.detach())

        def embedding_step(model=model, bag_opt=bag_opt, side=side):
            ids, offsets, _ = batches[side["i"] % N_BATCHES]
            model.bags.zero_grad(set_to_none=True)
            (model.pooled(ids, offsets) * G).sum().backward()
            if bag_opt is not None:
                bag_opt.step()

        side["train_step"], side["embedding_step"] = train_step, embedding_step
        sides[name] = side
    return sides


def run(sides, seconds, chunk, log):
    """Time both sides in rounds until `seconds` have passed (at least one round)."""
    start = time.monotonic()
    rounds = 0
    while rounds == 0 or time.monotonic() - start < seconds:
        order = ["torch", "ours"] if rounds % 2 == 0 else ["ours", "torch"]
        for kind in ("step", "embedding"):
            for name in order:
                side = sides[name]
                fn = side["train_step" if kind == "step" else "embedding_step"]
                for _ in range(chunk):
                    side[kind].append(per_call_seconds(fn))
        rounds += 1
        if rounds % 5 == 0:
            log(f"  {rounds} rounds, {time.monotonic() - start:.0f} s")
    return rounds


def report(sides, rounds, header):
    """The printed table."""
    def med(name, kind):
        return statistics.median(sides[name][kind])

    lines = [header, "",
             "| | torch (sparse=True + optim.SGD) | kernels.torch (fused SGD) | ours / torch |",
             "|---|---:|---:|---:|"]
    for kind, label in (("step", "training step"), ("embedding", "embedding part")):
        t, o = med("torch", kind), med("ours", kind)
        lines.append(f"| {label}: steps/s | {1 / t:.2f} | {1 / o:.2f} | {t / o:.2f} |")
        lines.append(f"| {label}: median ms | {t * 1e3:.2f} | {o * 1e3:.2f} | |")
    n = len(sides["torch"]["step"])
    last = {k: float(np.mean([x.item() for x in sides[k]["losses"][-min(10, n):]]))
            for k in sides}
    lines.append(f"| training steps timed | {n} | {len(sides['ours']['step'])} | |")
    lines.append(f"| mean loss of the last {min(10, n)} steps | {last['torch']:.5f} | "
                 f"{last['ours']:.5f} | |")
    lines.append("")
    lines.append(f"{rounds} interleaved rounds; ours / torch > 1: ours is faster.")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0,
                   help="wall time of the timed rounds (default 60)")
    p.add_argument("--vocab", type=_ints, default=DEFAULT_VOCAB,
                   help="one vocab size per table (default 1e6,1e6,1e5,1e5)")
    p.add_argument("--dim", type=int, default=common.RECSYS_DIM)
    p.add_argument("--batch", type=int, default=common.RECSYS_BATCH)
    p.add_argument("--bag-length", type=int, default=common.RECSYS_BAG_LENGTH)
    p.add_argument("--chunk", type=int, default=5, help="steps of each method per round")
    p.add_argument("--threads", type=int,
                   help="threads of both sides (kernels.set_num_threads and "
                        "torch.set_num_threads; default: kernels.get_num_threads())")
    args = p.parse_args(argv)
    try:
        import torch  # after kernels: one OpenMP runtime
    except ImportError:
        sys.exit("tools.train_example needs PyTorch: pip install torch")
    if args.threads is not None:
        kernels.set_num_threads(args.threads)
    threads = kernels.get_num_threads()
    torch.set_num_threads(threads)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    log("building the models ...")
    sides = build(torch, args.vocab, args.dim, args.batch, args.bag_length)
    for side in sides.values():  # warm up: first calls compile and page in
        side["train_step"]()
        side["embedding_step"]()
        side["losses"].clear()
    rounds = run(sides, args.seconds, args.chunk, log)
    vocab = ", ".join(f"{V:,}" for V in args.vocab)
    header = (f"tools.train_example: {len(args.vocab)} EmbeddingBag tables (V = {vocab}), "
              f"D = {args.dim}, batch {args.batch:,}, bags of {args.bag_length}, MLP "
              f"{'-'.join(str(w) for w in common.RECSYS_HIDDEN)}-1; {threads} threads; torch "
              f"{torch.__version__}; {args.seconds:g} s")
    text = report(sides, rounds, header)
    print(text)
    return text, sides


if __name__ == "__main__":
    main()

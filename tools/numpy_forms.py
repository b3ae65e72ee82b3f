"""Which pure-NumPy form of the gather and of the scatter-add is fastest (numpy_take's choice).

    python -m tools.numpy_forms [-n 16384]
    python -m tools.numpy_forms --bags [-n 65536]     # the bag sum (numpy_take's lookup_bag)

Times, interleaved in one process over several rounds (kernels._timing.interleaved_best), the
candidate forms at a few (V, D) and prints each one's best per-round median in microseconds and
its ratio to the fastest.
"""
import argparse

import numpy as np

from kernels._timing import interleaved_best

SIZES = [(1_000, 16), (1_000, 256), (100_000, 64), (1_000_000, 16), (1_000_000, 64)]


def forward_forms(W, ids, out):
    """Candidate forward forms; each leaves W[ids] in `out` or returns it."""
    return {
        "W[ids]": lambda: W[ids],
        "np.take(W, ids, axis=0)": lambda: np.take(W, ids, axis=0),
        "np.take(out=) mode=raise": lambda: np.take(W, ids, axis=0, out=out),
        "np.take(out=) mode=clip": lambda: np.take(W, ids, axis=0, out=out, mode="clip"),
        "np.take(out=) mode=wrap": lambda: np.take(W, ids, axis=0, out=out, mode="wrap"),
        "out[...] = W[ids]": lambda: out.__setitem__(Ellipsis, W[ids]),
    }


def _sort_reduceat(G, ids, dW):
    dW.fill(0)
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
    dW[s[starts]] = np.add.reduceat(G[order], starts, axis=0)


def _add_at(G, ids, dW):
    dW.fill(0)
    np.add.at(dW, ids, G)


def _bincount(G, ids, dW):
    for k in range(G.shape[1]):
        dW[:, k] = np.bincount(ids, G[:, k], minlength=dW.shape[0])


def backward_forms(G, ids, dW):
    """Candidate backward forms; each leaves the gradient in dW."""
    return {
        "np.add.at": lambda: _add_at(G, ids, dW),
        "sort + np.add.reduceat": lambda: _sort_reduceat(G, ids, dW),
        "np.bincount per column": lambda: _bincount(G, ids, dW),
    }


BAG_SIZES = [(10_000, 16, 8), (10_000, 64, 8), (10_000, 256, 8), (1_000_000, 64, 1),
             (1_000_000, 64, 8), (1_000_000, 64, 64), (1_000_000, 64, "random")]
"""(V, D, bag length); "random": lengths drawn from 0..16 (mean 8), so bags differ in length."""


def _reduceat(W, ids, offsets, out):
    rows = np.take(W, ids, axis=0)
    np.add.reduceat(rows, offsets[:-1], axis=0, out=out)


def bag_forms(W, ids, offsets, out):
    """Candidate forms of the bag sum (every bag non-empty); each leaves the sums in out."""
    from kernels.numpy_take import _bag_sums

    return {
        "take + np.add.reduceat(axis=0)": lambda: _reduceat(W, ids, offsets, out),
        "grouped by length, (c, L, D).sum(axis=1)": lambda: _bag_sums(W, ids, offsets, None, out),
    }


def bags_main(a, rng):
    n = a.n
    print(f"bags: n = {n} ids, float32, mode sum; best per-round median (us), x = ratio to the "
          f"fastest form")
    for V, D, L in BAG_SIZES:
        W = rng.standard_normal((V, D), dtype=np.float32)
        ids = rng.integers(0, V, n)
        if L == "random":
            lengths = rng.integers(1, 16, n)
            ends = np.cumsum(lengths)
            offsets = np.concatenate(([0], ends[ends < n], [n]))
        else:
            offsets = np.arange(0, n + 1, L)
        out = np.empty((offsets.shape[0] - 1, D), np.float32)
        forms = bag_forms(W, ids, offsets, out)
        ref = np.add.reduceat(W[ids].astype(np.float64), offsets[:-1], axis=0)
        for name, fn in forms.items():
            fn()
            np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4, err_msg=name)
        best = {k: t * 1e6 for k, t in interleaved_best(forms, a.rounds, a.reps).items()}
        top = min(best.values())
        cells = ", ".join(f"{k} {v:.0f} (x{v / top:.2f})" for k, v in best.items())
        print(f"bags V={V:>9,} D={D:>3} L={L}: {cells}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=None, help="ids (default 16,384; 65,536 with --bags)")
    p.add_argument("--bags", action="store_true", help="time the forms of the bag sum instead")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=7)
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    if a.bags:
        a.n = a.n or 65_536
        return bags_main(a, rng)
    a.n = a.n or 16_384
    print(f"n = {a.n} ids, float32; best per-round median (us), x = ratio to the fastest form")
    for V, D in SIZES:
        W = rng.standard_normal((V, D), dtype=np.float32)
        ids = rng.integers(0, V, a.n)
        out = np.empty((a.n, D), np.float32)
        G = rng.standard_normal((a.n, D), dtype=np.float32)
        dW = np.empty((V, D), np.float32)
        ref = np.zeros((V, D))
        np.add.at(ref, ids, G.astype(np.float64))
        for label, forms in (("forward", forward_forms(W, ids, out)),
                             ("backward", backward_forms(G, ids, dW))):
            if label == "backward":
                for name, fn in forms.items():  # each form is right before it is timed
                    fn()
                    np.testing.assert_allclose(dW, ref, atol=1e-3, err_msg=name)
            best = {name: t * 1e6 for name, t in interleaved_best(forms, a.rounds, a.reps).items()}
            top = min(best.values())
            cells = ", ".join(f"{k} {v:.0f} (x{v / top:.2f})" for k, v in best.items())
            print(f"{label:8} V={V:>9,} D={D:>3}: {cells}")


if __name__ == "__main__":
    main()

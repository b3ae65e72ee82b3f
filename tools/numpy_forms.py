"""Which pure-NumPy form of the gather and of the scatter-add is fastest (numpy_take's choice).

    python -m tools.numpy_forms [-n 16384]

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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=16_384)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=7)
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
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

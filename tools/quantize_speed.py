"""GB/s of float32 input that kernels.quantize converts, per format (its docstring's figure).

    python -m tools.quantize_speed [-V 10000000] [-D 64] [formats ...]

One call per format on a fresh standard-normal table, after a small call that loads Numba's
cache; the time includes the page faults of the new table's storage (a first call's cost).
Needs V * D * 4 bytes for the input plus the largest table (2.56 GB + 1.28 GB at the default).
"""
import argparse

import numpy as np

import kernels
from kernels._timing import per_call_seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-V", type=float, default=1e7)
    p.add_argument("-D", type=int, default=64)
    p.add_argument("formats", nargs="*", default=["int8", "int4", "float16", "bfloat16"])
    a = p.parse_args(argv)
    W = np.random.default_rng(0).standard_normal((int(a.V), a.D), dtype=np.float32)
    for fmt in a.formats:
        kernels.quantize(W[:100], fmt)
        seconds = per_call_seconds(lambda: kernels.quantize(W, fmt))
        nbytes = int(a.V) * kernels.FORMATS[fmt].row_bytes(a.D)
        print(f"{fmt:9s} {seconds:6.2f} s  {W.nbytes / seconds / 1e9:5.2f} GB/s  "
              f"({nbytes / 2**20:,.0f} MiB table)")


if __name__ == "__main__":
    main()

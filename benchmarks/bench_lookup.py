"""Forward lookup out = W[ids] by every kernel over the (vocab_size, dim) grid, and its ceiling."""
import numpy as np

import kernels
from kernels._ops import LOOKUP

from . import common


class Lookup(common.Timing):
    """out = W[ids] for n = 16_384 uniform int64 ids (batch 32 x seq 512), float32 W (V, D).

    time_lookup: into a preallocated `out`, so it times the kernel, not the allocator.
    peakmem_lookup: without `out`, what a user pays: peak RSS of the whole process, i.e. the
    table, the ids, the preallocated out of the other methods, and everything the call allocates
    (its output, one-hot blocks, the CSR matrix...).
    track_bandwidth: GB/s = LOOKUP.moved_bytes = 2 * n * D * itemsize (read n rows of W, write
    n rows of out) / time
    per call, the best of 3 medians of single calls timed with time.perf_counter
    (common.best_median_seconds). A plain copy of the output's size (Roofline.track_bandwidth)
    counts bytes the same way, so it is the ceiling to compare with; a gather can beat it when
    the rows it reads are in cache (few distinct rows, small V * D).
    """

    params = [common.KERNELS, common.VOCAB_SIZES, common.DIMS]
    param_names = ["kernel", "vocab_size", "dim"]

    def setup(self, kernel, vocab_size, dim):
        common.require_budget(kernel, vocab_size, dim)
        self.K = kernels.KERNELS[kernel]
        self.W, self.ids, self.out = common.lookup_data(vocab_size, dim)
        common.check_once(
            ("lookup", kernel, vocab_size, dim),
            lambda: common.check_lookup(self.K, self.W, self.ids, self.out),
        )

    def time_lookup(self, kernel, vocab_size, dim):
        self.K(self.W, self.ids, out=self.out)

    def peakmem_lookup(self, kernel, vocab_size, dim):
        self.K(self.W, self.ids)

    def track_bandwidth(self, kernel, vocab_size, dim):
        seconds = common.best_median_seconds(lambda: self.K(self.W, self.ids, out=self.out))
        return common.gbps(LOOKUP.moved_bytes(self.ids.size, vocab_size, dim), seconds)

    track_bandwidth.unit = "GB/s"


class Roofline(common.Timing):
    """The ceiling of Lookup: np.copyto(out, src) of an array of the output's size (n x D float32).

    track_bandwidth: GB/s = 2 * n * D * itemsize (read src, write out) / time per call, measured
    and counted as in Lookup.track_bandwidth.
    """

    params = [common.DIMS]
    param_names = ["dim"]

    def setup(self, dim):
        self.src, self.out = common.cached(
            ("copy", dim),
            lambda: (common.make_grad(dim), np.empty(common.BATCH_SHAPE + (dim,), common.DTYPE)),
        )
        np.copyto(self.out, self.src)

    def time_copy(self, dim):
        np.copyto(self.out, self.src)

    def track_bandwidth(self, dim):
        seconds = common.best_median_seconds(lambda: np.copyto(self.out, self.src))
        return common.gbps(LOOKUP.moved_bytes(common.N_IDS, 0, dim), seconds)

    track_bandwidth.unit = "GB/s"

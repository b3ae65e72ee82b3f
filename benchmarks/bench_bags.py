"""Pooled bags (EmbeddingBag): kernels.lookup_bag and kernels.lookup_bag_grad by every kernel.

Bags of equal length, n = common.BAG_N_IDS uniform int64 ids in B = n / bag_length bags (1-D ids
with the B bag starts as offsets, torch's form), float32 tables. A kernel that does not implement
a case (lookup_bag not yet built, a mode outside its `bag_modes`, weights with max) or is beyond
its budget is n/a (NotImplementedError in setup, common.require_bag).
"""
import kernels
from kernels._ops import LOOKUP_BAG

from . import common


class Bags(common.BagTiming):
    """out = K.lookup_bag(W, ids, offsets, mode="sum", out=out): each bag's rows summed.

    time_bag: into a preallocated out (B, D). Checked once per process against LOOKUP_BAG's
    float64 reference. onehot_dense's multi-hot block has B rows (its over_budget trait), so it
    runs where B * V stays within its budget. GB/s: BagBandwidth (D = 64), or
    LOOKUP_BAG.moved_bytes / time_bag for any point.
    """

    params = [common.KERNELS, common.BAG_VOCAB_SIZES, common.BAG_DIMS, common.BAG_LENGTHS]
    param_names = ["kernel", "vocab_size", "dim", "bag_length"]

    def setup(self, kernel, vocab_size, dim, bag_length):
        common.require_bag(kernel, vocab_size, dim, bag_length)
        self.K = kernels.KERNELS[kernel]
        self.W, self.ids, self.offsets, self.out = common.bag_data(vocab_size, dim, bag_length)
        common.check_once(
            ("bag", kernel, vocab_size, dim, bag_length),
            lambda: common.check_bag(self.K, self.W, self.ids, self.offsets, self.out),
        )

    def time_bag(self, kernel, vocab_size, dim, bag_length):
        self.K.lookup_bag(self.W, self.ids, self.offsets, out=self.out)


class BagBandwidth(common.BagTiming):
    """GB/s of Bags.time_bag's call at D = 64: LOOKUP_BAG.moved_bytes(n, V, D, 4, bag_length)
    (read n rows, write B rows) / seconds per call, the best of 3 medians of single calls
    (common.best_median_seconds). One process per point (track_ benchmarks have one round)."""

    params = [common.KERNELS, common.BAG_VOCAB_SIZES, [64], common.BAG_LENGTHS]
    param_names = ["kernel", "vocab_size", "dim", "bag_length"]
    setup = Bags.setup

    def track_bandwidth(self, kernel, vocab_size, dim, bag_length):
        seconds = common.best_median_seconds(
            lambda: self.K.lookup_bag(self.W, self.ids, self.offsets, out=self.out)
        )
        return common.gbps(
            LOOKUP_BAG.moved_bytes(self.ids.shape[0], vocab_size, dim, 4, bag_length), seconds
        )

    track_bandwidth.unit = "GB/s"


class BagModes(common.BagTiming):
    """Bags.time_bag's call in every mode, unweighted and with per_sample_weights, at one point:
    V = 100_000, D = 64, bag_length 8 (B = n / 8). per_sample_weights are float32 in [0.5, 1.5)
    (common.bag_weights). max with weights (refused by every kernel) and the modes a kernel
    does not implement (its `bag_modes` trait: a max is not a matmul) are n/a. Checked once per
    process against LOOKUP_BAG's reference (max bit for bit)."""

    VOCAB_SIZE, DIM, BAG_LENGTH = 100_000, 64, 8
    params = [common.KERNELS, common.BAG_MODES, [False, True]]
    param_names = ["kernel", "mode", "weighted"]

    def setup(self, kernel, mode, weighted):
        V, D, L = self.VOCAB_SIZE, self.DIM, self.BAG_LENGTH
        common.require_bag(kernel, V, D, L, mode=mode, weighted=weighted)
        self.K = kernels.KERNELS[kernel]
        self.W, self.ids, self.offsets, self.out = common.bag_data(V, D, L)
        self.psw = common.bag_weights(self.ids.shape[0]) if weighted else None
        common.check_once(
            ("bag_mode", kernel, mode, weighted),
            lambda: common.check_bag(self.K, self.W, self.ids, self.offsets, self.out, mode,
                                     self.psw),
        )

    def time_bag(self, kernel, mode, weighted):
        self.K.lookup_bag(self.W, self.ids, self.offsets, mode=mode,
                          per_sample_weights=self.psw, out=self.out)


class BagGrad(common.BagTiming):
    """dW = K.lookup_bag_grad(G, ids, offsets, V, mode="sum", out=dW): each id's row receives
    its bag's gradient row (G (B, D) float32 in [-1, 1), dW (V, D) preallocated, overwritten).

    Checked once per process: a sum-mode bag gradient is the lookup gradient of the expanded
    rows G[bag of each id], so LOOKUP_GRAD's check applies. Every kernel's backward scatters one
    row per id, so the traits' n here is the n ids (onehot_dense's (n, V) one-hot is beyond its
    budget at these V).
    """

    params = [common.KERNELS, [10_000, 1_000_000], [64], [1, 8]]
    param_names = ["kernel", "vocab_size", "dim", "bag_length"]

    def setup(self, kernel, vocab_size, dim, bag_length):
        common.require_bag(kernel, vocab_size, dim, bag_length, backward=True)
        self.K = kernels.KERNELS[kernel]
        self.G, self.ids, self.offsets, self.dW = common.bag_grad_data(vocab_size, dim,
                                                                       bag_length)
        common.check_once(
            ("bag_grad", kernel, vocab_size, dim, bag_length),
            lambda: common.check_bag_grad(self.K, self.G, self.ids, self.offsets, vocab_size,
                                          self.dW),
        )

    def time_bag_grad(self, kernel, vocab_size, dim, bag_length):
        self.K.lookup_bag_grad(self.G, self.ids, self.offsets, vocab_size, out=self.dW)

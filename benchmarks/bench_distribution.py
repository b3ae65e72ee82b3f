"""Does the id distribution matter? Uniform ids against Zipf-distributed ids (hot rows)."""
import kernels

from . import common


class Distribution(common.Timing):
    """out = W[ids] (preallocated out) for uniform ids and for Zipf ids, n = 16_384.

    zipf: ranks from rng.zipf(1.1), id = rank - 1 (frequent ids first, as in a frequency-sorted
    vocabulary); ranks beyond the vocabulary are redrawn, so it is Zipf's law truncated to
    [0, V) (see common.zipf_ids). Distinct ids in the batch of 16,384: 2,994 (zipf) against 8,056
    (uniform) at V = 1e4, 5,603 against 16,249 at V = 1e6; id 0 alone is 12-15% of a Zipf batch.
    The hot rows stay in cache.
    table = (vocab_size, dim).
    """

    params = [["uniform", "zipf"], common.GATHERS + ["onehot_sparse"], common.TABLES]
    param_names = ["distribution", "kernel", "table"]

    def setup(self, distribution, kernel, table):
        vocab_size, dim = table
        common.require_budget(kernel, vocab_size, dim)
        self.K = kernels.KERNELS[kernel]
        self.W, self.ids, self.out = common.lookup_data(vocab_size, dim, distribution)
        common.check_once(
            ("distribution", distribution, kernel, table),
            lambda: common.check_lookup(self.K, self.W, self.ids, self.out),
        )

    def time_lookup(self, distribution, kernel, table):
        self.K(self.W, self.ids, out=self.out)

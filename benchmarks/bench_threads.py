"""How much do the compiled kernels gain from threads? One thread against all of them."""
import kernels

from . import common


class Threads(common.Timing):
    """out = W[ids] (preallocated out, uniform ids, n = 16_384) with 1 thread or all of them.

    The count is set with kernels.set_num_threads in setup (restored in teardown), so the timed
    call is the same as Lookup's. threads = "all" is every core this process may use
    (common.ALL_THREADS). table = (vocab_size, dim). The kernels run serially anyway when the
    output is under 256 KiB; every table here is above that.
    """

    params = [common.COMPILED, [1, "all"], [(100_000, 32), (1_000_000, 128), (1_000, 512)]]
    param_names = ["kernel", "threads", "table"]

    def setup(self, kernel, threads, table):
        vocab_size, dim = table
        common.require_budget(kernel, vocab_size, dim)
        self.K = kernels.KERNELS[kernel]
        self.W, self.ids, self.out = common.lookup_data(vocab_size, dim)
        kernels.set_num_threads(common.ALL_THREADS if threads == "all" else threads)
        common.check_once(
            ("threads", kernel, threads, table),
            lambda: common.check_lookup(self.K, self.W, self.ids, self.out),
        )

    def teardown(self, kernel, threads, table):
        kernels.set_num_threads(common.ALL_THREADS)

    def time_lookup(self, kernel, threads, table):
        self.K(self.W, self.ids, out=self.out)

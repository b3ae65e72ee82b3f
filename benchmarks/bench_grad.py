"""Backward of the lookup, dW = scatter-add of the output gradient's rows, by every kernel."""
import kernels

from . import common


class LookupGrad(common.Timing):
    """dW = K.lookup_grad(G, ids, V, out=dW): dW[ids[k]] += G[k], every other row zero.

    Same grid and ids as Lookup; G is float32 (32, 512, D) in [-1, 1); dW (V, D) is preallocated
    (time_lookup_grad) or left to the kernel (peakmem_lookup_grad: peak RSS of the whole process).
    Checked once per parameter set against a float64 np.add.at reference: each element within
    k * eps(float32) * sum|g| of it (k = its number of contributions), unhit rows exactly +0.0.
    No track_bandwidth (since cdb751f: its 100 processes took 84-89 s of `make bench`, over the
    budget on a 12 GB/s machine): the report derives the bandwidth from time_lookup_grad and
    LOOKUP_GRAD.moved_bytes, (n*D [read G] + 2*n*D [dW rows read and written] + V*D [zeroing
    dW]) * itemsize, the same count as the roofline script and `python -m kernels`.
    """

    params = [common.KERNELS, common.VOCAB_SIZES, common.DIMS]
    param_names = ["kernel", "vocab_size", "dim"]

    def setup(self, kernel, vocab_size, dim):
        common.require_budget(kernel, vocab_size, dim, backward=True)
        self.K = kernels.KERNELS[kernel]
        self.G, self.ids, self.dW = common.grad_data(vocab_size, dim)
        common.check_once(
            ("grad", kernel, vocab_size, dim),
            lambda: common.check_lookup_grad(self.K, self.G, self.ids, vocab_size, self.dW),
        )

    def time_lookup_grad(self, kernel, vocab_size, dim):
        self.K.lookup_grad(self.G, self.ids, vocab_size, out=self.dW)

    def peakmem_lookup_grad(self, kernel, vocab_size, dim):
        self.K.lookup_grad(self.G, self.ids, vocab_size)

"""'An Embedding is a Dense layer on one-hot inputs', measured: matmul, encoding, gather."""
import numpy as np

from kernels import onehot_dense, onehot_sparse

from . import common

_ENCODE = {"dense": onehot_dense.onehot, "sparse": onehot_sparse.onehot}


class OneHotMatmul(common.Timing):
    """The Dense-layer view of the lookup at n = 16_384 ids, float32, split into its parts.

    time_encode: building the (n, V) one-hot alone: a dense ndarray (kernels.onehot_dense.onehot,
    the whole batch at once, not in the kernel's memory-bounded chunks) or a scipy CSR array
    (kernels.onehot_sparse.onehot).
    time_matmul: the matmul alone on the pre-encoded one-hot X: np.matmul(X, W, out=out) (BLAS)
    for dense; X @ W for sparse (scipy has no `out`: the result is allocated).
    time_gather: the lookup itself, np.take(W, ids, axis=0, out=out, mode="clip") on the same
    data (the same for both forms: the ratio matmul / gather is the price of the Dense view).
    Each form's matmul is checked once to equal W[ids] bitwise.
    """

    params = [["dense", "sparse"], [100, 1_000, 10_000], [8, 128]]
    param_names = ["form", "vocab_size", "dim"]

    def setup(self, form, vocab_size, dim):
        if form == "dense":
            common.require_budget("onehot_dense", vocab_size, dim)
        self.encode = _ENCODE[form]
        self.W, ids, out = common.lookup_data(vocab_size, dim)
        self.ids = ids.reshape(-1)
        self.out = out.reshape(self.ids.size, dim)
        self.X = common.cached(
            ("onehot", form, vocab_size), lambda: self.encode(self.ids, vocab_size, common.DTYPE)
        )
        common.check_once(("onehot", form, vocab_size, dim), self._check)

    def _check(self):
        self.out.fill(np.nan)
        self.time_matmul(None, None, None)
        if isinstance(self.X, np.ndarray):
            common.assert_gathered(self.out, self.W, self.ids, "dense one-hot @ W")
        else:
            common.assert_gathered(self.X @ self.W, self.W, self.ids, "sparse one-hot @ W")

    def time_encode(self, form, vocab_size, dim):
        self.encode(self.ids, vocab_size, common.DTYPE)

    def time_matmul(self, form, vocab_size, dim):
        if isinstance(self.X, np.ndarray):
            np.matmul(self.X, self.W, out=self.out)
        else:
            self.X @ self.W

    def time_gather(self, form, vocab_size, dim):
        np.take(self.W, self.ids, axis=0, out=self.out, mode="clip")

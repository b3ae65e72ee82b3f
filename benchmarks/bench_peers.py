"""The same lookup by PyTorch, for scale, where torch is importable (never a dependency)."""
import functools

from . import common


class Peers(common.Timing):
    """torch on the same data as Lookup (uniform int64 ids, n = 16_384, float32); n/a without torch.

    method "embedding": torch.nn.functional.embedding(ids, W), which allocates its output (the
    way it is used). method "index_select_out": torch.index_select(W, 0, ids, out=out) into a
    preallocated out, the form comparable to Lookup.time_lookup. torch shares the numpy arrays'
    memory (torch.from_numpy). Checked once against W[ids] bitwise. table = (vocab_size, dim).
    """

    params = [["embedding", "index_select_out"], common.TABLES]
    param_names = ["method", "table"]

    def setup(self, method, table):
        try:
            import torch
        except ImportError:
            raise NotImplementedError("torch is not installed") from None
        vocab_size, dim = table
        W, ids, out = common.lookup_data(vocab_size, dim)
        tW, tids = torch.from_numpy(W), torch.from_numpy(ids)
        if method == "embedding":
            self.call = functools.partial(torch.nn.functional.embedding, tids, tW)
        else:
            out2d = torch.from_numpy(out.reshape(-1, dim))
            self.call = functools.partial(torch.index_select, tW, 0, tids.reshape(-1), out=out2d)
        common.check_once(("peers", method, table), lambda: self._check(W, ids, out))

    def _check(self, W, ids, out):
        out.fill(float("nan"))
        got = self.call().numpy()
        common.assert_gathered(got.reshape(out.shape), W, ids, "torch")

    def time_lookup(self, method, table):
        self.call()

"""Low-precision tables: kernels.lookup and kernels.lookup_bag of float16, bfloat16, int8 and
int4 tables (kernels.quantize, kernels/_tables.py) against the float32 table, by every kernel
that implements the format.

n = common.FORMAT_N_IDS uniform int64 ids; bags: 8,192 bags of 8 (sum). Tables from
common.format_table (a quantized block tiled down the table). A kernel without the format, V =
1e7 for float32/float16/bfloat16 (int8 and int4 are the formats for tables that large) and
points over the memory budget are n/a. The ratios the README quotes come from
`python -m tools.formats_roofline`, which times every format side by side in one process.
"""
import numpy as np

import kernels

from . import common


class LowPrecision(common.FormatTiming):
    """time_lookup: K.lookup(table, ids, out=out) (n, D) float32; time_bag: K.lookup_bag(table,
    ids, offsets, out=out) (B, D). Checked once per process against the rows' dequantized values
    (bit for bit; bags within the summation bound). D = 64 and 128, where the issue's bars for
    narrow and wide rows lie; D = 256 (tables twice as large to build and check: `make bench`'s
    budget) is measured by tools.formats_roofline, not here."""

    params = [common.FORMATS, common.FORMAT_KERNELS, [10_000, 1_000_000, 10_000_000], [64, 128]]
    param_names = ["format", "kernel", "vocab_size", "dim"]

    def setup(self, format, kernel, vocab_size, dim):
        common.require_format(kernel, format, vocab_size, dim)
        self.K = kernels.KERNELS[kernel]
        self.T = common.format_table(format, vocab_size, dim)
        n = common.FORMAT_N_IDS
        self.ids = common.uniform_ids(vocab_size, shape=(n,))
        self.offsets = np.arange(0, n, common.FORMAT_BAG_LENGTH, dtype=np.int64)
        self.out = common.cached(("format_out", n, dim),
                                 lambda: kernels.aligned_empty((n, dim), np.float32))
        self.bag_out = self.out[:self.offsets.shape[0]]
        common.check_once(("format", format, kernel, vocab_size, dim), self._check)

    def _check(self):
        common.check_format_lookup(self.K, self.T, self.ids, self.out)
        common.check_format_bag(self.K, self.T, self.ids, self.offsets, self.bag_out)

    def time_lookup(self, format, kernel, vocab_size, dim):
        self.K.lookup(self.T, self.ids, out=self.out)

    def time_bag(self, format, kernel, vocab_size, dim):
        self.K.lookup_bag(self.T, self.ids, self.offsets, out=self.bag_out)


class LowPrecisionMemory(common.FormatTiming):
    """peakmem of a process holding a (1e6, 128) table of each format and looking up n ids in
    it with cython_gather: the table's bytes dominate (float32 512 MB, float16/bfloat16 256 MB,
    int8 136 MB, int4 68 MB). track_table_bytes is the storage alone (table.nbytes)."""

    params = [common.FORMATS]
    param_names = ["format"]
    vocab_size, dim = 1_000_000, 128

    def setup(self, format):
        LowPrecision.setup(self, format, "cython_gather", self.vocab_size, self.dim)

    _check = LowPrecision._check

    def peakmem_lookup(self, format):
        self.K.lookup(self.T, self.ids, out=self.out)

    def track_table_bytes(self, format):
        return int(self.T.nbytes)

    track_table_bytes.unit = "bytes"

"""Training a table: the sparse backward (kernels.SparseGrad) and the optimizer steps of
kernels.optim, against the dense backward for scale.

Exercises kernels/_sparse.py (lookup_grad(..., sparse=True)) and kernels/optim.py. The peers
(torch's nn.Embedding(sparse=True) with its optimizers, FBGEMM's CPU TBE) are timed by
`python -m tools.train_step`, not here: the asv environment has neither installed.
"""
import numpy as np

import kernels
from kernels._ops import LOOKUP_GRAD

from . import common

KERNEL = "cython_gather"
"""The kernel of every op here (the sparse gradient's scatter-add and the optimizers' kernel=)."""


class SparseTraining(common.TrainingTiming):
    """One training op on n = 16,384 uniform ids (1-D), G (n, D) float32 in [-1, 1):

    - sparse_grad: kernels.lookup_grad(G, ids, V, sparse=True, kernel="cython_gather"), the
      coalesced SparseGrad (rows, values): its cost should not grow with V;
    - dense_grad: the dense lookup_grad into a preallocated (V, D) dW (zeroes all of it): the
      scale reference, n/a beyond V = 1e6;
    - dense_sgd: dense_grad, then the dense SGD update of the whole table (W -= lr * dW): the
      scale reference of a step, n/a beyond V = 1e6;
    - sgd, adagrad, rowwise_adagrad, sparse_adam: one opt.step(ids, G) of kernels.optim's
      optimizer (lr = 0.01, its default hyperparameters, kernel="cython_gather") bound to a
      (V, D) float32 table: coalesce, then update the touched rows of the table and the state in
      place. The same batch every call; the state persists across calls (steps accumulate, as in
      training).

    Checked once per process: sparse_grad's values against LOOKUP_GRAD's float64 reference of
    the batch renumbered onto its rows (rows must be np.unique(ids)), dense_grad as LookupGrad
    checks it; the optimizers' first step (which also compiles) must leave the rows no id
    touches bitwise unchanged. sparse_grad allocates its values (nnz x D) every call: where
    glibc serves them from fresh mmap'd pages it measured 3.8 ms (D = 16) and 15 ms (D = 64) at
    V >= 1e6 against 0.8 and 1.2 ms from reused heap memory (see tools/train_step.py). n/a where the table, its state and the step need more than
    common.MAX_PROCESS_BYTES (sparse_adam at V = 1e7, D = 64: three 2.5 GB tables).
    """

    params = [["sparse_grad", "dense_grad", "dense_sgd", *common.OPTIMIZERS],
              [10_000, 1_000_000, 10_000_000], [16, 64, 256]]
    param_names = ["op", "vocab_size", "dim"]

    def setup(self, op, vocab_size, dim):
        common.require_training_budget(op, vocab_size, dim)
        self.G, self.ids = common.training_grad_data(vocab_size, dim)
        if op == "sparse_grad":
            common.check_once(("training", op, vocab_size, dim),
                              lambda: _check_sparse_grad(self.G, self.ids, vocab_size))
            self._call = lambda: kernels.lookup_grad(self.G, self.ids, vocab_size, sparse=True,
                                                     kernel=KERNEL)
        elif op == "dense_sgd":
            W = common.training_table(vocab_size, dim)
            dW = common.cached(("training_dW", vocab_size, dim),
                               lambda: np.empty((vocab_size, dim), common.DTYPE))
            lr = common.DTYPE.type(common.TRAINING_LR)

            def dense_step():
                kernels.lookup_grad(self.G, self.ids, vocab_size, kernel=KERNEL, out=dW)
                np.multiply(dW, lr, out=dW)
                np.subtract(W, dW, out=W)

            self.dW = dW
            common.check_once(("training", op, vocab_size, dim),
                              lambda: _check_first_step(W, self.ids, dense_step, op))
            self._call = dense_step
        elif op == "dense_grad":
            self.dW = common.cached(("training_dW", vocab_size, dim),
                                    lambda: np.empty((vocab_size, dim), common.DTYPE))
            common.check_once(
                ("training", op, vocab_size, dim),
                lambda: common.check_lookup_grad(KERNEL, self.G, self.ids, vocab_size, self.dW),
            )
            self._call = lambda: kernels.lookup_grad(self.G, self.ids, vocab_size, kernel=KERNEL,
                                                     out=self.dW)
        else:
            W = common.training_table(vocab_size, dim)
            self.opt = common.cached(("training_opt", op, vocab_size, dim),
                                     lambda: common.make_optimizer(op, W, KERNEL))
            common.check_once(("training", op, vocab_size, dim),
                              lambda: _check_first_step(self.opt.weights, self.ids,
                                                        lambda: self.opt.step(self.ids, self.G),
                                                        op))
            self._call = lambda: self.opt.step(self.ids, self.G)

    def time_op(self, op, vocab_size, dim):
        self._call()


class SparseTrainingBags(common.TrainingTiming):
    """The same ops on bags: n = 16,384 uniform ids in 2,048 bags of 8 (mode "sum"), G (2048, D)
    the gradient of the pooled output:

    - sparse_grad: kernels.lookup_bag_grad(G, ids, offsets, V, sparse=True,
      kernel="cython_gather");
    - sgd, adagrad, rowwise_adagrad, sparse_adam: one opt.step_bag(ids, offsets, G) (the fused
      backward + update of kernels.optim).

    Checked once per process: sparse_grad against the dense bag backward's rows; the
    optimizers' first step must leave the rows no id touches bitwise unchanged.
    """

    bag_length = 8
    params = [["sparse_grad", *common.OPTIMIZERS], [100_000, 1_000_000], [64]]
    param_names = ["op", "vocab_size", "dim"]

    def setup(self, op, vocab_size, dim):
        common.require_training_budget(op, vocab_size, dim)
        ids, offsets = common.bag_ids(vocab_size, self.bag_length, common.N_IDS)
        G = common.cached(("training_bag_grad", dim, offsets.shape[0]),
                          lambda: common.make_grad(dim, shape=(offsets.shape[0],)))
        self.ids, self.offsets, self.G = ids, offsets, G
        if op == "sparse_grad":
            common.check_once(("training_bags", op, vocab_size, dim),
                              lambda: _check_sparse_bag_grad(G, ids, offsets, vocab_size))
            self._call = lambda: kernels.lookup_bag_grad(G, ids, offsets, vocab_size,
                                                         sparse=True, kernel=KERNEL)
        else:
            W = common.training_table(vocab_size, dim)
            self.opt = common.cached(("training_opt", op, vocab_size, dim),
                                     lambda: common.make_optimizer(op, W, KERNEL))
            common.check_once(
                ("training_bags", op, vocab_size, dim),
                lambda: _check_first_step(W, ids, lambda: self.opt.step_bag(ids, offsets, G),
                                          op))
            self._call = lambda: self.opt.step_bag(ids, offsets, G)

    def time_op(self, op, vocab_size, dim):
        self._call()


class SparseTrainingMemory(common.TrainingTiming):
    """peakmem of Adagrad training a (1e6, D) float32 table on n uniform ids: peak RSS of the
    whole process, which includes the table (V*D*4 bytes: 64 MB at D = 16, 256 MB at D = 64)
    and Adagrad's state["sum"] (the same size; paged in whole in setup, as after a long run).
    Above that fixed V*D part, what grows between n = 1,024 and 131,072 is the step's own
    memory, ~n*D (the batch, the coalesced gradient, the step's temporaries): a dense gradient
    would add another V*D*4 bytes. track_step_bytes is that part alone: the peak of NumPy's
    allocations during one step (tracemalloc), in bytes, the fused step's workspace included
    (a Python thread keeps it between steps; it is dropped before the measured one).
    """

    vocab_size = 1_000_000
    params = [[1_024, 16_384, 131_072], [16, 64]]
    param_names = ["n", "dim"]

    def setup(self, n, dim):
        common.require_training_budget("adagrad", self.vocab_size, dim, n)
        self.G, self.ids = common.training_grad_data(self.vocab_size, dim, n)
        W = common.training_table(self.vocab_size, dim)

        def make():
            opt = common.make_optimizer("adagrad", W, KERNEL)
            opt.state["sum"].fill(0.0)  # commit every page of the state, as after a long run
            opt.step(self.ids, self.G)  # compile, warm the pages of the step
            return opt

        self.opt = common.cached(("training_memory_opt", n, dim), make)

    def peakmem_step(self, n, dim):
        self.opt.step(self.ids, self.G)

    def track_step_bytes(self, n, dim):
        import tracemalloc

        from kernels._optim_numba import free_workspace

        free_workspace()
        tracemalloc.start()
        try:
            self.opt.step(self.ids, self.G)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    track_step_bytes.unit = "bytes"


def _check_sparse_grad(G, ids, vocab_size):
    sg = kernels.lookup_grad(G, ids, vocab_size, sparse=True, kernel=KERNEL)
    rows, slot = np.unique(ids, return_inverse=True)
    np.testing.assert_array_equal(sg.rows, rows)
    LOOKUP_GRAD.assert_matches(sg.values, G, slot.reshape(ids.shape), rows.shape[0],
                               f"{KERNEL} (sparse, renumbered onto its rows)")


def _check_sparse_bag_grad(G, ids, offsets, vocab_size):
    sg = kernels.lookup_bag_grad(G, ids, offsets, vocab_size, sparse=True, kernel=KERNEL)
    rows = np.unique(ids)
    np.testing.assert_array_equal(sg.rows, rows)
    dense = kernels.lookup_bag_grad(G, ids, offsets, vocab_size, kernel=KERNEL)
    np.testing.assert_array_equal(sg.values.view(np.uint32), dense[rows].view(np.uint32))


def _check_first_step(W, ids, step, what):
    """step() (the first, which also compiles) must leave the rows of W no id touches bitwise
    unchanged and the touched rows finite."""
    untouched = np.ones(W.shape[0], bool)
    untouched[ids] = False
    some = np.flatnonzero(untouched)[:1000]  # rows no id touches (none at small V)
    before = W[some]  # a copy of 1,000 rows, never of the table (1e7 rows: 2.5 GB)
    step()
    np.testing.assert_array_equal(W[some].view(np.uint32), before.view(np.uint32))
    if not np.isfinite(W[ids]).all():
        raise AssertionError(f"{what}: non-finite weights after one step")

"""PyTorch drop-ins (kernels/torch.py: kernels.torch.EmbeddingBag and its fused optimizer step)
against torch's own nn.EmbeddingBag, in a small recommender (common.recsys_model).

n/a without torch: the default asv environment (`make bench`) has none; `make bench-peers` runs
the suite in an environment that has torch 2.13.
"""
import kernels

from . import common

TABLES = 2
"""EmbeddingBags in the model, each of the parameter's vocab_size (x 64 float32: 256 MB each at
V = 1e6)."""


def _import_torch():
    """torch on the thread count of our kernels; NotImplementedError (asv: n/a) without it."""
    try:
        import torch
    except ImportError:
        raise NotImplementedError("torch is not installed") from None
    import kernels.torch  # noqa: F401  (registers the operators)
    torch.set_num_threads(kernels.get_num_threads())
    return torch


class Torch(common.Timing):
    """A recommender of TABLES EmbeddingBag(vocab_size, 64, mode="sum") tables (a batch of 2,048
    samples, one bag of 8 uniform int64 ids per sample and table), their pooled rows concatenated
    into an MLP (128 -> 256 -> 64 -> 1), binary cross-entropy on synthetic clicks.

    modules "torch": torch.nn.EmbeddingBag(sparse=True) and torch.optim.SGD over every
    parameter; "kernels": kernels.torch.EmbeddingBag(sparse=True), whose tables are updated by
    the fused kernels.optim.SGD step in the backward (fuse_optimizer) where a step is timed, and
    torch.optim.SGD for the MLP. lr = 0.05. torch runs on kernels.get_num_threads() threads.

    - time_forward: the bags' forward (no grad);
    - time_forward_backward: the bags' forward and backward of (pooled * G).sum() to sparse
      gradients (ours: coalesced; torch's: not), no update;
    - time_embedding_step: the same, then the tables' update (torch: optim.SGD.step() on the
      sparse gradients; ours: the fused step inside the backward);
    - time_train_step: forward, loss, backward, optimizer step of the whole model.

    The tables keep training across calls (the same batch every call). Checked once per
    process: each table's pooled output against LOOKUP_BAG's float64 reference; then one
    backward and one training step warm up (Numba compiles the fused step there, not in a
    timed call).
    rounds = 1 and short samples (0.3 s): 16 processes, each importing torch and building
    TABLES tables, keep the class near a minute.
    """

    params = [["torch", "kernels"], [100_000, 1_000_000]]
    param_names = ["modules", "vocab_size"]
    rounds = 1
    repeat = (2, 20, 0.3)

    def setup(self, modules, vocab_size):
        torch = self.torch = _import_torch()
        vocab = (vocab_size,) * TABLES

        def make():
            tables = [common.recsys_table(vocab_size, seed=t) for t in range(TABLES)]
            ids, offsets, labels = common.recsys_batch(vocab)
            if modules == "torch":
                bag_class = torch.nn.EmbeddingBag
            else:
                import kernels.torch as kt

                bag_class = kt.EmbeddingBag
            model = common.recsys_model(torch, bag_class, tables)
            return tables, [torch.from_numpy(i) for i in ids], torch.from_numpy(offsets), \
                torch.from_numpy(labels), model, ids, offsets

        tables, self.ids, self.offsets, self.labels, self.model, ids_np, offsets_np = \
            common.cached(("torch_recsys", modules, vocab_size), make)
        self.G = common.cached(
            ("torch_recsys_G",),
            lambda: torch.from_numpy(common.make_grad(common.RECSYS_DIM * TABLES,
                                                      shape=(common.RECSYS_BATCH,))))
        bags = self.model.bags
        if modules == "torch":
            self.fused = [None] * TABLES
            self.bag_opt = torch.optim.SGD(bags.parameters(), lr=common.RECSYS_LR)
            self.opt = torch.optim.SGD(self.model.parameters(), lr=common.RECSYS_LR)
        else:
            import kernels.optim

            self.fused = [kernels.optim.SGD(W, common.RECSYS_LR) for W in tables]
            self.bag_opt = None
            self.opt = torch.optim.SGD(self.model.mlp.parameters(), lr=common.RECSYS_LR)
        common.check_once(("torch_recsys", modules, vocab_size),
                          lambda: self._check(tables, ids_np, offsets_np))
        common.check_once(("torch_recsys_warm", modules, vocab_size), self._warm_up)

    def _check(self, tables, ids, offsets):
        with self.torch.no_grad():
            for bag, W, i, ti in zip(self.model.bags, tables, ids, self.ids):
                common.assert_bag(bag(ti, self.offsets).numpy(), W, i, offsets,
                                  what=type(bag).__module__)

    def _warm_up(self):
        """One call of each path, outside the timed calls: the first compiles the fused
        optimizer's Numba loops and pages in what the steps touch."""
        self.time_forward_backward(None, None)
        self.time_train_step(None, None)

    def _fuse(self, on):
        for bag, opt in zip(self.model.bags, self.fused):
            if opt is not None:
                bag.fused_optimizer = opt if on else None

    def time_forward(self, modules, vocab_size):
        with self.torch.no_grad():
            self.model.pooled(self.ids, self.offsets)

    def time_forward_backward(self, modules, vocab_size):
        self._fuse(False)
        self.model.zero_grad(set_to_none=True)
        (self.model.pooled(self.ids, self.offsets) * self.G).sum().backward()

    def time_embedding_step(self, modules, vocab_size):
        self._fuse(True)
        self.model.zero_grad(set_to_none=True)
        (self.model.pooled(self.ids, self.offsets) * self.G).sum().backward()
        if self.bag_opt is not None:
            self.bag_opt.step()

    def time_train_step(self, modules, vocab_size):
        self._fuse(True)
        self.opt.zero_grad(set_to_none=True)
        logits = self.model(self.ids, self.offsets)
        loss = self.torch.nn.functional.binary_cross_entropy_with_logits(logits, self.labels)
        loss.backward()
        self.opt.step()

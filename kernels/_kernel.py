"""The Kernel object: one implementation of the lookup and its gradient behind the shared checks."""
from kernels._validate import grad_args, lookup_args


class Kernel:
    """A named lookup implementation; calling it is `lookup`.

    `gather(W, ids, out2d)` writes W[ids] into out2d; `scatter_add(G, ids, dW, zeroed)` writes the
    gradient into dW (all of it: rows no id hits must end up zero; `zeroed` says dW already is).
    Both receive checked arguments with at least one id, one column and one vocabulary row.
    """

    def __init__(self, name, gather, scatter_add, summary):
        self.name = name
        self._gather = gather
        self._scatter_add = scatter_add
        self.summary = summary
        self.decision = None
        """Set by kernels.fastest: which measurement last chose this kernel, and its source."""

    def lookup(self, weights, ids, *, out=None):
        """Return weights[ids] (shape ids.shape + (dim,)), written into `out` if given."""
        W, flat, out2d, result = lookup_args(weights, ids, out)
        if out2d.size:
            self._gather(W, flat, out2d)
        return result

    def __call__(self, weights, ids, *, out=None):
        return self.lookup(weights, ids, out=out)

    def lookup_grad(self, grad, ids, vocab_size, *, out=None):
        """Return dW (vocab_size, dim) with dW[ids[k]] += grad[k] for every k; `out` is overwritten."""
        G, flat, dW, zeroed = grad_args(grad, ids, vocab_size, out)
        if G.size and dW.size:
            self._scatter_add(G, flat, dW, zeroed)
        elif not zeroed:
            dW.fill(0)
        return dW

    def __repr__(self):
        chosen = f"; {self.decision}" if self.decision else ""
        return f"<kernel {self.name}: {self.summary}{chosen}>"

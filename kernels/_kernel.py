"""The Kernel: one named implementation, a mapping from (operation, table format) to a function,
and traits that benchmarks, reports and "auto" read. Every call runs the operation's shared
checks first; the function receives checked arguments."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from kernels._formats import Format, format_named
from kernels._ops import LOOKUP, LOOKUP_GRAD, Operation, operation_named


_prepare_lookup = LOOKUP.prepare
_prepare_lookup_grad = LOOKUP_GRAD.prepare


def _no_budget(op, vocab_size, dim, n_ids, itemsize):
    return None


def _no_scratch(op, vocab_size, dim, n_ids, itemsize):
    return 0


class Kernel:
    """A named implementation of some (operation, format) pairs; calling it is `lookup`.

    traits:
    - `compiled`: runs compiled loops (Numba/Cython) with the package's thread knob;
    - `family`: "gather" (reads the rows it needs) or "onehot" (the Dense-layer view, a matmul);
    - `colour`: its colour in every picture and report;
    - `over_budget(op, V, D, n, itemsize)`: why a call of these sizes is too costly to run in a
      benchmark (a sentence), or None; the one definition of that kernel's limits;
    - `scratch_bytes(op, V, D, n, itemsize)`: memory a call allocates beyond its output.
    """

    def __init__(
        self,
        name: str,
        summary: str,
        implements: Mapping[tuple[Operation, Format | Iterable[Format]], Callable],
        *,
        compiled: bool,
        family: str,
        colour: str,
        over_budget: Callable = _no_budget,
        scratch_bytes: Callable = _no_scratch,
    ):
        self.name = name
        self.summary = summary
        self.compiled = compiled
        self.family = family
        self.colour = colour
        self.over_budget = over_budget
        self.scratch_bytes = scratch_bytes
        self._impls: dict[str, dict[Format, Callable]] = {}
        for (op, formats), fn in implements.items():
            formats = (formats,) if isinstance(formats, Format) else tuple(formats)
            for fmt in formats:
                self._impls.setdefault(op.name, {})[fmt] = fn
        self._lookup = self._impls.get(LOOKUP.name, {})
        self._lookup_grad = self._impls.get(LOOKUP_GRAD.name, {})

    def implements(self, op, fmt) -> bool:
        """Whether this kernel has a function for (operation, format) (names or objects); False
        for a format nobody declared."""
        op = operation_named(op)
        try:
            return format_named(fmt) in self._impls.get(op.name, {})
        except ValueError:
            return False

    def pairs(self) -> list[tuple[str, str]]:
        """Every (operation name, format name) this kernel implements."""
        return [(op, fmt.name) for op, fmts in self._impls.items() for fmt in fmts]

    def function(self, op, fmt) -> Callable:
        """The function for (operation, format); NotImplementedError naming the kernels that
        implement it when this one does not."""
        op = operation_named(op)
        fn = self._impls.get(op.name, {}).get(format_named(fmt))
        if fn is None:
            raise not_implemented(self.name, op, fmt)
        return fn

    def lookup(self, weights, ids, *, out=None):
        """Return weights[ids] (shape ids.shape + (dim,)), written into `out` if given."""
        W, fmt, flat, out2d, result = _prepare_lookup(weights, ids, out)
        fn = self._lookup.get(fmt) or self.function(LOOKUP, fmt)
        if out2d.size:
            fn(W, flat, out2d)
        return result

    def __call__(self, weights, ids, *, out=None):
        return self.lookup(weights, ids, out=out)

    def lookup_grad(self, grad, ids, vocab_size, *, out=None):
        """Return dW (vocab_size, dim) with dW[ids[k]] += grad[k] for every k; `out` is overwritten."""
        G, fmt, flat, dW, zeroed = _prepare_lookup_grad(grad, ids, vocab_size, out)
        fn = self._lookup_grad.get(fmt) or self.function(LOOKUP_GRAD, fmt)
        run_grad(fn, G, flat, dW, zeroed)
        return dW

    def __repr__(self) -> str:
        return f"<kernel {self.name}: {self.summary}>"


def run_grad(fn, G, flat, dW, zeroed):
    """Call a lookup_grad function unless there is nothing to add (then only zero dW)."""
    if G.size and dW.size:
        fn(G, flat, dW, zeroed)
    elif not zeroed:
        dW.fill(0)


def not_implemented(kernel_name, op, fmt) -> NotImplementedError:
    """The error for a kernel asked for a pair it does not implement, naming those that do."""
    from kernels._registry import kernels_implementing

    op = operation_named(op)
    fmt_name = getattr(fmt, "name", fmt)
    others = kernels_implementing(op, fmt_name)
    which = ", ".join(others) if others else "no registered kernel"
    return NotImplementedError(
        f"kernel {kernel_name!r} does not implement {op.name} for {fmt_name} tables; "
        f"implemented by: {which}"
    )

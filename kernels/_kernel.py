"""The Kernel: one named implementation, a mapping from (operation, table format) to a function,
and traits that benchmarks, reports and "auto" read. Every call runs the operation's shared
checks first; the function receives checked arguments."""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from kernels._formats import Format, format_named
from kernels._ops import LOOKUP, LOOKUP_BAG, LOOKUP_BAG_GRAD, LOOKUP_GRAD, Operation, \
    operation_named
from kernels._threads import ids_changed_error
from kernels._validate import BAG_MODES, IdsOutOfRange, check_ids, refuse_table


_prepare_lookup = LOOKUP.prepare
_prepare_lookup_grad = LOOKUP_GRAD.prepare
_prepare_bag = LOOKUP_BAG.prepare
_prepare_bag_grad = LOOKUP_BAG_GRAD.prepare


_FLOAT32 = np.dtype(np.float32)


def through_float32(fn, args, out):
    """fn(*args, out), where out may be float16 (out_dtype=np.float16): kernel functions write
    float32, so they then write a float32 scratch that is cast into out once."""
    if out.dtype.itemsize == 2:
        scratch = np.empty(out.shape, _FLOAT32)
        fn(*args, scratch)
        out[...] = scratch
    else:
        fn(*args, out)


def _name_the_bad_id(ids, vocab_size):
    """After a kernel function's own bounds pass raised IdsOutOfRange: the shared check's
    IndexError naming the id, or, if the ids hold none now (changed meanwhile), that error."""
    check_ids(ids, vocab_size)
    raise ids_changed_error(vocab_size) from None


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
    - `scratch_bytes(op, V, D, n, itemsize)`: memory a call allocates beyond its output;
    - `bag_modes`: the bag modes its lookup_bag (and lookup_bag_grad) functions handle;
    - `bag_checks_ids`: its lookup_bag functions take check_ids=True and then check the ids'
      bounds themselves, in their own parallel pass, before writing anything (raising
      kernels._validate.IdsOutOfRange; the shared check then names the id): the call skips the
      shared bounds pass (measured 5-7 us of a 70 us bag call at n = 65,536);
    - `lookup_checks_ids`: the formats whose lookup functions take check_ids=True and then
      check the ids' bounds themselves, as `bag_checks_ids` describes: each thread checks the
      ids it then copies (measured, cython_gather, float32, n = 65,536, 2 threads, against
      the separate single-threaded pass: int64 ids 1.02-1.09x faster at D = 8 and 16, level
      at D = 64; int32 ids 1.01-1.02x; int8 and float16 tables, int64 ids, 1.04x at D = 16,
      1.00-1.03x at D = 64);
    - `bag_offsets_in_place`: its lookup_bag functions take the caller's checked offsets as they
      are (LookupBag.prepare(private_offsets=False): the bags' starts, n ending the last bag, or
      None for bags all of one length, 2-D ids or 1-D) and read each bound once, clamped, so
      that offsets rewritten during a call cannot move a read out of bounds. The call skips
      the private copy, which cost more than the copying: the thread that reads half the fresh
      copy fetches it from the other core's cache (measured, int8 table, n = 65,536, 2
      threads: 17 us of 177 us with bags of 8, 120 us of 304 us with bags of 1).
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
        bag_modes: Iterable[str] = BAG_MODES,
        bag_checks_ids: bool = False,
        lookup_checks_ids: Iterable[Format] = (),
        bag_offsets_in_place: bool = False,
    ):
        self.name = name
        self.summary = summary
        self.compiled = compiled
        self.family = family
        self.colour = colour
        self.over_budget = over_budget
        self.scratch_bytes = scratch_bytes
        self.bag_modes = frozenset(bag_modes)
        self.bag_checks_ids = bag_checks_ids
        self.bag_offsets_in_place = bag_offsets_in_place
        self._impls: dict[str, dict[Format, Callable]] = {}
        self._bag_fns: dict[tuple[Format, str], Callable] = {}
        """lookup_bag's function by (format, mode), as _bag_function found it (with check_ids)."""
        for (op, formats), fn in implements.items():
            formats = (formats,) if isinstance(formats, Format) else tuple(formats)
            for fmt in formats:
                self._impls.setdefault(op.name, {})[fmt] = fn
        self._lookup_checks = frozenset(lookup_checks_ids)
        self._lookup = {fmt: (functools.partial(fn, check_ids=True)
                              if fmt in self._lookup_checks else fn)
                        for fmt, fn in self._impls.get(LOOKUP.name, {}).items()}
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

    def _bag_function(self, op, fmt, mode):
        fn = self.function(op, fmt)
        if mode not in self.bag_modes:
            from kernels._registry import KERNELS

            others = [k.name for k in KERNELS.values()
                      if mode in k.bag_modes and k.implements(op, fmt)]
            raise NotImplementedError(
                f"kernel {self.name!r} does not implement mode={mode!r} bags "
                f"({'a maximum is not a matmul' if self.family == 'onehot' else 'not built'}); "
                f"implemented by: {', '.join(others) or 'no registered kernel'}"
            )
        return fn

    def lookup(self, weights, ids, *, out=None, out_dtype=None):
        """Return weights[ids] (shape ids.shape + (dim,)), written into `out` if given. weights
        may be a low-precision table (kernels.quantize): the result is then float32, or float16
        with out_dtype=np.float16."""
        checks = self._lookup_checks
        W, fmt, flat, out2d, result = _prepare_lookup(weights, ids, out, out_dtype, checks)
        fn = self._lookup.get(fmt) or self.function(LOOKUP, fmt)
        if out2d.size:
            try:
                if out_dtype is None:
                    fn(W, flat, out2d)
                else:
                    through_float32(fn, (W, flat), out2d)
            except IdsOutOfRange:
                _name_the_bad_id(ids, W.shape[0])
        elif fmt in checks and flat.shape[0]:
            check_ids(ids, W.shape[0])  # nothing to write: the shared check alone
        return result

    __call__ = lookup  # one frame less on every call of a kernel

    def lookup_grad(self, grad, ids, vocab_size, *, sparse=False, out=None):
        """Return dW (vocab_size, dim) with dW[ids[k]] += grad[k] for every k; `out` is overwritten.
        sparse=True returns a kernels.SparseGrad instead (the rows hit, summed by this kernel)."""
        if sparse is not False:
            from kernels import _sparse

            if _sparse.wanted(sparse, out):
                return _sparse.lookup_grad(self, grad, ids, vocab_size)
        G, fmt, flat, dW, zeroed = _prepare_lookup_grad(grad, ids, vocab_size, out)
        fn = self._lookup_grad.get(fmt) or self.function(LOOKUP_GRAD, fmt)
        run_grad(fn, G, flat, dW, zeroed)
        return dW

    def lookup_bag(self, weights, ids, offsets=None, *, mode="sum", per_sample_weights=None,
                   padding_idx=None, include_last_offset=False, out=None, out_dtype=None):
        """Return the (B, dim) pooled bags (kernels.lookup_bag), written into `out` if given."""
        checks = self.bag_checks_ids
        W, fmt, flat, off, mode, psw, pad, out = _prepare_bag(
            weights, ids, offsets, mode, per_sample_weights, padding_idx, include_last_offset,
            out, out_dtype, bounds=not checks, private_offsets=not self.bag_offsets_in_place)
        fn = self._bag_fns.get((fmt, mode))
        if fn is None:
            fn = self._bag_function(LOOKUP_BAG, fmt, mode)
            if checks:
                fn = functools.partial(fn, check_ids=True)
            self._bag_fns[fmt, mode] = fn
        if out.size:
            try:
                if not flat.shape[0]:
                    out.fill(0)
                elif out_dtype is None:
                    fn(W, flat, off, mode, psw, pad, out)
                else:
                    through_float32(fn, (W, flat, off, mode, psw, pad), out)
            except IdsOutOfRange:
                _name_the_bad_id(ids, W.shape[0])
        elif checks and flat.shape[0]:
            check_ids(ids, W.shape[0])  # nothing to write: the shared check alone
        return out

    def lookup_bag_grad(self, grad_out, ids, offsets=None, vocab_size=None, *, mode="sum",
                        per_sample_weights=None, padding_idx=None, include_last_offset=False,
                        weights=None, sparse=False, out=None):
        """Return dW (vocab_size, dim) of the bags' output gradient (kernels.lookup_bag_grad);
        with per_sample_weights, (dW, their gradient). sparse=True returns a kernels.SparseGrad
        in place of dW."""
        from kernels._bag_math import psw_grad

        refuse_table(weights)
        if vocab_size is None:
            if weights is None:
                raise TypeError("lookup_bag_grad needs vocab_size (or weights=)")
            vocab_size = np.shape(weights)[0]
        if sparse is not False:
            from kernels import _sparse

            if _sparse.wanted(sparse, out):
                return _sparse.lookup_bag_grad(
                    self, grad_out, ids, offsets, vocab_size, mode, per_sample_weights,
                    padding_idx, include_last_offset, weights)
        G, fmt, flat, off, mode, psw, pad, W, dW, zeroed = _prepare_bag_grad(
            grad_out, ids, offsets, vocab_size, mode, per_sample_weights, padding_idx,
            include_last_offset, weights, out)
        fn = self._bag_function(LOOKUP_BAG_GRAD, fmt, mode)
        if flat.shape[0] and dW.size:
            fn(G, flat, off, mode, psw, pad, W, dW, zeroed)
        elif not zeroed:
            dW.fill(0)
        if psw is None:
            return dW
        return dW, psw_grad(G, W, flat, off, mode, psw, pad).reshape(np.shape(ids))

    def __repr__(self) -> str:
        return f"<kernel {self.name}: {self.summary}>"


def run_grad(fn, G, flat, dW, zeroed):
    """Call a lookup_grad function unless there is nothing to add (then only zero dW)."""
    if G.size and dW.size:
        fn(G, flat, dW, zeroed)
    elif not zeroed:
        dW.fill(0)


def bag_grad_by_scatter(scatter):
    """A lookup_bag_grad function from a kernel's lookup_grad function: the shared expansion of
    kernels._bag_math (rows c * G[bag] for the non-padding ids, or the max routing) scattered by
    the kernel's own scatter-add, so its summation rule (order, precision) carries over."""
    from kernels import _bag_math as bm

    def bag_grad(G, ids, offsets, mode, psw, pad, W, dW, zeroed):
        if mode == "max":
            if not zeroed:
                dW.fill(0)
            bm.max_grad(G, W, ids, offsets, pad, dW)
            return
        E, ids_kept = bm.expanded_rows(G, ids, offsets, mode, psw, pad)
        run_grad(scatter, E, ids_kept, dW, zeroed)

    return bag_grad


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

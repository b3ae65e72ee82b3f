"""The one thread knob: limits the Numba and the Cython/OpenMP kernels alike.

Where a thread count comes from, innermost first:

- `with num_threads(n):` — for the code inside the block, in this context only. The setting lives
  in a `contextvars.ContextVar`, so it follows asyncio tasks (each task runs in its own copy of
  the context: a task's block is not seen by the tasks it interleaves with) and threads (a new
  thread starts with an empty context). A generator shares the context of whoever iterates it, as
  `decimal.localcontext` does: while a generator is suspended inside its block, its caller sees
  the block's count. Each block removes exactly its own entry when it closes, whatever the order
  (two interleaved generators' blocks may close out of order), so once every block has closed
  the count is what it was before.
- `set_num_threads(n)` — the process-wide default (initially every core this process may use).
"""
import contextlib
import contextvars
import operator
import os

import numba


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


MAX_THREADS = max(1, min(_cores(), numba.config.NUMBA_NUM_THREADS))
"""The most threads a kernel may use: the cores this process may run on (and Numba's limit)."""

_default = MAX_THREADS
_blocks = contextvars.ContextVar("kernels_num_threads", default=())
"""The open num_threads blocks of this context, oldest first: (block, n) tuples."""

def _checked(n):
    if isinstance(n, bool) or not isinstance(n, int):
        try:
            n = operator.index(n)
        except TypeError:
            raise TypeError(f"the number of threads must be an integer, got {n!r}") from None
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"the number of threads must be between 1 and {MAX_THREADS}, got {n}")
    return n


def get_num_threads():
    """The number of threads the compiled kernels use in this context now."""
    blocks = _blocks.get()
    return blocks[-1][1] if blocks else _default


def set_num_threads(n):
    """Set the process-wide number of threads for the compiled kernels (default: all cores)."""
    global _default
    _default = _checked(n)


@contextlib.contextmanager
def num_threads(n):
    """Use n threads in the compiled kernels called from this context (this asyncio task, this
    Python thread) within the block."""
    n = _checked(n)
    entry = (object(), n)
    _blocks.set(_blocks.get() + (entry,))
    try:
        yield n
    finally:
        # Remove this block's own entry, not "restore what was there before": blocks of
        # interleaved generators close out of order, and a restore would resurrect a closed one.
        _blocks.set(tuple(e for e in _blocks.get() if e is not entry))


PARALLEL_MIN_BYTES = 256 * 2**10
"""Calls that move fewer bytes run on one thread: starting threads costs more than they save."""


def threads_for(nbytes):
    """How many threads a compiled kernel uses for a call that moves nbytes."""
    return 1 if nbytes < PARALLEL_MIN_BYTES else get_num_threads()

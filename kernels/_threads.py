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

Forked children (`os.fork`, multiprocessing's "fork" start method): GNU OpenMP (libgomp, which
both the Cython kernel and Numba's "omp" threading layer use) is not fork-safe. Measured here: a
child forked after the parent ran an OpenMP parallel region hangs in its first parallel region
(its forking thread inherits a thread pool whose threads do not exist in the child), and Numba's
omp layer kills a child of the process that started it (SIGTERM, "fork() called from a process
already using GNU OpenMP"). A child forked before any of that (asv's forkserver, a pool created
first) is unaffected and keeps every setting. The rule, for a child forked after these kernels ran
an OpenMP parallel region or after Numba started its omp layer (in this process or an ancestor):

1. Every thread count inherited through the fork (the default and any `num_threads` block open
   at the time) reads as 1: the compiled kernels take their serial paths, which start no OpenMP
   or Numba parallel region. Calls complete, correctly, on one thread.
2. Counts the child sets itself (`set_num_threads(n)`, or a `num_threads(n)` block entered in the
   child) are honoured by the Numba kernel when Numba's threading layer is workqueue (measured:
   it runs on 2 threads in such a child) or tbb (not installed here, not measured). The Cython
   kernel, and the Numba kernel under the omp layer, stay serial whatever the setting
   (`threads_used` reports 1): with libgomp that is the only way not to hang or be killed. Use
   the "spawn" or "forkserver" start method for workers that should run parallel.

OpenMP regions run by other libraries (torch, scikit-learn) in the parent are invisible here:
after those, a forked child that runs parallel can still hang.
"""
import contextlib
import contextvars
import operator
import os
import sys

import numba
import numpy as np


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


MAX_THREADS = max(1, min(_cores(), numba.config.NUMBA_NUM_THREADS))
"""The most threads a kernel may use: the cores this process may run on (and Numba's limit)."""

_default = MAX_THREADS
_generation = 0
"""+1 in every forked child where OpenMP had been started (see the module doc)."""
_default_generation = 0
"""The _generation in which _default was set: a default inherited through a fork reads as 1."""

_blocks = contextvars.ContextVar("kernels_num_threads", default=())
"""The open num_threads blocks of this context, oldest first: (block, n, generation) tuples."""

_openmp_started = False
"""True once this process, or an ancestor before forking it, ran an OpenMP parallel region of
these kernels or started Numba's omp threading layer."""
_openmp_stale = False
"""True in a forked child of a process where _openmp_started was true: OpenMP regions may hang or
kill this process, so the kernels that would start one stay serial."""


def _checked(n):
    if isinstance(n, (bool, np.bool_)):
        raise TypeError(f"the number of threads must be an integer, got {n!r}")
    if not isinstance(n, int):
        try:
            n = operator.index(n)
        except TypeError:
            raise TypeError(f"the number of threads must be an integer, got {n!r}") from None
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"the number of threads must be between 1 and {MAX_THREADS}, got {n}")
    return n


def get_num_threads():
    """The number of threads the compiled kernels use in this context now (see the module doc:
    in a forked child, counts inherited from a parent that had started OpenMP read as 1)."""
    blocks = _blocks.get()
    if blocks:
        _, n, generation = blocks[-1]
    else:
        n, generation = _default, _default_generation
    return n if generation == _generation else 1


def set_num_threads(n):
    """Set the process-wide number of threads for the compiled kernels (default: all cores).

    In a forked child that starts at 1 thread, this is how threads are re-enabled; see the
    module docstring for which kernels still stay serial there."""
    global _default, _default_generation
    _default = _checked(n)
    _default_generation = _generation


@contextlib.contextmanager
def num_threads(n):
    """Use n threads in the compiled kernels called from this context (this asyncio task, this
    Python thread) within the block."""
    n = _checked(n)
    entry = (object(), n, _generation)
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


def openmp_threads(n):
    """The thread count for a kernel about to start an OpenMP (libgomp) region with n > 1 threads:
    1 if that is unsafe in this process (a forked child, see the module doc), else n, recorded."""
    global _openmp_started
    if _openmp_stale:
        return 1
    _openmp_started = True
    return n


def numba_layer_is_omp():
    """True if Numba's threading layer has been started in this process and is omp."""
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    return bool(parallel and parallel._is_initialized and parallel._threading_layer == "omp")


def _after_fork_in_child():
    global _generation, _openmp_stale
    if _openmp_started or numba_layer_is_omp():
        _openmp_stale = True
        _generation += 1  # inherited thread counts now read as 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def ids_changed_error(vocab_size):
    """The error of a compiled kernel whose loop read an id outside [0, vocab_size): the ids
    passed the shared check, so another thread changed them during the call. The output is
    unspecified (the loops never read or write outside their arrays)."""
    return RuntimeError(
        f"an id read during the call was outside [0, {vocab_size}) although every id passed the "
        "bounds check: another thread changed ids during the call; the result is unspecified"
    )

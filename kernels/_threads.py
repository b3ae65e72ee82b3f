"""The one thread knob: limits the Numba and the Cython/OpenMP kernels alike."""
import contextlib
import operator
import os
import threading

import numba


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


MAX_THREADS = max(1, min(_cores(), numba.config.NUMBA_NUM_THREADS))
"""The most threads a kernel may use: the cores this process may run on (and Numba's limit)."""

_default = MAX_THREADS
_local = threading.local()


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
    """The number of threads the compiled kernels use in this Python thread now."""
    n = getattr(_local, "n", None)
    return _default if n is None else n


def set_num_threads(n):
    """Set the process-wide number of threads for the compiled kernels (default: all cores)."""
    global _default
    _default = _checked(n)


@contextlib.contextmanager
def num_threads(n):
    """Use n threads in the compiled kernels called from this Python thread, within the block."""
    n = _checked(n)
    previous = getattr(_local, "n", None)
    _local.n = n
    try:
        yield n
    finally:
        _local.n = previous


PARALLEL_MIN_BYTES = 256 * 2**10
"""Calls that move fewer bytes run on one thread: starting threads costs more than they save."""


def threads_for(nbytes):
    """How many threads a compiled kernel uses for a call that moves nbytes."""
    return 1 if nbytes < PARALLEL_MIN_BYTES else get_num_threads()

"""The one place that checks the lookup contract; every kernel runs behind it.

Kernels receive weights that are 2-D native float32/float64 arrays (any strides), ids as a
1-D C-contiguous int32 or int64 array already checked to lie in [0, vocab_size), and an output
that is C-contiguous, writeable and of the right shape and dtype. Compiled loops skip bounds
checks only because these functions ran first.
"""
import operator

import numpy as np

from kernels._bounds import any_out_of_range

_INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
_INT64 = np.dtype(np.int64)
_UINT64 = np.dtype(np.uint64)


def _float_array(x, name):
    a = x if type(x) is np.ndarray else np.asarray(x)
    dt = a.dtype
    if dt.char not in ("f", "d") or not dt.isnative:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return a


def check_weights(weights):
    """Return weights as a 2-D float32/float64 array, never copying an ndarray."""
    W = weights if type(weights) is np.ndarray else np.asarray(weights)
    if W.ndim != 2:
        raise ValueError(f"weights must be 2-D (vocab_size, dim), got shape {W.shape}")
    return _float_array(W, "weights")


def check_vocab_size(vocab_size):
    """Return vocab_size as a non-negative int."""
    if isinstance(vocab_size, (bool, np.bool_)):
        raise TypeError(f"vocab_size must be an integer, got {vocab_size!r}")
    try:
        V = operator.index(vocab_size)
    except TypeError:
        raise TypeError(f"vocab_size must be an integer, got {vocab_size!r}") from None
    if V < 0:
        raise ValueError(f"vocab_size must be >= 0, got {V}")
    return V


def _first_out_of_range(ids, vocab_size):
    bad = (ids < 0) | (ids >= vocab_size)
    flat_pos = int(np.argmax(bad))
    pos = tuple(int(p) for p in np.unravel_index(flat_pos, ids.shape))
    value = int(ids[pos])
    return IndexError(
        f"id {value} at position {pos} is out of range for vocab_size {vocab_size} "
        f"(valid ids are 0 <= id < {vocab_size})"
    )


def check_ids(ids, vocab_size):
    """Return (ids as an array, flat C-contiguous int32/int64 copy or view), bounds-checked."""
    if type(ids) is np.ndarray:
        a = ids
    else:
        a = np.asarray(ids)
        if a.size == 0 and a.dtype.kind == "f":  # [] holds no floats: index with it as W[[]] does
            a = a.astype(np.intp)
    dt = a.dtype
    if dt.kind not in "iu":
        raise TypeError(f"ids must have an integer dtype, got {dt}")
    flat = a.reshape(-1)
    if not flat.flags.c_contiguous or not dt.isnative:
        flat = np.ascontiguousarray(flat, dtype=dt.newbyteorder("="))
    if flat.shape[0] and any_out_of_range(flat, vocab_size):
        raise _first_out_of_range(a, vocab_size)
    if flat.dtype not in _INDEX_DTYPES:
        # In range, so every value fits in int64; uint64 reinterprets without a copy.
        flat = flat.view(_INT64) if flat.dtype == _UINT64 else flat.astype(_INT64)
    return a, flat


def check_out(out, shape, dtype, source, source_name):
    """Return out if it can receive a result of this shape and dtype, else raise ValueError."""
    if not isinstance(out, np.ndarray):
        raise ValueError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"out must have shape {shape}, got {out.shape}")
    if out.dtype != dtype:
        raise ValueError(f"out must have dtype {dtype}, got {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    if np.may_share_memory(out, source):
        raise ValueError(f"out must not overlap {source_name}")
    return out


def lookup_args(weights, ids, out):
    """Check a forward call; return (W, flat_ids, out2d, result)."""
    W = check_weights(weights)
    V, D = W.shape
    a, flat = check_ids(ids, V)
    shape = a.shape + (D,)
    if out is None:
        result = np.empty(shape, W.dtype)
    else:
        result = check_out(out, shape, W.dtype, W, "weights")
    return W, flat, result.reshape(flat.shape[0], D), result


def grad_args(grad, ids, vocab_size, out):
    """Check a backward call; return (G2d, flat_ids, dW, dW_is_zeroed)."""
    G = _float_array(grad, "grad")
    V = check_vocab_size(vocab_size)
    ids_shape = np.shape(ids)
    if G.ndim != len(ids_shape) + 1 or G.shape[:-1] != ids_shape:
        raise ValueError(
            f"grad must have shape ids.shape + (dim,) = {ids_shape} + (dim,), got {G.shape}"
        )
    D = G.shape[-1]
    a, flat = check_ids(ids, V)
    if out is None:
        return G.reshape(flat.shape[0], D), flat, np.zeros((V, D), G.dtype), True
    dW = check_out(out, (V, D), G.dtype, G, "grad")
    return G.reshape(flat.shape[0], D), flat, dW, False

"""The one place that checks arguments; every operation's `prepare` runs these before a kernel.

Kernels receive weights that are 2-D native float32/float64 arrays (any strides) or, for a
low-precision table (kernels.quantize), its C-contiguous storage `packed` ((V, D) float16 /
bfloat16, or (V, row_bytes) uint8); ids as a 1-D C-contiguous int32 or int64 array already
checked to lie in [0, vocab_size), and an output that is C-contiguous, writeable, of the right
shape and dtype, and overlaps no input. Compiled loops skip bounds checks only because these
functions ran first.
"""
import operator

import numpy as np

from kernels._bounds import any_out_of_range, bag_offsets, plain_bags
from kernels._formats import _BY_DTYPE_CHAR, _HALF_BY_DTYPE, FLOAT16
from kernels._tables import INFERENCE_ONLY, Table

_INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
_INT64 = np.dtype(np.int64)
_UINT64 = np.dtype(np.uint64)
MAX_VOCAB_SIZE = int(np.iinfo(np.intp).max)
_OUT_TYPES = (np.ndarray, np.memmap)


def refuse_table(x):
    """TypeError if x is a low-precision table (kernels.quantize): those are for inference."""
    if isinstance(x, Table):
        raise TypeError(INFERENCE_ONLY)


def _weights_dtype_error(dt):
    hint = ""
    fmt = _HALF_BY_DTYPE.get(dt)
    if fmt is not None:
        hint = f"; a {fmt.name} table is made with kernels.quantize(W, {fmt.name!r})"
    return TypeError(f"weights must be float32 or float64, got {dt}{hint}")


def float_array(x, name):
    """(x as an array, never copying an ndarray, its Format); TypeError naming `name` unless
    it is native float32 or float64 (a low-precision table: the inference-only TypeError)."""
    if type(x) is np.ndarray:
        a = x
    else:
        refuse_table(x)
        a = np.asarray(x)
    dt = a.dtype
    fmt = _BY_DTYPE_CHAR.get(dt.char)
    if fmt is None or not dt.isnative:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return a, fmt


def check_weights(weights):
    """(W, its Format, (V, D)): a 2-D float32/float64 array (an ndarray is never copied) and
    its shape, or a low-precision table's storage `packed` and the table's (V, D)."""
    if type(weights) is np.ndarray:
        W = weights
    elif isinstance(weights, Table):
        return _table_storage(weights)
    else:
        W = np.asarray(weights)
    if W.ndim != 2:
        raise ValueError(f"weights must be 2-D (vocab_size, dim), got shape {W.shape}")
    # float_array's test, inlined: the call to it cost every lookup 0.05-0.07 us (of 2.6) at n = 16
    dt = W.dtype
    fmt = _BY_DTYPE_CHAR.get(dt.char)
    if fmt is None or not dt.isnative:
        raise _weights_dtype_error(dt)
    return W, fmt, W.shape


def _table_storage(table):
    """(packed, Format, (V, D)) of a table, after checking that its storage is still what the
    table was made with (an ndarray's shape and dtype can be reassigned in place): the kernels
    index it with ids checked against V."""
    W, fmt, (V, D) = table.packed, table.FORMAT, table.shape
    row = D if fmt.tail_bytes == 0 else fmt.row_bytes(D)
    if (W.shape != (V, row) or W.dtype != fmt.storage_dtype or not W.flags.c_contiguous):
        raise ValueError(f"the {fmt.name} table's storage changed since it was made: expected a "
                         f"C-contiguous ({V}, {row}) {fmt.storage_dtype} array, got {W.shape} "
                         f"{W.dtype}")
    return W, fmt, (V, D)


def check_out_dtype(out_dtype, fmt):
    """The dtype a lookup of a `fmt` table returns: the format's output dtype (float32 for the
    low-precision formats, the table's own for float32/float64) when out_dtype is None, or
    out_dtype if it is that or float16 for a low-precision format; ValueError otherwise."""
    if out_dtype is None:
        return fmt.out_dtype
    dt = np.dtype(out_dtype)
    if dt == fmt.out_dtype or (dt == FLOAT16.storage_dtype and fmt.quantized):
        return fmt.out_dtype if dt == fmt.out_dtype else dt
    allowed = "float32 or float16" if fmt.quantized else fmt.out_dtype.name
    raise ValueError(f"out_dtype must be {allowed} for a {fmt.name} table, got {dt}")


def check_vocab_size(vocab_size):
    """Return vocab_size as a non-negative int that an array dimension can hold."""
    if isinstance(vocab_size, (bool, np.bool_)):
        raise TypeError(f"vocab_size must be an integer, got {vocab_size!r}")
    try:
        V = operator.index(vocab_size)
    except TypeError:
        raise TypeError(f"vocab_size must be an integer, got {vocab_size!r}") from None
    if V < 0:
        raise ValueError(f"vocab_size must be >= 0, got {V}")
    if V > MAX_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at most 2**63 - 1, got {V}")
    return V


def _out_of_range_error(value, pos, vocab_size):
    return IndexError(
        f"id {value} at position {pos} is out of range for vocab_size {vocab_size} "
        f"(valid ids are 0 <= id < {vocab_size})"
    )


def _first_out_of_range(ids, vocab_size):
    bad = (ids < 0) | (ids >= vocab_size)
    flat_pos = int(np.argmax(bad))
    pos = tuple(int(p) for p in np.unravel_index(flat_pos, ids.shape))
    return _out_of_range_error(int(ids[pos]), pos, vocab_size)


def _ids_from_python(ids, a, vocab_size):
    """ids given as (nested) Python/NumPy scalars that NumPy could not type as integers (a mix
    of int64 and uint64 scalars becomes float64, ints past 2**63 become objects): an int64 array
    if every element is an integer in range, else the error for the first one that is not."""
    try:
        obj = np.asarray(ids, dtype=object)
    except (ValueError, TypeError):
        obj = None
    if obj is None or obj.shape != a.shape:
        raise TypeError(f"ids must have an integer dtype, got {a.dtype}")
    for pos in np.ndindex(obj.shape):
        x = obj[pos]
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
            raise TypeError(
                f"ids must have an integer dtype, got {a.dtype} "
                f"({type(x).__name__} {x!r} at position {tuple(int(p) for p in pos)})"
            )
        if not 0 <= int(x) < vocab_size:
            raise _out_of_range_error(int(x), tuple(int(p) for p in pos), vocab_size)
    return obj.astype(_INT64)


class IdsOutOfRange(Exception):
    """Raised by a kernel function that checks the ids' bounds itself (inside its own parallel
    pass, before writing anything) when one is outside [0, V); the caller then runs check_ids,
    whose IndexError names the id and its position. Never reaches a user."""


def check_ids(ids, vocab_size, bounds=True):
    """Return (ids as an array, flat C-contiguous int32/int64 copy or view), bounds-checked
    (bounds=False: every other check; the caller's kernel checks the bounds, IdsOutOfRange)."""
    if type(ids) is np.ndarray:
        a = ids
    else:
        a = np.asarray(ids)
        if a.dtype.kind == "f" and a.size == 0:  # [] holds no floats: index with it as W[[]] does
            a = a.astype(np.intp)
        elif a.dtype.kind in "fO" and not isinstance(ids, np.ndarray):
            a = _ids_from_python(ids, a, vocab_size)
    dt = a.dtype
    if dt.kind not in "iu":
        raise TypeError(f"ids must have an integer dtype, got {dt}")
    flat = a.reshape(-1)
    if not flat.flags.c_contiguous or not dt.isnative:
        flat = np.ascontiguousarray(flat, dtype=dt.newbyteorder("="))
    if bounds and flat.shape[0] and any_out_of_range(flat, vocab_size):
        raise _first_out_of_range(a, vocab_size)
    if flat.dtype not in _INDEX_DTYPES:
        # In range, so every value fits in int64; uint64 reinterprets without a copy.
        flat = flat.view(_INT64) if flat.dtype == _UINT64 else flat.astype(_INT64)
    return a, flat


def check_out(out, shape, dtype, inputs):
    """Return out if it can receive a result of this shape and dtype and overlaps none of the
    inputs (a sequence of (array, name)), else raise ValueError naming the problem."""
    if type(out) not in _OUT_TYPES:
        if isinstance(out, np.ndarray):
            raise ValueError(
                f"out must be a plain numpy.ndarray, got the subclass {type(out).__name__}"
            )
        raise ValueError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"out must have shape {shape}, got {out.shape}")
    if out.dtype != dtype:
        raise ValueError(f"out must have dtype {dtype}, got {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    for source, name in inputs:
        if isinstance(source, np.ndarray) and np.may_share_memory(out, source):
            raise ValueError(f"out must not overlap {name}")
    return out


def private_ids(ids, vocab_size):
    """A private copy of checked ids, checked again: for kernels that hand ids to code that
    trusts them (scipy's CSR indices, NumPy's two-pass fancy assignment), so that ids another
    thread rewrites during the call give an error, never an access outside an array."""
    from kernels._threads import ids_changed_error

    own = ids.copy()
    if own.shape[0] and any_out_of_range(own, vocab_size):
        raise ids_changed_error(vocab_size)
    return own


BAG_MODES = ("sum", "mean", "max", "sqrtn")
"""The reductions a bag supports (kernels.lookup_bag's `mode`)."""
MODE_CODES = {mode: code for code, mode in enumerate(BAG_MODES)}
"""The bag modes as the compiled loops number them: sum 0, mean 1, max 2, sqrtn 3."""


def check_mode(mode):
    """The mode's name if it is one of BAG_MODES, else ValueError naming them."""
    if not isinstance(mode, str) or mode not in BAG_MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, BAG_MODES))}, got {mode!r}")
    return mode


def check_padding_idx(padding_idx, vocab_size):
    """-1 for None, else padding_idx in [0, vocab_size) (a negative one counts from the end, as
    in torch); ValueError when it is outside [-vocab_size, vocab_size)."""
    if padding_idx is None:
        return -1
    if isinstance(padding_idx, (bool, np.bool_)):
        raise TypeError(f"padding_idx must be an integer or None, got {padding_idx!r}")
    try:
        p = operator.index(padding_idx)
    except TypeError:
        raise TypeError(f"padding_idx must be an integer or None, got {padding_idx!r}") from None
    if not -vocab_size <= p < vocab_size:
        raise ValueError(
            f"padding_idx must be within [-vocab_size, vocab_size) = [{-vocab_size}, "
            f"{vocab_size}), got {p}"
        )
    return p + vocab_size if p < 0 else p


def _offsets_array(offsets):
    a = offsets if type(offsets) is np.ndarray else np.asarray(offsets)
    if a.dtype.kind == "f" and a.size == 0 and not isinstance(offsets, np.ndarray):
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise TypeError(f"offsets must have an integer dtype, got {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"offsets must be 1-D, got shape {a.shape}")
    if a.dtype == _INT64 and a.flags.c_contiguous:
        return a
    if a.dtype == _UINT64 and a.size and int(a.max()) > MAX_VOCAB_SIZE:
        raise ValueError(f"offsets must be at most 2**63 - 1, got {int(a.max())}")
    return np.ascontiguousarray(a, dtype=_INT64)


def check_bags(ids, offsets, include_last_offset, private=True):
    """Return (ids array, offsets, B) where offsets is a private int64 array of B + 1 bag bounds,
    CSR style (bag b is ids[offsets[b]:offsets[b + 1]], offsets[0] = 0, offsets[B] = n). ids are
    1-D with `offsets` (B starts, or B + 1 bounds with include_last_offset) or 2-D (B, N) with
    offsets None. ValueError/TypeError naming the problem; ids themselves are checked later.
    private=False: the checked int64 offsets in place, no copy (the caller's own array when it
    is C-contiguous int64), of which the first B values are the bags' starts and n ends the last
    bag, or None for 2-D ids and for bags all of one length (n / B ids each): for code that
    reads each bound once and clamps it (ek_bags)."""
    if isinstance(include_last_offset, (bool, np.bool_)):
        include_last_offset = bool(include_last_offset)
    else:
        raise TypeError(f"include_last_offset must be a bool, got {include_last_offset!r}")
    a = ids if isinstance(ids, np.ndarray) else np.asarray(ids)
    if a.ndim == 2:
        if offsets is not None:
            raise ValueError(
                f"offsets must be None when ids are 2-D (fixed-size bags), got ids of shape "
                f"{a.shape} and offsets"
            )
        if include_last_offset:
            raise ValueError("include_last_offset applies to 1-D ids with offsets, not 2-D ids")
        B, N = a.shape
        return ids, (np.arange(B + 1, dtype=np.int64) * N if private else None), B
    if a.ndim != 1:
        raise ValueError(
            f"ids must be 1-D (with offsets) or 2-D (B, N) for bags, got shape {a.shape}"
        )
    if offsets is None:
        raise ValueError("offsets is required when ids are 1-D (or give 2-D ids (B, N))")
    given = _offsets_array(offsets)
    off = bag_offsets(given, a.shape[0], include_last_offset, private)
    if private:
        return ids, off, off.shape[0] - 1
    return ids, off, given.shape[0] - (1 if include_last_offset else 0)


def plain_bag_args(weights, ids, offsets, mode, per_sample_weights, padding_idx,
                   include_last_offset, out, out_dtype):
    """What LookupBag.prepare(bounds=False, private_offsets=False) returns for a plain call
    (kernels._bounds.plain_bags: a float ndarray or a low-precision table, int32/int64 ids,
    int64 offsets, no weights, no padding, out None or ready), checked in one compiled step;
    None for any other call, which the general checks then take (and name its problem)."""
    if (per_sample_weights is not None or padding_idx is not None or out_dtype is not None
            or type(include_last_offset) is not bool):
        return None
    if type(weights) is np.ndarray:
        W, fmt, D = weights, None, -1
    elif isinstance(weights, Table):
        W, fmt, (_, D) = _table_storage(weights)
    else:
        return None
    plain = plain_bags(W, ids, offsets, include_last_offset, out, D)
    if plain is None:
        return None
    flat, off, _, out = plain
    if fmt is None:
        fmt = _BY_DTYPE_CHAR[W.dtype.char]
    return W, fmt, flat, off, check_mode(mode), None, -1, out


def check_per_sample_weights(psw, ids_shape, fmt, mode):
    """None, or per_sample_weights as a flat C-contiguous array of the format's output dtype
    (the table's dtype; float32 for the low-precision formats) with one weight per id;
    ValueError for mode max (a maximum has no weights) or a wrong shape, TypeError for a wrong
    dtype."""
    if psw is None:
        return None
    if mode == "max":
        raise ValueError("per_sample_weights is not supported with mode='max' "
                         "(sum, mean and sqrtn take them)")
    p = psw if type(psw) is np.ndarray else np.asarray(psw)
    if p.dtype != fmt.out_dtype or not p.dtype.isnative:
        if fmt.quantized:
            raise TypeError(f"per_sample_weights must be {fmt.out_dtype} for a {fmt.name} table, "
                            f"got {p.dtype}")
        raise TypeError(
            f"per_sample_weights must have the table's dtype {fmt.storage_dtype}, got {p.dtype}"
        )
    if p.shape != tuple(ids_shape):
        raise ValueError(
            f"per_sample_weights must have the shape of ids {tuple(ids_shape)}, got {p.shape}"
        )
    flat = p.reshape(-1)
    return flat if flat.flags.c_contiguous else np.ascontiguousarray(flat)

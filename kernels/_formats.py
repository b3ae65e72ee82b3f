"""Table formats, declared once each: how a table of the format is recognised and checked, the
bytes of one of its rows, and the dtype a lookup of it returns.

Today: float32 and float64 rows (plain 2-D ndarrays). A new format (float16, bfloat16, int8 or
int4 rows with a per-row scale and bias) is one more `Format` here plus the kernels that register
an implementation for it; its output dtype is the format's, not necessarily its storage dtype.
"""
from __future__ import annotations

import numpy as np


class Format:
    """One way of storing the rows of an embedding table."""

    def __init__(self, name: str, storage_dtype, out_dtype, summary: str):
        self.name = name
        self.storage_dtype = np.dtype(storage_dtype)
        self.out_dtype = np.dtype(out_dtype)
        """The dtype of a lookup's output (a float type even where rows are stored as integers)."""
        self.summary = summary

    def row_bytes(self, dim: int) -> int:
        """Bytes one row of `dim` values occupies in the table."""
        return dim * self.storage_dtype.itemsize

    def __repr__(self) -> str:
        return f"<format {self.name}: {self.summary}>"


FLOAT32 = Format("float32", np.float32, np.float32, "float32 rows, a (V, D) ndarray")
FLOAT64 = Format("float64", np.float64, np.float64, "float64 rows, a (V, D) ndarray")

FORMATS: dict[str, Format] = {f.name: f for f in (FLOAT32, FLOAT64)}
"""Every table format by name."""

FLOAT = (FLOAT32, FLOAT64)
"""The plain floating-point formats: a kernel that handles both registers once for FLOAT."""

_BY_DTYPE_CHAR = {"f": FLOAT32, "d": FLOAT64}


def float_format(dtype) -> Format | None:
    """The plain format whose rows have this (native) dtype, or None."""
    dt = np.dtype(dtype)
    return _BY_DTYPE_CHAR.get(dt.char) if dt.isnative else None


def format_named(name) -> Format:
    """The Format of a name, a dtype or a Format; ValueError naming the known ones otherwise."""
    if isinstance(name, Format):
        return name
    if isinstance(name, str) and name in FORMATS:
        return FORMATS[name]
    try:
        fmt = float_format(name)
    except TypeError:
        fmt = None
    if fmt is None:
        raise ValueError(f"unknown table format {name!r}; known formats: {', '.join(FORMATS)}")
    return fmt

"""Table formats, declared once each: how a table of the format is recognised and checked, the
bytes of one of its rows, and the dtype a lookup of it returns.

Plain formats: float32 and float64 rows, a 2-D ndarray. Low-precision formats (issue 15): float16
and bfloat16 rows, and torch's fused row-wise int8 and int4 rows (values, then the row's scale and
bias); a table of one is a kernels.quantize(...) object (kernels._tables), its output float32.
A new format is one more `Format` here plus the kernels that register an implementation for it.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np


class Format:
    """One way of storing the rows of an embedding table."""

    def __init__(self, name: str, storage_dtype, out_dtype, summary: str, *,
                 values_per_item: int = 1, tail_bytes: int = 0):
        self.name = name
        self.storage_dtype = np.dtype(storage_dtype)
        self.out_dtype = np.dtype(out_dtype)
        """The dtype of a lookup's output (a float type even where rows are stored as integers)."""
        self.summary = summary
        self.values_per_item = values_per_item
        """Values one storage item holds (2 for int4: two nibbles a byte)."""
        self.tail_bytes = tail_bytes
        """Bytes after a row's values: its scale and bias (8 for int8, 4 for int4)."""

    @property
    def quantized(self) -> bool:
        """Whether a table of this format is a kernels.quantize(...) object (inference only),
        not a plain ndarray."""
        return self.storage_dtype != self.out_dtype

    def row_bytes(self, dim: int) -> int:
        """Bytes one row of `dim` values occupies in the table."""
        items = -(-dim // self.values_per_item)
        return items * self.storage_dtype.itemsize + self.tail_bytes

    def __repr__(self) -> str:
        return f"<format {self.name}: {self.summary}>"


FLOAT32 = Format("float32", np.float32, np.float32, "float32 rows, a (V, D) ndarray")
FLOAT64 = Format("float64", np.float64, np.float64, "float64 rows, a (V, D) ndarray")

FLOAT16 = Format("float16", np.float16, np.float32,
                 "float16 rows (kernels.quantize(W, 'float16')), read as float32")
BFLOAT16 = Format("bfloat16", ml_dtypes.bfloat16, np.float32,
                  "bfloat16 rows (ml_dtypes; kernels.quantize(W, 'bfloat16')), read as float32")
INT8 = Format("int8", np.uint8, np.float32,
              "torch's fused 8-bit rows [D x uint8 | float32 scale | float32 bias]",
              tail_bytes=8)
INT4 = Format("int4", np.uint8, np.float32,
              "torch's fused 4-bit rows [D/2 bytes, low nibble first | float16 scale | "
              "float16 bias]", values_per_item=2, tail_bytes=4)

FORMATS: dict[str, Format] = {f.name: f for f in (FLOAT32, FLOAT64, FLOAT16, BFLOAT16, INT8, INT4)}
"""Every table format by name."""

FLOAT = (FLOAT32, FLOAT64)
"""The plain floating-point formats: a kernel that handles both registers once for FLOAT."""

HALF = (FLOAT16, BFLOAT16)
"""The 16-bit float formats: rows stored as float16 / bfloat16, read as float32."""

ROWWISE = (INT8, INT4)
"""torch's fused row-wise integer formats: each row's values, then its scale and bias."""

LOW_PRECISION = HALF + ROWWISE
"""The formats of kernels.quantize: every lookup of them returns float32 (or float16 if asked)."""

_BY_DTYPE_CHAR = {"f": FLOAT32, "d": FLOAT64}
_HALF_BY_DTYPE = {np.dtype(np.float16): FLOAT16, np.dtype(ml_dtypes.bfloat16): BFLOAT16}


def float_format(dtype) -> Format | None:
    """The plain format whose rows have this (native) dtype, or None."""
    dt = np.dtype(dtype)
    return _BY_DTYPE_CHAR.get(dt.char) if dt.isnative else None


def format_named(name) -> Format:
    """The Format of a name, a Format, or the dtype of a plain format (float32, float64: a
    float16 ndarray is not a table); ValueError naming the known ones otherwise."""
    if isinstance(name, Format):
        return name
    if isinstance(name, str) and name in FORMATS:
        return FORMATS[name]
    try:
        fmt = float_format(name)
        half = fmt is None and np.dtype(name) in _HALF_BY_DTYPE
    except TypeError:
        fmt, half = None, False
    if fmt is None:
        hint = (" (a dtype names only the plain formats: name a low-precision one, e.g. "
                "'float16')") if half else ""
        raise ValueError(f"unknown table format {name!r}; known formats: "
                         f"{', '.join(FORMATS)}{hint}")
    return fmt

"""Arrow arrays of a shard's columns, built from their buffers.

``pa.array`` is not used on the workers' write path: on its first call in a
process it imports pandas (pyarrow checks every input for pandas types), which
costs each worker process about 0.3 s of CPU and 40 MB of memory on its first
shard (measured on the local engine's workers). The arrays here are what
``pa.array(values, type=...)`` returns for the types the output layout uses,
built with ``pa.Array.from_buffers``; their Parquet bytes are the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

#: Arrow integer and float types the layout writes, and their numpy dtypes.
_NUMPY_OF = {pa.int16(): np.int16, pa.int32(): np.int32, pa.int64(): np.int64,
             pa.float32(): np.float32, pa.uint8(): np.uint8}


def string_array(values: Sequence[str | None]) -> pa.Array:
    """A ``pa.string()`` array of `values` (``None`` is null).

    Parameters
    ----------
    values : sequence of str or None, length N

    Returns
    -------
    pyarrow.StringArray of length N
    """
    encoded = [b"" if v is None else v.encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:  # a batch of 2 GiB of text: never a shard's identity columns
        raise ValueError(f"{offsets[-1]} bytes of strings exceed a pa.string() array")
    nulls = sum(v is None for v in values)
    validity = None
    if nulls:
        validity = pa.py_buffer(np.packbits(np.fromiter((v is not None for v in values), dtype=bool,
                                                        count=len(values)), bitorder="little"))
    return pa.Array.from_buffers(pa.string(), len(encoded),
                                 [validity, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded))],
                                 null_count=nulls)


def numeric_array(values, arrow_type: pa.DataType) -> pa.Array:
    """A non-null array of `arrow_type` (int16/32/64, float32, uint8) holding `values`.

    Parameters
    ----------
    values : sequence of numbers or (N,) ndarray
        Integers must fit the type (numpy raises ``OverflowError`` for Python ints that do not).

    Returns
    -------
    pyarrow.Array of length N
    """
    data = np.ascontiguousarray(np.asarray(values, dtype=_NUMPY_OF[arrow_type]))
    if data.ndim != 1:
        raise ValueError(f"expected a flat sequence, got shape {data.shape}")
    return pa.Array.from_buffers(arrow_type, len(data), [None, pa.py_buffer(data)])


def column_array(values, arrow_type: pa.DataType) -> pa.Array:
    """:func:`string_array` or :func:`numeric_array` by `arrow_type`."""
    if arrow_type == pa.string():
        return string_array(values)
    return numeric_array(values, arrow_type)


def fixed_size_list_array(flat: np.ndarray, arrow_type: pa.DataType, size: int) -> pa.Array:
    """``pa.list_(arrow_type, size)`` rows over a flat (N * size,) array of values."""
    return pa.FixedSizeListArray.from_arrays(numeric_array(flat, arrow_type), size)


def record_batch(columns: dict[str, Sequence], schema: pa.Schema) -> pa.RecordBatch:
    """A batch of `schema` (strings and numbers only) from ``{name: values}``."""
    return pa.RecordBatch.from_arrays([column_array(columns[f.name], f.type) for f in schema], schema=schema)

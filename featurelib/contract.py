"""Names of the output contract, written in one place (docs/CONTRACT.md).

Every module that writes or reads an output takes these names from here: the
identity columns of a row, the reject columns, the split names, the variant
key format, the HDF5 dataset layout and the decode policy's pixel cap. This
module imports nothing heavier than pyarrow, so readers and the spec parser
can use it freely.
"""

from __future__ import annotations

import pyarrow as pa

#: Version of the output layout; a rename or removal bumps it (additions do not).
FORMAT_VERSION = 1

#: Split names, in the order fractions are applied (``u < train``, then ``val``, else ``test``).
SPLITS = ("train", "val", "test")

#: Default ``decode.max_pixels``: PIL's own decompression-bomb threshold.
DEFAULT_MAX_PIXELS = 89_478_485

#: Identity columns of every written row, in Parquet column order.
IDENTITY_FIELDS = (
    pa.field("key", pa.string(), nullable=False),
    pa.field("source_key", pa.string(), nullable=False),
    pa.field("aug_index", pa.int16(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("label", pa.int32(), nullable=False),
    pa.field("label_name", pa.string()),
    pa.field("split", pa.string(), nullable=False),
    pa.field("sha256", pa.string(), nullable=False),
    pa.field("orig_height", pa.int32(), nullable=False),
    pa.field("orig_width", pa.int32(), nullable=False),
    pa.field("orig_format", pa.string(), nullable=False),
)
IDENTITY_COLUMNS = tuple(f.name for f in IDENTITY_FIELDS)

#: The optional preprocessed image column (``output.pixels``).
PIXELS_COLUMN = "pixels"

#: Names a feature column may not take.
RESERVED_COLUMNS = frozenset((*IDENTITY_COLUMNS, PIXELS_COLUMN))

#: Columns of every reject ledger file.
REJECT_FIELDS = (
    pa.field("key", pa.string(), nullable=False),
    pa.field("source_key", pa.string(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("detail", pa.string(), nullable=False),
)
REJECT_SCHEMA = pa.schema(REJECT_FIELDS)

# --- HDF5 layout (every shard and features.h5) ---------------------------------

H5_FEATURES = "features"        # (N, D) float32, all feature columns side by side
H5_LABELS = "labels"            # (N,) int32
H5_KEYS = "keys"                # (N,) UTF-8
H5_SPLIT = "split"              # (N,) UTF-8
H5_AUG_INDEX = "aug_index"      # (N,) int16 (lets the ledger be read from HDF5-only outputs)
H5_IMAGES = "images"            # (N, H, W, 3) uint8, with output.pixels
H5_LABEL_NAMES = "label_names"  # (C,) UTF-8 dataset (an attribute over 64 KB fails)
#: File attributes: JSON ``[{name, start, stop}]`` and the two fingerprints.
H5_ATTR_COLUMNS = "columns"
H5_ATTR_FEATURE_FP = "feature_fingerprint"
H5_ATTR_RUN_FP = "run_fingerprint"

# --- variant keys -------------------------------------------------------------------


def variant_key(source_key: str, aug_index: int) -> str:
    """``source_key`` for the original (``aug_index`` 0), ``f"{source_key}#aug{n}"`` for variant n >= 1."""
    if aug_index < 0:
        raise ValueError(f"aug_index must be >= 0, got {aug_index}")
    return source_key if aug_index == 0 else f"{source_key}#aug{aug_index}"


def source_of(key: str, aug_index: int) -> str:
    """Inverse of :func:`variant_key` given the row's ``aug_index``.

    A source key may itself contain ``#aug``; the row's ``aug_index`` says how
    much of the key is the suffix, so the inverse is exact.

    Raises
    ------
    ValueError
        If `key` does not end with the suffix ``aug_index`` implies.
    """
    if aug_index == 0:
        return key
    suffix = f"#aug{aug_index}"
    if not key.endswith(suffix):
        raise ValueError(f"key {key!r} does not end with {suffix!r}")
    return key[: -len(suffix)]

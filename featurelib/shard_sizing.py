"""``output.target_shard_mb``: a shard count from the Parquet bytes a sample of the inputs really writes.

On the driver, before the shard tasks are built, a seeded sample of the listed
inputs (:data:`SAMPLE`, drawn as ``featurize plan`` draws its sample:
:func:`featurelib.planning.sample_records`) goes through the run's own
per-record code (:func:`featurelib.shard.prepare`: read, decode, preprocess,
augment; then the run's extractors) and its rows are written into in-memory
Parquet files by the run's own writer (:class:`featurelib.io.shards.ParquetSink`:
the run's schema, its metadata and zstd). Three writes of the same rows give a
size model of one shard file of ``m`` rows::

    size(m) = empty + ceil(m / BATCH_ROWS) * group + m * row

``empty``: a file with no row (footer, schema, the stamped spec); ``group``: what
one more row group costs (its footer entry, page headers, dictionaries), the
difference between the sample written as two row groups and as one; ``row``:
the rest, per row. With ``R`` expected rows (1 per listed source plus
``augment.copies`` for the sources of an augmented split, scaled by the share of
the sample that was not rejected), the count is the smallest ``n`` whose
expected shard, ``size(R / n)``, fits the target::

    n = ceil(R * (row + group / BATCH_ROWS) / (target - empty - group / 2))

that is ``ceil(estimated output bytes / target)`` where the estimate counts each
shard's fixed bytes. Rows stay hash-assigned (:func:`featurelib.sources.shard_of`).

Size means the Parquet file's bytes, also when HDF5 is written next to it (an
HDF5 shard holds the same rows; it is not estimated); with ``formats: [hdf5]``
only, the Parquet estimate still sets the count (docs/CONTRACT.md).

The sample's images are seeded, the kernel and zstd deterministic: the same
spec over the same inputs gives the same count, so ``--resume`` finds its shards'
file names again; ``--incremental`` keeps the first run's count.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from featurelib.sources import SourceRecord
from featurelib.spec import RunSpec

#: Inputs processed on the driver to size the shards (``featurize plan``'s default sample).
SAMPLE = 16

#: The most shards a target may give (``output.shards`` takes at most this many).
MAX_SHARDS = 99999


@dataclasses.dataclass(frozen=True)
class SizeEstimate:
    """What the sample pass measured, and the shard count it gives."""

    sampled: int  # sources processed
    sample_rows: int  # rows they wrote
    rejected: int  # sources of the sample rejected (decode, transform, extract)
    rows: float  # expected rows of the run
    empty_bytes: int  # a Parquet shard with no row
    group_bytes: float  # one more row group
    row_bytes: float  # one more row
    target_bytes: int
    n_shards: int
    seconds: float  # the sample pass, on the driver

    def shard_bytes(self, rows: float) -> float:
        """Expected Parquet bytes of a shard of `rows` rows."""
        from featurelib.io.shards import BATCH_ROWS

        return self.empty_bytes + math.ceil(rows / BATCH_ROWS) * self.group_bytes + rows * self.row_bytes

    @property
    def total_bytes(self) -> float:
        """Expected Parquet bytes of the whole output at `n_shards`."""
        from featurelib.io.shards import BATCH_ROWS

        return (self.n_shards * (self.empty_bytes + self.group_bytes / 2)
                + self.rows * (self.row_bytes + self.group_bytes / BATCH_ROWS))

    def describe(self) -> str:
        """One log line."""
        return (f"featurize: output.target_shard_mb {self.target_bytes / 1e6:g}: {self.n_shards} shards "
                f"(~{self.total_bytes / 1e6:.1f} MB of Parquet for ~{self.rows:.0f} rows, "
                f"{self.row_bytes:.0f} B per row measured on {self.sampled} sampled inputs "
                f"in {self.seconds:.2f} s)")


def expected_rows(spec: RunSpec, records: Sequence[SourceRecord]) -> float:
    """Rows the listed inputs write if none is rejected later: 1 per source, plus the augmented copies."""
    from featurelib.planning import rows_of_source  # featurize plan counts rows the same way

    return sum(rows_of_source(spec, r) for r in records if r.reject is None)


def _sample_rows(spec: RunSpec, picked: Sequence[SourceRecord]) -> tuple[list[Any], int]:
    """The rows the picked inputs write in a run (in order), and how many of them were rejected."""
    from collections import Counter

    from featurelib.compute import ExtractFailure, FeatureComputer
    from featurelib.io.shards import RejectRow, Row
    from featurelib.planning import fit_in_memory, worker_threads
    from featurelib.shard import ShardState, close_decoder, make_decoder, prepare

    decoder = make_decoder(spec)
    prepared, rejected = [], 0
    try:
        with worker_threads(spec.execution.threads_per_worker):
            bare = FeatureComputer(dataclasses.replace(spec, features=()))  # preprocess and augment only
            state = ShardState(spec, bare, decoder, None)
            for record in picked:
                outcome = prepare(record, state, Counter())
                if isinstance(outcome, RejectRow):
                    rejected += 1
                else:
                    prepared.append(outcome)
            # A fitted artefact (a BoVW vocabulary) does not exist before the pre-pass: fitted on the sample.
            fitted, artifacts, _ = fit_in_memory(spec, prepared)
            computer = FeatureComputer(fitted, artifacts)
            try:
                images = [v.image for item in prepared for v in item.variants]
                results = iter(computer.extract(images) if images else [])
            finally:
                computer.close()
    finally:
        close_decoder(decoder)
    dims = dict((f.column, dim) for f, dim in spec.feature_dims())
    kept = [f.column for f in fitted.features]
    rows = []
    for item in prepared:
        per_variant = [next(results) for _ in item.variants]
        if any(isinstance(r, ExtractFailure) for r in per_variant):
            rejected += 1
            continue
        record = item.record
        for variant, vectors in zip(item.variants, per_variant):
            by_column = dict(zip(kept, vectors))
            # A column left out (its artefact cannot be fitted from so few images) is sized as zeros.
            features = [by_column.get(f.column, np.zeros(dims[f.column], np.float32)) for f in spec.features]
            rows.append(Row(variant.key, record.source_key, variant.aug_index, record.uri, record.label,
                            record.label_name, item.split, item.sha256, item.orig_height, item.orig_width,
                            item.orig_format, features, variant.image if spec.output.pixels else None))
    return rows, rejected


def _parquet_bytes(spec: RunSpec, groups: Sequence[Sequence[Any]]) -> int:
    """Bytes of a Parquet shard holding `groups` (one row group each), written as a run writes it."""
    import pyarrow as pa

    from featurelib.io.shards import ParquetSink
    from featurelib.schema import OutputSchema

    # Fitted artefacts' hashes are in the schema's metadata: same length, not yet known.
    hashes = {f.column: "0" * 64 for f in spec.fitted_features()}
    sink = pa.BufferOutputStream()
    writer = ParquetSink(sink, OutputSchema.from_spec(spec, hashes))
    for rows in groups:
        if rows:
            writer.write(list(rows))
    writer.close()
    return len(sink.getvalue())


def _blank(row: Any) -> Any:
    """`row` with its features (and pixels) zero: what its identity columns cost alone."""
    return dataclasses.replace(row, features=[np.zeros_like(v) for v in row.features],
                               pixels=None if row.pixels is None else np.zeros_like(row.pixels))


def _identity_rows(spec: RunSpec, records: Sequence[SourceRecord], sample: Sequence[Any], count: int) -> list[Any]:
    """`count` rows as a shard holds them (listed records in key order, variants after their original) with
    real identity columns and zero features: keys, uris, labels and splits need no image read; the content
    hash (as random as a real one) and the original sizes and formats cycle through the sample's."""
    import hashlib
    import random

    from featurelib.contract import variant_key

    accepted = [r for r in records if r.reject is None]
    picked = sorted(random.Random(spec.seed + 1).sample(accepted, min(count, len(accepted))),
                    key=lambda r: r.source_key)
    rows: list[Any] = []
    for index, record in enumerate(picked):
        like = sample[index % len(sample)]
        split = record.split or like.split
        copies = spec.augment.copies if split in spec.augment.splits else 0
        for n in range(copies + 1):
            key = record.source_key if n == 0 else variant_key(record.source_key, n)
            rows.append(dataclasses.replace(
                _blank(like), key=key, source_key=record.source_key, aug_index=n, uri=record.uri,
                label=record.label, label_name=record.label_name, split=split,
                sha256=hashlib.sha256(record.source_key.encode()).hexdigest()))
            if len(rows) == count:
                return rows
    return rows


def estimate(spec: RunSpec, records: Sequence[SourceRecord], *, sample: int = SAMPLE) -> SizeEstimate:
    """Measure the sample and compute the shard count of ``output.target_shard_mb`` (see the module docstring).

    Raises
    ------
    ValueError
        If the spec has no ``output.target_shard_mb``.
    """
    from featurelib.io.shards import BATCH_ROWS
    from featurelib.planning import sample_records

    if spec.output.target_shard_mb is None:
        raise ValueError("the spec has no output.target_shard_mb")
    started = time.perf_counter()
    target = int(spec.output.target_shard_mb * 1e6)
    picked = sample_records(spec, records, sample)
    rows, rejected = _sample_rows(spec, picked) if picked else ([], 0)
    empty = _parquet_bytes(spec, [])
    rows_expected = expected_rows(spec, records)
    if picked:
        rows_expected *= (len(picked) - rejected) / len(picked)
    group, row = 0.0, 0.0
    if rows:
        # Features (and pixels): what the sampled rows add over the same rows with zero features.
        features = (_parquet_bytes(spec, [rows]) - _parquet_bytes(spec, [[_blank(r) for r in rows]])) / len(rows)
        # Identity columns and fixed costs: a full row group of them, as compressed as in a shard.
        identity = _identity_rows(spec, records, rows, BATCH_ROWS)
        full = (_parquet_bytes(spec, [identity]) - empty) / len(identity)  # per row, its group's costs included
        group = float(_parquet_bytes(spec, [identity[:1]]) - empty)  # a row group (of one row)
        row = max(1.0, full + features - group / BATCH_ROWS)
    n = shard_count_for(rows_expected, target, empty=empty, group=group, row=row)
    return SizeEstimate(len(picked), len(rows), rejected, rows_expected, empty, group, row, target, n,
                        time.perf_counter() - started)


def shard_count_for(rows: float, target: int, *, empty: float, group: float, row: float) -> int:
    """``ceil(rows * per_row / (target - per_shard))``, between 1 and min(rows, :data:`MAX_SHARDS`)."""
    from featurelib.io.shards import BATCH_ROWS

    if rows <= 0 or row <= 0:
        return 1
    per_row = row + group / BATCH_ROWS
    room = target - empty - group / 2
    # A target under a shard's fixed bytes: each shard is over it anyway; one row group each at most.
    n = math.ceil(rows * per_row / room) if room > per_row else math.ceil(rows / BATCH_ROWS)
    return max(1, min(n, MAX_SHARDS, math.ceil(rows)))

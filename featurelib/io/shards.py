"""Streaming writers of one shard: Parquet rows, HDF5 rows and the reject ledger.

Rows arrive one source at a time and are flushed every ``batch_rows`` rows, so
a shard is never held whole in memory; batch boundaries depend only on the row
count, so the same task always writes the same bytes. Each file is written
under a temporary name and put in place by :meth:`ShardWriter.close` (a rename
in a local output; on an object store, written on the worker's disk and uploaded
to its final key, which appears whole or not at all); :meth:`ShardWriter.abort`
removes the temporaries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from featurelib import contract as c
from featurelib.io.arrow_columns import column_array, fixed_size_list_array, record_batch
from featurelib.io.files import FileInfo, file_sha256, shard_kinds, shard_relpath
from featurelib.io.outfs import Output
from featurelib.schema import OutputSchema

#: Rows per Parquet row group / HDF5 append. Small enough to keep memory flat
#: with pixels stored (64 x 150 KB), large enough for columnar efficiency.
BATCH_ROWS = 64

PARQUET_COMPRESSION = "zstd"

#: h5py filter arguments of the HDF5 ``images`` dataset, by ``output.pixels_compression``.
#: Chunks stay one row each, ``(1, H, W, 3)``: a random row costs one chunk read.
#: Deflate level 1: level 4 saved 1% more on photos and less on digits, writing 1.3-2.5x slower;
#: lzf is h5py's own filter; a byte shuffle of uint8 is the identity (figures: docs/PIXELS.md).
PIXELS_FILTERS: dict[str, dict[str, Any]] = {"none": {}, "gzip": {"compression": "gzip", "compression_opts": 1}}


@dataclasses.dataclass
class Row:
    """One written row: identity, features (column order of the schema), optional pixels."""

    key: str
    source_key: str
    aug_index: int
    uri: str
    label: int
    label_name: str | None
    split: str
    sha256: str
    orig_height: int
    orig_width: int
    orig_format: str
    features: list[np.ndarray]  # one (D_c,) float32 vector per column
    pixels: np.ndarray | None = None  # (H, W, 3) uint8


@dataclasses.dataclass(frozen=True)
class RejectRow:
    key: str
    source_key: str
    uri: str
    stage: str
    reason: str
    detail: str


class ParquetSink:
    def __init__(self, path: str, schema: OutputSchema) -> None:
        self.schema = schema
        self.arrow_schema = schema.arrow_schema()
        self.writer = pq.ParquetWriter(path, self.arrow_schema, compression=PARQUET_COMPRESSION)

    def write(self, rows: list[Row]) -> None:
        arrays = []
        for name, field in zip(c.IDENTITY_COLUMNS, self.arrow_schema):
            arrays.append(column_array([getattr(r, name) for r in rows], field.type))
        for index, column in enumerate(self.schema.columns):
            flat = np.concatenate([r.features[index] for r in rows]).astype(np.float32, copy=False)
            arrays.append(fixed_size_list_array(flat, pa.float32(), column.dim))
        if self.schema.pixels:
            flat = np.concatenate([r.pixels.reshape(-1) for r in rows])
            arrays.append(fixed_size_list_array(flat, pa.uint8(), self.schema.pixel_count))
        self.writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self.arrow_schema))

    def close(self) -> None:
        self.writer.close()


class _Hdf5Sink:
    """Resizable, chunked datasets appended batch by batch (HDF5 layout of docs/CONTRACT.md)."""

    def __init__(self, path: str, schema: OutputSchema, label_names: list[str]) -> None:
        import h5py

        self.h5 = h5py.File(path, "w", libver=("v110", "latest"))
        strings = h5py.string_dtype("utf-8")
        dim = schema.total_dim
        self.features = self.h5.create_dataset(c.H5_FEATURES, shape=(0, dim), maxshape=(None, dim),
                                               dtype=np.float32, chunks=(BATCH_ROWS, max(dim, 1)))
        self.labels = self.h5.create_dataset(c.H5_LABELS, shape=(0,), maxshape=(None,), dtype=np.int32,
                                             chunks=(1024,))
        self.keys = self.h5.create_dataset(c.H5_KEYS, shape=(0,), maxshape=(None,), dtype=strings, chunks=(1024,))
        self.split = self.h5.create_dataset(c.H5_SPLIT, shape=(0,), maxshape=(None,), dtype=strings, chunks=(1024,))
        # Not in the contract's minimum, but lets the ledger be read from HDF5-only outputs.
        self.aug_index = self.h5.create_dataset(c.H5_AUG_INDEX, shape=(0,), maxshape=(None,), dtype=np.int16,
                                                chunks=(1024,))
        self.images = None
        if schema.pixels:
            h, w = schema.image_size
            # The stamped spec is the one place the schema carries the output section.
            compression = json.loads(schema.spec_json)["output"].get("pixels_compression", "none")
            self.images = self.h5.create_dataset(c.H5_IMAGES, shape=(0, h, w, 3), maxshape=(None, h, w, 3),
                                                 dtype=np.uint8, chunks=(1, h, w, 3),
                                                 **PIXELS_FILTERS[compression])
        self.h5.create_dataset(c.H5_LABEL_NAMES, data=np.array(label_names, dtype=object), dtype=strings)
        self.h5.attrs[c.H5_ATTR_COLUMNS] = json.dumps(schema.column_ranges())
        self.h5.attrs[c.H5_ATTR_FEATURE_FP] = schema.feature_fingerprint
        self.h5.attrs[c.H5_ATTR_RUN_FP] = schema.run_fingerprint
        self.rows = 0

    def write(self, rows: list[Row]) -> None:
        end = self.rows + len(rows)
        for dataset in (self.features, self.labels, self.keys, self.split, self.aug_index):
            dataset.resize(end, axis=0)
        self.features[self.rows : end] = np.stack([np.concatenate(r.features) for r in rows])
        self.labels[self.rows : end] = np.array([r.label for r in rows], dtype=np.int32)
        self.keys[self.rows : end] = np.array([r.key for r in rows], dtype=object)
        self.split[self.rows : end] = np.array([r.split for r in rows], dtype=object)
        self.aug_index[self.rows : end] = np.array([r.aug_index for r in rows], dtype=np.int16)
        if self.images is not None:
            self.images.resize(end, axis=0)
            self.images[self.rows : end] = np.stack([r.pixels for r in rows])
        self.rows = end

    def close(self) -> None:
        try:
            self.h5.close()
        except BaseException:  # a full disk while HDF5 flushes: the file stays open inside the library
            self.abort()
            raise

    def abort(self) -> None:
        """Close after a failed write (a full disk) without leaving HDF5 in a state that crashes the process.

        HDF5 keeps a file whose close failed open inside the library, and its
        clean-up at the next file operation or at exit then segfaults the worker
        (measured on a full tmpfs). The file is being discarded anyway: point
        its descriptor at /dev/null so the final metadata writes succeed, close
        cleanly, and let the caller delete the temporary file.
        """
        with contextlib.suppress(Exception):
            if not self.h5.id.valid:
                return
            handle = self.h5.id.get_vfd_handle()
            if isinstance(handle, int) and handle >= 0:
                null = os.open(os.devnull, os.O_RDWR)
                try:
                    os.dup2(null, handle)
                finally:
                    os.close(null)
        with contextlib.suppress(Exception):
            self.h5.close()


class ShardWriter:
    """Writes one shard's files under temporary names; renames them on :meth:`close`.

    Parameters
    ----------
    output : LocalOutput or RemoteOutput
        The output (:func:`featurelib.io.outfs.open_output`).
    shard, n_shards : int
        Which shard; fixes the file names.
    generation : int
        1, or an incremental run's generation (``*.g0002.*`` names).
    schema : OutputSchema
    formats : sequence of {'parquet', 'hdf5'}
    label_names : list of str
        Stored in every HDF5 shard.
    """

    def __init__(self, output: Output, shard: int, n_shards: int, schema: OutputSchema,
                 formats: tuple[str, ...], label_names: list[str], *, generation: int = 1) -> None:
        self.output, self.shard, self.n_shards = output, shard, n_shards
        self.final = {kind: shard_relpath(kind, shard, n_shards, generation) for kind in shard_kinds(formats)}
        self.temps = {kind: output.staging(rel) for kind, rel in self.final.items()}
        self.sinks: list[Any] = []
        if "parquet" in formats:
            self.sinks.append(ParquetSink(self.temps["parquet"], schema))
        if "hdf5" in formats:
            self.sinks.append(_Hdf5Sink(self.temps["hdf5"], schema, label_names))
        self.pending: list[Row] = []
        self.rejects: list[RejectRow] = []
        self.rows = 0
        self.sources = 0

    def add_source(self, rows: list[Row]) -> None:
        """All rows of one source (original first); flushed in fixed-size batches."""
        self.pending.extend(rows)
        self.rows += len(rows)
        self.sources += 1
        while len(self.pending) >= BATCH_ROWS:
            self._flush(self.pending[:BATCH_ROWS])
            self.pending = self.pending[BATCH_ROWS:]

    def add_reject(self, reject: RejectRow) -> None:
        # Rejects are small (a few strings) and kept until close: one file per shard.
        self.rejects.append(reject)

    def _flush(self, rows: list[Row]) -> None:
        for sink in self.sinks:
            sink.write(rows)

    def close(self, *, stats: str) -> list[FileInfo]:
        """Flush, close and rename every file into place (rejects last); return their infos.

        Parameters
        ----------
        stats : str
            The shard's statistics accumulator, serialised (``stats/part-*.json``).
        """
        if self.pending:
            self._flush(self.pending)
            self.pending = []
        for sink in self.sinks:
            sink.close()
        with open(self.temps["stats"], "w", encoding="utf-8") as handle:
            handle.write(stats)
        rejects = record_batch({f.name: [getattr(r, f.name) for r in self.rejects] for f in c.REJECT_SCHEMA},
                               c.REJECT_SCHEMA)
        pq.write_table(pa.Table.from_batches([rejects]), self.temps["rejects"], compression=PARQUET_COMPRESSION)
        if self.output.exists(self.final["rejects"]):
            # Another attempt of this task (a speculative copy, a retry Spark thought lost) completed
            # first: the first complete shard wins, so the files the driver reports are never
            # replaced behind its back (HDF5 bytes may differ between attempts).
            self.abort()
            from featurelib.io.readers import shard_file_info

            return [shard_file_info(self.output, rel, kind=kind, shard=self.shard) for kind, rel in self.final.items()]
        infos = []
        for kind in self.final:  # shard_kinds order: the rejects file is put in place last
            rows = len(self.rejects) if kind == "rejects" else 0 if kind == "stats" else self.rows
            staged = self.temps[kind]
            # Size and hash of the finished bytes, before they move (an upload deletes the local copy).
            info = FileInfo(self.final[kind], kind, self.shard, rows, os.path.getsize(staged), file_sha256(staged))
            self.output.put(staged, self.final[kind])
            infos.append(info)
        return infos

    def abort(self) -> None:
        """Close what is open and delete every temporary file (nothing partial stays visible)."""
        for sink in self.sinks:
            # Already failing: cleaning up matters more than a second error from close().
            with contextlib.suppress(Exception):
                getattr(sink, "abort", sink.close)()
        for path in self.temps.values():
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

"""Readers of a committed output: only the files its manifest lists, checked.

Training jobs and tests read through here: :func:`load_manifest` refuses an
output without ``_manifest.json`` (an incomplete run), :func:`read_parquet`
and :func:`read_hdf5` return features as NumPy arrays, and both refuse to mix
shards with different feature fingerprints.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from featurelib import contract as c
from featurelib.errors import SchemaError, UserError
from featurelib.io import files as layout
from featurelib.io.hdf5 import check_self_contained
from featurelib.io.outfs import LocalOutput, Output, open_output


def load_manifest(root: str, *, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of a committed output (a folder, or an fsspec URI with `storage_options`).

    Raises
    ------
    UserError
        If `root` holds no ``_manifest.json`` (not an output, or a run that did
        not complete: see ``_FAILED.json``), or an object store cannot be read.
    """
    output = open_output(root, storage_options)
    try:
        if not output.exists(layout.MANIFEST):
            failed = output.uri(layout.FAILED)
            hint = f"; the last run failed, see {failed}" if output.exists(layout.FAILED) else ""
            raise UserError(f"{root!r} is not a committed featurelib output (no {layout.MANIFEST}){hint}")
        return json.loads(output.read_bytes(layout.MANIFEST))
    except UserError:
        raise
    except Exception as exc:
        if not output.remote:
            raise
        raise UserError(f"{root!r} cannot be read: {type(exc).__name__}: {exc}") from None


def read_parquet_table(source, columns: list[str] | None = None):
    """`columns` (default all) of one Parquet file, as a ``pyarrow.Table`` with the file's schema metadata.

    ``pq.ParquetFile`` rather than ``pq.read_table``: the latter goes through ``pyarrow.dataset``,
    whose import also imports pandas (about 0.45 s of CPU in a fresh process, measured on the
    driver's commit of a 10-image run: a quarter of the local engine's fixed cost).

    Parameters
    ----------
    source : str or file-like
        A path or an open binary file (a store's file object, a ``pyarrow.BufferReader``).
    """
    with pq.ParquetFile(source) as parquet:
        return parquet.read(columns=columns)


def read_shard_keys(path: str, *, output: Output | None = None) -> dict[str, list]:
    """``key``, ``source_key`` and ``aug_index`` of one Parquet or HDF5 shard.

    Parameters
    ----------
    path : str
        A local path, or with `output` a path relative to that output (an object store too).
    """
    if output is None:
        output = LocalOutput(os.path.dirname(path))
        path = os.path.basename(path)
    if not output.exists(path):
        raise SchemaError(f"shard file {output.uri(path)!r} is missing")
    with output.reading(path) as source:
        if path.endswith(".parquet"):
            table = read_parquet_table(source, columns=["key", "source_key", "aug_index"])
            return {name: table.column(name).to_pylist() for name in ("key", "source_key", "aug_index")}
        import h5py

        with h5py.File(source, "r") as shard:
            check_self_contained(shard, output.uri(path))
            keys = list(shard[c.H5_KEYS].asstr()[:])
            aug = [int(a) for a in shard[c.H5_AUG_INDEX][:]]
    sources = [c.source_of(k, a) for k, a in zip(keys, aug)]
    return {"key": keys, "source_key": sources, "aug_index": aug}


def read_rejects(path: str, *, output: Output | None = None) -> list[dict[str, str]]:
    """Rows of one reject file (`path` as in :func:`read_shard_keys`)."""
    if output is None:
        output = LocalOutput(os.path.dirname(path))
        path = os.path.basename(path)
    if not output.exists(path):
        raise SchemaError(f"reject file {output.uri(path)!r} is missing")
    with output.reading(path) as source:
        return read_parquet_table(source).to_pylist()


def shard_file_info(output: Output, rel: str, *, kind: str, shard: int) -> layout.FileInfo:
    """The manifest entry of a complete per-shard file already in `output` (a resumed run's kept
    shard, another attempt's winning copy): its rows read from the file, its size and sha256.

    Raises
    ------
    SchemaError
        An HDF5 shard that reads other files (:func:`featurelib.io.hdf5.check_self_contained`).
    """
    from featurelib.io.outfs import file_sha256_of

    rows = 0
    if kind != "stats":
        with output.reading(rel) as source:
            if kind == "hdf5":
                import h5py

                with h5py.File(source, "r") as h5:
                    check_self_contained(h5, rel)
                    rows = int(h5[c.H5_FEATURES].shape[0])
            else:
                rows = pq.ParquetFile(source).metadata.num_rows
    return layout.FileInfo(rel, kind, shard, rows, output.size(rel), file_sha256_of(output, rel))


def _listed(manifest: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return sorted((f for f in manifest["files"] if f["kind"] == kind), key=lambda f: f["shard"])


def read_parquet(root: str, *, columns: list[str] | None = None) -> dict[str, Any]:
    """Features, labels, keys and splits of a committed output, from its Parquet shards.

    Returns
    -------
    dict with ``features`` {column: (N, D_c) float32}, ``labels`` (N,) int32,
    ``keys`` list of str, ``split`` list of str, ``label_names`` list of str,
    ``feature_fingerprint`` str.
    """
    import pyarrow as pa

    manifest = load_manifest(root)
    names = columns or [c["name"] for c in manifest["columns"]]
    tables = []
    for info in _listed(manifest, "parquet"):
        table = read_parquet_table(os.path.join(root, info["path"]))
        fingerprint = table.schema.metadata[b"featurelib.feature_fingerprint"].decode()
        if fingerprint != manifest["feature_fingerprint"]:
            raise SchemaError(f"{info['path']} has feature_fingerprint {fingerprint}, the manifest "
                              f"{manifest['feature_fingerprint']}: refusing to mix features")
        tables.append(table.replace_schema_metadata(None))
    table = pa.concat_tables(tables)
    features = {}
    for name in names:
        column = table.column(name).combine_chunks()
        dim = column.type.list_size
        features[name] = column.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
    return {
        "features": features,
        "labels": table.column("label").to_numpy().astype(np.int32),
        "keys": table.column("key").to_pylist(),
        "split": table.column("split").to_pylist(),
        "label_names": manifest["label_names"],
        "feature_fingerprint": manifest["feature_fingerprint"],
    }


def read_hdf5(root: str) -> dict[str, Any]:
    """The same as :func:`read_parquet`, from ``hdf5/features.h5`` (features as one (N, D) matrix).

    Every shard the virtual datasets point at is checked to exist first: HDF5
    would silently return fill values for a missing one. No file is read that
    points at other files (:func:`featurelib.io.hdf5.check_self_contained`):
    ``features.h5`` may read the listed shard files only, and they nothing else.
    """
    import h5py

    manifest = load_manifest(root)
    shards = set()
    for info in _listed(manifest, "hdf5"):
        path = os.path.join(root, info["path"])
        if not os.path.exists(path):
            raise SchemaError(f"HDF5 shard {info['path']} listed in the manifest is missing")
        with h5py.File(path, "r") as shard:
            check_self_contained(shard, info["path"])
        shards.add(os.path.basename(info["path"]))
    # Open by path, never through a Python file object (h5py crashes reading VDS that way).
    with h5py.File(os.path.join(root, layout.FEATURES_H5), "r") as h5:
        check_self_contained(h5, layout.FEATURES_H5, sources=shards.__contains__)
        fingerprint = h5.attrs[c.H5_ATTR_FEATURE_FP]
        if fingerprint != manifest["feature_fingerprint"]:
            raise SchemaError("features.h5 does not match the manifest's feature_fingerprint")
        return {
            "features": h5[c.H5_FEATURES][:],
            "columns": json.loads(h5.attrs[c.H5_ATTR_COLUMNS]),
            "labels": h5[c.H5_LABELS][:],
            "keys": list(h5[c.H5_KEYS].asstr()[:]),
            "split": list(h5[c.H5_SPLIT].asstr()[:]),
            "label_names": list(h5[c.H5_LABEL_NAMES].asstr()[:]),
            "feature_fingerprint": fingerprint,
        }

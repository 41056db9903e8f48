"""Read a committed output for training: ``open_dataset(OUT)``.

One object over the files a manifest lists, in either shard format, local or
behind any fsspec URL::

    ds = open_dataset("out/")                     # refuses a folder without _manifest.json
    train = ds.read(["hog", "lbp"], split="train")  # Arrays: X (N, D), y (N,), keys, ...
    for batch in ds.batches(["hog"], split="train", batch_size=512, shuffle=True, seed=1):
        model.partial_fit(batch.X, batch.y)

Why shard by shard: the shards are the unit the engines wrote, so a reader
that walks them needs memory for one batch, not for the dataset; and over
fsspec, HDF5 must be read per shard file (a virtual dataset read through a
Python file object crashes h5py), so ``hdf5/features.h5`` is never needed.

Checks when opening: the manifest exists; every listed shard file exists with
the size the manifest records (``verify="sha256"`` also hashes them); every
shard of a format carries the manifest's feature fingerprint (Parquet schema
metadata, HDF5 attribute), so shards of two runs never mix.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from featurelib import contract as c
from featurelib.errors import SchemaError, UserError
from featurelib.io import files as layout

__all__ = ["open_dataset", "FeatureDataset", "Arrays", "SOURCES", "NORMALIZE", "VERIFY"]

#: Shard formats a dataset can be read from (``source=``).
SOURCES = ("parquet", "hdf5")
#: ``normalize=`` values: subtract the train mean (``center``) or also divide by the train std
#: (``standard``), both from ``stats.json`` (features per element, pixels per channel).
NORMALIZE = (None, "center", "standard")
#: ``verify=`` values when opening.
VERIFY = ("size", "sha256", "none")

_SPLITS = ("train", "val", "test")
_BASE_COLUMNS = ["key", "label", "split", "aug_index"]


@dataclasses.dataclass
class Arrays:
    """Rows of a dataset as NumPy arrays.

    Attributes
    ----------
    X : ndarray, (N, D) float32
        The requested feature columns side by side, in the order asked for
        (``(N, 0)`` when none were asked for).
    y : ndarray, (N,) int32
        Label indices into the dataset's ``label_names``; -1 when unlabelled.
    keys : list of str, length N
    split : list of str, length N
    aug_index : ndarray, (N,) int16
        0 for an original, 1.. for its augmented variants.
    pixels : ndarray, (N, H, W, 3) or None
        uint8 RGB, or float32 when normalised; only when asked for.
    columns : dict
        ``{column: (start, stop)}``: where each requested column lies in ``X``.
    """

    X: np.ndarray
    y: np.ndarray
    keys: list[str]
    split: list[str]
    aug_index: np.ndarray
    pixels: np.ndarray | None
    columns: dict[str, tuple[int, int]]

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: np.ndarray) -> Arrays:
        """The rows at ``index`` (an integer array), in that order."""
        index = np.asarray(index, dtype=np.int64)
        return Arrays(self.X[index], self.y[index], [self.keys[i] for i in index],
                      [self.split[i] for i in index], self.aug_index[index],
                      None if self.pixels is None else self.pixels[index], dict(self.columns))

    @staticmethod
    def concat(parts: Sequence[Arrays], empty: Arrays) -> Arrays:
        """Rows of ``parts`` one after the other (``empty`` when there are none)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return empty
        if len(parts) == 1:
            return parts[0]
        return Arrays(np.concatenate([p.X for p in parts]), np.concatenate([p.y for p in parts]),
                      [k for p in parts for k in p.keys], [s for p in parts for s in p.split],
                      np.concatenate([p.aug_index for p in parts]),
                      None if parts[0].pixels is None else np.concatenate([p.pixels for p in parts]),
                      dict(parts[0].columns))


def _fs_of(root: str, storage_options: dict[str, Any] | None):
    """(filesystem, root path in it, whether it is the local disk)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return fs, path.rstrip("/") or path, bool({"file", "local"} & set(protocols))


def open_dataset(root: str, *, verify: str = "size", storage_options: dict[str, Any] | None = None
                 ) -> FeatureDataset:
    """Open the committed output at ``root`` (a local folder or an fsspec URL).

    Parameters
    ----------
    root : str
        ``OUT`` of a run: a folder or ``s3://bucket/out``, ``memory://out``, ...
    verify : {'size', 'sha256', 'none'}
        Check every listed shard file's size (default), also its sha256, or nothing.
    storage_options : dict, optional
        Passed to fsspec (credentials, endpoint).

    Raises
    ------
    UserError
        No ``_manifest.json`` under ``root`` (not an output, or a run that did not complete).
    SchemaError
        A listed file is missing, has another size or hash, or a shard carries another
        feature fingerprint than the manifest.
    """
    if verify not in VERIFY:
        raise UserError(f"verify must be one of {', '.join(VERIFY)}; got {verify!r}")
    fs, base, local = _fs_of(root, storage_options)
    manifest_path = posixpath.join(base, layout.MANIFEST)
    if not fs.exists(manifest_path):
        failed = posixpath.join(base, layout.FAILED)
        if fs.exists(failed):
            hint = f"; the last run failed, see {posixpath.join(root, layout.FAILED)}"
        elif not fs.exists(base):
            hint = ": the folder does not exist"
        else:
            hint = " (a run in progress, or not a featurelib output)"
        raise UserError(f"{root!r} is not a committed featurelib output: no {layout.MANIFEST}{hint}")
    with fs.open(manifest_path, "rb") as handle:
        manifest = json.loads(handle.read().decode("utf-8"))
    dataset = FeatureDataset(root, manifest, fs, base, local)
    dataset._check_files(verify)
    return dataset


class FeatureDataset:
    """A committed output, read through its manifest. Make one with :func:`open_dataset`.

    Attributes
    ----------
    root : str
        As given to :func:`open_dataset`.
    manifest : dict
        ``_manifest.json``.
    label_names : list of str
        Label index -> name.
    columns : dict
        Feature column -> width ``D``, in spec order.
    sources : tuple of str
        The shard formats present (``parquet``, ``hdf5``).
    image_size : (int, int) or None
        ``(H, W)`` of the stored pixels, None when the run stored none.
    """

    def __init__(self, root: str, manifest: dict[str, Any], fs: Any, base: str, local: bool) -> None:
        self.root, self.manifest, self._fs, self._base, self._local = root, manifest, fs, base, local
        self.label_names: list[str] = list(manifest["label_names"])
        self.columns: dict[str, int] = {col["name"]: int(col["dim"]) for col in manifest["columns"]}
        self.feature_fingerprint: str = manifest["feature_fingerprint"]
        self._files = {kind: sorted((f for f in manifest["files"] if f["kind"] == kind), key=lambda f: f["shard"])
                       for kind in SOURCES}
        self.sources = tuple(kind for kind in SOURCES if self._files[kind])
        output = manifest["spec"].get("output", {})
        image = manifest["spec"].get("image", {})
        self.image_size = tuple(image["size"]) if output.get("pixels") else None
        self._stats: dict[str, Any] | None = None

    # --- description --------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (f"FeatureDataset({self.root!r}, rows={self.counts['written_rows']}, "
                f"columns={self.columns}, labels={len(self.label_names)}, sources={list(self.sources)})")

    @property
    def counts(self) -> dict[str, int]:
        """The manifest's ledger counts (``listed``, ``written_sources``, ``written_rows``, ``rejected``...)."""
        return dict(self.manifest["counts"])

    @property
    def schema(self) -> list[dict[str, str]]:
        """``[{name, type}]`` of the Parquet shards."""
        return list(self.manifest["schema"])

    @property
    def stats(self) -> dict[str, Any]:
        """``stats.json`` (read once)."""
        if self._stats is None:
            with self._fs.open(self._path(layout.STATS), "rb") as handle:
                self._stats = json.loads(handle.read().decode("utf-8"))
        return self._stats

    def split_sizes(self) -> dict[str, int]:
        """Written sources per split (labelled and unlabelled), from ``stats.json``."""
        stats = self.stats
        return {s: sum(stats["labels"].get(s, {}).values()) + stats["unlabelled"].get(s, 0) for s in _SPLITS}

    def shard_paths(self, source: str = "parquet") -> list[str]:
        """Paths (in the dataset's filesystem) of the listed shard files of one format, in shard order."""
        self._check_source(source)
        return [self._path(f["path"]) for f in self._files[source]]

    # --- checks -------------------------------------------------------------------------------

    def _path(self, rel: str) -> str:
        return posixpath.join(self._base, rel)

    def _check_files(self, verify: str) -> None:
        if verify == "none":
            return
        listed = [f for f in self.manifest["files"] if f["kind"] in (*SOURCES, "rejects", "stats_summary")]
        for info in listed:
            path = self._path(info["path"])
            try:
                size = self._fs.size(path)
            except FileNotFoundError:
                size = None
            if size is None:
                raise SchemaError(f"{info['path']} is listed in the manifest of {self.root} but missing")
            if size != info["bytes"]:
                raise SchemaError(f"{info['path']} has {size} bytes, the manifest of {self.root} says "
                                  f"{info['bytes']}: the output was modified after the run")
            if verify == "sha256":
                import hashlib

                digest = hashlib.sha256()
                with self._fs.open(path, "rb") as handle:
                    while block := handle.read(1 << 20):
                        digest.update(block)
                if digest.hexdigest() != info["sha256"]:
                    raise SchemaError(f"{info['path']} does not match the sha256 in the manifest of {self.root}")
        import pyarrow.parquet as pq

        for info in self._files["parquet"]:
            with self._fs.open(self._path(info["path"]), "rb") as handle:
                metadata = pq.read_schema(handle).metadata or {}
            self._check_fingerprint(info["path"], metadata.get(b"featurelib.feature_fingerprint", b"").decode())
        for info in self._files["hdf5"]:
            with self._open_h5(info["path"]) as h5:
                self._check_fingerprint(info["path"], str(h5.attrs.get(c.H5_ATTR_FEATURE_FP, "")))

    def _check_fingerprint(self, rel: str, fingerprint: str) -> None:
        if fingerprint != self.feature_fingerprint:
            raise SchemaError(f"{rel} has feature_fingerprint {fingerprint or 'none'}, the manifest of "
                              f"{self.root} {self.feature_fingerprint}: refusing to mix features of two runs")

    def _check_source(self, source: str) -> None:
        if source not in SOURCES:
            raise UserError(f"source must be one of {', '.join(SOURCES)}; got {source!r}")
        if not self._files[source]:
            formats = self.manifest["spec"].get("output", {}).get("formats", list(self.sources))
            raise UserError(f"{self.root} has no {source} shards (its run wrote output.formats = "
                            f"{list(formats)}); read it with source={self.sources[0]!r}")

    def _check_columns(self, columns: Sequence[str] | str | None) -> list[str]:
        if columns is None:
            return list(self.columns)
        if isinstance(columns, str):
            columns = [c_.strip() for c_ in columns.split(",") if c_.strip()]
        unknown = [name for name in columns if name not in self.columns]
        if unknown:
            raise UserError(f"no feature column {', '.join(map(repr, unknown))} in {self.root}; "
                            f"its columns: {', '.join(self.columns) or 'none'}")
        if len(set(columns)) != len(columns):
            raise UserError(f"a feature column is asked for twice: {list(columns)}")
        return list(columns)

    def _check_request(self, columns, split, pixels: bool, normalize: str | None, source: str | None):
        names = self._check_columns(columns)
        if pixels and self.image_size is None:
            raise UserError(f"{self.root} holds no pixels (its run had output.pixels: false)")
        if normalize not in NORMALIZE:
            raise UserError(f"normalize must be one of center, standard or None; got {normalize!r}")
        splits = _splits(split)
        chosen = source or self.sources[0]
        self._check_source(chosen)
        return names, splits, chosen

    # --- reading ------------------------------------------------------------------------------

    def _open_h5(self, rel: str):
        import h5py

        if self._local:
            return h5py.File(self._path(rel), "r")
        # Shard files are plain (no virtual datasets): h5py reads them through a file object.
        return h5py.File(self._fs.open(self._path(rel), "rb"), "r")

    def _empty(self, names: list[str], pixels: bool) -> Arrays:
        ranges, start = {}, 0
        for name in names:
            ranges[name] = (start, start + self.columns[name])
            start += self.columns[name]
        h, w = self.image_size or (0, 0)
        return Arrays(np.zeros((0, start), np.float32), np.zeros(0, np.int32), [], [], np.zeros(0, np.int16),
                      np.zeros((0, h, w, 3), np.uint8) if pixels else None, ranges)

    def _shard_chunks(self, index: int, source: str, names: list[str], splits: set[str] | None, pixels: bool,
                      include_unlabelled: bool, rows_per_chunk: int) -> Iterator[Arrays]:
        """Chunks of at most ``rows_per_chunk`` rows of one shard, filtered, before normalisation."""
        info = self._files[source][index]
        empty = self._empty(names, pixels)
        if source == "parquet":
            import pyarrow.parquet as pq

            wanted = _BASE_COLUMNS + names + (["pixels"] if pixels else [])
            with self._fs.open(self._path(info["path"]), "rb") as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=rows_per_chunk, columns=wanted):
                    X = [_fixed_list_numpy(batch.column(name), np.float32) for name in names]
                    px = None
                    if pixels:
                        h, w = self.image_size
                        px = _fixed_list_numpy(batch.column("pixels"), np.uint8).reshape(-1, h, w, 3)
                    chunk = Arrays(np.concatenate(X, axis=1) if X else np.zeros((batch.num_rows, 0), np.float32),
                                   batch.column("label").to_numpy().astype(np.int32),
                                   batch.column("key").to_pylist(), batch.column("split").to_pylist(),
                                   batch.column("aug_index").to_numpy().astype(np.int16), px, empty.columns)
                    yield _filter(chunk, splits, include_unlabelled)
            return
        with self._open_h5(info["path"]) as h5:
            ranges = {r["name"]: (r["start"], r["stop"]) for r in json.loads(h5.attrs[c.H5_ATTR_COLUMNS])}
            total = h5[c.H5_LABELS].shape[0]
            for start in range(0, total, rows_per_chunk):
                stop = min(total, start + rows_per_chunk)
                block = h5[c.H5_FEATURES][start:stop]
                X = [block[:, ranges[name][0] : ranges[name][1]] for name in names]
                chunk = Arrays(np.ascontiguousarray(np.concatenate(X, axis=1), np.float32) if X
                               else np.zeros((stop - start, 0), np.float32),
                               h5[c.H5_LABELS][start:stop].astype(np.int32),
                               list(h5[c.H5_KEYS].asstr()[start:stop]), list(h5[c.H5_SPLIT].asstr()[start:stop]),
                               h5[c.H5_AUG_INDEX][start:stop].astype(np.int16),
                               h5[c.H5_IMAGES][start:stop] if pixels else None, empty.columns)
                yield _filter(chunk, splits, include_unlabelled)

    def _normalizer(self, names: list[str], pixels: bool, normalize: str | None):
        if normalize is None:
            return lambda chunk: chunk
        stats = self.stats
        means, stds = [], []
        for name in names:
            entry = stats["features"][name]
            if entry["mean"] is None:
                raise UserError(f"{self.root}: stats.json has no train statistics for {name!r} (no train rows)")
            means.append(np.asarray(entry["mean"], np.float64))
            stds.append(np.asarray(entry["std"], np.float64))
        mean = np.concatenate(means).astype(np.float32) if means else np.zeros(0, np.float32)
        std = np.concatenate(stds) if stds else np.zeros(0)
        # A constant element (std 0) is only centred: dividing by 0 would make it NaN.
        scale = np.where(std > 0, std, 1.0).astype(np.float32)
        pixel_mean = pixel_scale = None
        if pixels:
            entry = stats["pixels"]
            if entry["mean"] is None:
                raise UserError(f"{self.root}: stats.json has no train pixel statistics (no train rows)")
            pixel_mean = np.asarray(entry["mean"], np.float32)
            pixel_scale = np.where(np.asarray(entry["std"]) > 0, entry["std"], 1.0).astype(np.float32)

        def apply(chunk: Arrays) -> Arrays:
            chunk.X = chunk.X - mean
            if normalize == "standard":
                chunk.X /= scale
            if chunk.pixels is not None:
                chunk.pixels = chunk.pixels.astype(np.float32) - pixel_mean
                if normalize == "standard":
                    chunk.pixels /= pixel_scale
            return chunk

        return apply

    def read(self, columns: Sequence[str] | str | None = None, *, split: str | Iterable[str] | None = "train",
             pixels: bool = False, include_unlabelled: bool = False, normalize: str | None = None,
             source: str | None = None, shuffle: bool = False, seed: int = 0,
             originals_only: bool = False) -> Arrays:
        """All matching rows in memory.

        Parameters
        ----------
        columns : list of str or str, optional
            Feature columns (a comma-separated string works too); default all, in spec order.
        split : str, iterable of str or None
            ``train`` (default), ``val``, ``test``, several, or None for every split.
        pixels : bool
            Also return ``pixels`` ``(N, H, W, 3)`` (the run must have stored them).
        include_unlabelled : bool
            Keep rows with ``y == -1`` (excluded by default).
        normalize : {None, 'center', 'standard'}
            Subtract the train mean / also divide by the train std (``stats.json``;
            an element with std 0 is only centred). Pixels become float32.
        source : {'parquet', 'hdf5'}, optional
            Which shard format to read; default the first the run wrote.
        shuffle, seed : bool, int
            A seeded permutation of all rows (the same seed, the same order).
        originals_only : bool
            Drop augmented variants (``aug_index > 0``).
        """
        names, splits, chosen = self._check_request(columns, split, pixels, normalize, source)
        normal = self._normalizer(names, pixels, normalize)
        parts = []
        for index in range(len(self._files[chosen])):
            for chunk in self._shard_chunks(index, chosen, names, splits, pixels, include_unlabelled, 4096):
                if originals_only:
                    chunk = chunk.take(np.flatnonzero(chunk.aug_index == 0))
                parts.append(chunk)
        out = Arrays.concat(parts, self._empty(names, pixels))
        out = normal(out)
        if shuffle:
            out = out.take(np.random.default_rng(seed).permutation(len(out)))
        return out

    def batches(self, columns: Sequence[str] | str | None = None, *, batch_size: int = 256,
                split: str | Iterable[str] | None = "train", pixels: bool = False, include_unlabelled: bool = False,
                normalize: str | None = None, source: str | None = None, shuffle: bool = False, seed: int = 0,
                shuffle_buffer: int = 8192, shards: Sequence[int] | None = None, drop_remainder: bool = False,
                originals_only: bool = False) -> Iterator[Arrays]:
        """Batches of ``batch_size`` rows, reading one shard chunk at a time (memory: about
        ``shuffle_buffer`` rows, never the dataset).

        ``shuffle``: the shard order is a seeded permutation, rows pass through a seeded
        buffer of ``shuffle_buffer`` rows, so batches mix rows of several shards; the same
        seed gives the same batches. ``shards``: only these shard indices (what a
        PyTorch worker gets). Other parameters as in :meth:`read`.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise UserError(f"batch_size must be an integer >= 1; got {batch_size!r}")
        names, splits, chosen = self._check_request(columns, split, pixels, normalize, source)
        normal = self._normalizer(names, pixels, normalize)
        order = list(range(len(self._files[chosen]))) if shards is None else [int(s) for s in shards]
        rng = np.random.default_rng(seed)
        if shuffle:
            order = [order[i] for i in rng.permutation(len(order))]
        empty = self._empty(names, pixels)
        chunk_rows = max(batch_size, 1024)
        buffer: list[Arrays] = []
        buffered = 0

        def chunks():
            for index in order:
                for chunk in self._shard_chunks(index, chosen, names, splits, pixels, include_unlabelled, chunk_rows):
                    if originals_only:
                        chunk = chunk.take(np.flatnonzero(chunk.aug_index == 0))
                    if len(chunk):
                        yield chunk

        for chunk in chunks():
            buffer.append(chunk)
            buffered += len(chunk)
            limit = max(shuffle_buffer, batch_size) if shuffle else batch_size
            while buffered >= limit:
                pool = Arrays.concat(buffer, empty)
                if shuffle:
                    pool = pool.take(rng.permutation(len(pool)))
                out, rest = pool.take(np.arange(batch_size)), pool.take(np.arange(batch_size, len(pool)))
                buffer, buffered = [rest], len(rest)
                yield normal(out)
        pool = Arrays.concat(buffer, empty)
        if shuffle and len(pool):
            pool = pool.take(rng.permutation(len(pool)))
        for start in range(0, len(pool), batch_size):
            out = pool.take(np.arange(start, min(len(pool), start + batch_size)))
            if drop_remainder and len(out) < batch_size:
                break
            yield normal(out)

    # --- other consumers ----------------------------------------------------------------------

    def arrow_dataset(self):
        """A ``pyarrow.dataset.Dataset`` over the listed Parquet shards (only those)."""
        import pyarrow.dataset as pads

        self._check_source("parquet")
        return pads.dataset(self.shard_paths("parquet"), format="parquet", filesystem=self._fs)

    def to_pandas(self, columns: Sequence[str] | str | None = None, *, split: str | Iterable[str] | None = None):
        """A pandas DataFrame of the identity columns and ``columns`` (feature cells as arrays)."""
        import pyarrow.compute as pc

        names = self._check_columns(columns)
        splits = _splits(split)
        wanted = ["key", "source_key", "aug_index", "label", "label_name", "split"] + names
        dataset = self.arrow_dataset()
        expression = None if splits is None else pc.field("split").isin(sorted(splits))
        return dataset.to_table(columns=wanted, filter=expression).to_pandas()

    def tf_dataset(self, columns: Sequence[str] | str | None = None, *, batch_size: int = 256,
                   split: str | Iterable[str] | None = "train", pixels: bool = False, normalize: str | None = None,
                   source: str | None = None, shuffle: bool = False, seed: int = 0, shuffle_buffer: int = 8192,
                   originals_only: bool = False):
        """A ``tf.data.Dataset`` of ``(x, y)`` batches; ``x`` is ``(B, D)`` features, or with
        ``pixels=True`` the ``(B, H, W, 3)`` pixels (float32 when normalised, else uint8).

        Each pass (epoch) reshuffles with the next seed when ``shuffle`` is on.
        """
        import tensorflow as tf

        names, _splits_, chosen = self._check_request(columns, split, pixels, normalize, source)
        dim = sum(self.columns[n] for n in names)
        if pixels:
            h, w = self.image_size
            x_spec = tf.TensorSpec((None, h, w, 3), tf.float32 if normalize else tf.uint8)
        else:
            x_spec = tf.TensorSpec((None, dim), tf.float32)
        epoch = [0]

        def generate():
            epoch[0] += 1
            for batch in self.batches(names, batch_size=batch_size, split=split, pixels=pixels, normalize=normalize,
                                      source=chosen, shuffle=shuffle, seed=seed + epoch[0] - 1,
                                      shuffle_buffer=shuffle_buffer, originals_only=originals_only):
                yield (batch.pixels if pixels else batch.X), batch.y

        return tf.data.Dataset.from_generator(
            generate, output_signature=(x_spec, tf.TensorSpec((None,), tf.int32))).prefetch(2)

    def torch_dataset(self, columns: Sequence[str] | str | None = None, *, split: str | Iterable[str] | None = "train",
                      pixels: bool = False, normalize: str | None = None, source: str | None = None,
                      shuffle: bool = False, seed: int = 0, shuffle_buffer: int = 8192, originals_only: bool = False):
        """A PyTorch ``IterableDataset`` of ``(x, y)`` rows (use a ``DataLoader`` to batch).

        With several ``DataLoader`` workers, each reads its own shards (shard ``i`` goes
        to worker ``i % num_workers``), and opens them itself, lazily: nothing of
        h5py or an open file crosses a process boundary. ``x`` is a float32 tensor
        ``(D,)``, or ``(3, H, W)`` pixels (channels first, as torch convolutions take
        them). Needs ``pip install 'featurelib[torch]'``.
        """
        try:
            import torch
            from torch.utils.data import IterableDataset, get_worker_info
        except ImportError:
            raise UserError("the PyTorch reader needs torch: pip install 'featurelib[torch]'") from None
        names, _splits_, chosen = self._check_request(columns, split, pixels, normalize, source)
        n_shards = len(self._files[chosen])
        dataset = self
        kwargs = dict(split=split, pixels=pixels, normalize=normalize, source=chosen, shuffle=shuffle,
                      shuffle_buffer=shuffle_buffer, originals_only=originals_only)

        class ShardRows(IterableDataset):
            def __init__(self) -> None:
                super().__init__()
                self.epoch = 0

            def __iter__(self):
                info = get_worker_info()
                worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
                mine = list(range(worker, n_shards, workers))
                self.epoch += 1
                for batch in dataset.batches(names, batch_size=256, shards=mine,
                                             seed=seed + 1000003 * worker + self.epoch - 1, **kwargs):
                    if pixels:
                        x = torch.from_numpy(np.ascontiguousarray(batch.pixels.transpose(0, 3, 1, 2)))
                        x = x.float() if normalize is None else x
                    else:
                        x = torch.from_numpy(batch.X)
                    y = torch.from_numpy(batch.y.astype(np.int64))
                    yield from zip(x, y)

        return ShardRows()


def _splits(split: str | Iterable[str] | None) -> set[str] | None:
    if split is None:
        return None
    chosen = {split} if isinstance(split, str) else set(split)
    unknown = sorted(chosen - set(_SPLITS))
    if unknown or not chosen:
        raise UserError(f"split must be train, val, test, a list of them or None; got {split!r}")
    return chosen


def _filter(chunk: Arrays, splits: set[str] | None, include_unlabelled: bool) -> Arrays:
    keep = np.ones(len(chunk), bool)
    if splits is not None:
        keep &= np.fromiter((s in splits for s in chunk.split), bool, len(chunk))
    if not include_unlabelled:
        keep &= chunk.y >= 0
    return chunk if keep.all() else chunk.take(np.flatnonzero(keep))


def _fixed_list_numpy(column, dtype) -> np.ndarray:
    """``fixed_size_list<T>[D]`` Arrow column -> ``(N, D)`` array without a Python loop."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    dim = column.type.list_size
    values = column.values[column.offset * dim : (column.offset + len(column)) * dim]
    return values.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(len(column), dim)

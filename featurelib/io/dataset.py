"""Read a committed output for training: ``open_dataset(OUT)``.

One object over the files a manifest lists, in either shard format, local or
behind any fsspec URL::

    ds = open_dataset("out/")                     # refuses a folder without _manifest.json
    train = ds.read(["hog", "lbp"], split="train")  # Arrays: X (N, D), y (N,), keys, ...
    for batch in ds.batches(["hog"], split="train", batch_size=512, shuffle=True, seed=1):
        model.partial_fit(batch.X, batch.y)

How rows are read: every shard file is cut into *blocks* of consecutive rows
(whole Parquet row groups; fixed row ranges of HDF5), a few MiB each. Reading
walks blocks, so memory holds a block and a batch, never the dataset. A
shuffled pass reads the blocks of all shards in a seeded random order and
passes their rows through a seeded shuffle buffer: rows within a shard are
sorted by key (so, for a folder input, by class), and only picking blocks from
anywhere in the dataset makes a bounded buffer yield batches that mix shards
and classes. Over fsspec, HDF5 is read per shard file: a virtual dataset read
through a Python file object crashes h5py, so ``hdf5/features.h5`` is only
ever opened to list its sources.

Checks when opening: the manifest exists; every listed file exists with the
size the manifest records (``verify="sha256"`` also hashes them); every shard
carries the manifest's feature fingerprint (Parquet schema metadata, HDF5
attribute), so shards of two runs never mix; the virtual datasets of
``features.h5`` read only listed shard files. ``verify="none"`` skips all of
this at opening, but a shard's fingerprint is still checked whenever it is
read. Every HDF5 file is refused, whenever it is opened and before any of its
data is read, if it points at other files (external storage, external links,
virtual datasets other than those of ``features.h5`` over its shard files).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import posixpath
from collections.abc import Callable, Iterable, Iterator, Sequence
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

_SPLITS = c.SPLITS
_BASE_COLUMNS = ["key", "label", "split", "aug_index"]
_FINGERPRINT_META = b"featurelib.feature_fingerprint"

#: Target size of one read block: large enough for few reads, small next to the buffer.
_BLOCK_BYTES = 4 << 20
#: Default shuffle buffer, in bytes of rows (``shuffle_buffer=None``).
_BUFFER_BYTES = 64 << 20
#: Shard files a shuffled pass keeps open at once (blocks come from anywhere).
_OPEN_FILES = 8
#: Rough bytes of a row besides its features and pixels (key, split, label).
_ROW_OVERHEAD = 64


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
        """The rows at ``index`` (an integer array), in that order (copies)."""
        index = np.asarray(index, dtype=np.int64)
        return Arrays(self.X[index], self.y[index], [self.keys[i] for i in index],
                      [self.split[i] for i in index], self.aug_index[index],
                      None if self.pixels is None else self.pixels[index], dict(self.columns))

    def slice(self, start: int, stop: int) -> Arrays:
        """Rows ``start:stop`` (array views: no copy)."""
        return Arrays(self.X[start:stop], self.y[start:stop], self.keys[start:stop], self.split[start:stop],
                      self.aug_index[start:stop], None if self.pixels is None else self.pixels[start:stop],
                      dict(self.columns))

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


@dataclasses.dataclass(frozen=True)
class _Request:
    """What a read asks for, checked (see :meth:`FeatureDataset._request`)."""

    names: tuple[str, ...]
    splits: frozenset[str] | None
    pixels: bool
    include_unlabelled: bool
    originals_only: bool
    normalize: str | None
    source: str


@dataclasses.dataclass(frozen=True)
class _Block:
    """Rows ``start:stop`` of the ``file``-th listed shard file of a format."""

    file: int
    start: int
    stop: int


def _fs_of(root: str, storage_options: dict[str, Any] | None):
    """(filesystem, root path in it, whether it is the local disk)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
    # fsspec shares one instance per process and options, listings cached in it: a run in this
    # process may have changed the output since (new generations, pruned files).
    fs.invalidate_cache()
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return fs, path.rstrip("/") or path, bool({"file", "local"} & set(protocols))


def open_dataset(root: str | os.PathLike, *, verify: str = "size", storage_options: dict[str, Any] | None = None
                 ) -> FeatureDataset:
    """Open the committed output at ``root`` (a local folder or an fsspec URL).

    Parameters
    ----------
    root : str or path-like
        ``OUT`` of a run: a folder or ``s3://bucket/out``, ``memory://out``, ...
    verify : {'size', 'sha256', 'none'}
        Check every listed file's size and every shard's feature fingerprint
        (default), also every file's sha256, or nothing at opening (shards are
        still checked for their fingerprint when read).
    storage_options : dict, optional
        Passed to fsspec (credentials, endpoint).

    Raises
    ------
    UserError
        No ``_manifest.json`` under ``root`` (not an output, or a run that did not complete).
    SchemaError
        A listed file is missing, has another size or hash, a shard carries another
        feature fingerprint than the manifest, ``features.h5`` reads unlisted files, or
        an HDF5 file points at other files.
    """
    if verify not in VERIFY:
        raise UserError(f"verify must be one of {', '.join(VERIFY)}; got {verify!r}")
    root = os.fspath(root)
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
    if verify != "none":
        dataset._verify(sha256=verify == "sha256")
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
    feature_fingerprint : str
        What makes features comparable (models record it).
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
        # Stable sort: the generations of an incremental run keep their listed order within a shard.
        self._files = {kind: sorted((f for f in manifest["files"] if f["kind"] == kind), key=lambda f: f["shard"])
                       for kind in SOURCES}
        self.sources = tuple(kind for kind in SOURCES if self._files[kind])
        output = manifest["spec"].get("output", {})
        image = manifest["spec"].get("image", {})
        self.image_size = tuple(int(v) for v in image["size"]) if output.get("pixels") else None
        self._stats: dict[str, Any] | None = None
        self._row_groups: dict[int, list[int]] = {}  # Parquet file index -> rows per row group

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
        """Paths (in the dataset's filesystem) of the listed shard files of one format, in shard
        order; ``shards=`` of :meth:`batches` indexes this list."""
        self._check_source(source)
        return [self._path(f["path"]) for f in self._files[source]]

    # --- checks -------------------------------------------------------------------------------

    def _path(self, rel: str) -> str:
        return posixpath.join(self._base, rel)

    def _listed_sizes(self, infos: Sequence[dict[str, Any]]) -> dict[str, int]:
        """Sizes of the listed files, one directory listing per folder (an object store
        answers a listing in one request, a size in one request per file)."""
        sizes: dict[str, int] = {}
        for folder in sorted({posixpath.dirname(self._path(i["path"])) for i in infos}):
            try:
                entries = self._fs.ls(folder, detail=True)
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.get("type") == "file":
                    sizes[self._fs._strip_protocol(entry["name"]).rstrip("/")] = int(entry["size"])
        return sizes

    def _verify(self, *, sha256: bool) -> None:
        """Every listed file present with its size (and hash); fingerprints; virtual sources."""
        infos = self.manifest["files"]
        sizes = self._listed_sizes(infos)
        for info in infos:
            path = self._path(info["path"])
            size = sizes.get(path)
            if size is None:  # a listing names files its own way on some stores: ask the file
                try:
                    size = self._fs.size(path)
                except FileNotFoundError:
                    size = None
            if size is None:
                raise SchemaError(f"{info['path']} is listed in the manifest of {self.root} but missing")
            if size != info["bytes"]:
                raise SchemaError(f"{info['path']} has {size} bytes, the manifest of {self.root} says "
                                  f"{info['bytes']}: the output was modified after the run")
            if sha256 and _sha256(self._fs, path) != info["sha256"]:
                raise SchemaError(f"{info['path']} does not match the sha256 in the manifest of {self.root}: "
                                  f"the output was modified after the run")
        for source in self.sources:
            for index in range(len(self._files[source])):
                with self._reader(source, index) as shard:  # opening checks the fingerprint
                    if source == "parquet":  # the footer is read anyway: keep what batches plan with
                        self._row_groups[index] = shard.row_group_rows()
        self._check_virtual_index()

    def _check_virtual_index(self) -> None:
        """``features.h5`` must read listed shard files only: a virtual dataset whose source is
        missing reads as fill values, silently (plain h5py consumers would get zeros)."""
        listed = {f["path"] for f in self._files["hdf5"]}
        for info in (f for f in self.manifest["files"] if f["kind"] == "hdf5_index"):
            folder = posixpath.dirname(info["path"])
            with self._open_h5(info["path"], index=True) as h5:  # listing sources is safe through a file object
                sources = {posixpath.normpath(posixpath.join(folder, vs.file_name))
                           for name in h5 if h5[name].is_virtual for vs in h5[name].virtual_sources()}
            unknown = sorted(sources - listed)
            if unknown:
                raise SchemaError(f"{info['path']} reads {', '.join(unknown)}, which the manifest of {self.root} "
                                  f"does not list: its virtual datasets would read fill values")

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
            hint = " (pixels are read with pixels=True)" if c.PIXELS_COLUMN in unknown else ""
            raise UserError(f"no feature column {', '.join(map(repr, unknown))} in {self.root}; "
                            f"its columns: {', '.join(self.columns) or 'none'}{hint}")
        if len(set(columns)) != len(columns):
            raise UserError(f"a feature column is asked for twice: {list(columns)}")
        return list(columns)

    def _request(self, columns, split, *, pixels: bool = False, include_unlabelled: bool = False,
                 originals_only: bool = False, normalize: str | None = None, source: str | None = None) -> _Request:
        """Check a read's arguments (one-line :class:`UserError` naming what exists)."""
        names = self._check_columns(columns)
        if pixels and self.image_size is None:
            raise UserError(f"{self.root} holds no pixels (its run had output.pixels: false); "
                            f"feature columns: {', '.join(self.columns) or 'none'}")
        if normalize not in NORMALIZE:
            raise UserError(f"normalize must be one of center, standard or None; got {normalize!r}")
        chosen = source or self.sources[0]
        self._check_source(chosen)
        return _Request(tuple(names), _splits(split), bool(pixels), bool(include_unlabelled), bool(originals_only),
                        normalize, chosen)

    # --- reading ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _open_h5(self, rel: str, *, index: bool = False):
        """An HDF5 file of the output, local or through a Python file object (then closed too),
        refused if it points at other files (``index``: ``features.h5``, which reads shard files)."""
        import h5py

        from featurelib.io.hdf5 import check_self_contained, is_shard_name

        with contextlib.ExitStack() as stack:
            if self._local:
                h5 = stack.enter_context(h5py.File(self._path(rel), "r"))
            else:
                handle = stack.enter_context(self._fs.open(self._path(rel), "rb"))
                h5 = stack.enter_context(h5py.File(handle, "r"))
            check_self_contained(h5, rel, sources=is_shard_name if index else None)
            yield h5

    @contextlib.contextmanager
    def _reader(self, source: str, index: int):
        """The ``index``-th shard file of ``source``, open, its fingerprint checked."""
        rel = self._files[source][index]["path"]
        with contextlib.ExitStack() as stack:
            if source == "parquet":
                import pyarrow.parquet as pq

                handle = stack.enter_context(self._fs.open(self._path(rel), "rb"))
                parquet = pq.ParquetFile(handle)
                metadata = parquet.schema_arrow.metadata or {}
                self._check_fingerprint(rel, metadata.get(_FINGERPRINT_META, b"").decode())
                yield _ParquetShard(parquet, self.image_size)
            else:
                h5 = stack.enter_context(self._open_h5(rel))
                self._check_fingerprint(rel, str(h5.attrs.get(c.H5_ATTR_FEATURE_FP, "")))
                yield _Hdf5Shard(h5)

    def _row_bytes(self, request: _Request) -> int:
        """Bytes one row takes in memory as read (HDF5 reads every feature column)."""
        dims = sum(self.columns.values()) if request.source == "hdf5" else sum(self.columns[n] for n in request.names)
        h, w = self.image_size or (0, 0)
        return 4 * dims + (3 * h * w if request.pixels else 0) + _ROW_OVERHEAD

    def _plan(self, request: _Request, files: Sequence[int], target: int) -> list[_Block]:
        """Blocks of about ``target`` rows covering ``files`` in order (Parquet: whole row
        groups, as the writer cut them; HDF5: row ranges)."""
        blocks: list[_Block] = []
        for index in files:
            if request.source == "parquet":
                if index not in self._row_groups:  # a footer read per file, once per dataset
                    with self._reader("parquet", index) as shard:
                        self._row_groups[index] = shard.row_group_rows()
                ranges = _group_rows(self._row_groups[index], target)
            else:
                ranges = _cut_rows(int(self._files["hdf5"][index]["rows"]), target)
            blocks.extend(_Block(index, start, stop) for start, stop in ranges)
        return blocks

    def _blocks(self, request: _Request, blocks: Sequence[_Block]) -> Iterator[Arrays]:
        """The filtered rows of ``blocks``, in that order, keeping a few shard files open."""
        empty = self._empty(request)
        open_files: collections.OrderedDict[int, tuple[contextlib.ExitStack, Any]] = collections.OrderedDict()
        try:
            for block in blocks:
                if block.file not in open_files:
                    if len(open_files) >= _OPEN_FILES:  # least recently read first
                        open_files.popitem(last=False)[1][0].close()
                    closer = contextlib.ExitStack()
                    open_files[block.file] = (closer, closer.enter_context(self._reader(request.source, block.file)))
                open_files.move_to_end(block.file)
                rows = open_files[block.file][1].read(block.start, block.stop, request.names, empty.columns,
                                                      request.pixels)
                rows = _filter(rows, request.splits, request.include_unlabelled, request.originals_only)
                if len(rows):
                    yield rows
        finally:  # also when the consumer stops early (the generator is closed)
            for closer, _shard in open_files.values():
                closer.close()

    def _empty(self, request: _Request) -> Arrays:
        ranges, start = {}, 0
        for name in request.names:
            ranges[name] = (start, start + self.columns[name])
            start += self.columns[name]
        h, w = self.image_size or (0, 0)
        return Arrays(np.zeros((0, start), np.float32), np.zeros(0, np.int32), [], [], np.zeros(0, np.int16),
                      np.zeros((0, h, w, 3), np.uint8) if request.pixels else None, ranges)

    def normalizer(self, columns: Sequence[str] | str | None = None, *, pixels: bool = False,
                   normalize: str | None = "standard") -> Callable[[Arrays], Arrays]:
        """The function :meth:`read` and :meth:`batches` apply with ``normalize=``.

        Parameters
        ----------
        columns : list of str or str, optional
            Feature columns, in ``X`` order; default all.
        pixels : bool
            Also normalise ``pixels``, per RGB channel.
        normalize : {None, 'center', 'standard'}

        Returns
        -------
        callable
            ``Arrays -> Arrays``: ``X`` becomes ``(X - mean) / std`` float32 (``center``: only
            ``X - mean``) with the element-wise train mean and population std of ``stats.json``;
            an element with std 0 is only centred (dividing would give NaN). ``pixels`` likewise
            per channel, as float32 ``(N, H, W, 3)`` on the 0-255 scale's statistics.
        """
        request = self._request(columns, None, pixels=pixels, normalize=normalize)
        return self._normalizer(request)

    def _normalizer(self, request: _Request) -> Callable[[Arrays], Arrays]:
        if request.normalize is None:
            return lambda chunk: chunk
        stats = self.stats
        means, stds = [], []
        for name in request.names:
            entry = stats["features"][name]
            if entry["mean"] is None:
                raise UserError(f"{self.root}: stats.json has no train statistics for {name!r} (no train rows)")
            means.append(np.asarray(entry["mean"], np.float64))
            stds.append(np.asarray(entry["std"], np.float64))
        mean = (np.concatenate(means) if means else np.zeros(0)).astype(np.float32)
        scale = _safe_scale(np.concatenate(stds) if stds else np.zeros(0))
        pixel_mean = pixel_scale = None
        if request.pixels:
            entry = stats["pixels"]
            if entry["mean"] is None:
                raise UserError(f"{self.root}: stats.json has no train pixel statistics (no train rows)")
            pixel_mean = np.asarray(entry["mean"], np.float32)
            pixel_scale = _safe_scale(np.asarray(entry["std"], np.float64))
        standard = request.normalize == "standard"

        def apply(chunk: Arrays) -> Arrays:
            X = chunk.X - mean  # a new array: the caller's chunk is never modified
            if standard:
                X /= scale
            px = chunk.pixels
            if px is not None:
                px = px.astype(np.float32) - pixel_mean
                if standard:
                    px /= pixel_scale
            return dataclasses.replace(chunk, X=X, pixels=px)

        return apply

    def count(self, *, split: str | Iterable[str] | None = "train", include_unlabelled: bool = False,
              originals_only: bool = False, source: str | None = None) -> int:
        """Rows :meth:`read` would return with these filters (reads only the identity columns:
        ``stats.json`` counts sources, not their augmented variants).

        Parameters
        ----------
        split, include_unlabelled, originals_only, source
            As in :meth:`read`.
        """
        request = self._request([], split, include_unlabelled=include_unlabelled, originals_only=originals_only,
                                source=source)
        files = range(len(self._files[request.source]))
        target = max(1, _BLOCK_BYTES // self._row_bytes(request))
        return sum(len(rows) for rows in self._blocks(request, self._plan(request, files, target)))

    def read(self, columns: Sequence[str] | str | None = None, *, split: str | Iterable[str] | None = "train",
             pixels: bool = False, include_unlabelled: bool = False, normalize: str | None = None,
             source: str | None = None, shuffle: bool = False, seed: int = 0,
             originals_only: bool = False) -> Arrays:
        """All matching rows in memory, in shard order (or a seeded permutation of them).

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
            See :meth:`normalizer`. Pixels become float32.
        source : {'parquet', 'hdf5'}, optional
            Which shard format to read; default the first the run wrote. Both give the same arrays.
        shuffle, seed : bool, int
            A seeded permutation of all rows (the same seed, the same order).
        originals_only : bool
            Drop augmented variants (``aug_index > 0``).

        Returns
        -------
        Arrays
            ``X`` (N, D) float32, ``y`` (N,) int32, ``keys``, ``split``, ``aug_index`` (N,),
            ``pixels`` (N, H, W, 3) or None.
        """
        request = self._request(columns, split, pixels=pixels, include_unlabelled=include_unlabelled,
                                originals_only=originals_only, normalize=normalize, source=source)
        normal = self._normalizer(request)
        files = range(len(self._files[request.source]))
        target = max(1, _BLOCK_BYTES // self._row_bytes(request))
        out = Arrays.concat(list(self._blocks(request, self._plan(request, files, target))), self._empty(request))
        out = normal(out)
        if shuffle:
            out = out.take(np.random.default_rng(seed).permutation(len(out)))
        return out

    def batches(self, columns: Sequence[str] | str | None = None, *, batch_size: int = 256,
                split: str | Iterable[str] | None = "train", pixels: bool = False, include_unlabelled: bool = False,
                normalize: str | None = None, source: str | None = None, shuffle: bool = False, seed: int = 0,
                shuffle_buffer: int | None = None, shards: Sequence[int] | None = None,
                drop_remainder: bool = False, originals_only: bool = False) -> Iterator[Arrays]:
        """Batches of ``batch_size`` rows, reading one block at a time.

        Without ``shuffle``, the rows of :meth:`read` in the same order. With ``shuffle``,
        the blocks of every shard (a few MiB of consecutive rows each) are read in a seeded
        random order and their rows pass through a seeded buffer of ``shuffle_buffer``
        rows: batches mix shards and classes (rows within a shard are sorted by key) while
        memory holds about three buffers' worth of rows (the buffer, a block, the permuted
        copy), never the dataset. The same seed gives the same batches.

        Parameters
        ----------
        batch_size : int
            Rows per batch; the last one may be smaller unless ``drop_remainder``.
        shuffle_buffer : int, optional
            Rows the shuffle buffer holds; default as many as fit in 64 MiB (at least
            ``batch_size``). Larger mixes better and costs memory.
        shards : sequence of int, optional
            Only these shard files (indices into :meth:`shard_paths`), as a PyTorch
            worker reads its share.
        drop_remainder : bool
            Drop a last batch shorter than ``batch_size``.
        columns, split, pixels, include_unlabelled, normalize, source, seed, originals_only
            As in :meth:`read`.

        Yields
        ------
        Arrays
            ``X`` (B, D), ``y`` (B,), ... with ``B <= batch_size``.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise UserError(f"batch_size must be an integer >= 1; got {batch_size!r}")
        request = self._request(columns, split, pixels=pixels, include_unlabelled=include_unlabelled,
                                originals_only=originals_only, normalize=normalize, source=source)
        n_files = len(self._files[request.source])
        files = list(range(n_files)) if shards is None else [int(s) for s in shards]
        if any(not 0 <= s < n_files for s in files):
            raise UserError(f"shards must be indices below {n_files} (the {request.source} shard files); got {shards}")
        if shuffle_buffer is None:
            shuffle_buffer = _BUFFER_BYTES // self._row_bytes(request)
        buffer_rows = max(int(shuffle_buffer), int(batch_size))
        return self._batches(request, files, int(batch_size), shuffle, seed, buffer_rows, drop_remainder)

    def _batches(self, request: _Request, files: list[int], batch_size: int, shuffle: bool, seed: int,
                 buffer_rows: int, drop_remainder: bool) -> Iterator[Arrays]:
        """The generator behind :meth:`batches` (arguments already checked, so errors come at the call)."""
        normal = self._normalizer(request)
        # Blocks of at most a quarter of the buffer: it then mixes rows of several blocks,
        # and memory is bounded by the buffer, not by how the writer cut the files.
        target = max(1, min(_BLOCK_BYTES // self._row_bytes(request), buffer_rows // 4))
        blocks = self._plan(request, files, target)
        rng = np.random.default_rng(seed)
        if shuffle:
            blocks = [blocks[i] for i in rng.permutation(len(blocks))]
        rows = self._blocks(request, blocks)
        empty = self._empty(request)
        batched = (_shuffled_batches(rows, batch_size, buffer_rows, rng, empty) if shuffle
                   else _sequential_batches(rows, batch_size, empty))
        for batch in batched:
            if drop_remainder and len(batch) < batch_size:
                return
            yield normal(batch)

    # --- other consumers ----------------------------------------------------------------------

    def arrow_dataset(self):
        """A ``pyarrow.dataset.Dataset`` over the listed Parquet shards (only those)."""
        import pyarrow.dataset as pads

        self._check_source("parquet")
        # Locally, Arrow's own filesystem (fast, memory-mapped); elsewhere the fsspec one.
        return pads.dataset(self.shard_paths("parquet"), format="parquet",
                            filesystem=None if self._local else self._fs)

    def to_pandas(self, columns: Sequence[str] | str | None = None, *, split: str | Iterable[str] | None = None):
        """A pandas DataFrame of the identity columns and ``columns`` (feature cells as arrays),
        every row of ``split`` (default all, unlabelled included)."""
        import pyarrow.compute as pc

        names = self._check_columns(columns)
        splits = _splits(split)
        wanted = ["key", "source_key", "aug_index", "label", "label_name", "split"] + names
        dataset = self.arrow_dataset()
        expression = None if splits is None else pc.field("split").isin(sorted(splits))
        return dataset.to_table(columns=wanted, filter=expression).to_pandas()

    def tf_dataset(self, columns: Sequence[str] | str | None = None, *, batch_size: int = 256,
                   split: str | Iterable[str] | None = "train", pixels: bool = False, normalize: str | None = None,
                   source: str | None = None, shuffle: bool = False, seed: int = 0,
                   shuffle_buffer: int | None = None, originals_only: bool = False, drop_remainder: bool = False):
        """A ``tf.data.Dataset`` of ``(x, y)`` batches over :meth:`batches`.

        ``x`` is ``(B, D)`` float32 features, or with ``pixels=True`` the ``(B, H, W, 3)``
        pixels (float32 when normalised, else uint8); ``y`` is ``(B,)`` int32. Pass number
        ``e`` (0, 1, ...: each Keras epoch) shuffles with seed ``seed + e``, so every epoch
        sees another order and a rerun the same ones. The dataset knows its number of
        batches (``cardinality()``; counted once, from the identity columns), so Keras shows
        progress and knows where an epoch ends. Needs ``pip install 'featurelib[deep]'``.
        """
        kwargs = dict(batch_size=batch_size, split=split, pixels=pixels, normalize=normalize, source=source,
                      shuffle=shuffle, shuffle_buffer=shuffle_buffer, originals_only=originals_only,
                      drop_remainder=drop_remainder)
        self.batches(columns, seed=seed, **kwargs)  # checks every argument now (and before TF's slow import)
        names = self._check_columns(columns)
        try:
            import tensorflow as tf
        except ImportError:
            raise UserError("the tf.data reader needs TensorFlow: pip install 'featurelib[deep]'") from None
        if pixels:
            h, w = self.image_size
            x_spec = tf.TensorSpec((None, h, w, 3), tf.float32 if normalize else tf.uint8)
        else:
            x_spec = tf.TensorSpec((None, sum(self.columns[n] for n in names)), tf.float32)
        passes = [0]

        def generate():
            epoch, passes[0] = passes[0], passes[0] + 1
            for batch in self.batches(names, seed=seed + epoch, **kwargs):
                yield (batch.pixels if pixels else batch.X), batch.y

        rows = self.count(split=split, originals_only=originals_only, source=source)
        n_batches = rows // batch_size if drop_remainder else -(-rows // batch_size)
        dataset = tf.data.Dataset.from_generator(generate, output_signature=(x_spec, tf.TensorSpec((None,), tf.int32)))
        return dataset.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(2)

    def torch_dataset(self, columns: Sequence[str] | str | None = None, *, split: str | Iterable[str] | None = "train",
                      pixels: bool = False, normalize: str | None = None, source: str | None = None,
                      shuffle: bool = False, seed: int = 0, shuffle_buffer: int | None = None,
                      originals_only: bool = False, include_unlabelled: bool = False, with_keys: bool = False):
        """A PyTorch ``IterableDataset`` of ``(x, y)`` rows (``(x, y, key)`` with ``with_keys``);
        batch them with a ``DataLoader``.

        With several ``DataLoader`` workers, worker ``w`` of ``n`` reads shard files
        ``w, w + n, ...`` and opens them itself, lazily: no open file or h5py object
        crosses a process boundary, and the dataset pickles (``spawn`` and
        ``forkserver`` work). ``x`` is a float32 tensor ``(D,)``, or ``(3, H, W)`` pixels
        (channels first, as torch convolutions take them; 0-255 unless normalised);
        ``y`` is int64. Call ``set_epoch(e)`` before each epoch to reshuffle (workers get
        a fresh copy of the dataset each epoch, so it cannot count epochs itself).
        Needs ``pip install 'featurelib[torch]'``.
        """
        names = self._check_columns(columns)
        options = dict(split=split, pixels=pixels, normalize=normalize, source=source, shuffle=shuffle,
                       shuffle_buffer=shuffle_buffer, originals_only=originals_only,
                       include_unlabelled=include_unlabelled)
        self.batches(names, **options)  # checks every argument now, in the main process
        try:
            import torch  # noqa: F401
        except ImportError:
            raise UserError("the PyTorch reader needs torch: pip install 'featurelib[torch]'") from None
        return _shard_rows(self, names, options, seed, with_keys, 0)


# --- the PyTorch dataset (module level, so that it pickles for worker processes) -------------------

@functools.cache
def _shard_rows_class():
    """The ``IterableDataset`` subclass, made on first use: torch is imported only when asked for."""
    import torch
    from torch.utils.data import IterableDataset, get_worker_info

    class ShardRows(IterableDataset):
        """Rows of a :class:`FeatureDataset` for a ``DataLoader``; see ``torch_dataset``."""

        def __init__(self, dataset, names, options, seed, with_keys, epoch) -> None:
            super().__init__()
            self.dataset, self.names, self.options = dataset, list(names), dict(options)
            self.seed, self.with_keys, self.epoch = int(seed), bool(with_keys), int(epoch)

        def set_epoch(self, epoch: int) -> None:
            """Shuffle the next pass with ``epoch`` (as ``DistributedSampler.set_epoch``)."""
            self.epoch = int(epoch)

        def __reduce__(self):
            return (_shard_rows, (self.dataset, self.names, self.options, self.seed, self.with_keys, self.epoch))

        def __iter__(self):
            info = get_worker_info()
            worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
            n_files = len(self.dataset.shard_paths(self.options["source"] or self.dataset.sources[0]))
            mine = list(range(worker, n_files, workers))
            if not mine:
                return
            seed = _derived_seed(self.seed, self.epoch, worker)
            for batch in self.dataset.batches(self.names, batch_size=256, shards=mine, seed=seed, **self.options):
                if self.options["pixels"]:
                    x = torch.from_numpy(np.ascontiguousarray(batch.pixels.transpose(0, 3, 1, 2))).float()
                else:
                    x = torch.from_numpy(np.ascontiguousarray(batch.X))
                y = torch.from_numpy(batch.y.astype(np.int64))
                if self.with_keys:
                    yield from zip(x, y, batch.keys)
                else:
                    yield from zip(x, y)

    return ShardRows


def _shard_rows(dataset, names, options, seed, with_keys, epoch):
    """Make (or, unpickling in a worker, remake) the PyTorch dataset."""
    return _shard_rows_class()(dataset, names, options, seed, with_keys, epoch)


def _derived_seed(seed: int, epoch: int, worker: int) -> int:
    """A seed per (seed, epoch, worker): ``seed`` itself for epoch 0 of worker 0, so one
    in-process pass shuffles as ``batches(seed=seed)`` does."""
    if epoch == 0 and worker == 0:
        return seed
    return int(np.random.SeedSequence([seed, epoch, worker]).generate_state(1)[0])


# --- shard files ---------------------------------------------------------------------------------

class _ParquetShard:
    """An open Parquet shard: row groups and rows ``start:stop`` of the wanted columns."""

    def __init__(self, parquet, image_size: tuple[int, int] | None) -> None:
        self.parquet, self.image_size = parquet, image_size
        sizes = self.row_group_rows()
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])

    def row_group_rows(self) -> list[int]:
        metadata = self.parquet.metadata
        return [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]

    def read(self, start: int, stop: int, names: Sequence[str], ranges: dict[str, tuple[int, int]],
             pixels: bool) -> Arrays:
        """Rows ``start:stop`` of the shard, unfiltered.

        Parameters
        ----------
        start, stop : int
            Row range in the file (best aligned on row groups: each touched group is read whole).
        names : sequence of str
            Feature columns, side by side in ``X`` in this order.
        ranges : dict
            ``Arrays.columns`` of the result.
        pixels : bool
            Also read ``pixels`` as ``(rows, H, W, 3)`` uint8.
        """
        # The row groups holding start and stop - 1 (offsets: the first row of each, then the total).
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        last = int(np.searchsorted(self.offsets, stop, side="left"))
        wanted = _BASE_COLUMNS + list(names) + ([c.PIXELS_COLUMN] if pixels else [])
        table = self.parquet.read_row_groups(range(first, last), columns=wanted, use_threads=False)
        table = table.slice(start - int(self.offsets[first]), stop - start)
        X = [_fixed_list_numpy(table.column(name), np.float32) for name in names]
        px = None
        if pixels:
            h, w = self.image_size
            px = _fixed_list_numpy(table.column(c.PIXELS_COLUMN), np.uint8).reshape(-1, h, w, 3)
        return Arrays(_side_by_side(X, len(table)), table.column("label").to_numpy().astype(np.int32),
                      table.column("key").to_pylist(), table.column("split").to_pylist(),
                      table.column("aug_index").to_numpy().astype(np.int16), px, ranges)


class _Hdf5Shard:
    """An open HDF5 shard file: rows ``start:stop`` of its datasets."""

    def __init__(self, h5) -> None:
        self.h5 = h5
        self.ranges = {r["name"]: (r["start"], r["stop"]) for r in json.loads(h5.attrs[c.H5_ATTR_COLUMNS])}

    def read(self, start: int, stop: int, names: Sequence[str], ranges: dict[str, tuple[int, int]],
             pixels: bool) -> Arrays:
        """Rows ``start:stop`` of the shard, unfiltered (parameters as :meth:`_ParquetShard.read`)."""
        h5 = self.h5
        block = h5[c.H5_FEATURES][start:stop] if names else None  # (rows, all columns): one read
        X = [block[:, self.ranges[name][0] : self.ranges[name][1]] for name in names]
        return Arrays(_side_by_side(X, stop - start), h5[c.H5_LABELS][start:stop].astype(np.int32, copy=False),
                      list(h5[c.H5_KEYS].asstr()[start:stop]), list(h5[c.H5_SPLIT].asstr()[start:stop]),
                      h5[c.H5_AUG_INDEX][start:stop].astype(np.int16, copy=False),
                      h5[c.H5_IMAGES][start:stop] if pixels else None, ranges)


# --- small pure helpers ------------------------------------------------------------------------------

def _splits(split: str | Iterable[str] | None) -> frozenset[str] | None:
    if split is None:
        return None
    chosen = {split} if isinstance(split, str) else set(split)
    unknown = sorted(chosen - set(_SPLITS))
    if unknown or not chosen:
        raise UserError(f"split must be train, val, test, a list of them or None; got {split!r}")
    return frozenset(chosen)


def _filter(chunk: Arrays, splits: frozenset[str] | None, include_unlabelled: bool, originals_only: bool) -> Arrays:
    """The rows of ``chunk`` in ``splits``, labelled unless ``include_unlabelled``, originals if asked."""
    keep = np.ones(len(chunk), bool)
    if splits is not None:
        keep &= np.fromiter((s in splits for s in chunk.split), bool, len(chunk))
    if not include_unlabelled:
        keep &= chunk.y >= 0
    if originals_only:
        keep &= chunk.aug_index == 0
    return chunk if keep.all() else chunk.take(np.flatnonzero(keep))


def _side_by_side(parts: Sequence[np.ndarray], rows: int) -> np.ndarray:
    """Feature columns ``(rows, D_i)`` -> one C-contiguous float32 ``(rows, sum D_i)`` array
    (``(rows, 0)`` for none)."""
    if not parts:
        return np.zeros((rows, 0), np.float32)
    if len(parts) == 1:
        return np.ascontiguousarray(parts[0], np.float32)
    return np.concatenate(parts, axis=1).astype(np.float32, copy=False)


def _safe_scale(std: np.ndarray) -> np.ndarray:
    """``std`` as float32 divisors, 1 where it is 0: a constant element is only centred."""
    return np.where(np.asarray(std) > 0, std, 1.0).astype(np.float32)


def _group_rows(sizes: Sequence[int], target: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, stop)`` row ranges of whole Parquet row groups (``sizes`` rows
    each), each adding up to at least ``target`` rows but the last. A row group is never cut:
    Parquet reads it whole whatever slice is asked for.

    >>> _group_rows([64, 64, 64, 10], 100)
    [(0, 128), (128, 202)]
    """
    ranges: list[tuple[int, int]] = []
    start = position = 0
    for size in sizes:
        position += size
        if position - start >= target:
            ranges.append((start, position))
            start = position
    if position > start:
        ranges.append((start, position))
    return ranges


def _cut_rows(total: int, target: int) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges of ``target`` rows (the last may be fewer) over ``total`` rows:
    HDF5 reads any row range, so a block is exactly the size asked for.

    >>> _cut_rows(250, 100)
    [(0, 100), (100, 200), (200, 250)]
    """
    return [(start, min(start + target, total)) for start in range(0, total, target)]


def _sequential_batches(chunks: Iterable[Arrays], batch_size: int, empty: Arrays) -> Iterator[Arrays]:
    """Re-cut ``chunks`` into batches of ``batch_size`` rows, in order (only a batch is copied)."""
    pending: list[Arrays] = []
    count = 0
    for chunk in chunks:
        offset = 0
        while offset < len(chunk):
            take = min(batch_size - count, len(chunk) - offset)
            pending.append(chunk.slice(offset, offset + take))
            count, offset = count + take, offset + take
            if count == batch_size:
                yield Arrays.concat(pending, empty)
                pending, count = [], 0
    if count:
        yield Arrays.concat(pending, empty)


def _shuffled_batches(chunks: Iterable[Arrays], batch_size: int, buffer_rows: int, rng: np.random.Generator,
                      empty: Arrays) -> Iterator[Arrays]:
    """Batches of rows drawn at random from a buffer of about ``buffer_rows`` rows.

    When the buffer is full it is permuted; whole batches are handed out from it until
    about half of it is left, and that half (a random sample of everything buffered so
    far) stays to mix with the next blocks. Memory: the buffer, its retained half and a
    batch (each batch is a copy of its rows).
    """
    pool: list[Arrays] = []
    pooled = 0
    keep = buffer_rows // 2
    for chunk in chunks:
        pool.append(chunk)
        pooled += len(chunk)
        if pooled < buffer_rows:
            continue
        n_out = (pooled - keep) // batch_size * batch_size
        if not n_out:
            continue
        order = rng.permutation(pooled)
        mixed = Arrays.concat(pool, empty)
        pool = [mixed.take(order[n_out:])]
        pooled -= n_out
        # Each batch a copy of its own rows: a view would keep the whole pool alive while
        # the consumer holds the batch, and the next pool is being built.
        batches = [order[start : start + batch_size] for start in range(0, n_out, batch_size)]
        for index in batches:
            yield mixed.take(index)
        del mixed
    if pooled:
        mixed = Arrays.concat(pool, empty)
        order = rng.permutation(pooled)
        pool = []
        for start in range(0, pooled, batch_size):
            yield mixed.take(order[start : start + batch_size])


def _sha256(fs: Any, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _fixed_list_numpy(column, dtype) -> np.ndarray:
    """``fixed_size_list<T>[D]`` Arrow column -> ``(N, D)`` array without a Python loop."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    dim = column.type.list_size
    values = column.values[column.offset * dim : (column.offset + len(column)) * dim]
    # A copy: a zero-copy view would be read-only and pin the Arrow buffers of the whole block.
    return values.to_numpy(zero_copy_only=False).astype(dtype, copy=True).reshape(len(column), dim)

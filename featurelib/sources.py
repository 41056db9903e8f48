"""Listing inputs and reading their bytes: folders or manifests, local paths or fsspec URIs.

Identity rules (docs/CONTRACT.md, "Record identity"): the ``source_key`` of a file
under a folder root is its path relative to the root with ``/`` separators; of
a manifest row, its ``id`` (default: its ``uri``). Labels come from the first
folder under the root (files directly in the root are unlabelled) or from the
manifest's ``label`` column. Every listed input ends in the ledger: rows the
spec cannot take become list-stage rejects here, never silent drops.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

from featurelib.contract import SPLITS as SPLIT_NAMES
from featurelib.errors import RecordError, UserError


@dataclasses.dataclass(frozen=True)
class SourceRecord:
    """One listed input (plain data, shipped to workers inside a shard task).

    ``label`` is the index into the run's label names (-1 when unlabelled),
    ``split`` is known here unless ``split.by: content`` (then ``None`` until the
    bytes are read), and ``reject`` holds ``(reason, detail)`` for an input
    already rejected at the list stage (it is still written to the ledger by
    its shard task).
    """

    source_key: str
    uri: str
    label: int = -1
    label_name: str | None = None
    split: str | None = None
    reject: tuple[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class Listing:
    """Every input found, in source-key order, and the label names in index order."""

    records: tuple[SourceRecord, ...]
    label_names: tuple[str, ...]


def is_local(path: str) -> bool:
    """True for plain paths and ``file://`` URIs."""
    return "://" not in path or path.startswith("file://")


def _local_path(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def _hidden(name: str) -> bool:
    return name.startswith(".")


def split_of(seed: int, identity: str, fractions: Mapping[str, float]) -> str:
    """The stable split of a source: ``u = sha256(f"{seed}:{identity}")[:8] / 2**64``.

    `identity` is the source key (``split.by: key``) or the sha256 hex of the
    input bytes (``split.by: content``).
    """
    return _splitter(seed, fractions)(identity)


def _splitter(seed: int, fractions: Mapping[str, float]):
    """:func:`split_of` for one seed and fractions, as a function of the identity (listing calls it per input)."""
    prefix = f"{seed}:".encode()
    train, val = fractions["train"], fractions["train"] + fractions["val"]
    sha256, from_bytes, scale = hashlib.sha256, int.from_bytes, 2**64

    def split(identity: str) -> str:
        u = from_bytes(sha256(prefix + identity.encode()).digest()[:8], "big") / scale
        return "train" if u < train else "val" if u < val else "test"

    return split


def shard_of(source_key: str, n_shards: int) -> int:
    """``int.from_bytes(sha256(source_key)[:8], "big") % n_shards``."""
    digest = hashlib.sha256(source_key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n_shards


# --- listing ----------------------------------------------------------------


def _walk_local(root: str) -> list[tuple[str, str, bool]]:
    """(source_key, path, plain) of every file under `root`, hidden names excepted, as ``os.walk`` lists them.

    ``plain`` is True for a regular file that is no symbolic link: found by walking real
    folders down from the root, it is inside the root by construction, so the checks of
    :func:`list_folder` (``realpath`` of each path: an ``lstat`` per path component) are
    for the others only. Folders are scanned with ``os.scandir``, whose entries know their
    type without a ``stat`` on most file systems; keys are built from the names, not
    with ``relpath``. A symbolic link to a folder is not descended into (``os.walk``
    with ``followlinks=False``); a link to a file, or a link that leads nowhere, is
    listed (it will be rejected if it leaves the root), so nothing found disappears.
    """
    found: list[tuple[str, str, bool]] = []
    pending = [(root, "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            scanner = os.scandir(directory)
        except OSError:  # as os.walk does: a folder that cannot be read lists nothing
            continue
        folders = []
        with scanner:
            for entry in scanner:
                name = entry.name
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                if _hidden(name):
                    continue
                if is_dir:
                    if not entry.is_symlink():
                        folders.append((entry.path, f"{prefix}{name}/"))
                    continue
                try:
                    plain = entry.is_file(follow_symlinks=False)
                except OSError:
                    plain = False
                found.append((prefix + name, entry.path, plain))
        pending.extend(sorted(folders, reverse=True))
    return found


#: Threads listing the top-level folders of a remote root at once (each a paginated, latency-bound ``find``).
LIST_THREADS = 16


def _walk_fsspec(root: str, storage_options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(source_key, uri) of every object under a remote root, hidden names excepted.

    The root's entries are listed first; its folders (the classes) are then each
    listed with a recursive ``find`` of their own, :data:`LIST_THREADS` at a time:
    on an object store every page of a listing is a round trip, and one ``find``
    of the whole root walks its pages one after the other.
    """
    import fsspec

    fs, base = fsspec.core.url_to_fs(root, **storage_options)
    base = base.rstrip("/")
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    paths = _find_parallel(fs, base)
    found = []
    for path in paths:
        rel = path[len(base) :].lstrip("/")
        if any(_hidden(part) for part in rel.split("/")):
            continue
        found.append((rel, f"{protocol}://{path}" if protocol not in ("file", "local") else path))
    return found


def _find_parallel(fs: Any, base: str) -> list[str]:
    """``fs.find(base, withdirs=False)``, with each top-level folder found in a thread of its own."""
    from concurrent.futures import ThreadPoolExecutor

    try:
        entries = fs.ls(base, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        entries = None
    if not entries:
        return list(fs.find(base, withdirs=False))
    files, folders = [], []
    for entry in entries:
        name = entry["name"].rstrip("/")
        if name == base or not name.startswith(base + "/"):
            continue  # some stores list the folder itself; its own entry is no input
        if entry.get("type") == "directory":
            if not _hidden(name.rsplit("/", 1)[-1]):
                folders.append(name)
        else:
            files.append(name)
    if len(folders) < 2:
        return list(fs.find(base, withdirs=False))
    with ThreadPoolExecutor(min(LIST_THREADS, len(folders)), thread_name_prefix="featurelib-list") as pool:
        for listed in pool.map(lambda folder: fs.find(folder, withdirs=False), folders):
            files.extend(listed)
    return files


def _label_index(names: Sequence[str], explicit: Sequence[str] | None) -> tuple[str, ...]:
    if explicit is not None:
        return tuple(explicit)
    return tuple(sorted(set(names)))


def _assign(
    items: list[tuple[str, str, str | None, str | None, tuple[str, str] | None]],
    *,
    labels: Sequence[str] | None,
    seed: int,
    fractions: Mapping[str, float],
    by_content: bool,
) -> Listing:
    """Turn (key, uri, label_name, split, reject) tuples into records with label indexes and splits."""
    label_names = _label_index([i[2] for i in items if i[2] is not None and i[4] is None], labels)
    index = {name: i for i, name in enumerate(label_names)}
    records = []
    split_of_key = _splitter(seed, fractions)
    for key, uri, label_name, split, reject in sorted(items, key=lambda i: i[0]):
        label = -1
        if reject is None and label_name is not None:
            if label_name not in index:
                reject = ("invalid_label", f"label {label_name!r} is not in the spec's labels")
            else:
                label = index[label_name]
        if reject is None and split is None and not by_content:
            split = split_of_key(key)
        records.append(SourceRecord(key, uri, label, label_name, split, reject))
    return Listing(tuple(records), label_names)


def list_folder(root: str, *, storage_options: Mapping[str, Any] | None = None,
                labels: Sequence[str] | None = None, seed: int = 0,
                fractions: Mapping[str, float] | None = None, by_content: bool = False) -> Listing:
    """List a folder-per-label tree.

    Raises
    ------
    UserError
        If the root does not exist, is not a folder, or holds no file at all.
    """
    fractions = fractions or {"train": 0.8, "val": 0.1, "test": 0.1}
    if is_local(root):
        local = _local_path(root)
        if not os.path.isdir(local):
            raise UserError(f"input {root!r} is not a folder (or a .csv/.parquet manifest)")
        found = _walk_local(local)
        real_root = os.path.realpath(local)
    else:
        found = [(rel, uri, True) for rel, uri in _walk_fsspec(root, storage_options or {})]
        real_root = None
    if not found:
        raise UserError(f"input folder {root!r} holds no files")
    items = []
    for rel, uri, plain in found:
        slash = rel.find("/")
        label_name = rel[:slash] if slash >= 0 else None
        reject = None
        if not plain and real_root is not None:
            real = os.path.realpath(uri)
            if os.path.commonpath([real, real_root]) != real_root:
                reject = ("invalid_input", "a symbolic link that leads outside the input root")
            elif not os.path.isfile(real):
                reject = ("invalid_input", "not a regular file")
        items.append((rel, uri, label_name, None, reject))
    return _assign(items, labels=labels, seed=seed, fractions=fractions, by_content=by_content)


def _manifest_bytes(path: str, storage_options: Mapping[str, Any]) -> Any:
    """The whole manifest file, in a ``pyarrow.Buffer`` Arrow allocated (no Python object behind it).

    Arrow must never be handed a Python file object (or a buffer over Python ``bytes``):
    its reader wraps it in a C++ object whose last reference may be dropped by one of
    Arrow's pool threads after ``read_table`` / ``read_csv`` have returned (the dataset
    scanner disposes its fragments in a completion callback). That destructor takes the
    GIL; when the main thread is already finalising the interpreter (a bad manifest
    raises UserError and the process exits at once), CPython ends the thread with
    ``pthread_exit`` inside a noexcept C++ destructor and the process aborts with
    "terminate called without an active exception" (exit 134) after the error line.
    Reading the bytes here, on this thread, and copying them into Arrow's own memory
    leaves Arrow's threads nothing Python to release, for local and fsspec paths alike.
    """
    import fsspec
    import pyarrow as pa

    try:
        with fsspec.open(path, "rb", **storage_options) as handle:
            data = handle.read()
    except FileNotFoundError:
        raise UserError(f"input manifest {path!r} does not exist") from None
    except Exception as exc:  # a folder, a permission, a store refusing credentials: the user's to fix
        raise UserError(f"cannot read input manifest {path!r}: {exc}") from None
    buffer = pa.allocate_buffer(len(data))
    pa.FixedSizeBufferWriter(buffer).write(data)
    return buffer


def _read_manifest_table(path: str, storage_options: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The manifest's columns (``uri`` and those of ``label``, ``split``, ``id`` it has), as lists."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from featurelib.io.readers import read_parquet_table

    buffer = _manifest_bytes(path, storage_options)
    try:
        if path.lower().endswith(".parquet"):
            table = read_parquet_table(pa.BufferReader(buffer))
        else:
            # Every column as a string: ids such as "007" must keep their zeros.
            table = pacsv.read_csv(pa.BufferReader(buffer), convert_options=pacsv.ConvertOptions(
                column_types={c: "string" for c in ("uri", "label", "split", "id")},
                strings_can_be_null=True))
    except Exception as exc:  # a malformed manifest is the user's mistake
        raise UserError(f"cannot read input manifest {path!r}: {exc}") from None
    # pandas' DataFrame.to_parquet stores a non-default index as columns of its own
    # (``__index_level_0__``, or the index's name listed in the pandas metadata): not inputs.
    pandas_index = set()
    if path.lower().endswith(".parquet") and table.schema.pandas_metadata:
        pandas_index = {c for c in table.schema.pandas_metadata.get("index_columns", []) if isinstance(c, str)}
    pandas_index |= {c for c in table.column_names if c.startswith("__index_level_") and c.endswith("__")}
    if pandas_index:
        table = table.drop_columns(sorted(pandas_index & set(table.column_names)))
    if "uri" not in table.column_names:
        raise UserError(f"input manifest {path!r} has no 'uri' column (columns: {table.column_names})")
    unknown = sorted(set(table.column_names) - {"uri", "label", "split", "id"})
    if unknown:
        raise UserError(f"input manifest {path!r} has unknown column(s) {unknown}; allowed: uri, label, split, id")
    # Column by column: a dict per row (Table.to_pylist) took most of the listing of a 100,000-row manifest.
    return {name: table.column(name).to_pylist() for name in table.column_names}


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if text != "" else None


def list_manifest(path: str, *, storage_options: Mapping[str, Any] | None = None,
                  labels: Sequence[str] | None = None, seed: int = 0,
                  fractions: Mapping[str, float] | None = None, by_content: bool = False) -> Listing:
    """List the rows of a CSV or Parquet manifest (columns ``uri [, label] [, split] [, id]``).

    Relative local URIs resolve against the manifest's folder. A second row
    with an id already seen, a row without a uri, or an unknown split value is
    a list-stage reject ``invalid_input``.
    """
    fractions = fractions or {"train": 0.8, "val": 0.1, "test": 0.1}
    columns = _read_manifest_table(path, storage_options or {})
    count = len(columns["uri"])
    if not count:
        raise UserError(f"input manifest {path!r} has no rows")
    base = os.path.dirname(os.path.abspath(_local_path(path))) if is_local(path) else None
    items = []
    seen: set[str] = set()
    nothing = [None] * count
    rows = zip(columns["uri"], columns.get("id", nothing), columns.get("label", nothing), columns.get("split", nothing))
    for number, (uri, key, label_name, split) in enumerate(rows, start=1):
        uri = _as_text(uri)
        key = _as_text(key) or uri or f"<manifest row {number}>"
        label_name = _as_text(label_name)
        split = _as_text(split)
        reject = None
        if key in seen:
            reject = ("invalid_input", f"manifest row {number} repeats id {key!r}")
            key = f"{key}<manifest row {number}>"  # keeps the ledger's keys unique
        elif uri is None:
            reject = ("invalid_input", f"manifest row {number} has no uri")
        elif split is not None and split not in SPLIT_NAMES:
            reject = ("invalid_input", f"manifest row {number} has split {split!r}; allowed: {list(SPLIT_NAMES)}")
        seen.add(key)
        if uri is not None and base is not None and is_local(uri) and not os.path.isabs(_local_path(uri)):
            uri = os.path.join(base, uri)
        items.append((key, uri or "", label_name, split, reject))
    return _assign(items, labels=labels, seed=seed, fractions=fractions, by_content=by_content)


def list_inputs(path: str, *, storage_options: Mapping[str, Any] | None = None,
                labels: Sequence[str] | None = None, seed: int = 0,
                fractions: Mapping[str, float] | None = None, by_content: bool = False) -> Listing:
    """List a folder root or a ``.csv`` / ``.parquet`` manifest (see module docstring)."""
    kwargs = dict(storage_options=storage_options, labels=labels, seed=seed,
                  fractions=fractions, by_content=by_content)
    if path.lower().endswith((".csv", ".parquet")):
        return list_manifest(path, **kwargs)
    return list_folder(path, **kwargs)


# --- reading ------------------------------------------------------------------


def read_bytes(uri: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """All bytes of one input.

    Raises
    ------
    RecordError
        ``missing`` if it is gone since listing, ``read_error`` on any other I/O error.
    """
    try:
        if is_local(uri):
            with open(_local_path(uri), "rb") as handle:
                return handle.read()
        import fsspec

        with fsspec.open(uri, "rb", **(storage_options or {})) as handle:
            return handle.read()
    except FileNotFoundError:
        # Folder inputs were there when listed; manifest rows are not probed at listing (a stat per
        # row of a million-row manifest on an object store): say what is known.
        raise RecordError("missing", "not found when read (a manifest row naming no file, or a file "
                                     "deleted since listing)") from None
    except IsADirectoryError:
        raise RecordError("read_error", "is a directory") from None
    except OSError as exc:
        raise RecordError("read_error", f"{type(exc).__name__}: {exc.strerror or exc}") from None

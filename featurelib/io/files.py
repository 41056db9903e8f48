"""File names of the output layout, file hashes, and write-then-rename."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import uuid
from typing import Any

MANIFEST = "_manifest.json"
FAILED = "_FAILED.json"
FEATURES_H5 = "hdf5/features.h5"
TMP_MARK = ".tmp-"

STATS = "stats.json"
ARTIFACTS = "artifacts"
WORK = "_work"
#: One run at a time per output (:mod:`featurelib.io.lock`); never deleted by another run's clean-up.
LOCK = "_LOCK"

#: (kind, folder, extension) of every per-shard file, in the order a task renames them.
#: The rejects file goes last: its presence under its final name means the shard is complete.
SHARD_FILES = {"parquet": ("parquet", "parquet"), "hdf5": ("hdf5", "h5"), "stats": ("stats", "json"),
               "rejects": ("rejects", "parquet")}

#: ``featurize report OUT`` writes here by default; it describes one run, so a rerun deletes it.
REPORT = "report.html"

#: Every entry of an output that a run writes (a rerun or ``--overwrite`` deletes only these).
LAYOUT_ENTRIES = (MANIFEST, FAILED, "parquet", "hdf5", "rejects", "stats", STATS, ARTIFACTS, WORK, REPORT)
#: What ``featurize train`` / ``predict`` add to an output: featurelib's too (a folder holding them
#: is not foreign), kept when the same run is rewritten (its features are the same), deleted by
#: ``--overwrite`` replacing another run (models trained on features that no longer exist).
TRAINING_ENTRIES = ("models", "predictions")


def shard_kinds(formats) -> tuple[str, ...]:
    """Every per-shard file kind of a run writing `formats`, in rename order (rejects last)."""
    return (*formats, "stats", "rejects")


def shard_relpath(kind: str, shard: int, n_shards: int, generation: int = 1) -> str:
    """``{folder}/part-{shard:05d}-of-{n_shards:05d}[.g{generation:04d}].{ext}``: the same task always gets
    the same name. Generation 1 (a run without ``--incremental``) has no suffix; an incremental run's
    generation g >= 2 writes ``part-00003-of-00008.g0002.parquet``, never colliding with older files."""
    if generation < 1:
        raise ValueError(f"generation must be >= 1, got {generation}")
    folder, ext = SHARD_FILES[kind]
    suffix = f".g{generation:04d}" if generation > 1 else ""
    return f"{folder}/part-{shard:05d}-of-{n_shards:05d}{suffix}.{ext}"


#: A per-shard file name (no folder) as :func:`shard_relpath` writes it: shard, shard count, generation, ext.
SHARD_NAME = re.compile(r"part-(\d{5,})-of-(\d{5,})(?:\.g(\d{4,}))?\.(parquet|h5|json)")


def shard_generation(name: str) -> int | None:
    """The generation of a per-shard file name (1 without suffix), or None if `name` is not one
    (``.g0000`` and ``.g0001`` are never written: not shard names)."""
    match = SHARD_NAME.fullmatch(name)
    if match is None:
        return None
    generation = int(match.group(3)) if match.group(3) else 1
    return None if match.group(3) and generation < 2 else generation


def temp_path(path: str) -> str:
    """A unique sibling name: a retry or a speculative copy never meets a half-written file."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}{TMP_MARK}{uuid.uuid4().hex}")


def file_sha256(path: str, *, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """One file of the output, as listed in the manifest."""

    path: str  # relative to the output root, '/' separators
    kind: str
    shard: int | None
    rows: int
    bytes: int
    sha256: str

    @classmethod
    def of(cls, root: str, relpath: str, *, kind: str, shard: int | None, rows: int) -> FileInfo:
        full = os.path.join(root, relpath)
        return cls(relpath, kind, shard, rows, os.path.getsize(full), file_sha256(full))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

"""Step three of every run, on the driver: check the ledger, write the run-level files, commit.

:func:`commit` reads the ledger back from the shard files on disk, applies the
error budget, merges the shards' statistics accumulators in shard order into
``stats.json``, writes ``hdf5/features.h5`` and finally ``_manifest.json``, the
commit point; then removes the engines' scratch folder ``_work/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from typing import Any

from featurelib import __version__
from featurelib.contract import FORMAT_VERSION
from featurelib.errors import PolicyError, SchemaError
from featurelib.io import files as layout
from featurelib.plan import ShardTask
from featurelib.schema import OutputSchema
from featurelib.shard import ShardResult
from featurelib.spec import RunSpec
from featurelib.stats import ShardStats, merge_in_order

# --- commit -----------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import platform
    from importlib import metadata

    out = {"featurelib": __version__, "python": platform.python_version()}
    for package in ("numpy", "opencv-python-headless", "pillow", "pyarrow", "h5py", "scikit-image"):
        with contextlib.suppress(metadata.PackageNotFoundError):  # optional packages
            out[package] = metadata.version(package)
    return out


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write_json(root: str, relpath: str, document: dict[str, Any]) -> None:
    path = os.path.join(root, relpath)
    tmp = layout.temp_path(path)
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, sort_keys=True, ensure_ascii=False)
        handle.write("\n")
    os.replace(tmp, path)


@dataclasses.dataclass
class Ledger:
    """The ledger read back from the files on disk."""

    listed: int
    written_sources: int
    written_rows: int
    rejected: int
    rejects_by_reason: dict[str, int]

    def counts(self) -> dict[str, int]:
        return {"listed": self.listed, "written_sources": self.written_sources,
                "written_rows": self.written_rows, "rejected": self.rejected}


def read_ledger(root: str, tasks: Sequence[ShardTask], formats: Sequence[str]) -> Ledger:
    """Check the ledger invariant from the shard files on disk.

    ``W ∪ R == I``, ``W ∩ R == ∅``, no key twice, every reject with a reason.

    Raises
    ------
    SchemaError
        If any of these fails, or a shard file is missing.
    """
    from featurelib.io.readers import read_rejects, read_shard_keys

    listed = [r.source_key for t in tasks for r in t.records]
    written_sources: set[str] = set()
    written_rows = 0
    rejected: dict[str, str] = {}
    for task in tasks:
        data_kind = "parquet" if "parquet" in formats else "hdf5"
        keys = read_shard_keys(os.path.join(root, layout.shard_relpath(data_kind, task.shard, task.n_shards)))
        if len(set(keys["key"])) != len(keys["key"]):
            raise SchemaError(f"shard {task.shard} holds a key twice")
        written_rows += len(keys["key"])
        originals = [s for s, a in zip(keys["source_key"], keys["aug_index"]) if a == 0]
        if set(keys["source_key"]) != set(originals):
            raise SchemaError(f"shard {task.shard} holds variants without their original")
        overlap = written_sources & set(originals)
        if overlap:
            raise SchemaError(f"source(s) written twice: {sorted(overlap)[:5]}")
        written_sources.update(originals)
        for row in read_rejects(os.path.join(root, layout.shard_relpath("rejects", task.shard, task.n_shards))):
            if not row["reason"]:
                raise SchemaError(f"reject {row['source_key']!r} has no reason")
            if row["source_key"] in rejected:
                raise SchemaError(f"source {row['source_key']!r} rejected twice")
            rejected[row["source_key"]] = row["reason"]
    both = written_sources & set(rejected)
    if both:
        raise SchemaError(f"source(s) both written and rejected: {sorted(both)[:5]}")
    missing = set(listed) - written_sources - set(rejected)
    extra = (written_sources | set(rejected)) - set(listed)
    if missing or extra:
        raise SchemaError(f"ledger mismatch: {len(missing)} listed input(s) unaccounted for "
                          f"{sorted(missing)[:5]}, {len(extra)} unknown {sorted(extra)[:5]}")
    return Ledger(len(listed), len(written_sources), written_rows, len(rejected),
                  dict(sorted(Counter(rejected.values()).items())))


def _artifact_hashes(tasks: Sequence[ShardTask]) -> dict[str, str]:
    return {ref.column: ref.sha256 for ref in tasks[0].artifacts}


def extractor_files(spec: RunSpec) -> list[dict[str, Any]]:
    """``[{column, param, path, sha256, bytes}]``: the input files (network weights) the spec's extractors
    read, each entering the feature fingerprint by its sha256 (:meth:`featurelib.registry.ExtractorDef.files`)."""
    from featurelib import registry

    return [{"column": f.column, **entry}
            for f in spec.features for entry in registry.get(f.name).file_entries(f.params)]


def merge_stats(root: str, tasks: Sequence[ShardTask], columns: Sequence[str]) -> ShardStats:
    """The run's statistics: every shard's accumulator read from disk, merged in shard order."""
    parts = []
    for task in sorted(tasks, key=lambda t: t.shard):
        path = os.path.join(root, layout.shard_relpath("stats", task.shard, task.n_shards))
        try:
            with open(path, encoding="utf-8") as handle:
                parts.append(ShardStats.from_json(json.load(handle)))
        except (OSError, ValueError, KeyError) as exc:
            raise SchemaError(f"statistics of shard {task.shard} unreadable: {exc}") from None
    return merge_in_order(parts, columns)


def commit(tasks: Sequence[ShardTask], results: Sequence[ShardResult], *, engine: str,
           metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check the ledger, apply the error budget, write ``stats.json``, ``features.h5`` and the manifest (last).

    Raises
    ------
    PolicyError
        If the reject fraction exceeds ``failures.max_reject_fraction``
        (``_FAILED.json`` is written, no manifest).
    SchemaError
        If the files on disk break the ledger invariant.
    """
    if not tasks:
        raise ValueError("commit needs the run's tasks")
    spec = RunSpec.from_json(tasks[0].spec_json)
    root = spec.output.path
    artifacts = _artifact_hashes(tasks)
    by_shard = {r.shard: r for r in results}
    absent = sorted({t.shard for t in tasks} - set(by_shard))
    if absent:
        raise SchemaError(f"no result for shard(s) {absent[:10]}")
    ledger = read_ledger(root, tasks, spec.output.formats)
    budget = spec.failures.max_reject_fraction
    if ledger.listed and ledger.rejected / ledger.listed > budget:
        error = (f"{ledger.rejected} of {ledger.listed} inputs rejected "
                 f"({ledger.rejected / ledger.listed:.1%}), over failures.max_reject_fraction = {budget}")
        write_failed(root, spec, error, kind="policy", ledger=ledger, artifacts=artifacts)
        raise PolicyError(error)
    schema = OutputSchema.from_spec(spec, artifacts)
    files = [f for shard in sorted(by_shard) for f in by_shard[shard].files]
    for ref in tasks[0].artifacts:
        files.append(layout.FileInfo.of(root, ref.path, kind="artifact", shard=None, rows=0).to_json())
    stats = merge_stats(root, tasks, [c.name for c in schema.columns])
    _write_json(root, layout.STATS, stats.extract(schema.feature_fingerprint))
    files.append(layout.FileInfo.of(root, layout.STATS, kind="stats_summary", shard=None, rows=0).to_json())
    if "hdf5" in spec.output.formats:
        from featurelib.io.hdf5 import write_virtual_index

        rows = write_virtual_index(root, tasks, schema, list(tasks[0].label_names))
        files.append(layout.FileInfo.of(root, layout.FEATURES_H5, kind="hdf5_index", shard=None,
                                        rows=rows).to_json())
    shard_metrics = [by_shard[s].metrics for s in sorted(by_shard)]
    manifest = {
        "format_version": FORMAT_VERSION,
        "created_at": _now(),
        "feature_fingerprint": schema.feature_fingerprint,
        "run_fingerprint": schema.run_fingerprint,
        "spec_fingerprints": {"feature": spec.feature_fingerprint(), "run": spec.run_fingerprint()},
        "artifacts": [dataclasses.asdict(ref) for ref in tasks[0].artifacts],
        "extractor_files": extractor_files(spec),
        "spec": spec.to_dict(secrets=False),
        "versions": _versions(),
        "engine": engine,
        "label_names": list(tasks[0].label_names),
        "n_shards": tasks[0].n_shards,
        "counts": ledger.counts(),
        "rejects_by_reason": ledger.rejects_by_reason,
        "files": files,
        "schema": schema.describe(),
        "columns": [c.to_json() for c in schema.columns],
        "metrics": {**(metrics or {}), "shards": shard_metrics},
    }
    _write_json(root, layout.MANIFEST, manifest)
    remove_work(root)
    return manifest


def remove_work(root: str) -> None:
    """Delete the engines' scratch folder ``OUT/_work/`` (pass results, progress)."""
    shutil.rmtree(os.path.join(root, layout.WORK), ignore_errors=True)


def write_failed(root: str, spec: RunSpec, error: str, *, kind: str, ledger: Ledger | None = None,
                 artifacts: dict[str, str] | None = None) -> None:
    """Write ``_FAILED.json``: what failed and, when known, the counts and top reasons."""
    document: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "created_at": _now(),
        "kind": kind,
        "error": error,
        "run_fingerprint": spec.run_fingerprint(artifacts),
        "feature_fingerprint": spec.feature_fingerprint(artifacts),
        "spec_fingerprints": {"feature": spec.feature_fingerprint(), "run": spec.run_fingerprint()},
    }
    if ledger is not None:
        document["counts"] = ledger.counts()
        document["top_reasons"] = dict(Counter(ledger.rejects_by_reason).most_common(5))
    with contextlib.suppress(OSError):  # the output itself may be what failed; the error still reaches the user
        os.makedirs(root, exist_ok=True)
        _write_json(root, layout.FAILED, document)

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
import hashlib
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
from featurelib.io.outfs import Output, output_of, work_dir
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


def _dump_json(path: str, document: dict[str, Any]) -> None:
    with open(path, "wb") as handle:
        handle.write(_json_bytes(document))


def _json_bytes(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _write_json(out: Output, relpath: str, document: dict[str, Any]) -> layout.FileInfo:
    """Write `relpath` whole (a renamed temporary file, or one object PUT); return its manifest entry."""
    data = _json_bytes(document)
    out.write_bytes(relpath, data)
    return layout.FileInfo(relpath, "", None, 0, len(data), hashlib.sha256(data).hexdigest())


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


@dataclasses.dataclass
class _Scan:
    """What a set of shard files holds: written originals, row count, rejects (source key -> reason)."""

    written_sources: set[str]
    written_rows: int
    rejected: dict[str, str]


def _scan(out: Output, pairs: Sequence[tuple[str, str]]) -> _Scan:
    """Read ``(data file, rejects file)`` pairs (relative paths) and check that no key is there twice.

    Raises
    ------
    SchemaError
        A key twice (in a file or across files), a variant without its original, a source both
        written and rejected, a reject without a reason, or a missing file.
    """
    from featurelib.io.readers import read_rejects, read_shard_keys

    written_sources: set[str] = set()
    written_rows = 0
    rejected: dict[str, str] = {}
    for data_rel, rejects_rel in pairs:
        keys = read_shard_keys(data_rel, output=out)
        if len(set(keys["key"])) != len(keys["key"]):
            raise SchemaError(f"{data_rel} holds a key twice")
        written_rows += len(keys["key"])
        originals = [s for s, a in zip(keys["source_key"], keys["aug_index"]) if a == 0]
        if set(keys["source_key"]) != set(originals):
            raise SchemaError(f"{data_rel} holds variants without their original")
        overlap = written_sources & set(originals)
        if overlap:
            raise SchemaError(f"source(s) written twice: {sorted(overlap)[:5]}")
        written_sources.update(originals)
        for row in read_rejects(rejects_rel, output=out):
            if not row["reason"]:
                raise SchemaError(f"reject {row['source_key']!r} has no reason")
            if row["source_key"] in rejected:
                raise SchemaError(f"source {row['source_key']!r} rejected twice")
            rejected[row["source_key"]] = row["reason"]
    both = written_sources & set(rejected)
    if both:
        raise SchemaError(f"source(s) both written and rejected: {sorted(both)[:5]}")
    return _Scan(written_sources, written_rows, rejected)


def _data_kind(formats: Sequence[str]) -> str:
    return "parquet" if "parquet" in formats else "hdf5"


def _task_pairs(tasks: Sequence[ShardTask], formats: Sequence[str]) -> list[tuple[str, str]]:
    kind = _data_kind(formats)
    return [(layout.shard_relpath(kind, t.shard, t.n_shards, t.generation),
             layout.shard_relpath("rejects", t.shard, t.n_shards, t.generation)) for t in tasks]


def read_ledger(out: Output, tasks: Sequence[ShardTask], formats: Sequence[str]) -> Ledger:
    """Check the ledger invariant from the shard files on disk (of the tasks' generation).

    ``W ∪ R == I``, ``W ∩ R == ∅``, no key twice, every reject with a reason.

    Raises
    ------
    SchemaError
        If any of these fails, or a shard file is missing.
    """
    listed = [r.source_key for t in tasks for r in t.records]
    scan = _scan(out, _task_pairs(tasks, formats))
    missing = set(listed) - scan.written_sources - set(scan.rejected)
    extra = (scan.written_sources | set(scan.rejected)) - set(listed)
    if missing or extra:
        raise SchemaError(f"ledger mismatch: {len(missing)} listed input(s) unaccounted for "
                          f"{sorted(missing)[:5]}, {len(extra)} unknown {sorted(extra)[:5]}")
    return Ledger(len(listed), len(scan.written_sources), scan.written_rows, len(scan.rejected),
                  dict(sorted(Counter(scan.rejected.values()).items())))


def listed_shard_files(manifest: dict[str, Any]) -> dict[tuple[int, int], dict[str, dict[str, Any]]]:
    """``{(shard, generation): {kind: file entry}}`` of the per-shard files a manifest lists."""
    out: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
    for info in manifest["files"]:
        if info["kind"] not in layout.SHARD_FILES or info["shard"] is None:
            continue
        generation = layout.shard_generation(os.path.basename(info["path"]))
        if generation is None:
            raise SchemaError(f"the manifest lists {info['path']!r}, which is not a shard file name")
        out.setdefault((int(info["shard"]), generation), {})[info["kind"]] = info
    return dict(sorted(out.items()))


def _artifact_hashes(tasks: Sequence[ShardTask]) -> dict[str, str]:
    return {ref.column: ref.sha256 for ref in tasks[0].artifacts}


def extractor_files(spec: RunSpec) -> list[dict[str, Any]]:
    """``[{column, param, path, sha256, bytes}]``: the input files (network weights) the spec's extractors
    read, each entering the feature fingerprint by its sha256 (:meth:`featurelib.registry.ExtractorDef.files`)."""
    from featurelib import registry

    return [{"column": f.column, **entry}
            for f in spec.features for entry in registry.get(f.name).file_entries(f.params)]


def merge_stats(out: Output, tasks: Sequence[ShardTask], columns: Sequence[str]) -> ShardStats:
    """The run's statistics: every shard's accumulator read from disk, merged in shard order."""
    tasks = sorted(tasks, key=lambda t: t.shard)
    return merge_stats_files(out, [layout.shard_relpath("stats", t.shard, t.n_shards, t.generation)
                                    for t in tasks], columns)


def merge_stats_files(out: Output, relpaths: Sequence[str], columns: Sequence[str]) -> ShardStats:
    """Merge the accumulator files `relpaths` in the order given (shard order, then generation)."""
    parts = []
    for rel in relpaths:
        try:
            parts.append(ShardStats.from_json(json.loads(out.read_bytes(rel))))
        except (OSError, ValueError, KeyError) as exc:
            raise SchemaError(f"statistics {rel} unreadable: {exc}") from None
    return merge_in_order(parts, columns)


def _check_budget(out: Output, spec: RunSpec, ledger: Ledger, artifacts: dict[str, str], *,
                  failed_extra: dict[str, Any] | None = None) -> None:
    budget = spec.failures.max_reject_fraction
    if ledger.listed and ledger.rejected / ledger.listed > budget:
        error = (f"{ledger.rejected} of {ledger.listed} inputs rejected "
                 f"({ledger.rejected / ledger.listed:.1%}), over failures.max_reject_fraction = {budget}")
        write_failed(out, spec, error, kind="policy", ledger=ledger, artifacts=artifacts, extra=failed_extra)
        raise PolicyError(error)


def _manifest(spec: RunSpec, schema: OutputSchema, tasks: Sequence[ShardTask], *, engine: str, ledger: Ledger,
              files: list[dict[str, Any]], metrics: dict[str, Any], generations: list[dict[str, Any]] | None,
              created_at: str) -> dict[str, Any]:
    """The manifest; ``generations`` only once an incremental run added one (absent: the run is generation 1)."""
    manifest = {
        "format_version": FORMAT_VERSION,
        "created_at": created_at,
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
        "metrics": metrics,
    }
    if generations is not None:
        manifest["generations"] = generations
    return manifest


def _generation_entry(generation: int, created_at: str, engine: str, ledger: Ledger) -> dict[str, Any]:
    return {"generation": generation, "created_at": created_at, "engine": engine, **ledger.counts()}


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
    out = output_of(spec)
    root = spec.output.path
    artifacts = _artifact_hashes(tasks)
    by_shard = {r.shard: r for r in results}
    absent = sorted({t.shard for t in tasks} - set(by_shard))
    if absent:
        raise SchemaError(f"no result for shard(s) {absent[:10]}")
    ledger = read_ledger(out, tasks, spec.output.formats)
    _check_budget(out, spec, ledger, artifacts)
    schema = OutputSchema.from_spec(spec, artifacts)
    files = [f for shard in sorted(by_shard) for f in by_shard[shard].files]
    for ref in tasks[0].artifacts:
        files.append(layout.FileInfo(ref.path, "artifact", None, 0, out.size(ref.path), ref.sha256).to_json())
    stats = merge_stats(out, tasks, [c.name for c in schema.columns])
    written = _write_json(out, layout.STATS, stats.extract(schema.feature_fingerprint))
    files.append(dataclasses.replace(written, kind="stats_summary").to_json())
    # The virtual index is a local HDF5 file naming its shards by relative path: on an object store
    # (no h5py driver reads one there) readers open the HDF5 shards the manifest lists instead.
    if "hdf5" in spec.output.formats and not out.remote:
        from featurelib.io.hdf5 import write_virtual_index

        shard_files = [layout.shard_relpath("hdf5", t.shard, t.n_shards) for t in sorted(tasks, key=lambda t: t.shard)]
        rows = write_virtual_index(root, shard_files, schema, list(tasks[0].label_names))
        files.append(layout.FileInfo.of(root, layout.FEATURES_H5, kind="hdf5_index", shard=None,
                                        rows=rows).to_json())
    shard_metrics = [by_shard[s].metrics for s in sorted(by_shard)]
    created_at = _now()
    manifest = _manifest(spec, schema, tasks, engine=engine, ledger=ledger, files=files,
                         metrics={**(metrics or {}), "generation": 1, "shards": shard_metrics},
                         generations=None, created_at=created_at)
    _write_json(out, layout.MANIFEST, manifest)  # the commit point: a rename, or one PUT on an object store
    remove_work(root)
    return manifest


def commit_generation(tasks: Sequence[ShardTask], results: Sequence[ShardResult], previous: dict[str, Any], *,
                      engine: str, metrics: dict[str, Any] | None = None, missing_inputs: int = 0,
                      redone: frozenset[int] = frozenset(), pruned: int = 0) -> dict[str, Any]:
    """Commit an ``--incremental`` generation next to the generations `previous` (the committed manifest) lists.

    The generation's own ledger must hold (its files account for exactly its listed inputs) and
    its rejects stay within the error budget; over all generations, no key may be there twice
    and ``W ∪ R`` must hold every input ever listed. ``stats.json`` is merged from every
    generation's accumulators (shard order, then generation), ``features.h5`` covers every
    generation's HDF5 shards, and the older generations' entries are kept as they are, except
    those of the `redone` shards (``--prune``: this generation holds those shards whole), which
    are dropped from the manifest and deleted once it is committed.
    ``stats.json``, ``features.h5`` and the manifest are written under temporary names first
    and renamed last, the manifest last of all: until then the previous manifest is the output.

    Raises
    ------
    PolicyError
        If this generation's rejects exceed ``failures.max_reject_fraction`` (``_FAILED.json`` is
        written next to the previous manifest, which stays valid).
    SchemaError
        If the files on disk break the ledger invariant, or the fingerprints differ from the output's.
    """
    if not tasks:
        raise ValueError("commit needs the run's tasks")
    spec = RunSpec.from_json(tasks[0].spec_json)
    root, formats = spec.output.path, spec.output.formats
    out = output_of(spec)
    generation = tasks[0].generation
    artifacts = _artifact_hashes(tasks)
    by_shard = {r.shard: r for r in results}
    absent = sorted({t.shard for t in tasks} - set(by_shard))
    if absent:
        raise SchemaError(f"no result for shard(s) {absent[:10]}")
    new_ledger = read_ledger(out, tasks, formats)
    _check_budget(out, spec, new_ledger, artifacts, failed_extra=failed_generation(previous, generation))
    schema = OutputSchema.from_spec(spec, artifacts)
    if (schema.run_fingerprint, schema.feature_fingerprint) != (previous["run_fingerprint"],
                                                                previous["feature_fingerprint"]):
        raise SchemaError("the new generation's fingerprints differ from the output's: refusing to mix them")
    shard_files = listed_shard_files(previous)
    dropped = {k: v for k, v in shard_files.items() if k[0] in redone}
    shard_files = {k: v for k, v in shard_files.items() if k[0] not in redone}
    for task in tasks:
        if (task.shard, generation) in shard_files:
            raise SchemaError(f"generation {generation} of shard {task.shard} is already committed")
        shard_files[(task.shard, generation)] = {info["kind"]: info for info in by_shard[task.shard].files}
    shard_files = dict(sorted(shard_files.items()))
    kinds = layout.shard_kinds(formats)
    for (shard, gen), entry in shard_files.items():
        if set(entry) != set(kinds):
            raise SchemaError(f"shard {shard} generation {gen}: files {sorted(entry)} listed, expected {list(kinds)}")
    data_kind = _data_kind(formats)
    scan = _scan(out, [(e[data_kind]["path"], e["rejects"]["path"]) for e in shard_files.values()])
    data_pairs = [(e[data_kind]["path"], e["rejects"]["path"]) for e in dropped.values()]
    gone = _scan(out, data_pairs) if data_pairs else _Scan(set(), 0, {})
    listed = int(previous["counts"]["listed"]) - len(gone.written_sources) - len(gone.rejected) + new_ledger.listed
    accounted = len(scan.written_sources) + len(scan.rejected)
    if accounted != listed:
        raise SchemaError(f"ledger mismatch over all generations: {accounted} sources written or rejected, "
                          f"{listed} listed ({previous['counts']['listed']} before this generation, "
                          f"{len(gone.written_sources) + len(gone.rejected)} in the shards it redoes)")
    ledger = Ledger(listed, len(scan.written_sources), scan.written_rows, len(scan.rejected),
                    dict(sorted(Counter(scan.rejected.values()).items())))
    files = [entry[kind] for entry in shard_files.values() for kind in kinds]
    listed_artifacts = {f["path"]: f for f in previous["files"] if f["kind"] == "artifact"}
    for ref in tasks[0].artifacts:
        if ref.path not in listed_artifacts or listed_artifacts[ref.path]["sha256"] != ref.sha256:
            raise SchemaError(f"artefact {ref.path} is not the one the output was written with")
        files.append(listed_artifacts[ref.path])
    # Run-level files: written under temporary names (on the driver's disk for an object store),
    # put in place just before the manifest.
    staged: list[tuple[str, str]] = []
    try:
        stats = merge_stats_files(out, [e["stats"]["path"] for e in shard_files.values()],
                                  [c.name for c in schema.columns])
        tmp = out.staging(layout.STATS)
        staged.append((tmp, layout.STATS))
        _dump_json(tmp, stats.extract(schema.feature_fingerprint))
        files.append(_staged_info(tmp, layout.STATS, kind="stats_summary", rows=0))
        if "hdf5" in formats and not out.remote:  # no virtual index on an object store (see commit)
            from featurelib.io.hdf5 import write_virtual_index

            tmp = layout.temp_path(os.path.join(root, layout.FEATURES_H5))
            staged.append((tmp, layout.FEATURES_H5))
            rows = write_virtual_index(root, [e["hdf5"]["path"] for e in shard_files.values()], schema,
                                       list(previous["label_names"]), target=tmp)
            files.append(_staged_info(tmp, layout.FEATURES_H5, kind="hdf5_index", rows=rows))
        created_at = _now()
        generations = list(previous.get("generations") or [
            {"generation": 1, "created_at": previous["created_at"], "engine": previous["engine"],
             **previous["counts"]}])
        generations.append(_generation_entry(generation, created_at, engine, new_ledger))
        if redone:
            generations[-1].update(pruned=pruned, redone_shards=sorted(redone))
        shard_metrics = [by_shard[s].metrics for s in sorted(by_shard)]
        manifest = _manifest(spec, schema, tasks, engine=engine, ledger=ledger, files=files,
                             metrics={**(metrics or {}), "generation": generation, "shards": shard_metrics},
                             generations=generations, created_at=created_at)
        manifest["missing_inputs"] = missing_inputs
        tmp = out.staging(layout.MANIFEST)
        staged.append((tmp, layout.MANIFEST))
        _dump_json(tmp, manifest)
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        raise
    for tmp, rel in staged:  # the manifest last: the commit point (a rename, or one PUT)
        out.put(tmp, rel)
    out.remove(layout.FAILED)  # a failed attempt at this generation, now done
    for entry in dropped.values():  # no longer listed (a crash here: the next incremental run removes them)
        for info in entry.values():
            out.remove(info["path"])
    remove_work(root)
    return manifest


def _staged_info(tmp: str, relpath: str, *, kind: str, rows: int) -> dict[str, Any]:
    return layout.FileInfo(relpath, kind, None, rows, os.path.getsize(tmp), layout.file_sha256(tmp)).to_json()


def failed_generation(previous: dict[str, Any], generation: int) -> dict[str, Any]:
    """What ``_FAILED.json`` adds for a failed ``--incremental`` run: its output is still committed."""
    return {"incremental": True, "generation": generation,
            "committed_generation": max((g["generation"] for g in previous.get("generations") or []), default=1),
            "note": "the output's _manifest.json (the generations before this one) is still valid; "
                    "run again with --incremental to redo this generation"}


def remove_work(root: str) -> None:
    """Delete the engines' scratch folder (``OUT/_work/``, or the local one of an object-store output)."""
    shutil.rmtree(work_dir(root), ignore_errors=True)


def write_failed(out: Output, spec: RunSpec, error: str, *, kind: str, ledger: Ledger | None = None,
                 artifacts: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
    """Write ``_FAILED.json``: what failed and, when known, the counts and top reasons (and `extra`:
    an incremental run's generation; its output's ``_manifest.json`` stays valid)."""
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
    document.update(extra or {})
    with contextlib.suppress(Exception):  # the output itself may be what failed; the error still reaches the user
        out.makedirs()
        _write_json(out, layout.FAILED, document)

"""``--incremental``: add the inputs that are new since the output's last commit, as a new generation.

The nightly job over a growing bucket: the output's first run fixed the spec, the
shard count, the label names and the fitted artefacts; an incremental run lists
the inputs again, keeps the source keys the output does not hold yet (neither
written nor rejected, in any generation), and writes them as generation g (the
previous one + 1): ``part-00003-of-00008.g0002.parquet`` and so on, one set of
files per shard, possibly empty. The driver then commits a manifest listing
every generation (:func:`featurelib.commit.commit_generation`). Until then the
previous manifest is the output: the new generation's files are not listed,
and the next ``--incremental`` run removes them if this one fails.

Decisions (docs/CONTRACT.md, "Incremental runs"):

* A key already rejected is not retried (a bad file is not decoded again every
  night); to retry rejects, rerun without ``--incremental``.
* Labels are frozen: a new class folder is ``invalid_label``.
* ``dedup: content`` compares a new input's bytes with every written source
  (the ``sha256`` column of the Parquet shards): the row already written wins.
* Inputs that are gone are reported (``missing_inputs``), their rows kept; with
  ``--prune``, every shard holding one is redone whole in the new generation
  (its inputs still listed processed again) and its older files dropped.
* With nothing new (and nothing to prune), nothing is written and the manifest
  is left as it is.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

from featurelib import registry
from featurelib.errors import SchemaError, UserError
from featurelib.io import files as layout
from featurelib.io.outfs import Output, file_sha256_of, output_of
from featurelib.plan import ArtifactRef, ShardTask, group, list_sources
from featurelib.sources import shard_of
from featurelib.spec import RunSpec

#: What ``featurize run --incremental`` says after a failure or an interrupt.
INCREMENTAL_HINT = "run again with --incremental to redo this generation (the committed output is unchanged)"


def committed_manifest(spec: RunSpec) -> dict[str, Any]:
    """The manifest of the output an incremental run of `spec` (absolute paths) adds to.

    Raises
    ------
    UserError
        No committed output there, an unreadable manifest, or one written by a different spec.
    """
    root = spec.output.path
    if "parquet" not in spec.output.formats and spec.dedup == "content":
        raise UserError("--incremental with dedup: content needs output.formats to include parquet (the sha256 "
                        "column of the written rows); rerun without --incremental")
    out = output_of(spec)
    path = out.path(layout.MANIFEST)
    if not out.exists(layout.MANIFEST):
        failed = out.exists(layout.FAILED)
        hint = (" (its first run failed: complete it with --resume, or rerun it)" if failed else "")
        raise UserError(f"--incremental: output {root!r} holds no committed run{hint}; nothing to add to: "
                        f"run once without --incremental")
    try:
        manifest = json.loads(out.read_bytes(layout.MANIFEST))
        found = manifest["spec_fingerprints"]["run"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--incremental: cannot read {path!r} ({exc}); rerun without --incremental") from None
    wanted = spec.run_fingerprint()
    if found != wanted:
        raise UserError(f"--incremental: output {root!r} was written by a different spec (run_fingerprint "
                        f"{found[:12]}..., this spec {wanted[:12]}...); --incremental keeps the first run's spec: "
                        f"run it with that spec, or without --incremental (--overwrite) to replace the output")
    return manifest


def generation_of(manifest: dict[str, Any]) -> int:
    """The last committed generation (1 for an output without ``generations``)."""
    return max((int(g["generation"]) for g in manifest.get("generations") or []), default=1)


@dataclasses.dataclass
class Existing:
    """What the output holds, read from the files its manifest lists: per shard, the source keys
    written and rejected (any generation) and, with ``dedup: content``, ``(sha256, key)`` of the written ones."""

    written: dict[int, set[str]]
    rejected: dict[int, set[str]]
    digests: dict[int, list[tuple[str, str]]]

    @property
    def keys(self) -> set[str]:
        return {k for part in (self.written, self.rejected) for keys in part.values() for k in keys}

    def first_with_digest(self, *, without: set[int] = frozenset()) -> dict[str, str]:
        """sha256 -> smallest written source key with those bytes, outside the shards `without`."""
        first: dict[str, str] = {}
        for shard, pairs in self.digests.items():
            if shard not in without:
                for digest, key in pairs:
                    if digest not in first or key < first[digest]:
                        first[digest] = key
        return first


def read_existing(out: Output, manifest: dict[str, Any], *, digests: bool) -> Existing:
    """Source keys written and rejected in every generation, and (`digests`) the written sources' sha256."""
    from featurelib.commit import listed_shard_files
    from featurelib.io.readers import read_shard_keys

    formats = manifest["spec"]["output"]["formats"]
    data_kind = "parquet" if "parquet" in formats else "hdf5"
    found = Existing({}, {}, {})
    for (shard, _), entry in listed_shard_files(manifest).items():
        written = found.written.setdefault(shard, set())
        path = entry[data_kind]["path"]
        if digests:
            table = _read_columns(out, path, ["source_key", "aug_index", "sha256"])
            for key, aug, digest in zip(*(table.column(c).to_pylist() for c in ("source_key", "aug_index", "sha256"))):
                if aug == 0:
                    written.add(key)
                    found.digests.setdefault(shard, []).append((digest, key))
        else:
            keys = read_shard_keys(path, output=out)
            written.update(s for s, a in zip(keys["source_key"], keys["aug_index"]) if a == 0)
        rejects = _read_columns(out, entry["rejects"]["path"], ["source_key"])
        found.rejected.setdefault(shard, set()).update(rejects.column("source_key").to_pylist())
    return found


def _read_columns(out: Output, rel: str, columns: list[str]):
    """`columns` of the Parquet file `rel` of `out`."""
    from featurelib.io.readers import read_parquet_table

    with out.reading(rel) as source:
        return read_parquet_table(source, columns=columns)


def remove_unlisted(out: Output, manifest: dict[str, Any]) -> list[str]:
    """Delete per-shard files the manifest does not list (a failed generation's leftovers) and temporaries.

    Only names featurelib writes are touched (shard file names, temporaries), in its own folders.
    """
    listed = {f["path"] for f in manifest["files"]}
    removed = []
    for kind in ("parquet", "hdf5", "rejects", "stats"):
        folder = layout.SHARD_FILES[kind][0]
        for name in out.listdir(folder):
            rel = f"{folder}/{name}"
            if rel in listed:
                continue
            if layout.shard_generation(name) is not None or layout.TMP_MARK in name:
                out.remove(rel)
                removed.append(rel)
    return removed


@dataclasses.dataclass
class GenerationPlan:
    """One incremental run: its tasks, generation, the inputs now gone and, with ``--prune``, the
    shards redone whole (their older files dropped: the inputs still listed processed again)."""

    tasks: list[ShardTask]
    generation: int
    listed: int
    existing: Existing
    missing: list[str]
    redone: frozenset[int] = frozenset()
    again: int = 0  # inputs of the redone shards already in the output, processed again

    @property
    def new(self) -> int:
        return sum(len(t.records) for t in self.tasks)


def plan_generation(spec: RunSpec, manifest: dict[str, Any], *, prune: bool = False) -> GenerationPlan:
    """List the inputs under the output's frozen labels and shard count; keep those not in the output.

    With `prune`, every shard holding an input that is no longer listed is redone whole in this
    generation: its inputs still listed are processed again (the same bytes give the same rows),
    the deleted ones are gone from it, and the commit drops the shard's older files.
    """
    label_names = list(manifest["label_names"])
    n_shards = int(manifest["n_shards"])
    listing = list_sources(spec, labels=label_names)
    existing = read_existing(output_of(spec), manifest, digests=spec.dedup == "content")
    keys = existing.keys
    listed = {r.source_key for r in listing.records}
    missing = sorted(keys - listed)
    redone = frozenset(shard_of(key, n_shards) for key in missing) if prune else frozenset()
    records = [_frozen_label(r, len(label_names)) if spec.labels is None else r
               for r in listing.records if r.source_key not in keys or shard_of(r.source_key, n_shards) in redone]
    generation = generation_of(manifest) + 1
    tasks = group(spec, records, label_names, n_shards, generation=generation)
    again = sum(r.source_key in keys for r in records)
    return GenerationPlan(tasks, generation, len(listing.records), existing, missing, redone, again)


def _frozen_label(record, n_labels: int):
    """A new class under spec labels taken from the data: say why it is refused, and what to do."""
    if record.reject is None or record.reject[0] != "invalid_label":
        return record
    detail = (f"label {record.label_name!r} is not one of the output's {n_labels} labels: --incremental keeps the "
              f"labels of the output's first run; adding a class needs a full rerun without --incremental")
    return dataclasses.replace(record, reject=("invalid_label", detail))


def mark_existing_duplicates(tasks: Sequence[ShardTask], hashes: Sequence[list[tuple[str, str]]],
                             existing: Existing, *, redone: frozenset[int] = frozenset()
                             ) -> tuple[list[ShardTask], list[tuple[str, str]]]:
    """``dedup: content`` across generations: an input of this generation with the bytes of a written
    source kept from an older one is its ``duplicate``. Returns the tasks and the hashes left to the
    usual rule among this generation's inputs (new ones, and those of `redone` shards)."""
    pairs = [pair for shard_pairs in hashes for pair in shard_pairs]
    kept = existing.first_with_digest(without=redone)
    duplicate_of = {key: kept[digest] for key, digest in pairs if digest in kept}
    out = []
    for task in tasks:
        records = tuple(
            dataclasses.replace(r, reject=("duplicate", f"same content as {duplicate_of[r.source_key]!r} "
                                                        f"(written by an earlier generation)"))
            if r.source_key in duplicate_of and r.reject is None else r
            for r in task.records
        )
        out.append(dataclasses.replace(task, records=records))
    return out, [(key, digest) for key, digest in pairs if key not in duplicate_of]


def check_artifacts(spec: RunSpec, manifest: dict[str, Any]) -> None:
    """Every artefact the spec's extractors fit is in the output as its manifest lists it: reused, never refitted.

    Raises
    ------
    SchemaError
        An artefact missing or changed since the output's first run.
    """
    listed = {a["column"]: a for a in manifest.get("artifacts", [])}
    for feature in spec.fitted_features():
        entry = listed.get(feature.column)
        relpath = f"{layout.ARTIFACTS}/{registry.get(feature.name).artifact.filename(feature.column)}"
        out = output_of(spec)
        if entry is None or entry["path"] != relpath or not out.exists(relpath) \
                or file_sha256_of(out, relpath) != entry["sha256"]:
            raise SchemaError(f"artefact {relpath} of column {feature.column!r} is missing or changed since the "
                              f"output's first run: --incremental never refits; rerun without --incremental")


def check_reused(refs: Sequence[ArtifactRef], manifest: dict[str, Any]) -> None:
    listed = {a["column"]: a["sha256"] for a in manifest.get("artifacts", [])}
    for ref in refs:
        if listed.get(ref.column) != ref.sha256:
            raise SchemaError(f"artefact {ref.path} is not the one the output was written with")


def forget_failed_attempt(out: Output) -> None:
    """Remove the ``_FAILED.json`` of a failed incremental attempt whose files are gone (nothing left to redo)."""
    try:
        incremental = json.loads(out.read_bytes(layout.FAILED)).get("incremental")
    except (OSError, ValueError, AttributeError):
        return
    if incremental:
        out.remove(layout.FAILED)


def report_missing(missing: Sequence[str], log: Callable[[str], None], *, pruned: bool = False) -> None:
    if missing:
        examples = ", ".join(map(repr, missing[:5])) + (", ..." if len(missing) > 5 else "")
        fate = "--prune drops them" if pruned else "their rows are kept (--prune drops them)"
        log(f"featurize: {len(missing)} input(s) in the output are no longer listed (deleted?): {examples}; {fate}")


__all__ = ["INCREMENTAL_HINT", "committed_manifest", "plan_generation", "remove_unlisted", "GenerationPlan"]

"""Step one of every run, on the driver: list the inputs and group them into shard tasks.

A :class:`ShardTask` is plain, picklable data carrying the spec as JSON; the
same task list feeds every pass of the run (pre-passes and the main pass) on
every engine.
"""

from __future__ import annotations

import dataclasses
import os

from collections.abc import Callable, Sequence

from featurelib.sources import Listing, SourceRecord, is_local, list_inputs, shard_of
from featurelib.spec import RunSpec


@dataclasses.dataclass(frozen=True)
class ArtifactRef:
    """A fitted artefact a task's extractors load: ``OUT/<path>``, checked against its sha256."""

    column: str
    what: str
    path: str  # relative to the output root
    sha256: str


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """Everything one worker needs to process one shard (no rows cross processes)."""

    spec_json: str
    shard: int
    n_shards: int
    output: str
    label_names: tuple[str, ...]
    records: tuple[SourceRecord, ...]
    artifacts: tuple[ArtifactRef, ...] = ()
    #: 1 for a run; g >= 2 for the g-th ``--incremental`` generation (its files are ``*.g000g.*``).
    generation: int = 1


def resolve_paths(spec: RunSpec) -> RunSpec:
    """Make local input and output paths absolute, so workers anywhere agree."""
    spec.require_paths()
    overrides = {}
    if is_local(spec.input.path):
        overrides["input"] = os.path.abspath(spec.input.path.removeprefix("file://"))
    if is_local(spec.output.path):
        overrides["output"] = os.path.abspath(spec.output.path.removeprefix("file://"))
    return spec.with_overrides(**overrides)


def list_sources(spec: RunSpec, *, labels: Sequence[str] | None = None) -> Listing:
    """Every input of `spec` (absolute paths), labelled by `labels` (default: the spec's ``labels``).

    Raises
    ------
    UserError
        If the input cannot be listed (missing folder, bad manifest, no files).
    """
    spec = resolve_paths(spec)
    return list_inputs(
        spec.input.path,
        storage_options=spec.input.storage_options,
        labels=spec.labels if labels is None else labels,
        seed=spec.seed,
        fractions=spec.split.fractions(),
        by_content=spec.split.by == "content",
    )


def group(spec: RunSpec, records: Sequence[SourceRecord], label_names: Sequence[str], n_shards: int, *,
          generation: int = 1) -> list[ShardTask]:
    """One task per shard of `n_shards` (empty shards included: each writes its files)."""
    spec = resolve_paths(spec)
    grouped: list[list[SourceRecord]] = [[] for _ in range(n_shards)]
    for record in records:
        grouped[shard_of(record.source_key, n_shards)].append(record)
    spec_json = spec.to_json()
    return [
        ShardTask(spec_json, shard, n_shards, spec.output.path, tuple(label_names), tuple(shard_records),
                  generation=generation)
        for shard, shard_records in enumerate(grouped)
    ]


def shard_count(spec: RunSpec, records: Sequence[SourceRecord], log: Callable[[str], None] | None = None) -> int:
    """``output.shards``, ``ceil(listed / output.rows_per_shard)``, or the count ``output.target_shard_mb``
    gives (a sample of `records` processed and written in memory: :mod:`featurelib.shard_sizing`)."""
    if spec.output.target_shard_mb is None:
        return spec.output.shard_count(len(records))
    from featurelib import shard_sizing

    sized = shard_sizing.estimate(spec, records)
    if log is not None:
        log(sized.describe())
    return sized.n_shards


def plan(spec: RunSpec, *, log: Callable[[str], None] | None = None) -> list[ShardTask]:
    """List the inputs and build one task per shard (empty shards included: each writes its files).

    Raises
    ------
    UserError
        If the input cannot be listed (missing folder, bad manifest, no files).
    """
    listing = list_sources(spec)
    n_shards = shard_count(resolve_paths(spec), listing.records, log)
    return group(spec, listing.records, listing.label_names, n_shards)

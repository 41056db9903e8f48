"""The three steps every engine runs: ``plan`` -> ``process_shard`` (per task) -> ``commit``.

``plan`` (driver) lists the inputs and groups them into :class:`ShardTask`
objects: plain, picklable data carrying the spec as JSON. ``process_shard``
(any worker) reads, decodes, preprocesses, augments and extracts one shard,
streaming rows into its files, and returns a small :class:`ShardResult`.
``commit`` (driver, or the final step of a pipeline) checks the ledger from
the files on disk, applies the error budget, writes ``hdf5/features.h5`` and
finally ``_manifest.json``, the commit point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from featurelib import __version__
from featurelib.compute import FeatureComputer, content_sha256
from featurelib.errors import DecodeError, PolicyError, RecordError, SchemaError
from featurelib.io import files as layout
from featurelib.io.shards import RejectRow, Row, ShardWriter
from featurelib.schema import FORMAT_VERSION, OutputSchema
from featurelib.sources import SourceRecord, list_inputs, read_bytes, shard_of, split_of
from featurelib.spec import RunSpec

#: Environment variable naming a JSON file that arms a fault, for reliability tests
#: only. The file holds ``{"output": OUT, "shard": N, "marker": PATH}``: the task of
#: shard N writing to OUT fails mid-shard when PATH does not exist yet (and creates
#: it), so its first attempt fails and a retry succeeds. Being a file, it can be
#: armed after long-lived workers (Spark, Beam) have started; unset, it costs nothing.
FAULT_ENV = "FEATURELIB_FAULT_FILE"


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """Everything one worker needs to write one shard (no rows cross processes)."""

    spec_json: str
    shard: int
    n_shards: int
    output: str
    label_names: tuple[str, ...]
    records: tuple[SourceRecord, ...]


@dataclasses.dataclass(frozen=True)
class ShardResult:
    """What a task returns to the driver: small, whatever the shard size."""

    shard: int
    files: tuple[dict[str, Any], ...]
    metrics: dict[str, Any]


# --- plan ---------------------------------------------------------------------


def resolve_paths(spec: RunSpec) -> RunSpec:
    """Make local input and output paths absolute, so workers anywhere agree."""
    from featurelib.sources import is_local

    spec.require_paths()
    overrides = {}
    if is_local(spec.input.path):
        overrides["input"] = os.path.abspath(spec.input.path.removeprefix("file://"))
    if is_local(spec.output.path):
        overrides["output"] = os.path.abspath(spec.output.path.removeprefix("file://"))
    return spec.with_overrides(**overrides)


def plan(spec: RunSpec) -> list[ShardTask]:
    """List the inputs and build one task per shard (empty shards included: each writes its files).

    Raises
    ------
    UserError
        If the input cannot be listed (missing folder, bad manifest, no files).
    """
    spec = resolve_paths(spec)
    listing = list_inputs(
        spec.input.path,
        storage_options=spec.input.storage_options,
        labels=spec.labels,
        seed=spec.seed,
        fractions={"train": spec.split.train, "val": spec.split.val, "test": spec.split.test},
        by_content=spec.split.by == "content",
    )
    n_shards = spec.output.shard_count(len(listing.records))
    grouped: list[list[SourceRecord]] = [[] for _ in range(n_shards)]
    for record in listing.records:
        grouped[shard_of(record.source_key, n_shards)].append(record)
    spec_json = spec.to_json()
    return [
        ShardTask(spec_json, shard, n_shards, spec.output.path, listing.label_names, tuple(records))
        for shard, records in enumerate(grouped)
    ]


def hash_shard(task: ShardTask) -> list[tuple[str, str]]:
    """First pass of ``dedup: content``: ``(source_key, sha256)`` of each readable input."""
    spec = _spec(task.spec_json)
    out = []
    for record in task.records:
        if record.reject is None:
            try:
                out.append((record.source_key, content_sha256(read_bytes(record.uri, spec.input.storage_options))))
            except RecordError:
                pass  # the main pass meets the same error and writes the reject
    return out


def apply_dedup(tasks: Sequence[ShardTask], hashes: Iterable[list[tuple[str, str]]]) -> list[ShardTask]:
    """Mark every input whose bytes equal those of a smaller key as a ``duplicate`` reject."""
    first: dict[str, str] = {}
    for key, digest in sorted(pair for shard_pairs in hashes for pair in shard_pairs):
        first.setdefault(digest, key)
    duplicate_of = {}
    for shard_pairs in hashes:
        for key, digest in shard_pairs:
            if first[digest] != key:
                duplicate_of[key] = first[digest]
    out = []
    for task in tasks:
        records = tuple(
            dataclasses.replace(r, reject=("duplicate", f"same content as {duplicate_of[r.source_key]!r}"))
            if r.source_key in duplicate_of and r.reject is None else r
            for r in task.records
        )
        out.append(dataclasses.replace(task, records=records))
    return out


# --- process_shard ----------------------------------------------------------------

_STATE: dict[str, Any] = {}
_STATE_BUILDS = 0


def _spec(spec_json: str) -> RunSpec:
    return worker_state(spec_json)["spec"]


def worker_state(spec_json: str) -> dict[str, Any]:
    """Per-process cache of the parsed spec, the computer and the decoder.

    Heavy state (later: CNN weights) is built once per worker process and
    reused by every shard task of the same spec.
    """
    global _STATE_BUILDS
    state = _STATE.get(spec_json)
    if state is None:
        spec = RunSpec.from_json(spec_json)
        _STATE.clear()  # one spec per process at a time: never accumulate models
        _STATE_BUILDS += 1
        state = {"spec": spec, "computer": FeatureComputer(spec), "decoder": _make_decoder(spec),
                 "schema": OutputSchema.from_spec(spec)}
        _STATE[spec_json] = state
    return state


def state_builds() -> int:
    """How many times this process built worker state (tests count it)."""
    return _STATE_BUILDS


def _make_decoder(spec: RunSpec):
    from featurelib import decode

    options = {"max_pixels": spec.decode.max_pixels, "background": tuple(spec.decode.background)}
    if spec.decode.isolation == "subprocess":
        return decode.IsolatedDecoder(timeout_s=spec.decode.timeout_s, **options).decode
    return lambda data: decode.decode_image(data, **options)


def _maybe_inject_fault(task: ShardTask) -> None:
    path = os.environ.get(FAULT_ENV)
    if not path or not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as handle:
        fault = json.load(handle)
    if (fault.get("output") == task.output and fault.get("shard") == task.shard
            and not os.path.exists(fault["marker"])):
        with open(fault["marker"], "w") as handle:
            handle.write(str(os.getpid()))
        raise RuntimeError(f"injected fault in shard {task.shard} (first attempt)")


def process_shard(task: ShardTask) -> ShardResult:
    """Read, decode, preprocess, augment, extract and write one shard.

    Every record ends as rows in the shard's data files or as one reject in its
    ledger file. A failure of the task itself (disk full, a bug, an injected
    fault) removes its temporary files and propagates: the engine retries the
    task, or the run fails with nothing partial visible.
    """
    started = time.perf_counter()
    state = worker_state(task.spec_json)
    spec: RunSpec = state["spec"]
    computer: FeatureComputer = state["computer"]
    decoder = state["decoder"]
    timings = Counter()
    reasons: Counter[str] = Counter()
    writer = ShardWriter(task.output, task.shard, task.n_shards, state["schema"], spec.output.formats,
                         list(task.label_names))
    try:
        for index, record in enumerate(sorted(task.records, key=lambda r: r.source_key)):
            if index == len(task.records) // 2:
                _maybe_inject_fault(task)
            outcome = _process_record(record, spec, computer, decoder, timings)
            if isinstance(outcome, RejectRow):
                writer.add_reject(outcome)
                reasons[outcome.reason] += 1
            else:
                writer.add_source(outcome)
        if not task.records:
            _maybe_inject_fault(task)
        t0 = time.perf_counter()
        infos = writer.close()
        timings["write_s"] += time.perf_counter() - t0
    except BaseException:
        writer.abort()
        raise
    metrics = {
        "pid": os.getpid(),
        "state_builds": state_builds(),
        "sources": len(task.records),
        "written_sources": writer.sources,
        "written_rows": writer.rows,
        "rejected": sum(reasons.values()),
        "rejects_by_reason": dict(sorted(reasons.items())),
        "seconds": time.perf_counter() - started,
        **{k: round(v, 6) for k, v in sorted(timings.items())},
    }
    return ShardResult(task.shard, tuple(i.to_json() for i in infos), metrics)


def _reject(record: SourceRecord, stage: str, error: RecordError) -> RejectRow:
    return RejectRow(record.source_key, record.source_key, record.uri, stage, error.reason, error.detail[:2000])


def _process_record(record: SourceRecord, spec: RunSpec, computer: FeatureComputer, decoder,
                    timings: Counter) -> list[Row] | RejectRow:
    """One source: its rows (original first) or its single reject."""
    if record.reject is not None:
        reason, detail = record.reject
        stage = "list"
        return RejectRow(record.source_key, record.source_key, record.uri, stage, reason, detail)
    t0 = time.perf_counter()
    try:
        data = read_bytes(record.uri, spec.input.storage_options)
    except RecordError as exc:
        return _reject(record, "read", exc)
    sha = content_sha256(data)
    t1 = time.perf_counter()
    timings["read_s"] += t1 - t0
    try:
        decoded = decoder(data)
    except DecodeError as exc:
        return _reject(record, "decode", exc)
    finally:
        timings["decode_s"] += time.perf_counter() - t1
    del data
    split = record.split or split_of(spec.seed, sha, {"train": spec.split.train, "val": spec.split.val,
                                                      "test": spec.split.test})
    stage = "preprocess"
    try:
        t2 = time.perf_counter()
        image = computer.preprocess(decoded.pixels)
        stage = "augment"
        t3 = time.perf_counter()
        variants = computer.variants(image, record.source_key, split)
        t4 = time.perf_counter()
        stage = "extract"
        rows = []
        for variant in variants:
            features = computer.extract(variant.image)
            rows.append(Row(variant.key, record.source_key, variant.aug_index, record.uri, record.label,
                            record.label_name, split, sha, decoded.orig_height, decoded.orig_width,
                            decoded.format, features, variant.image if spec.output.pixels else None))
        t5 = time.perf_counter()
        timings["preprocess_s"] += t3 - t2
        timings["augment_s"] += t4 - t3
        timings["extract_s"] += t5 - t4
        return rows
    except RecordError as exc:
        return _reject(record, stage, exc)
    except Exception as exc:  # a transform bug on one odd image must not kill the shard
        return _reject(record, stage, RecordError("extract_failed" if stage == "extract" else "corrupt",
                                                  f"{type(exc).__name__}: {exc}"))


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
    from featurelib.io.readers import read_shard_keys, read_rejects

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


def commit(tasks: Sequence[ShardTask], results: Sequence[ShardResult], *, engine: str,
           metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check the ledger, apply the error budget, write ``features.h5`` and the manifest (last).

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
    by_shard = {r.shard: r for r in results}
    absent = sorted({t.shard for t in tasks} - set(by_shard))
    if absent:
        raise SchemaError(f"no result for shard(s) {absent[:10]}")
    ledger = read_ledger(root, tasks, spec.output.formats)
    budget = spec.failures.max_reject_fraction
    if ledger.listed and ledger.rejected / ledger.listed > budget:
        error = (f"{ledger.rejected} of {ledger.listed} inputs rejected "
                 f"({ledger.rejected / ledger.listed:.1%}), over failures.max_reject_fraction = {budget}")
        write_failed(root, spec, error, kind="policy", ledger=ledger)
        raise PolicyError(error)
    files = [f for shard in sorted(by_shard) for f in by_shard[shard].files]
    schema = OutputSchema.from_spec(spec)
    if "hdf5" in spec.output.formats:
        from featurelib.io.hdf5 import write_virtual_index

        rows = write_virtual_index(root, tasks, schema, list(tasks[0].label_names))
        files.append(layout.FileInfo.of(root, layout.FEATURES_H5, kind="hdf5_index", shard=None,
                                        rows=rows).to_json())
    shard_metrics = [by_shard[s].metrics for s in sorted(by_shard)]
    manifest = {
        "format_version": FORMAT_VERSION,
        "created_at": _now(),
        "feature_fingerprint": spec.feature_fingerprint(),
        "run_fingerprint": spec.run_fingerprint(),
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
    return manifest


def write_failed(root: str, spec: RunSpec, error: str, *, kind: str, ledger: Ledger | None = None) -> None:
    """Write ``_FAILED.json``: what failed and, when known, the counts and top reasons."""
    document: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "created_at": _now(),
        "kind": kind,
        "error": error,
        "run_fingerprint": spec.run_fingerprint(),
        "feature_fingerprint": spec.feature_fingerprint(),
    }
    if ledger is not None:
        document["counts"] = ledger.counts()
        document["top_reasons"] = dict(Counter(ledger.rejects_by_reason).most_common(5))
    try:
        os.makedirs(root, exist_ok=True)
        _write_json(root, layout.FAILED, document)
    except OSError:
        pass  # the output itself may be what failed; the error still reaches the user

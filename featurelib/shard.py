"""Step two of every run, on any worker: process one shard task of the main pass.

:func:`process_shard` reads, decodes, preprocesses and augments each source of
its shard, feeds the variants to the extractor handlers in bounded batches,
streams rows into the shard's files (temporary names, renamed into place at the
end) and folds what it writes into the shard's statistics accumulator. It
returns a small :class:`ShardResult`.

Failure semantics (docs/CONTRACT.md, "Rejects"): a failure that concerns one
record is a reject whose reason names its stage (``transform_failed`` for
preprocessing and augmentation, ``extract_failed`` / ``non_finite`` for
extractors, the decode policy's reasons for decoding); a failure that is not
about the record fails the task with its traceback: a MemoryError or ImportError
outside the decoder, or one extractor raising the same exception type on each
of the shard's first :data:`POISON_RECORDS` decoded records (a broken extractor
shows up as the bug it is, not as thousands of rejects).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import time
from collections import Counter
from typing import Any

import numpy as np

from featurelib import worker
from featurelib.compute import FATAL, ExtractFailure, FeatureComputer, Variant, content_sha256
from featurelib.errors import DecodeError, RecordError
from featurelib.io.outfs import Output, open_output
from featurelib.io.shards import RejectRow, Row, ShardWriter
from featurelib.plan import ShardTask
from featurelib.schema import OutputSchema
from featurelib.sources import SourceRecord, read_bytes, split_of
from featurelib.spec import RunSpec
from featurelib.stats import ShardStats

#: Environment variable naming a JSON file that arms a fault, for reliability tests
#: only. The file holds ``{"output": OUT, "shard": N, "marker": PATH}``: the task of
#: shard N writing to OUT fails mid-shard when PATH does not exist yet (and creates
#: it), so its first attempt fails and a retry succeeds. Being a file, it can be
#: armed after long-lived workers (Spark, Beam) have started; unset, it costs nothing.
FAULT_ENV = "FEATURELIB_FAULT_FILE"

#: A shard whose first this-many decoded records all fail in one extractor with one
#: exception type fails the task: the extractor is broken, not the images.
POISON_RECORDS = 20


class ExtractorBroken(RuntimeError):
    """An extractor failed the same way on every one of a shard's first decoded records."""


@dataclasses.dataclass(frozen=True)
class ShardResult:
    """What a task returns to the driver: small, whatever the shard size."""

    shard: int
    files: tuple[dict[str, Any], ...]
    metrics: dict[str, Any]


@dataclasses.dataclass
class ShardState:
    """What a worker process keeps for one spec (and its artefacts) across shard tasks."""

    spec: RunSpec
    computer: FeatureComputer
    decoder: Any
    schema: OutputSchema

    def close(self) -> None:
        self.computer.close()
        close_decoder(self.decoder)


def load_artifacts(output: Output, refs) -> dict[str, dict[str, bytes]]:
    """``{column: {what: bytes}}`` of a task's artefacts, each checked against its sha256.

    Raises
    ------
    RuntimeError
        If an artefact changed since the driver listed it (never silently use another one).
    """
    out: dict[str, dict[str, bytes]] = {}
    for ref in refs:
        data = output.read_bytes(ref.path)
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise RuntimeError(f"artefact {ref.path} does not match the sha256 the run recorded")
        out.setdefault(ref.column, {})[ref.what] = data
    return out


def shard_state(task: ShardTask) -> tuple[ShardState, bool]:
    """The cached :class:`ShardState` of this task's spec, built once per worker process."""

    def build() -> ShardState:
        spec = RunSpec.from_json(task.spec_json)
        output = open_output(task.output, spec.output.storage_options)
        computer = FeatureComputer(spec, load_artifacts(output, task.artifacts))
        hashes = {ref.column: ref.sha256 for ref in task.artifacts}
        return ShardState(spec, computer, make_decoder(spec), OutputSchema.from_spec(spec, hashes))

    return worker.cached(("shard", task.spec_json, task.artifacts), build)


def make_decoder(spec: RunSpec):
    """The decode policy with the spec's settings (isolated in a subprocess when asked)."""
    from featurelib import decode

    # With decode.reduce, JPEGs decode at the DCT scale image.size and image.resize allow (decode policy point 11).
    target = (*spec.image.size, spec.image.resize) if spec.decode.reduce else None
    options = {"max_pixels": spec.decode.max_pixels, "background": tuple(spec.decode.background), "target": target}
    if spec.decode.isolation == "subprocess":
        return decode.IsolatedDecoder(timeout_s=spec.decode.timeout_s, **options).decode
    return lambda data: decode.decode_image(data, **options)


def close_decoder(decoder) -> None:
    """Stop the child process of an isolated decoder (:func:`make_decoder`); nothing for in-process decoding."""
    close = getattr(getattr(decoder, "__self__", None), "close", None)
    if close is not None:
        close()


def _maybe_inject_fault(task: ShardTask, point: str) -> None:
    """Tests only (``FEATURELIB_FAULT_FILE``): fail this shard's first attempt at `point`.

    The fault file names an output, a shard, a marker file (present = already fired)
    and a ``kind``: ``error`` (a RuntimeError half-way through the records),
    ``disk_full`` (ENOSPC when the shard's files are being finished, its
    temporaries half-written, as a full disk fails a real write) or ``slow``
    (``seconds`` of sleep half-way, temporaries open: a straggler that
    speculative execution copies).
    """
    path = os.environ.get(FAULT_ENV)
    if not path or not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as handle:
        fault = json.load(handle)
    kind = fault.get("kind", "error")
    if (fault.get("output") != task.output or fault.get("shard") != task.shard or os.path.exists(fault["marker"])
            or point != {"error": "middle", "slow": "middle", "disk_full": "close"}[kind]):
        return
    with open(fault["marker"], "w") as handle:
        handle.write(str(os.getpid()))
    if kind == "slow":
        time.sleep(float(fault.get("seconds", 30)))
        return
    if kind == "disk_full":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(task.output, "parquet"))
    raise RuntimeError(f"injected fault in shard {task.shard} (first attempt)")


# --- one source: read, decode, preprocess, augment ----------------------------------------------


@dataclasses.dataclass
class Prepared:
    """A decoded source waiting for its features."""

    record: SourceRecord
    sha256: str
    split: str
    orig_height: int
    orig_width: int
    orig_format: str
    variants: list[Variant]


def _reject(record: SourceRecord, stage: str, reason: str, detail: str) -> RejectRow:
    return RejectRow(record.source_key, record.source_key, record.uri, stage, reason, detail[:2000])


def read_and_decode(record: SourceRecord, spec: RunSpec, decoder, timings: Counter):
    """``(sha256, decoded image, split)`` of one listed source, or its :class:`RejectRow`."""
    if record.reject is not None:
        reason, detail = record.reject
        return _reject(record, "list", reason, detail)
    t0 = time.perf_counter()
    try:
        data = read_bytes(record.uri, spec.input.storage_options)
    except RecordError as exc:
        return _reject(record, "read", exc.reason, exc.detail)
    sha = content_sha256(data)
    t1 = time.perf_counter()
    timings["read_s"] += t1 - t0
    try:
        decoded = decoder(data)
    except DecodeError as exc:
        return _reject(record, "decode", exc.reason, exc.detail)
    finally:
        timings["decode_s"] += time.perf_counter() - t1
    split = record.split or split_of(spec.seed, sha, spec.split.fractions())
    return sha, decoded, split


def prepare(record: SourceRecord, state: ShardState, timings: Counter) -> Prepared | RejectRow:
    """Everything before extraction for one source: its variants, or its single reject."""
    outcome = read_and_decode(record, state.spec, state.decoder, timings)
    if isinstance(outcome, RejectRow):
        return outcome
    sha, decoded, split = outcome
    stage = "preprocess"
    try:
        t2 = time.perf_counter()
        image = state.computer.preprocess(decoded.pixels)
        stage = "augment"
        t3 = time.perf_counter()
        variants = state.computer.variants(image, record.source_key, split)
        timings["preprocess_s"] += t3 - t2
        timings["augment_s"] += time.perf_counter() - t3
    except FATAL:
        raise
    except RecordError as exc:
        return _reject(record, stage, exc.reason, exc.detail)
    except Exception as exc:  # an op that raises on one odd image costs that image only
        return _reject(record, stage, "transform_failed", f"{type(exc).__name__}: {exc}")
    return Prepared(record, sha, split, decoded.orig_height, decoded.orig_width, decoded.format, variants)


# --- the shard ---------------------------------------------------------------------------------------


class _PoisonCheck:
    """Watches the first :data:`POISON_RECORDS` decoded records of a shard."""

    def __init__(self) -> None:
        self.seen = 0
        self.signatures: set[tuple[str, str] | None] = set()
        self.first: ExtractFailure | None = None

    def observe(self, failure: ExtractFailure | None) -> None:
        if self.seen >= POISON_RECORDS:
            return
        self.seen += 1
        raised = failure is not None and failure.error is not None
        self.signatures.add((failure.column, type(failure.error).__name__) if raised else None)
        if raised and self.first is None:
            self.first = failure
        if self.seen == POISON_RECORDS and len(self.signatures) == 1 and None not in self.signatures:
            column, kind = next(iter(self.signatures))
            raise ExtractorBroken(
                f"extractor of column {column!r} raised {kind} on each of the first {POISON_RECORDS} decoded "
                f"records of this shard: the extractor is broken, not the images ({self.first.detail})"
            ) from self.first.error


class _ShardRun:
    """One execution of :func:`process_shard` (the pending batch and what it has written)."""

    def __init__(self, task: ShardTask, state: ShardState) -> None:
        self.task, self.state, self.spec = task, state, state.spec
        self.timings: Counter = Counter()
        self.reasons: Counter[str] = Counter()
        self.stats = ShardStats(state.computer.columns)
        self.poison = _PoisonCheck()
        self.writer = ShardWriter(open_output(task.output, self.spec.output.storage_options), task.shard, task.n_shards, state.schema, self.spec.output.formats,
                                  list(task.label_names), generation=task.generation)
        self.pending: list[Prepared | RejectRow] = []
        self.pending_images = 0

    def add(self, outcome: Prepared | RejectRow) -> None:
        self.pending.append(outcome)
        if isinstance(outcome, Prepared):
            self.pending_images += len(outcome.variants)
            if self.pending_images >= self.state.computer.batch_size:
                self.flush()

    def flush(self) -> None:
        """Extract the pending variants, then write every pending source in order."""
        images = [v.image for item in self.pending if isinstance(item, Prepared) for v in item.variants]
        t0 = time.perf_counter()
        results = iter(self.state.computer.extract(images))
        self.timings["extract_s"] += time.perf_counter() - t0
        for item in self.pending:
            if isinstance(item, RejectRow):
                self._write_reject(item)
                continue
            per_variant = [next(results) for _ in item.variants]
            failure = next((r for r in per_variant if isinstance(r, ExtractFailure)), None)
            self.poison.observe(failure)
            if failure is not None:
                index = per_variant.index(failure)
                where = f" (variant {item.variants[index].key})" if index else ""
                self._write_reject(_reject(item.record, "extract", failure.reason, failure.detail + where))
            else:
                self._write_source(item, per_variant)
        self.pending, self.pending_images = [], 0

    def _write_reject(self, reject: RejectRow) -> None:
        self.writer.add_reject(reject)
        self.reasons[reject.reason] += 1

    def _write_source(self, item: Prepared, features: list[list[np.ndarray]]) -> None:
        record, pixels = item.record, self.spec.output.pixels
        self.writer.add_source([
            Row(v.key, record.source_key, v.aug_index, record.uri, record.label, record.label_name, item.split,
                item.sha256, item.orig_height, item.orig_width, item.orig_format, vectors,
                v.image if pixels else None)
            for v, vectors in zip(item.variants, features)
        ])
        self.stats.add_source(label_name=record.label_name, split=item.split, orig_height=item.orig_height,
                              orig_width=item.orig_width, orig_format=item.orig_format)
        if item.split == "train":
            t0 = time.perf_counter()
            self.stats.add_pixels(item.variants[0].image)
            for column, vector in zip(self.stats.columns, features[0]):
                self.stats.add_features(column, vector)
            self.timings["stats_s"] += time.perf_counter() - t0


def process_shard(task: ShardTask) -> ShardResult:
    """Read, decode, preprocess, augment, extract and write one shard.

    Every record ends as rows in the shard's data files or as one reject in its
    ledger file. A failure of the task itself (disk full, a bug, a broken
    extractor, an injected fault) removes its temporary files and propagates:
    the engine retries the task, or the run fails with nothing partial visible.
    """
    started = time.perf_counter()
    state, built = shard_state(task)
    run = _ShardRun(task, state)
    records = sorted(task.records, key=lambda r: r.source_key)
    try:
        for index, record in enumerate(records):
            if index == len(records) // 2:
                _maybe_inject_fault(task, "middle")
            run.add(prepare(record, state, run.timings))
            worker.report_progress(index + 1, sum(run.reasons.values()))
        run.flush()
        if not records:
            _maybe_inject_fault(task, "middle")
        _maybe_inject_fault(task, "close")
        t0 = time.perf_counter()
        infos = run.writer.close(stats=run.stats.dumps())
        run.timings["write_s"] += time.perf_counter() - t0
    except BaseException:
        run.writer.abort()
        raise
    metrics = {
        "pid": os.getpid(),
        "module_file": __file__,  # where featurelib came from (site-packages, a --py-files zip)
        "state_built": built,
        "sources": len(records),
        "written_sources": run.writer.sources,
        "written_rows": run.writer.rows,
        "rejected": sum(run.reasons.values()),
        "rejects_by_reason": dict(sorted(run.reasons.items())),
        "seconds": time.perf_counter() - started,
        "started_at": round(time.time() - (time.perf_counter() - started), 3),  # epoch s: the run's time to first task
        **{k: round(v, 6) for k, v in sorted(run.timings.items())},
    }
    return ShardResult(task.shard, tuple(i.to_json() for i in infos), metrics)

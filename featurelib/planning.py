"""``featurize plan``: what a run of a spec would do, and roughly how long it would take, without running it.

It lists the inputs exactly as a run does (:func:`featurelib.plan.plan`), counts
them (bytes, classes, splits, list-stage rejects, rows per shard), sizes the
output from the declared feature lengths, and measures a seeded sample of
inputs through the run's own per-record code in this process
(:func:`featurelib.shard.prepare`: read, decode, preprocess, augment; then
:class:`featurelib.compute.FeatureComputer`: extract) with the worker's thread
limit, to extrapolate the time of the local engine. Nothing is written: a fitted
artefact (a BoVW vocabulary) is fitted in memory on the sample, only to time
the extractor that loads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from featurelib.contract import SPLITS
from featurelib.errors import UserError
from featurelib.plan import ShardTask, plan, resolve_paths
from featurelib.sources import SourceRecord, is_local
from featurelib.spec import RunSpec

#: Inputs measured by default.
DEFAULT_SAMPLE = 16


def human_bytes(n: float) -> str:
    """``1.2 MB`` (decimal units, as ``ls -h --si`` prints them)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def input_bytes(records: Sequence[SourceRecord], storage_options: dict[str, Any]) -> tuple[int, int]:
    """``(total bytes, inputs not found)`` of the records' files (``os.stat``, or fsspec for remote URIs)."""
    total, missing = 0, 0
    remote: dict[str, Any] = {}
    for record in records:
        try:
            if is_local(record.uri):
                total += os.stat(record.uri.removeprefix("file://")).st_size
            else:
                import fsspec

                protocol = record.uri.split("://", 1)[0]
                if protocol not in remote:
                    remote[protocol] = fsspec.filesystem(protocol, **storage_options)
                total += int(remote[protocol].size(record.uri))
        except (OSError, ValueError, TypeError):
            missing += 1
    return total, missing


def rows_of_source(spec: RunSpec, record: SourceRecord) -> float:
    """Output rows of one listed source: the original and its variants (expected ones when the split
    is decided by content, at read time)."""
    copies = spec.augment.copies
    if record.split is not None:
        return 1 + (copies if record.split in spec.augment.splits else 0)
    share = sum(spec.split.fractions()[s] for s in spec.augment.splits)
    return 1 + copies * share


@contextlib.contextmanager
def worker_threads(threads: int) -> Iterator[None]:
    """Within the block, native libraries run `threads` threads, as in a worker (restored after)."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - a core dependency in practice
            yield
        else:
            with threadpool_limits(threads):
                yield
    finally:
        cv2.setNumThreads(before)


def sample_records(spec: RunSpec, records: Sequence[SourceRecord], n: int) -> list[SourceRecord]:
    """`n` inputs not rejected at the list stage, drawn with ``random.Random(seed)``: the same ones each time."""
    candidates = sorted((r for r in records if r.reject is None), key=lambda r: r.source_key)
    return random.Random(spec.seed).sample(candidates, min(n, len(candidates)))


def fit_in_memory(spec: RunSpec, prepared: Sequence[Any]) -> tuple[RunSpec, dict[str, dict[str, bytes]], list[str]]:
    """Artefacts for the timed extractors: a saved file's bytes, or one fitted in memory on the sampled
    images. A column whose artefact cannot be fitted from so few images is left out of the timing."""
    import cv2

    from featurelib import registry, transforms
    from featurelib.passes import saved_artifact_path

    artifacts: dict[str, dict[str, bytes]] = {}
    dropped: list[str] = []
    for feature in spec.fitted_features():
        definition = registry.get(feature.name)
        artifact = definition.artifact
        saved = saved_artifact_path(spec, feature.column)
        try:
            if saved:
                with open(saved, "rb") as handle:
                    artifacts[feature.column] = {artifact.what: handle.read()}
                continue
            samples = []
            for item in prepared:
                image = item.variants[0].image
                if definition.view == "gray":
                    image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
                rng = transforms.record_rng(spec.seed, f"{feature.column}:{item.record.source_key}")
                samples.append(artifact.sample(feature.params, image, rng))
            artifacts[feature.column] = {artifact.what: artifact.fit(feature.params, samples, spec.seed)}
        except (OSError, ValueError) as exc:
            dropped.append(f"{feature.column} not timed (its {artifact.what} cannot be fitted from the sample: {exc})")
    kept = tuple(f for f in spec.features
                 if f.column in artifacts or registry.get(f.name).artifact is None)
    return dataclasses.replace(spec, features=kept), artifacts, dropped


_START_PROBE = ("import time; t = time.perf_counter(); import featurelib.shard, featurelib.registry as r; "
                "r.load_families(); print(time.perf_counter() - t)")


def worker_start_seconds() -> float | None:
    """Seconds a fresh worker process spends importing featurelib and the extractor families (what
    this process, which has them imported already, cannot time on itself); None if it cannot be run."""
    import subprocess
    import sys

    try:
        done = subprocess.run([sys.executable, "-c", _START_PROBE], capture_output=True, text=True, timeout=120,
                              check=True)
        return float(done.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


@contextlib.contextmanager
def _no_downloads() -> Iterator[None]:
    """Within the block, ImageNet weights missing from Keras' cache are not fetched (plan writes nothing)."""
    try:
        from featurelib.deep import weights
    except ImportError:  # pragma: no cover - the deep module is part of the core install
        yield
        return

    def refuse(spec):
        raise RuntimeError(f"{spec.fname} is not in Keras' cache yet (a run fetches it first; plan does not)")

    fetch = weights._download
    weights._download = refuse
    try:
        yield
    finally:
        weights._download = fetch


def _buildable(spec: RunSpec, artifacts: dict[str, dict[str, bytes]]):
    """``(FeatureComputer, notes)``: the spec's extractors loaded here, less those that cannot load
    (weights not fetched yet, TensorFlow not installed): each of those is left out of the timing, with a note."""
    from featurelib.compute import FeatureComputer

    with _no_downloads():
        try:
            return FeatureComputer(spec, artifacts), []
        except Exception:  # noqa: BLE001 - find which extractor, below
            pass
        kept, notes = [], []
        for feature in spec.features:
            try:
                FeatureComputer(dataclasses.replace(spec, features=(feature,)), artifacts).close()
                kept.append(feature)
            except Exception as exc:  # noqa: BLE001 - any reason it cannot load here: say it, time the rest
                notes.append(f"{feature.column} not timed (cannot load here: {type(exc).__name__}: {exc})")
        return FeatureComputer(dataclasses.replace(spec, features=tuple(kept)), artifacts), notes


def measure(spec: RunSpec, records: Sequence[SourceRecord], n: int) -> dict[str, Any]:
    """Time `n` sampled inputs through read, decode, preprocess, augment and extract, in this process.

    Returns
    -------
    dict
        ``sampled``, ``rejected`` (reason -> count among them), ``setup_s`` (building the
        extractors and their first call: paid once per worker), ``seconds_per_input``,
        ``per_stage_s`` (seconds per input by stage) and ``notes``.
    """
    from featurelib.compute import FeatureComputer
    from featurelib.io.shards import RejectRow
    from featurelib.shard import ShardState, close_decoder, make_decoder, prepare

    picked = sample_records(spec, records, n)
    timings: Counter = Counter()
    rejected: Counter = Counter()
    prepared = []
    notes: list[str] = []
    decoder = make_decoder(spec)
    try:
        with worker_threads(spec.execution.threads_per_worker):
            bare = FeatureComputer(dataclasses.replace(spec, features=()))  # preprocess and augment only
            state = ShardState(spec, bare, decoder, None)
            if picked:  # lazy imports and first-use costs of the decoders: once per worker, not per input
                prepare(picked[0], state, Counter())
            started = time.perf_counter()
            for record in picked:
                outcome = prepare(record, state, timings)
                if isinstance(outcome, RejectRow):
                    rejected[outcome.reason] += 1
                else:
                    prepared.append(outcome)
            prepare_s = time.perf_counter() - started
            timed, artifacts, dropped = fit_in_memory(spec, prepared)
            notes += dropped
            images = [v.image for item in prepared for v in item.variants]
            t0 = time.perf_counter()
            computer, unusable = _buildable(timed, artifacts)
            notes += unusable
            try:
                if images:
                    computer.extract(images[:1])  # imports, graph tracing: once per worker
                setup_s = time.perf_counter() - t0
                t1 = time.perf_counter()
                computer.extract(images)
                extract_s = time.perf_counter() - t1
            finally:
                computer.close()
    finally:
        close_decoder(decoder)
    count = max(1, len(picked))
    stages = {stage: timings[f"{stage}_s"] / count for stage in ("read", "decode", "preprocess", "augment")}
    stages["extract"] = extract_s / count
    return {"sampled": len(picked), "rejected": dict(sorted(rejected.items())), "setup_s": setup_s,
            "seconds_per_input": (prepare_s + extract_s) / count, "per_stage_s": stages, "notes": notes}


def plan_report(spec: RunSpec, *, sample: int = DEFAULT_SAMPLE, workers: int | None = None) -> dict[str, Any]:
    """Everything ``featurize plan`` prints, as plain data (``--json`` prints it as it is).

    Raises
    ------
    UserError
        No input or output, an input that cannot be listed, a bad `sample` or `workers`.
    """
    if sample < 0:
        raise UserError(f"--sample must be >= 0, got {sample}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if not spec.input.path:
        raise UserError("no input: set input.path in the spec or pass --input")
    given_output = spec.output.path
    # Nothing is written: without an output, a stand-in name only fills the tasks' output field.
    spec = resolve_paths(spec if given_output else spec.with_overrides(output="featurize-plan-no-output"))
    tasks = plan(spec)
    records = [r for task in tasks for r in task.records]
    accepted = [r for r in records if r.reject is None]
    total, missing = input_bytes(accepted, dict(spec.input.storage_options))
    labels = Counter(r.label_name for r in accepted if r.label_name is not None)
    names = list(tasks[0].label_names) if tasks else []
    splits = Counter(r.split or "by_content" for r in accepted)
    rows_per_shard = [sum(rows_of_source(spec, r) for r in task.records if r.reject is None) for task in tasks]
    rows = sum(rows_per_shard)
    columns = [{"column": f.column, "extractor": f.name, "dim": dim} for f, dim in spec.feature_dims()]
    dim = sum(c["dim"] for c in columns)
    height, width = spec.image.size
    row_bytes = dim * 4 + (height * width * 3 if spec.output.pixels else 0)
    report: dict[str, Any] = {
        "input": spec.input.path,
        "output": spec.output.path if given_output else None,
        "inputs": len(records),
        "bytes": total,
        "not_found": missing,
        "classes": {name: labels.get(name, 0) for name in names},
        "unlabelled": sum(1 for r in accepted if r.label_name is None),
        "splits": {**{s: splits.get(s, 0) for s in SPLITS}, **({"by_content": splits["by_content"]}
                                                               if splits.get("by_content") else {})},
        "list_rejects": dict(sorted(Counter(r.reject[0] for r in records if r.reject is not None).items())),
        "shards": len(tasks),
        "rows": round(rows),
        "rows_per_shard": {"min": round(min(rows_per_shard)), "median": round(statistics.median(rows_per_shard)),
                           "max": round(max(rows_per_shard))},
        "columns": columns,
        "dim": dim,
        "output_bytes": {fmt: round(rows * row_bytes) for fmt in spec.output.formats},
        "estimate": None,
        "notes": ["dedup: content: exact duplicates are found when the inputs are read; counts above include "
                  "them"] if spec.dedup == "content" else [],
    }
    if sample and accepted:
        workers = workers or len(os.sched_getaffinity(0))
        measured = measure(spec, accepted, sample)
        start = worker_start_seconds()
        parallel = min(workers, _busy_shards(tasks))
        seconds = (start or 0.0) + measured["setup_s"] + measured["seconds_per_input"] * len(accepted) / parallel
        report["estimate"] = {"engine": "local", "workers": workers, "parallel_shards": parallel,
                              "seconds": round(seconds, 1), **measured,
                              "worker_start_s": round(start, 3) if start is not None else None,
                              "setup_s": round(measured["setup_s"], 3),
                              "seconds_per_input": round(measured["seconds_per_input"], 6),
                              "per_stage_s": {k: round(v, 6) for k, v in measured["per_stage_s"].items()}}
        report["estimate"]["notes"].append("not counting writing the shards and committing"
                                           + ("" if start is not None else ", nor starting the workers"))
        if spec.dedup == "content":
            report["estimate"]["notes"].append("not counting the pre-pass that reads and hashes every input "
                                               "(dedup: content)")
        if spec.fitted_features():
            report["estimate"]["notes"].append("not counting the pre-pass that samples the train split and fits "
                                               + ", ".join(f.column for f in spec.fitted_features()))
    return report


def _busy_shards(tasks: Sequence[ShardTask]) -> int:
    return max(1, sum(1 for task in tasks if any(r.reject is None for r in task.records)))


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_plan(report: dict[str, Any]) -> str:
    """The human form of :func:`plan_report`."""
    lines = [f"input            {report['input']}",
             f"output           {report['output'] or 'not set (--output or output.path, to run)'}"]
    found = f", {report['not_found']} not found" if report["not_found"] else ""
    lines.append(f"inputs           {report['inputs']} ({human_bytes(report['bytes'])}{found})")
    classes = report["classes"]
    lines.append(f"classes          {len(classes)}")
    lines += [f"  {name:<15}{count}" for name, count in classes.items()]
    if report["unlabelled"]:
        lines.append(f"  {'(unlabelled)':<15}{report['unlabelled']}")
    lines.append("splits           " + ", ".join(
        f"{name} {count}" if name != "by_content" else f"{count} decided by content when read"
        for name, count in report["splits"].items()))
    rejects = report["list_rejects"]
    lines.append(f"list rejects     {sum(rejects.values())}")
    lines += [f"  {reason:<15}{count}" for reason, count in rejects.items()]
    per = report["rows_per_shard"]
    lines.append(f"shards           {report['shards']} (rows per shard: min {per['min']}, median {per['median']}, "
                 f"max {per['max']})")
    lines.append(f"rows             {report['rows']}")
    lines.append(f"columns          {len(report['columns'])} (dim {report['dim']})")
    width = max([15] + [len(c["column"]) + 2 for c in report["columns"]])
    lines += [f"  {c['column']:<{width}}{c['extractor']:<16}{c['dim']}" for c in report["columns"]]
    sizes = ", ".join(f"{fmt} ~{human_bytes(n)}" for fmt, n in report["output_bytes"].items())
    lines.append(f"output size      {sizes} (rows x (dim x 4 bytes + pixels), before compression)")
    lines += [f"note             {note}" for note in report["notes"]]
    estimate = report["estimate"]
    if estimate is None:
        lines.append("estimate         none (--sample 0, or nothing to read)")
        return "\n".join(lines)
    rejected = sum(estimate["rejected"].values())
    detail = f", {rejected} of them rejected" if rejected else ""
    parallel = estimate["parallel_shards"]
    lines.append(f"estimate         ~{_duration(estimate['seconds'])} on the local engine with {estimate['workers']} "
                 f"workers ({parallel} shard{'s' if parallel != 1 else ''} at a time)")
    lines.append(f"  measured on {estimate['sampled']} sampled inputs in this process{detail}: "
                 f"{estimate['seconds_per_input'] * 1000:.1f} ms per input; per worker, "
                 + (f"{estimate['worker_start_s']:.2f} s to start and " if estimate["worker_start_s"] is not None
                    else "") + f"{estimate['setup_s']:.2f} s to load the extractors")
    lines.append("  per stage (ms per input): " + ", ".join(
        f"{stage} {seconds * 1000:.1f}" for stage, seconds in estimate["per_stage_s"].items()))
    lines += [f"  note: {note}" for note in estimate["notes"]]
    return "\n".join(lines)

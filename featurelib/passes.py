"""Pre-passes: map over the shard tasks before the main pass, merge on the driver in shard order.

A run is a list of passes over the same shard tasks, each mapped by the engine
(``engine.map(function, tasks)``), so every pass runs the same way on every engine:

* ``dedup`` (``dedup: content``): each task returns ``(source_key, sha256)`` of
  its inputs; the driver marks every input whose bytes equal those of a smaller
  key as a ``duplicate`` reject. Not an artefact: enters no fingerprint.
* ``sample`` (extractors with an :class:`~featurelib.registry.ArtifactDef`):
  each task returns small samples of some preprocessed train originals; the
  driver concatenates them in shard order and fits the artefact, written to
  ``OUT/artifacts/`` and hashed into the feature fingerprint. A resumed run
  reuses the artefacts already there and never refits; a parameter naming a
  saved artefact skips the fit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
import os
import posixpath
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cv2
import numpy as np

from featurelib import registry, transforms
from featurelib.compute import FATAL, content_sha256, preprocess
from featurelib.errors import RecordError, UserError
from featurelib.io import files as layout
from featurelib.io.outfs import Output, file_sha256_of, output_of
from featurelib.plan import ArtifactRef, ShardTask
from featurelib.shard import close_decoder, make_decoder, read_and_decode
from featurelib.sources import read_bytes
from featurelib.spec import RunSpec

MapPass = Callable[[Callable[[Any], Any], Sequence[ShardTask], str], list[Any]]


@functools.lru_cache(maxsize=4)
def _spec(spec_json: str) -> RunSpec:
    return RunSpec.from_json(spec_json)


# --- dedup ------------------------------------------------------------------------------------


def hash_shard(task: ShardTask) -> list[tuple[str, str]]:
    """Worker side of ``dedup: content``: ``(source_key, sha256)`` of each readable input."""
    spec = _spec(task.spec_json)
    out = []
    for record in task.records:
        if record.reject is None:
            with contextlib.suppress(RecordError):  # the main pass meets the same error and writes the reject
                out.append((record.source_key, content_sha256(read_bytes(record.uri, spec.input.storage_options))))
    return out


def apply_dedup(tasks: Sequence[ShardTask], hashes: Iterable[list[tuple[str, str]]]) -> list[ShardTask]:
    """Mark every input whose bytes equal those of a smaller key as a ``duplicate`` reject."""
    pairs = [pair for shard_pairs in hashes for pair in shard_pairs]  # any iterable, read once
    first: dict[str, str] = {}
    for key, digest in sorted(pairs):
        first.setdefault(digest, key)
    duplicate_of = {key: first[digest] for key, digest in pairs if first[digest] != key}
    out = []
    for task in tasks:
        records = tuple(
            dataclasses.replace(r, reject=("duplicate", f"same content as {duplicate_of[r.source_key]!r}"))
            if r.source_key in duplicate_of and r.reject is None else r
            for r in task.records
        )
        out.append(dataclasses.replace(task, records=records))
    return out


# --- artefacts: sample on the workers, fit on the driver -----------------------------------------


def sample_rank(seed: int, column: str, source_key: str) -> bytes:
    """Order in which a shard offers its sources to a column's sample (stable, engine-independent)."""
    return hashlib.sha256(f"{seed}:{column}:{source_key}".encode()).digest()


def sample_shard(task: ShardTask, columns: tuple[str, ...]) -> dict[str, list[np.ndarray]]:
    """Worker side of the ``sample`` pass: each column's samples from this shard's train originals.

    Column ``c`` takes, in :func:`sample_rank` order, up to
    ``ceil(sample_images / n_shards)`` sources of the train split that decode and
    preprocess; inputs that fail are skipped here (the main pass rejects them).
    """
    spec = _spec(task.spec_json)
    decoder = make_decoder(spec)
    try:
        return _sample(task, spec, decoder, columns)
    finally:
        close_decoder(decoder)


def _sample(task: ShardTask, spec: RunSpec, decoder, columns: tuple[str, ...]) -> dict[str, list[np.ndarray]]:
    features = {f.column: f for f in spec.features}
    timings: Counter = Counter()
    out: dict[str, list[np.ndarray]] = {}
    for column in columns:
        feature = features[column]
        definition = registry.get(feature.name)
        artifact = definition.artifact
        quota = math.ceil(artifact.sample_images(feature.params) / task.n_shards)
        samples: list[np.ndarray] = []
        for record in sorted(task.records, key=lambda r: sample_rank(spec.seed, column, r.source_key)):
            if len(samples) >= quota:
                break
            if record.reject is not None or (record.split is not None and record.split != "train"):
                continue
            outcome = read_and_decode(record, spec, decoder, timings)
            if not isinstance(outcome, tuple) or outcome[2] != "train":
                continue
            try:
                image = preprocess(spec, outcome[1].pixels)
                if definition.view == "gray":
                    image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
                rng = transforms.record_rng(spec.seed, f"{column}:{record.source_key}")
                samples.append(np.asarray(artifact.sample(feature.params, image, rng)))
            except FATAL:
                raise
            except Exception:  # noqa: S112 - an image the sampler cannot take is not sampled
                continue
        out[column] = samples
    return out


def saved_artifact_path(spec: RunSpec, column: str) -> str | None:
    """The saved artefact file a feature's parameters name, if any."""
    feature = next(f for f in spec.features if f.column == column)
    artifact = registry.get(feature.name).artifact
    return feature.params.get(artifact.param) if artifact.param else None


def check_saved_artifacts(spec: RunSpec) -> None:
    """Fail fast (before any image is read) when a named saved artefact is not a readable file.

    Raises
    ------
    UserError
    """
    for feature in spec.fitted_features():
        path = saved_artifact_path(spec, feature.column)
        if not path:
            continue
        if not os.path.isfile(path):
            raise UserError(f"feature {feature.column!r}: saved artefact {path!r} does not exist or is not a file")
        check = registry.get(feature.name).artifact.check_saved
        if check is not None:
            with open(path, "rb") as handle:
                data = handle.read()
            try:
                check(feature.params, data)
            except ValueError as exc:
                raise UserError(f"feature {feature.column!r}: saved artefact {path!r} cannot be used: {exc}") from None


def _store(out: Output, relpath: str, data: bytes) -> str:
    out.makedirs(posixpath.dirname(relpath))
    out.write_bytes(relpath, data)
    return hashlib.sha256(data).hexdigest()


def prepare_artifacts(spec: RunSpec, tasks: Sequence[ShardTask], map_pass: MapPass, *,
                      reuse: bool) -> tuple[ArtifactRef, ...]:
    """Every artefact the spec's extractors load: reused, copied from a saved file, or fitted.

    Parameters
    ----------
    spec : RunSpec
        With absolute paths.
    tasks : sequence of ShardTask
    map_pass : callable
        ``map_pass(function, tasks, pass_name) -> results in task order`` (the engine).
    reuse : bool
        Resume: an artefact already in ``OUT/artifacts/`` is used as it is.

    Returns
    -------
    tuple of ArtifactRef, in spec order.

    Raises
    ------
    UserError
        If an artefact cannot be fitted from the train split (too few usable images).
    """
    out = output_of(spec)
    refs: dict[str, ArtifactRef] = {}
    to_fit = []
    for feature in spec.fitted_features():
        artifact = registry.get(feature.name).artifact
        relpath = f"{layout.ARTIFACTS}/{artifact.filename(feature.column)}"
        saved = saved_artifact_path(spec, feature.column)
        if reuse and out.exists(relpath):
            digest = file_sha256_of(out, relpath)
            if saved and layout.file_sha256(saved) != digest:
                raise UserError(f"feature {feature.column!r}: the saved artefact {saved!r} differs from the one "
                                f"this output was written with ({relpath}); --resume cannot mix them: run "
                                f"without --resume to rewrite the output, or choose another --output")
            refs[feature.column] = ArtifactRef(feature.column, artifact.what, relpath, digest)
        elif saved:
            with open(saved, "rb") as handle:
                digest = _store(out, relpath, handle.read())  # artefacts are small (a codebook)
            refs[feature.column] = ArtifactRef(feature.column, artifact.what, relpath, digest)
        else:
            to_fit.append(feature)
    if to_fit:
        columns = tuple(f.column for f in to_fit)
        results = map_pass(functools.partial(sample_shard, columns=columns), tasks, "sample")
        for feature in to_fit:
            definition = registry.get(feature.name)
            samples = [s for shard_samples in results for s in shard_samples[feature.column]]
            try:
                data = definition.artifact.fit(feature.params, samples, spec.seed)
            except ValueError as exc:
                raise UserError(f"feature {feature.column!r}: cannot fit its {definition.artifact.what} from "
                                f"{len(samples)} sampled train image(s): {exc}") from None
            relpath = f"{layout.ARTIFACTS}/{definition.artifact.filename(feature.column)}"
            refs[feature.column] = ArtifactRef(feature.column, definition.artifact.what, relpath,
                                               _store(out, relpath, data))
    return tuple(refs[f.column] for f in spec.fitted_features())

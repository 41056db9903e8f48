"""The run spec: parsed once, validated before any image is read, fingerprinted.

A :class:`RunSpec` is frozen and travels to workers as JSON (never pickle).
Every key of the YAML document is checked: an unknown key, an unknown
extractor, a bad parameter, a duplicate column or an image size an extractor
cannot take raises :class:`~featurelib.errors.SpecError` with one clear message.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import yaml

from featurelib import registry, transforms
from featurelib.contract import DEFAULT_MAX_PIXELS, RESERVED_COLUMNS, SPLITS
from featurelib.errors import SpecError

SPEC_VERSION = 1
RESIZE_MODES = ("stretch", "aspect_crop", "pad")
INTERPOLATIONS = ("area", "linear", "cubic")
OUTPUT_FORMATS = ("parquet", "hdf5")
#: ``output.pixels_compression``: filter of the HDF5 ``images`` dataset (docs/PIXELS.md has the figures).
PIXELS_COMPRESSIONS = ("none", "gzip")


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: the input of every fingerprint."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_json(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


# --- small validation helpers (messages name the key path) -----------------


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{where} must be a mapping, got {type(value).__name__}")
    return dict(value)


def _no_unknown(section: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise SpecError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")


def _int(value: Any, where: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise SpecError(f"{where} must be >= {minimum}, got {value}")
    return value


def _number(value: Any, where: str, *, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise SpecError(f"{where} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def _choice(value: Any, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise SpecError(f"{where} must be one of {list(choices)}, got {value!r}")
    return value


# --- sections ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """Where the inputs are: a folder (label = first folder) or a CSV/Parquet manifest."""

    path: str | None = None
    storage_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Any) -> InputSpec:
        section = _mapping(raw, "input")
        _no_unknown(section, ("path", "storage_options"), "input")
        path = section.get("path")
        if path is not None and (not isinstance(path, str) or not path):
            raise SpecError(f"input.path must be a non-empty string, got {path!r}")
        return cls(path=path, storage_options=_mapping(section.get("storage_options"), "input.storage_options"))


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """The size every image is brought to, and how."""

    size: tuple[int, int] = (224, 224)
    resize: str = "stretch"
    interpolation: str = "area"

    @classmethod
    def parse(cls, raw: Any) -> ImageSpec:
        section = _mapping(raw, "image")
        _no_unknown(section, ("size", "resize", "interpolation"), "image")
        size = section.get("size", list(cls.size))
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise SpecError(f"image.size must be [height, width], got {size!r}")
        height, width = (_int(v, "image.size", minimum=1) for v in size)
        if height * width > 16384 * 16384:
            raise SpecError(f"image.size {list(size)} is too large")
        return cls(
            size=(height, width),
            resize=_choice(section.get("resize", cls.resize), RESIZE_MODES, "image.resize"),
            interpolation=_choice(section.get("interpolation", cls.interpolation), INTERPOLATIONS, "image.interpolation"),
        )


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """Decode policy knobs (the policy itself lives in :mod:`featurelib.decode`)."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    background: tuple[int, int, int] = (255, 255, 255)
    isolation: str = "none"
    timeout_s: float = 30.0
    reduce: bool = True  # decode JPEGs at a reduced DCT scale when image.size allows (decode policy point 11)

    @classmethod
    def parse(cls, raw: Any) -> DecodeSpec:
        section = _mapping(raw, "decode")
        _no_unknown(section, ("max_pixels", "background", "isolation", "timeout_s", "reduce"), "decode")
        background = section.get("background", list(cls.background))
        if (
            not isinstance(background, (list, tuple))
            or len(background) != 3
            or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 255 for v in background)
        ):
            raise SpecError(f"decode.background must be three integers in [0, 255], got {background!r}")
        reduce = section.get("reduce", cls.reduce)
        if not isinstance(reduce, bool):
            raise SpecError(f"decode.reduce must be true or false, got {reduce!r}")
        return cls(
            max_pixels=_int(section.get("max_pixels", cls.max_pixels), "decode.max_pixels", minimum=1),
            background=tuple(background),
            isolation=_choice(section.get("isolation", cls.isolation), ("none", "subprocess"), "decode.isolation"),
            timeout_s=_number(section.get("timeout_s", cls.timeout_s), "decode.timeout_s", low=0.1, high=86400),
            reduce=reduce,
        )


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    """Variants per source image; `ops` are validated by :mod:`featurelib.transforms`."""

    copies: int = 0
    splits: tuple[str, ...] = ("train",)
    ops: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def parse(cls, raw: Any, problems: Problems | None = None) -> AugmentSpec:
        """Parse ``augment``; each bad op goes to `problems` (else the first raises)."""
        section = _mapping(raw, "augment")
        _no_unknown(section, ("copies", "splits", "ops"), "augment")
        copies = _int(section.get("copies", 0), "augment.copies", minimum=0)
        if copies > 999:
            raise SpecError(f"augment.copies must be <= 999, got {copies}")
        splits = section.get("splits", list(cls.splits))
        if not isinstance(splits, (list, tuple)) or not all(s in SPLITS for s in splits):
            raise SpecError(f"augment.splits must be a list drawn from {list(SPLITS)}, got {splits!r}")
        raw_ops = section.get("ops", [])
        if not isinstance(raw_ops, (list, tuple)):
            raise SpecError(f"augment.ops must be a list, got {raw_ops!r}")
        ops, bad = [], []
        for index, op in enumerate(raw_ops):
            try:
                ops.append(transforms.normalize_op(op))
            except ValueError as exc:
                bad.append(f"augment.ops[{index}]: {exc}")
        if bad and problems is not None:
            for message in bad[:-1]:
                problems.add(message)
        if bad:
            raise SpecError(bad[-1])
        if copies and not ops:
            raise SpecError("augment.copies > 0 needs at least one op in augment.ops")
        return cls(copies=copies, splits=tuple(splits), ops=tuple(ops))


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One output column: a registry extractor with normalised parameters."""

    name: str
    params: Mapping[str, Any]
    column: str
    version: int

    @classmethod
    def parse(cls, raw: Any, index: int, problems: Problems | None = None) -> FeatureSpec:
        """Parse ``features[index]``; parameter problems go to `problems` (else the first raises)."""
        where = f"features[{index}]"
        section = _mapping(raw, where)
        _no_unknown(section, ("name", "params", "column"), where)
        if "name" not in section:
            raise SpecError(f"{where} needs a 'name'; known extractors: {registry.names()}")
        definition = registry.get(section["name"])
        found: list[str] = []
        params = definition.normalize_params(_mapping(section.get("params"), f"{where}.params"), found.append)
        if found:
            if problems is None:
                raise SpecError(found[0])
            for message in found:
                problems.add(message)
        column = section.get("column", definition.name)
        if not isinstance(column, str) or not column.isidentifier():
            raise SpecError(f"{where}.column must be an identifier-like name, got {column!r}")
        return cls(name=definition.name, params=params, column=column, version=definition.version)

    def identity(self) -> dict[str, Any]:
        """What makes this column's values comparable (part of the feature fingerprint).

        A parameter naming a saved artefact file is left out: the artefact enters
        the fingerprint by its content hash (:meth:`RunSpec.feature_fingerprint`).
        """
        params = registry.get(self.name).identity_params(self.params)
        return {"name": self.name, "version": self.version, "params": params, "column": self.column}


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """Fractions of the stable hash-based split."""

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    by: str = "key"

    @classmethod
    def parse(cls, raw: Any) -> SplitSpec:
        section = _mapping(raw, "split")
        _no_unknown(section, ("train", "val", "test", "by"), "split")
        fractions = {k: _number(section.get(k, getattr(cls, k)), f"split.{k}", low=0.0, high=1.0) for k in SPLITS}
        if not math.isclose(sum(fractions.values()), 1.0, abs_tol=1e-9):
            raise SpecError(f"split fractions must sum to 1, got {fractions}")
        return cls(**fractions, by=_choice(section.get("by", "key"), ("key", "content"), "split.by"))

    def fractions(self) -> dict[str, float]:
        """``{split name: fraction}`` in :data:`~featurelib.contract.SPLITS` order."""
        return {name: getattr(self, name) for name in SPLITS}


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """Where and how shards are written."""

    path: str | None = None
    formats: tuple[str, ...] = ("parquet", "hdf5")
    shards: int | None = None
    rows_per_shard: int | None = None
    #: ``output.target_shard_mb``: shards sized from a sample's Parquet bytes per row (featurelib.shard_sizing).
    target_shard_mb: float | None = None
    pixels: bool = False
    pixels_compression: str = "none"
    #: fsspec options of an object-store output (credentials, endpoint): never in a fingerprint or manifest.
    storage_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Any) -> OutputSpec:
        section = _mapping(raw, "output")
        _no_unknown(section, ("path", "formats", "shards", "rows_per_shard", "target_shard_mb", "pixels",
                              "pixels_compression", "storage_options"), "output")
        formats = section.get("formats", list(cls.formats))
        if (
            not isinstance(formats, (list, tuple))
            or not formats
            or any(f not in OUTPUT_FORMATS for f in formats)
            or len(set(formats)) != len(formats)
        ):
            raise SpecError(f"output.formats must be a non-empty list drawn from {list(OUTPUT_FORMATS)}, got {formats!r}")
        shards = section.get("shards")
        rows = section.get("rows_per_shard")
        target = section.get("target_shard_mb")
        given = [f"output.{k}" for k, v in (("shards", shards), ("rows_per_shard", rows), ("target_shard_mb", target))
                 if v is not None]
        if len(given) > 1:
            raise SpecError(f"{' and '.join(given)} are exclusive; give one")
        if target is not None:
            target = _number(target, "output.target_shard_mb", low=0.0, high=1e6)
            if target <= 0:
                raise SpecError(f"output.target_shard_mb must be > 0, got {target:g}")
        if shards is not None:
            _int(shards, "output.shards", minimum=1)
            if shards > 99999:
                raise SpecError(f"output.shards must be <= 99999, got {shards}")
        if rows is not None:
            _int(rows, "output.rows_per_shard", minimum=1)
        if shards is None and rows is None and target is None:
            shards = 8
        pixels = section.get("pixels", False)
        if not isinstance(pixels, bool):
            raise SpecError(f"output.pixels must be true or false, got {pixels!r}")
        compression = _choice(section.get("pixels_compression", cls.pixels_compression), PIXELS_COMPRESSIONS,
                              "output.pixels_compression")
        if compression != "none" and not (pixels and "hdf5" in formats):
            raise SpecError(f"output.pixels_compression {compression!r} applies to the HDF5 images of "
                            "output.pixels: it needs output.pixels: true and hdf5 in output.formats")
        path = section.get("path")
        if path is not None and (not isinstance(path, str) or not path):
            raise SpecError(f"output.path must be a non-empty string, got {path!r}")
        return cls(path=path, formats=tuple(formats), shards=shards, rows_per_shard=rows, target_shard_mb=target,
                   pixels=pixels, pixels_compression=compression,
                   storage_options=_mapping(section.get("storage_options"), "output.storage_options"))

    def layout(self) -> dict[str, Any]:
        """The layout part of the run fingerprint (not the path: an output may move).

        ``pixels_compression`` only when not ``none``, ``target_shard_mb`` only when set:
        outputs written before they existed keep their fingerprint. The shard count a
        target gives is not in it: it follows from the target and the inputs, as the count
        of ``rows_per_shard`` does (and is in every shard's file name).
        """
        layout = {"formats": list(self.formats), "shards": self.shards,
                  "rows_per_shard": self.rows_per_shard, "pixels": self.pixels}
        if self.target_shard_mb is not None:
            layout["target_shard_mb"] = self.target_shard_mb
        if self.pixels_compression != "none":
            layout["pixels_compression"] = self.pixels_compression
        return layout

    def shard_count(self, listed: int) -> int:
        """``shards``, or ``ceil(listed / rows_per_shard)`` (at least 1).

        Raises
        ------
        ValueError
            With ``target_shard_mb``: the count needs the sample pass of
            :func:`featurelib.shard_sizing.shard_count` (which :func:`featurelib.plan.plan` runs).
        """
        if self.shards is not None:
            return self.shards
        if self.rows_per_shard is None:
            raise ValueError("output.target_shard_mb: the shard count comes from featurelib.shard_sizing")
        return max(1, math.ceil(listed / self.rows_per_shard))


@dataclasses.dataclass(frozen=True)
class FailuresSpec:
    """Error budget: the run fails by policy above it."""

    max_reject_fraction: float = 0.01

    @classmethod
    def parse(cls, raw: Any) -> FailuresSpec:
        section = _mapping(raw, "failures")
        _no_unknown(section, ("max_reject_fraction",), "failures")
        return cls(_number(section.get("max_reject_fraction", cls.max_reject_fraction),
                           "failures.max_reject_fraction", low=0.0, high=1.0))


@dataclasses.dataclass(frozen=True)
class ExecutionSpec:
    """How workers run, never what they compute: enters no fingerprint and no shard.

    ``threads_per_worker`` native threads (OpenCV, BLAS, OpenMP, TensorFlow) in
    each worker process; ``batch_size`` images per extractor call (default: the
    smallest preferred batch size of the spec's extractors).
    """

    threads_per_worker: int = 1
    batch_size: int | None = None

    @classmethod
    def parse(cls, raw: Any) -> ExecutionSpec:
        section = _mapping(raw, "execution")
        _no_unknown(section, ("threads_per_worker", "batch_size"), "execution")
        threads = _int(section.get("threads_per_worker", 1), "execution.threads_per_worker", minimum=1)
        batch = section.get("batch_size")
        if batch is not None:
            _int(batch, "execution.batch_size", minimum=1)
        return cls(threads_per_worker=threads, batch_size=batch)


class Problems:
    """Collects every problem found in a spec, so one error can list them all."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        if message not in self.messages:
            self.messages.append(message)

    def attempt(self, parse: Any, default: Any = None) -> Any:
        """``parse()``, or `default` after recording its SpecError."""
        try:
            return parse()
        except SpecError as exc:
            self.add(str(exc))
            return default

    def raise_if_any(self) -> None:
        """Raise one SpecError: the message itself for one problem, a numbered list for several."""
        if len(self.messages) == 1:
            raise SpecError(self.messages[0])
        if self.messages:
            listed = "\n".join(f"  {i}. {m}" for i, m in enumerate(self.messages, start=1))
            raise SpecError(f"{len(self.messages)} problems in the spec:\n{listed}")


_TOP_LEVEL = ("spec_version", "input", "labels", "seed", "image", "decode", "augment",
              "features", "split", "dedup", "output", "failures", "execution")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """A validated, immutable run spec (see docs/CONTRACT.md for every key)."""

    features: tuple[FeatureSpec, ...]
    input: InputSpec = InputSpec()
    labels: tuple[str, ...] | None = None
    seed: int = 0
    image: ImageSpec = ImageSpec()
    decode: DecodeSpec = DecodeSpec()
    augment: AugmentSpec = AugmentSpec()
    split: SplitSpec = SplitSpec()
    dedup: str = "none"
    output: OutputSpec = OutputSpec()
    failures: FailuresSpec = FailuresSpec()
    execution: ExecutionSpec = ExecutionSpec()
    spec_version: int = SPEC_VERSION

    # -- construction --------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: Any) -> RunSpec:
        """Parse and validate a spec document.

        Raises
        ------
        SpecError
            Listing every problem found (each with its key path), before any image is read.
        """
        doc = _mapping(raw, "the spec")
        problems = Problems()
        problems.attempt(lambda: _no_unknown(doc, _TOP_LEVEL, "the spec"))
        version = doc.get("spec_version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise SpecError(f"spec_version {version!r} is not supported; this featurelib reads {SPEC_VERSION}")
        raw_features = doc.get("features")
        features: list[FeatureSpec] = []
        if not isinstance(raw_features, (list, tuple)) or not raw_features:
            problems.add(f"features must be a non-empty list; known extractors: {registry.names()}")
        else:
            clean: list[FeatureSpec] = []  # parsed without a problem: their output length can be computed
            for i, f in enumerate(raw_features):
                before = len(problems.messages)
                feature = problems.attempt(lambda f=f, i=i: FeatureSpec.parse(f, i, problems))
                if feature is not None:
                    features.append(feature)
                    if len(problems.messages) == before:
                        clean.append(feature)
        columns = [f.column for f in features]
        duplicates = sorted({c for c in columns if columns.count(c) > 1})
        if duplicates:
            problems.add(f"duplicate feature column(s) {duplicates}; give each a unique 'column'")
        clashing = sorted(set(columns) & RESERVED_COLUMNS)
        if clashing:
            problems.add(f"feature column(s) {clashing} clash with reserved column names")
        labels = doc.get("labels")
        if labels is not None:
            if (not isinstance(labels, (list, tuple)) or not labels
                    or not all(isinstance(x, str) and x for x in labels) or len(set(labels)) != len(labels)):
                problems.add(f"labels must be a non-empty list of unique non-empty strings, got {labels!r}")
                labels = None
            else:
                labels = tuple(labels)
        parts = {
            "input": problems.attempt(lambda: InputSpec.parse(doc.get("input")), InputSpec()),
            "seed": problems.attempt(lambda: _int(doc.get("seed", 0), "seed", minimum=0), 0),
            "image": problems.attempt(lambda: ImageSpec.parse(doc.get("image")), ImageSpec()),
            "decode": problems.attempt(lambda: DecodeSpec.parse(doc.get("decode")), DecodeSpec()),
            "augment": problems.attempt(lambda: AugmentSpec.parse(doc.get("augment"), problems), AugmentSpec()),
            "split": problems.attempt(lambda: SplitSpec.parse(doc.get("split")), SplitSpec()),
            "dedup": problems.attempt(lambda: _choice(doc.get("dedup", "none"), ("none", "content"), "dedup"), "none"),
            "output": problems.attempt(lambda: OutputSpec.parse(doc.get("output")), OutputSpec()),
            "failures": problems.attempt(lambda: FailuresSpec.parse(doc.get("failures")), FailuresSpec()),
            "execution": problems.attempt(lambda: ExecutionSpec.parse(doc.get("execution")), ExecutionSpec()),
        }
        if not any(m.startswith("image.") for m in problems.messages):  # every extractor must take the size
            for feature in (clean if isinstance(raw_features, (list, tuple)) and raw_features else []):
                problems.attempt(lambda f=feature: registry.get(f.name).output_dim(f.params, parts["image"].size))
        problems.raise_if_any()
        return cls(features=tuple(features), labels=labels, **parts)

    @classmethod
    def from_yaml_text(cls, text: str) -> RunSpec:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"the spec is not valid YAML: {exc}") from None
        return cls.from_dict(doc)

    @classmethod
    def from_yaml(cls, path: str) -> RunSpec:
        """Read and validate a YAML spec file (a missing file is a SpecError)."""
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise SpecError(f"cannot read spec {path!r}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise SpecError(f"cannot read spec {path!r}: not UTF-8 text (byte {exc.start})") from None
        return cls.from_yaml_text(text)

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        return cls.from_dict(json.loads(text))

    def with_overrides(self, *, input: str | None = None, output: str | None = None,
                       shards: int | None = None, threads_per_worker: int | None = None,
                       batch_size: int | None = None) -> RunSpec:
        """Apply the command line's ``--input``, ``--output``, ``--shards``, ``--threads-per-worker``
        and ``--batch-size``."""
        spec = self
        if threads_per_worker is not None or batch_size is not None:
            execution = ExecutionSpec.parse({
                "threads_per_worker": (threads_per_worker if threads_per_worker is not None
                                       else self.execution.threads_per_worker),
                "batch_size": batch_size if batch_size is not None else self.execution.batch_size})
            spec = dataclasses.replace(spec, execution=execution)
        if input is not None:
            spec = dataclasses.replace(spec, input=dataclasses.replace(spec.input, path=input))
        if output is not None:
            spec = dataclasses.replace(spec, output=dataclasses.replace(spec.output, path=output))
        if shards is not None:
            _int(shards, "--shards", minimum=1)
            spec = dataclasses.replace(spec, output=dataclasses.replace(spec.output, shards=shards, rows_per_shard=None,
                                                                                   target_shard_mb=None))
        return spec

    def require_paths(self) -> None:
        """Raise SpecError unless both the input and the output path are known."""
        if not self.input.path:
            raise SpecError("no input: set input.path in the spec or pass --input")
        if not self.output.path:
            raise SpecError("no output: set output.path in the spec or pass --output")

    # -- serialisation -------------------------------------------------------

    def to_dict(self, *, secrets: bool = True) -> dict[str, Any]:
        """The full canonical document; ``secrets=False`` drops both ``storage_options``."""
        doc = {
            "spec_version": self.spec_version,
            "input": {"path": self.input.path,
                      "storage_options": dict(self.input.storage_options) if secrets else {}},
            "labels": list(self.labels) if self.labels is not None else None,
            "seed": self.seed,
            "image": {"size": list(self.image.size), "resize": self.image.resize,
                      "interpolation": self.image.interpolation},
            "decode": {"max_pixels": self.decode.max_pixels, "background": list(self.decode.background),
                       "isolation": self.decode.isolation, "timeout_s": self.decode.timeout_s,
                       "reduce": self.decode.reduce},
            "augment": {"copies": self.augment.copies, "splits": list(self.augment.splits),
                        "ops": [dict(op) for op in self.augment.ops]},
            "features": [{"name": f.name, "params": dict(f.params), "column": f.column} for f in self.features],
            "split": {"train": self.split.train, "val": self.split.val, "test": self.split.test,
                      "by": self.split.by},
            "dedup": self.dedup,
            "output": {"path": self.output.path, "formats": list(self.output.formats),
                       "pixels": self.output.pixels, "pixels_compression": self.output.pixels_compression,
                       **({"shards": self.output.shards} if self.output.shards is not None
                          else {"target_shard_mb": self.output.target_shard_mb}
                          if self.output.target_shard_mb is not None
                          else {"rows_per_shard": self.output.rows_per_shard}),
                       # only when set: documents of specs without it stay as they were
                       **({"storage_options": dict(self.output.storage_options)}
                          if secrets and self.output.storage_options else {})},
            "failures": {"max_reject_fraction": self.failures.max_reject_fraction},
            "execution": {"threads_per_worker": self.execution.threads_per_worker,
                          "batch_size": self.execution.batch_size},
        }
        if doc["labels"] is None:
            del doc["labels"]
        return doc

    def to_json(self, *, secrets: bool = True) -> str:
        return canonical_json(self.to_dict(secrets=secrets))

    # -- fingerprints ----------------------------------------------------------

    def feature_fingerprint(self, artifacts: Mapping[str, str] | None = None) -> str:
        """What makes two feature vectors comparable: decode policy, image, features.

        Not paths, not the output layout, not the seed (originals do not depend on
        it), not execution settings. Built in two steps: without `artifacts`, the
        spec's part (known before any pass); with ``{column: sha256}`` of the
        artefacts fitted by pre-passes, the final fingerprint (equal to the spec's
        part when there are none).
        """
        from featurelib.decode import DECODE_POLICY_VERSION

        parts = {
            "decode_policy": DECODE_POLICY_VERSION,
            "decode_reduce": self.decode.reduce,
            "background": list(self.decode.background),
            "image": {"size": list(self.image.size), "resize": self.image.resize,
                      "interpolation": self.image.interpolation},
            "features": [f.identity() for f in self.features],
        }
        return _with_artifacts(sha256_json(parts), artifacts)

    def run_fingerprint(self, artifacts: Mapping[str, str] | None = None) -> str:
        """``feature_fingerprint`` plus input, labels, seed, split, augment, dedup, layout (two steps too)."""
        parts = {
            "features": self.feature_fingerprint(),
            "input": self.input.path,
            "labels": list(self.labels) if self.labels is not None else None,
            "seed": self.seed,
            "split": dataclasses.asdict(self.split),
            "augment": {"copies": self.augment.copies, "splits": list(self.augment.splits),
                        "ops": [dict(op) for op in self.augment.ops], "version": transforms.AUGMENT_VERSION},
            "dedup": self.dedup,
            "max_pixels": self.decode.max_pixels,
            "output": self.output.layout(),
        }
        return _with_artifacts(sha256_json(parts), artifacts)

    def fitted_features(self) -> list[FeatureSpec]:
        """Features whose extractor fits an artefact in a pre-pass (or reads a saved one)."""
        return [f for f in self.features if registry.get(f.name).artifact is not None]

    # -- derived -----------------------------------------------------------------

    def feature_dims(self) -> list[tuple[FeatureSpec, int]]:
        """Each feature with its declared output length at ``image.size``."""
        return [(f, registry.get(f.name).output_dim(f.params, self.image.size)) for f in self.features]


def _with_artifacts(spec_part: str, artifacts: Mapping[str, str] | None) -> str:
    if not artifacts:
        return spec_part
    return sha256_json({"spec": spec_part, "artifacts": dict(sorted(artifacts.items()))})

"""The output schema, derived from the spec and the extractor registry alone.

Parquet: identity columns, then one ``fixed_size_list<float32>[D]`` per feature
column, then ``pixels`` (``fixed_size_list<uint8>[H*W*3]``) when requested.
HDF5: all feature columns side by side in one ``features`` (N, D) matrix, with
a ``columns`` attribute giving each column's ``[start, stop)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from featurelib.contract import FORMAT_VERSION, IDENTITY_FIELDS, PIXELS_COLUMN
from featurelib.spec import RunSpec, canonical_json


@dataclasses.dataclass(frozen=True)
class Column:
    """One feature column: its extractor identity and declared length."""

    name: str
    extractor: str
    version: int
    params: dict[str, Any]
    dim: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "extractor": self.extractor, "version": self.version,
                "params": self.params, "dim": self.dim}


@dataclasses.dataclass(frozen=True)
class OutputSchema:
    """Everything a writer or reader needs to know about the columns of a run."""

    columns: tuple[Column, ...]
    image_size: tuple[int, int]
    pixels: bool
    spec_json: str
    feature_fingerprint: str
    run_fingerprint: str
    spec_run_fingerprint: str

    @classmethod
    def from_spec(cls, spec: RunSpec, artifacts: Mapping[str, str] | None = None) -> OutputSchema:
        """The schema of a run of `spec` whose pre-passes fitted `artifacts` ({column: sha256})."""
        # A saved artefact's path is where a file was, not what the column holds: left out
        # (its content hash is in the fingerprint), so the bytes do not depend on it.
        columns = tuple(
            Column(f.column, f.name, f.version, f.identity()["params"], dim) for f, dim in spec.feature_dims()
        )
        # The spec stamped into shards leaves out secrets, the output path (where the
        # file lies is not part of what it holds) and execution settings, so the same
        # run writes the same bytes into any output folder, however it was run.
        stamped = spec.to_dict(secrets=False)
        stamped["output"].pop("path", None)
        stamped.pop("execution", None)
        stamped["features"] = [{**entry, "params": f.identity()["params"]}
                               for entry, f in zip(stamped["features"], spec.features)]
        return cls(columns, tuple(spec.image.size), spec.output.pixels, canonical_json(stamped),
                   spec.feature_fingerprint(artifacts), spec.run_fingerprint(artifacts), spec.run_fingerprint())

    @property
    def total_dim(self) -> int:
        return sum(c.dim for c in self.columns)

    @property
    def pixel_count(self) -> int:
        return self.image_size[0] * self.image_size[1] * 3

    def column_ranges(self) -> list[dict[str, Any]]:
        """``[{name, start, stop}]``: where each column sits in the HDF5 ``features`` matrix."""
        ranges, start = [], 0
        for column in self.columns:
            ranges.append({"name": column.name, "start": start, "stop": start + column.dim})
            start += column.dim
        return ranges

    def metadata(self) -> dict[bytes, bytes]:
        """Parquet schema metadata (docs/CONTRACT.md): spec, fingerprints, columns."""
        return {
            b"featurelib.spec": self.spec_json.encode(),
            b"featurelib.feature_fingerprint": self.feature_fingerprint.encode(),
            b"featurelib.run_fingerprint": self.run_fingerprint.encode(),
            b"featurelib.spec_run_fingerprint": self.spec_run_fingerprint.encode(),
            b"featurelib.columns": canonical_json([c.to_json() for c in self.columns]).encode(),
            b"featurelib.format_version": str(FORMAT_VERSION).encode(),
        }

    def arrow_schema(self) -> pa.Schema:
        fields = list(IDENTITY_FIELDS)
        fields += [pa.field(c.name, pa.list_(pa.float32(), c.dim), nullable=False) for c in self.columns]
        if self.pixels:
            fields.append(pa.field(PIXELS_COLUMN, pa.list_(pa.uint8(), self.pixel_count), nullable=False))
        return pa.schema(fields, metadata=self.metadata())

    def describe(self) -> list[dict[str, str]]:
        """``[{name, type}]`` of the Parquet schema, for the manifest."""
        return [{"name": f.name, "type": str(f.type)} for f in self.arrow_schema()]

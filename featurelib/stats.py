"""Dataset statistics: engine-neutral accumulators (create / add / merge / extract), float64.

Each shard task folds what it writes into one :class:`ShardStats` during the
main pass (no extra read of the data) and stores it next to its shard
(``OUT/stats/part-*.json``); the driver merges the accumulators in shard order
and writes ``OUT/stats.json``. Everything an accumulator holds is either an
exact integer or a float64 built by a fixed sequence of operations that does
not depend on the engine, the worker or the extractor batch size, so every
engine writes the same bytes, and a resumed run merges reused shards'
accumulators from disk.

What is counted (docs/CONTRACT.md, "stats.json"):

* ``inputs``: written sources: count; histograms of original height, width,
  aspect ratio (width / height) and format;
* ``labels`` / ``unlabelled``: written sources per split and label name;
* ``pixels``: per RGB channel mean and population std (0-255 scale) over the
  preprocessed originals (``aug_index`` 0) of the train split;
* ``features``: per column, element-wise count, mean, population std, min and
  max over the same rows.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import cv2
import numpy as np

from featurelib.contract import FORMAT_VERSION, SPLITS

#: Lower edges of the height and width bins; the last bin is "8192 and above".
SIZE_EDGES = (0, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
#: Lower edges of the aspect ratio (width / height) bins; the last is "2 and above".
ASPECT_EDGES = (0.0, 0.5, 0.75, 1.0, 4.0 / 3.0, 2.0)
#: Feature rows are folded into the moments in chunks of this many rows, so the
#: float64 results depend on the row order only (not on how rows were batched).
FOLD_ROWS = 64


def _bin(value: float, edges: tuple[float, ...]) -> int:
    """Index of the last lower edge <= `value`."""
    index = 0
    for i, edge in enumerate(edges):
        if value >= edge:
            index = i
    return index


@dataclasses.dataclass
class Moments:
    """Element-wise count, mean, sum of squared deviations, min and max of (n, D) rows.

    Batches merge with Chan et al.'s parallel update, in float64.
    """

    count: int = 0
    mean: np.ndarray | None = None  # (D,) float64
    m2: np.ndarray | None = None
    low: np.ndarray | None = None
    high: np.ndarray | None = None

    def add_rows(self, rows: np.ndarray) -> None:
        """Fold an (n, D) batch in."""
        if len(rows) == 0:
            return
        rows = np.asarray(rows, dtype=np.float64)
        mean = rows.mean(axis=0)
        batch = Moments(len(rows), mean, ((rows - mean) ** 2).sum(axis=0), rows.min(axis=0), rows.max(axis=0))
        self.merge(batch)

    def merge(self, other: Moments) -> None:
        if other.count == 0:
            return
        if self.count == 0:
            self.count, self.mean, self.m2 = other.count, other.mean.copy(), other.m2.copy()
            self.low, self.high = other.low.copy(), other.high.copy()
            return
        n = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / n)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        self.low = np.minimum(self.low, other.low)
        self.high = np.maximum(self.high, other.high)
        self.count = n

    def to_json(self) -> dict[str, Any]:
        if self.count == 0:
            return {"count": 0}
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist(),
                "min": self.low.tolist(), "max": self.high.tolist()}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Moments:
        if not doc.get("count"):
            return cls()
        arrays = [np.asarray(doc[k], dtype=np.float64) for k in ("mean", "m2", "min", "max")]
        return cls(int(doc["count"]), *arrays)

    def extract(self) -> dict[str, Any]:
        if self.count == 0:
            return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
        return {"count": self.count, "mean": self.mean.tolist(), "std": np.sqrt(self.m2 / self.count).tolist(),
                "min": self.low.tolist(), "max": self.high.tolist()}


class ShardStats:
    """The accumulator of one shard (or, merged, of a run).

    Parameters
    ----------
    columns : iterable of str
        Feature column names, in spec order.
    """

    def __init__(self, columns: Iterable[str]) -> None:
        self.columns = list(columns)
        self.sources = 0
        self.height = [0] * len(SIZE_EDGES)
        self.width = [0] * len(SIZE_EDGES)
        self.aspect = [0] * len(ASPECT_EDGES)
        self.formats: dict[str, int] = {}
        self.labels: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
        self.unlabelled: dict[str, int] = {s: 0 for s in SPLITS}
        self.pixel_images = 0
        self.pixel_values = 0  # per channel
        self.pixel_sum = [0, 0, 0]  # exact integers
        self.pixel_sumsq = [0, 0, 0]
        self.features = {c: Moments() for c in self.columns}
        self._pending: dict[str, list[np.ndarray]] = {c: [] for c in self.columns}

    # -- add ------------------------------------------------------------------------

    def add_source(self, *, label_name: str | None, split: str, orig_height: int, orig_width: int,
                   orig_format: str) -> None:
        """One written source (its original row)."""
        self.sources += 1
        self.height[_bin(orig_height, SIZE_EDGES)] += 1
        self.width[_bin(orig_width, SIZE_EDGES)] += 1
        self.aspect[_bin(orig_width / orig_height if orig_height else 0.0, ASPECT_EDGES)] += 1
        self.formats[orig_format] = self.formats.get(orig_format, 0) + 1
        if label_name is None:
            self.unlabelled[split] += 1
        else:
            per_split = self.labels[split]
            per_split[label_name] = per_split.get(label_name, 0) + 1

    def add_pixels(self, image: np.ndarray) -> None:
        """A preprocessed (H, W, 3) uint8 original of the train split.

        Per-channel sums come from 256-bin histograms (``cv2.calcHist``): exact
        integers, and about 20x faster than summing the pixels with numpy.
        """
        values = np.arange(256, dtype=np.int64)
        self.pixel_images += 1
        self.pixel_values += image.shape[0] * image.shape[1]
        for c in range(3):
            counts = cv2.calcHist([image], [c], None, [256], [0, 256]).reshape(-1).astype(np.int64)
            self.pixel_sum[c] += int(counts @ values)
            self.pixel_sumsq[c] += int(counts @ (values * values))

    def add_features(self, column: str, vector: np.ndarray) -> None:
        """The (D,) features of a train original, folded in chunks of :data:`FOLD_ROWS` rows."""
        pending = self._pending[column]
        pending.append(vector)
        if len(pending) >= FOLD_ROWS:
            self.features[column].add_rows(np.stack(pending))
            pending.clear()

    def flush(self) -> None:
        """Fold the rows still pending (call before serialising or merging)."""
        for column, pending in self._pending.items():
            if pending:
                self.features[column].add_rows(np.stack(pending))
                pending.clear()

    # -- merge ----------------------------------------------------------------------

    def merge(self, other: ShardStats) -> None:
        """Fold `other` into this accumulator (callers merge in shard order)."""
        self.flush()
        other.flush()
        self.sources += other.sources
        for mine, theirs in ((self.height, other.height), (self.width, other.width), (self.aspect, other.aspect)):
            for i, n in enumerate(theirs):
                mine[i] += n
        for name, n in other.formats.items():
            self.formats[name] = self.formats.get(name, 0) + n
        for split in SPLITS:
            for name, n in other.labels[split].items():
                self.labels[split][name] = self.labels[split].get(name, 0) + n
            self.unlabelled[split] += other.unlabelled[split]
        self.pixel_images += other.pixel_images
        self.pixel_values += other.pixel_values
        for c in range(3):
            self.pixel_sum[c] += other.pixel_sum[c]
            self.pixel_sumsq[c] += other.pixel_sumsq[c]
        for column in self.columns:
            self.features[column].merge(other.features[column])

    # -- serialise --------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        self.flush()
        return {
            "format_version": FORMAT_VERSION, "columns": self.columns, "sources": self.sources,
            "height": self.height, "width": self.width, "aspect": self.aspect,
            "formats": dict(sorted(self.formats.items())),
            "labels": {s: dict(sorted(v.items())) for s, v in self.labels.items()},
            "unlabelled": self.unlabelled,
            "pixels": {"images": self.pixel_images, "values": self.pixel_values,
                       "sum": self.pixel_sum, "sumsq": self.pixel_sumsq},
            "features": {c: self.features[c].to_json() for c in self.columns},
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ShardStats:
        stats = cls(doc["columns"])
        stats.sources = int(doc["sources"])
        stats.height, stats.width, stats.aspect = list(doc["height"]), list(doc["width"]), list(doc["aspect"])
        stats.formats = dict(doc["formats"])
        stats.labels = {s: dict(doc["labels"].get(s, {})) for s in SPLITS}
        stats.unlabelled = {s: int(doc["unlabelled"].get(s, 0)) for s in SPLITS}
        pixels = doc["pixels"]
        stats.pixel_images, stats.pixel_values = int(pixels["images"]), int(pixels["values"])
        stats.pixel_sum, stats.pixel_sumsq = list(pixels["sum"]), list(pixels["sumsq"])
        stats.features = {c: Moments.from_json(doc["features"][c]) for c in stats.columns}
        return stats

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")) + "\n"

    # -- extract ---------------------------------------------------------------------

    def extract(self, feature_fingerprint: str) -> dict[str, Any]:
        """The ``stats.json`` document."""
        self.flush()
        n, v = self.pixel_images, self.pixel_values
        if v:
            mean = [s / v for s in self.pixel_sum]
            # exact integer arithmetic for the variance: no cancellation
            std = [math.sqrt((v * q - s * s) / (v * v)) for s, q in zip(self.pixel_sum, self.pixel_sumsq)]
        else:
            mean = std = None
        return {
            "format_version": FORMAT_VERSION,
            "feature_fingerprint": feature_fingerprint,
            "inputs": {
                "count": self.sources,
                "height": {"edges": list(SIZE_EDGES), "counts": self.height},
                "width": {"edges": list(SIZE_EDGES), "counts": self.width},
                "aspect": {"edges": list(ASPECT_EDGES), "counts": self.aspect},
                "format": dict(sorted(self.formats.items())),
            },
            "labels": {s: dict(sorted(self.labels[s].items())) for s in SPLITS},
            "unlabelled": dict(self.unlabelled),
            "pixels": {"count": n, "values_per_channel": v, "mean": mean, "std": std},
            "features": {c: self.features[c].extract() for c in self.columns},
        }


def merge_in_order(parts: Iterable[ShardStats], columns: Iterable[str]) -> ShardStats:
    """Merge shard accumulators in the order given (shard order), into a fresh one."""
    total = ShardStats(columns)
    for part in parts:
        total.merge(part)
    return total

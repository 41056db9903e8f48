"""``output.target_shard_mb`` (issue #13): shard counts from a sample's real Parquet bytes; the spec rules."""

from __future__ import annotations

import pathlib
import statistics

import pytest

from featurelib.driver import execute
from featurelib.engines.local import LocalEngine
from featurelib.errors import SpecError
from featurelib.plan import list_sources, plan, resolve_paths
from featurelib.shard_sizing import estimate
from featurelib.spec import RunSpec

FEATURES = [{"name": "color_stats"}, {"name": "color_hist", "params": {"bins": 4, "color_space": "hsv"}},
            {"name": "intensity_hist", "params": {"bins": 16}}]


def make_spec(inp, out, target, **sections) -> RunSpec:
    doc = {"spec_version": 1, "seed": 42, "image": {"size": [32, 32]}, "features": FEATURES,
           "input": {"path": str(inp)}, "output": {"path": str(out), "target_shard_mb": target,
                                                    "formats": ["parquet"]}}
    output = sections.pop("output", {})
    doc.update(sections)
    doc["output"].update(output)
    return RunSpec.from_dict(doc)


def parquet_sizes(out: pathlib.Path) -> list[int]:
    return [p.stat().st_size for p in sorted((out / "parquet").glob("*.parquet"))]


def deviations(sizes, target_mb) -> tuple[float, float]:
    devs = [abs(size / (target_mb * 1e6) - 1) for size in sizes]
    return statistics.median(devs), max(devs)


@pytest.mark.parametrize("target, sections", [
    (0.05, {}),  # tiny rows (~130 B): identity columns and row-group costs dominate
    (0.6, {"features": [{"name": "hog", "params": {"pixels_per_cell": [8, 8], "cells_per_block": [2, 2]}},
                        {"name": "lbp"}],
           "output": {"pixels": True, "formats": ["parquet", "hdf5"]}}),  # pixels stored: ~2 kB rows
], ids=["small-rows", "pixels-and-hdf5"])
def test_digit_shards_are_within_20_percent_of_the_target(digits_dir, tmp_path, target, sections):
    out = tmp_path / "out"
    spec = make_spec(digits_dir, out, target, **sections)
    logged = []
    manifest = execute(spec, LocalEngine(2), log=logged.append).manifest
    sizes = parquet_sizes(out)
    assert len(sizes) == manifest["n_shards"] >= 4  # several shards of a few hundred rows each
    assert min(f["rows"] for f in manifest["files"] if f["kind"] == "parquet") >= 200
    median, worst = deviations(sizes, target)
    assert median <= 0.20 and worst <= 0.20, (sizes, median, worst)
    assert any("output.target_shard_mb" in line and f"{len(sizes)} shards" in line for line in logged), logged
    # Time to the first record (issue #13's second target): in the metrics and the log.
    metrics = manifest["metrics"]
    assert 0 < metrics["first_task_s"] < metrics["wall_s"]
    assert f"featurize: first shard task started {metrics['first_task_s']} s after the run did" in logged


def test_augmented_photos_estimate_their_parquet_bytes(tmp_path):
    """Bigger JPEG photos, 4 augmented copies each (rows per source = 1 + copies): the expected mean
    shard size is within 20% of the written one (too few sources for per-shard sizes to settle)."""
    from featurelib.sample_data import make_sample

    make_sample("photos", tmp_path / "photos")
    out = tmp_path / "out"
    spec = make_spec(tmp_path / "photos", out, 0.5, image={"size": [48, 48]},
                     augment={"copies": 4, "splits": ["train", "val", "test"],
                              "ops": [{"op": "flip"}, {"op": "rotate", "degrees": 10}]},
                     features=[{"name": "hog"}, {"name": "lbp"}], output={"pixels": True})
    sized = estimate(resolve_paths(spec), list_sources(spec).records)
    assert sized.rows == 600 and sized.sample_rows == 5 * sized.sampled
    manifest = execute(spec, LocalEngine(2), log=lambda m: None).manifest
    sizes = parquet_sizes(out)
    assert len(sizes) == manifest["n_shards"] == sized.n_shards
    predicted = sized.shard_bytes(600 / len(sizes))
    assert abs(predicted / statistics.mean(sizes) - 1) <= 0.20, (predicted, sizes)


def test_the_count_is_the_same_each_time_and_the_fingerprint_holds_the_target(digits_dir, tmp_path):
    spec = make_spec(digits_dir, tmp_path / "out", 0.05)
    first, second = plan(spec), plan(spec)
    assert len(first) == len(second) > 1  # resume finds the same file names
    assert [t.records for t in first] == [t.records for t in second]
    other = make_spec(digits_dir, tmp_path / "out", 0.06)
    assert spec.run_fingerprint() != other.run_fingerprint()
    # A spec without the key keeps the fingerprint it had before the key existed.
    plain = RunSpec.from_dict({"features": FEATURES, "output": {"shards": 3}})
    assert "target_shard_mb" not in plain.output.layout()
    # It travels to workers as JSON.
    assert RunSpec.from_json(spec.to_json()).output.target_shard_mb == 0.05
    # --shards replaces it.
    assert spec.with_overrides(shards=5).output.target_shard_mb is None


@pytest.mark.parametrize("output, message", [
    ({"shards": 4, "target_shard_mb": 64}, "output.shards and output.target_shard_mb are exclusive; give one"),
    ({"rows_per_shard": 100, "target_shard_mb": 64},
     "output.rows_per_shard and output.target_shard_mb are exclusive; give one"),
    ({"shards": 4, "rows_per_shard": 100, "target_shard_mb": 64},
     "output.shards and output.rows_per_shard and output.target_shard_mb are exclusive; give one"),
    ({"target_shard_mb": 0}, "output.target_shard_mb must be > 0, got 0"),
    ({"target_shard_mb": -1}, "output.target_shard_mb must be a number in [0.0, 1000000.0], got -1"),
    ({"target_shard_mb": "64MB"}, "output.target_shard_mb must be a number in [0.0, 1000000.0], got '64MB'"),
    ({"target_shard_mb": True}, "output.target_shard_mb must be a number"),
])
def test_spec_errors(output, message):
    with pytest.raises(SpecError) as caught:
        RunSpec.from_dict({"features": FEATURES, "output": output})
    assert message in str(caught.value)


def test_target_alone_sets_no_default_count():
    spec = RunSpec.from_dict({"features": FEATURES, "output": {"target_shard_mb": 128}})
    assert (spec.output.shards, spec.output.rows_per_shard, spec.output.target_shard_mb) == (None, None, 128.0)
    with pytest.raises(ValueError):
        spec.output.shard_count(10)

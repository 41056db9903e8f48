"""The training reader (``open_dataset``) against a plain pyarrow read of the same shards.

    .venv/bin/python benchmarks/bench_reader.py [--scale 3] [--repeats 5] [--json OUT]

An output of the ``digits`` sample copied ``--scale`` times (1,797 real digits each), ``hog``
(324 values) + ``lbp`` (10), 8 shards, Parquet and HDF5, is made once with ``featurize run``. Then,
alternating the sides within each repeat, every row's features and labels are read by:

- ``plain pyarrow`` (the baseline): ``pq.read_table`` of the 8 Parquet shards with the label and
  the two feature columns, concatenated, ``fixed_size_list`` values reshaped to ``(N, 334)``;
- ``read()``: ``ds.read(["hog", "lbp"], split=None)`` (Parquet);
- ``read() hdf5``: the same from the HDF5 shards;
- ``batches(256)``: iterating ``ds.batches(..., batch_size=256, split=None)``;
- ``batches(256) shuffled``: the same with ``shuffle=True`` (blocks of every shard in a seeded order
  through a bounded buffer);
- ``batches(256) standardised``: ``normalize="standard"`` (train statistics from stats.json).

Every side is checked to return the same rows (sums of X and y) as the baseline. Reported: rows/s
(wall), CPU seconds per million rows, and the medians of per-repeat ratios against the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

COLUMNS = ["hog", "lbp"]


def make_output(base: str, scale: int) -> str:
    import yaml

    from featurelib.sample_data import make_sample

    data, out = os.path.join(base, "digits"), os.path.join(base, "out")
    make_sample("digits", data, scale=scale)
    spec = os.path.join(base, "spec.yaml")
    with open(spec, "w", encoding="utf-8") as handle:
        yaml.safe_dump({"spec_version": 1, "image": {"size": [32, 32]},
                        "features": [{"name": "hog", "params": {"pixels_per_cell": [8, 8], "cells_per_block": [2, 2]}},
                                     {"name": "lbp"}],
                        "output": {"formats": ["parquet", "hdf5"], "shards": 8}}, handle)
    featurize = os.path.join(os.path.dirname(sys.executable), "featurize")
    subprocess.run([featurize, "run", "--spec", spec, "--input", data, "--output", out], check=True,
                   capture_output=True)
    return out


def plain(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The baseline: what a user writes with pyarrow alone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables(pq.read_table(p, columns=["label", *COLUMNS]) for p in paths)
    parts = []
    for name in COLUMNS:
        column = table.column(name).combine_chunks()
        parts.append(column.values.to_numpy().reshape(len(column), column.type.list_size))
    return np.concatenate(parts, axis=1), table.column("label").to_numpy()


def sides(ds) -> dict:
    paths = ds.shard_paths("parquet")

    def batched(**kwargs):
        def run():
            xs, ys = [], []
            for batch in ds.batches(COLUMNS, batch_size=256, split=None, **kwargs):
                xs.append(batch.X.sum(dtype=np.float64))
                ys.append(int(batch.y.sum()))
            return float(np.sum(xs)), sum(ys)
        return run

    def whole(**kwargs):
        def run():
            arrays = ds.read(COLUMNS, split=None, **kwargs)
            return float(arrays.X.sum(dtype=np.float64)), int(arrays.y.sum())
        return run

    def baseline():
        X, y = plain(paths)
        return float(X.sum(dtype=np.float64)), int(y.sum())

    return {"plain pyarrow": baseline, "read()": whole(), "read() hdf5": whole(source="hdf5"),
            "batches(256)": batched(), "batches(256) shuffled": batched(shuffle=True, seed=1),
            "batches(256) standardised": batched(normalize="standard")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    from benchmarks import bench_kernel as common
    from featurelib.io import open_dataset

    info = common.machine()
    with tempfile.TemporaryDirectory(prefix="featurelib-bench-reader-") as base:
        ds = open_dataset(make_output(base, args.scale))
        rows = ds.counts["written_rows"]
        table = sides(ds)
        expected = table["plain pyarrow"]()
        wall = {name: [] for name in table}
        cpu = {name: [] for name in table}
        for repeat in range(args.repeats):
            order = list(table) if repeat % 2 == 0 else list(table)[::-1]
            for name in order:
                t0, c0 = time.perf_counter(), time.process_time()
                got = table[name]()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
                if name != "batches(256) standardised":
                    assert got[1] == expected[1] and abs(got[0] - expected[0]) <= 1e-6 * abs(expected[0]), (name, got)
    print(f"machine: {info['cpu']}, {info['cores']} cores; {info['date']}")
    print(f"{rows} rows of 334 float32 features (hog + lbp), 8 shards; median of {args.repeats} repeats")
    print(f"  {'side':<28}{'rows/s':>12}{'CPU s / 1M rows':>18}{'vs plain, wall':>16}{'vs plain, CPU':>15}")
    result = {}
    for name in table:
        ratio_wall = float(np.median([b / s for b, s in zip(wall["plain pyarrow"], wall[name])]))
        ratio_cpu = float(np.median([b / s for b, s in zip(cpu["plain pyarrow"], cpu[name])]))
        result[name] = {"rows_s": rows / float(np.median(wall[name])),
                        "cpu_s_per_million": float(np.median(cpu[name])) / rows * 1e6,
                        "vs_plain_wall": ratio_wall, "vs_plain_cpu": ratio_cpu}
        r = result[name]
        print(f"  {name:<28}{r['rows_s']:>12,.0f}{r['cpu_s_per_million']:>18.2f}{ratio_wall:>16.2f}{ratio_cpu:>15.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"rows": rows, "machine": info, "result": result}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

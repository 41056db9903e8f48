"""HDF5 layouts of the stored pixels (``output.pixels``): size, write and read speed.

    .venv/bin/python benchmarks/bench_pixels.py [--rows 512] [--repeats 3] [--shards 4] [--json OUT]

Two sets of preprocessed 224x224x3 uint8 rows, built in memory:

- ``photos``: seeded random crops (a side of 35..100 % of the shorter side,
  aspect 3:4..4:3, half of them mirrored) of the ten colour photographs the
  ``photos`` sample is made from (scikit-image's astronaut, chelsea, coffee,
  hubble_deep_field, immunohistochemistry, motorcycle, retina, rocket and
  scikit-learn's china, flower), brought to 224x224 by
  :func:`featurelib.transforms.resize_image` (``stretch``, ``area``: the
  default ``image`` section).
- ``digits``: the ``digits`` sample's images (scikit-learn's 8x8 digits as
  32x32 gray, :func:`featurelib.sample_data.digit_to_image`), as RGB and
  resized the same way: what ``featurize`` stores for them. Mostly a flat
  black background.

Each set is written as ``--shards`` shard files the way
``featurelib.io.shards`` writes them (``libver v110``, a resizable ``images``
dataset appended ``BATCH_ROWS`` rows at a time) plus a ``features.h5`` whose
``images`` is a virtual dataset over the shards (as ``featurelib.io.hdf5``
builds it), once per candidate layout (:data:`LAYOUTS`). The baseline is
today's layout, ``none``: one row per chunk, no filter. A Parquet file of the
same rows (``fixed_size_list<uint8>``, zstd, 64-row row groups: what
``featurelib.io.shards`` writes) is measured for size, write and sequential read.

A first, untimed round writes every layout and checks every read below
against the rows written. Measured per layout, per row:

- ``write``: appending every row to the shard files, files closed.
- ``seq32``/``seq64``: consecutive batches of 32 / 64 rows through
  ``features.h5`` (``vds``), and batches of 64 from the shard files (``shard``).
- ``cold64``: ``seq64`` through ``features.h5`` after the shard files were
  dropped from the page cache (``fsync`` + ``posix_fadvise(DONTNEED)`` on these
  files only); every other read finds the files in the page cache, as epochs
  after the first do when the set fits in memory.
- ``row``: single rows at random positions, ``ds[i]`` (``vds`` and ``shard``).
- ``b32rows``: a shuffled loader's batch, 32 random rows read one by one
  (``ds[i]``) and stacked into a (32, H, W, 3) array, through ``features.h5``.
- ``b32fancy``: the same batch as one h5py fancy-index read of the sorted
  indices, ``ds[np.sort(idx)]`` (fewer batches: it is slow).

The order of the layouts reverses every repeat, and the order of the reads
alternates from one layout to the next; the random rows and batches are drawn
once per repeat, the same for every layout. Every figure is the median of ``--repeats`` repeats, and every ratio is the
median of the per-repeat ratios against ``none`` measured in the same repeat,
for wall time and for this process's CPU time (h5py and its filters run in the
calling thread). Each repeat waits for a quiet machine first and records the
cores other processes used.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.bench_kernel import log, machine, machine_busy_s, median, wait_quiet  # noqa: E402
from featurelib.io.shards import BATCH_ROWS, PARQUET_COMPRESSION, PIXELS_FILTERS  # noqa: E402

SIDE = 224
BASELINE = "none"
#: name -> (rows per chunk, filter arguments of h5py's create_dataset); ``none`` and ``gzip1`` are the two
#: values of ``output.pixels_compression`` (``featurelib.io.shards.PIXELS_FILTERS``).
LAYOUTS: dict[str, tuple[int, dict]] = {
    "none": (1, PIXELS_FILTERS["none"]),
    "gzip1": (1, PIXELS_FILTERS["gzip"]),
    "gzip4": (1, {"compression": "gzip", "compression_opts": 4}),
    "shuffle+gzip1": (1, {"shuffle": True, "compression": "gzip", "compression_opts": 1}),
    "lzf": (1, {"compression": "lzf"}),
    "none-8rows": (8, {}),
}
#: Written and checked once for their size, not timed: a byte shuffle of 1-byte elements is the identity,
#: so these files hold the same chunks as gzip1's.
SIZE_ONLY = ("shuffle+gzip1",)
PARQUET = "parquet-zstd"
MEASURES = ("write", "seq32_vds", "seq64_vds", "seq64_shard", "cold64_vds", "row_vds", "row_shard",
            "b32rows_vds", "b32fancy_vds")
PARQUET_MEASURES = ("write", "seq64_vds")  # the Parquet row: its sequential read goes in the seq64 column
FANCY_BATCHES = 2


# --- the rows -----------------------------------------------------------------------


def photo_rows(n: int, seed: int) -> np.ndarray:
    """`n` random crops of the ``photos`` sample's source photographs, 224x224 RGB."""
    from featurelib.sample_data import PHOTO_CLASSES, load_photo_bgr
    from featurelib.transforms import resize_image

    sources = [np.ascontiguousarray(load_photo_bgr(name)[..., ::-1]) for name in PHOTO_CLASSES]
    rng = np.random.default_rng(seed)
    out = np.empty((n, SIDE, SIDE, 3), dtype=np.uint8)
    for i in range(n):
        source = sources[i % len(sources)]
        h, w = source.shape[:2]
        side = min(h, w) * rng.uniform(0.35, 1.0)
        aspect = rng.uniform(3 / 4, 4 / 3)
        ch, cw = min(h, round(side / np.sqrt(aspect))), min(w, round(side * np.sqrt(aspect)))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = source[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = resize_image(np.ascontiguousarray(crop), (SIDE, SIDE))
    return out


def digit_rows(n: int) -> np.ndarray:
    """The first `n` images of the ``digits`` sample as featurize stores them at 224x224 (gray as RGB)."""
    from sklearn.datasets import load_digits

    from featurelib.sample_data import digit_to_image
    from featurelib.transforms import resize_image

    digits = load_digits().images
    out = np.empty((n, SIDE, SIDE, 3), dtype=np.uint8)
    for i in range(n):
        gray = digit_to_image(digits[i % len(digits)])
        out[i] = resize_image(np.repeat(gray[:, :, None], 3, axis=2), (SIDE, SIDE))
    return out


# --- writing ------------------------------------------------------------------------


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, shards + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def write_shards(folder: str, rows: np.ndarray, bounds, layout: str) -> list[str]:
    """One HDF5 file per shard, appended in ``BATCH_ROWS`` batches as ``_Hdf5Sink`` does."""
    import h5py

    chunk_rows, filters = LAYOUTS[layout]
    paths = []
    for shard, (lo, hi) in enumerate(bounds):
        path = os.path.join(folder, f"part-{shard:05d}-of-{len(bounds):05d}.h5")
        with h5py.File(path, "w", libver=("v110", "latest")) as h5:
            images = h5.create_dataset("images", shape=(0, SIDE, SIDE, 3), maxshape=(None, SIDE, SIDE, 3),
                                       dtype=np.uint8, chunks=(chunk_rows, SIDE, SIDE, 3), **filters)
            for start in range(lo, hi, BATCH_ROWS):
                end = min(start + BATCH_ROWS, hi)
                images.resize(end - lo, axis=0)
                images[start - lo : end - lo] = rows[start:end]
        paths.append(path)
    return paths


def write_index(folder: str, paths: list[str], bounds) -> str:
    """``features.h5`` with ``images`` a virtual dataset over the shards (relative paths)."""
    import h5py

    layout = h5py.VirtualLayout(shape=(bounds[-1][1], SIDE, SIDE, 3), dtype=np.uint8)
    for path, (lo, hi) in zip(paths, bounds):
        layout[lo:hi] = h5py.VirtualSource(os.path.basename(path), "images", shape=(hi - lo, SIDE, SIDE, 3))
    index = os.path.join(folder, "features.h5")
    with h5py.File(index, "w", libver=("v110", "latest")) as h5:
        h5.create_virtual_dataset("images", layout, fillvalue=None)
    return index


def write_parquet(folder: str, rows: np.ndarray) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.path.join(folder, "pixels.parquet")
    schema = pa.schema([pa.field("pixels", pa.list_(pa.uint8(), SIDE * SIDE * 3), nullable=False)])
    with pq.ParquetWriter(path, schema, compression=PARQUET_COMPRESSION) as writer:
        for start in range(0, len(rows), BATCH_ROWS):
            flat = pa.array(rows[start : start + BATCH_ROWS].reshape(-1), type=pa.uint8())
            writer.write_batch(pa.RecordBatch.from_arrays(
                [pa.FixedSizeListArray.from_arrays(flat, SIDE * SIDE * 3)], schema=schema))
    return [path]


def drop_from_page_cache(paths: list[str]) -> None:
    """Evict these files' pages (and only these) from the page cache."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# --- reading ------------------------------------------------------------------------


def read_sequential(ds, n: int, batch: int, check=None) -> None:
    for start in range(0, n, batch):
        block = ds[start : start + batch]
        if check is not None:
            assert np.array_equal(block, check[start : start + batch]), start


def read_rows(ds, indices, check=None) -> None:
    for i in indices:
        row = ds[int(i)]
        if check is not None:
            assert np.array_equal(row, check[i]), i


def read_shard_rows(datasets, bounds, indices, check=None) -> None:
    starts = np.array([lo for lo, _ in bounds])
    for i in indices:
        shard = int(np.searchsorted(starts, i, side="right")) - 1
        row = datasets[shard][int(i) - bounds[shard][0]]
        if check is not None:
            assert np.array_equal(row, check[i]), i


def read_batches_by_row(ds, batches, check=None) -> None:
    # np.stack of ds[i]: ds.read_direct into a preallocated batch took about 2x as long in a side check
    for batch in batches:
        block = np.stack([ds[int(i)] for i in batch])
        if check is not None:
            assert np.array_equal(block, check[batch])


def read_batches_fancy(ds, batches, check=None) -> None:
    for batch in batches:
        ordered = np.sort(batch)
        block = ds[ordered]
        if check is not None:
            assert np.array_equal(block, check[ordered])


def read_parquet_sequential(path: str, n: int, batch: int, check=None) -> None:
    """Batches of `batch` rows as (b, H, W, 3) uint8: the documented pyarrow recipe."""
    import pyarrow.parquet as pq

    start = 0
    for record_batch in pq.ParquetFile(path).iter_batches(batch_size=batch, columns=["pixels"]):
        column = record_batch.column("pixels")
        block = column.flatten().to_numpy().reshape(len(column), SIDE, SIDE, 3)
        if check is not None:
            assert np.array_equal(block, check[start : start + len(block)]), start
        start += len(block)
    assert start == n


def timed(call) -> dict[str, float]:
    """Wall and CPU seconds of `call()`, and the cores other processes used meanwhile."""
    busy0, cpu0, wall0 = machine_busy_s(), time.process_time(), time.perf_counter()
    call()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    others = max(0.0, machine_busy_s() - busy0 - cpu) / wall if wall > 0 else 0.0
    return {"wall": wall, "cpu": cpu, "others": others}


def measure_layout(layout: str, rows: np.ndarray, bounds, folder: str, singles, batches, *,
                   reverse: bool, check: bool) -> tuple[dict[str, dict[str, float]], int]:
    """{measure: {wall, cpu, others} per row} of one layout, and its bytes on disk.

    `singles` are the random rows, `batches` the random batches (the same for every layout of a repeat);
    `reverse` reverses the order of the reads.
    """
    import h5py

    n = len(rows)
    os.makedirs(folder)
    expect = rows if check else None
    per_row: dict[str, float] = {}
    out: dict[str, dict[str, float]] = {}
    paths: list[str] = []
    if layout == PARQUET:
        out["write"] = timed(lambda: paths.extend(write_parquet(folder, rows)))
        out["seq64_vds"] = timed(lambda: read_parquet_sequential(paths[0], n, 64, expect))
        per_row = {m: n for m in PARQUET_MEASURES}
    else:
        out["write"] = timed(lambda: paths.extend(write_shards(folder, rows, bounds, layout)))
        index = write_index(folder, paths, bounds)
        with h5py.File(index, "r") as h5:
            vds = h5["images"]
            shards = [h5py.File(p, "r") for p in paths]
            try:
                datasets = [s["images"] for s in shards]
                calls = {
                    "seq32_vds": lambda: read_sequential(vds, n, 32, expect),
                    "seq64_vds": lambda: read_sequential(vds, n, 64, expect),
                    "seq64_shard": lambda: [read_sequential(d, d.shape[0], 64, None if expect is None
                                                            else expect[lo:hi])
                                            for d, (lo, hi) in zip(datasets, bounds)],
                    "row_vds": lambda: read_rows(vds, singles, expect),
                    "row_shard": lambda: read_shard_rows(datasets, bounds, singles, expect),
                    "b32rows_vds": lambda: read_batches_by_row(vds, batches, expect),
                    "b32fancy_vds": lambda: read_batches_fancy(vds, batches[:FANCY_BATCHES], expect),
                }
                for name in reversed(calls) if reverse else calls:
                    out[name] = timed(calls[name])
            finally:
                for s in shards:
                    s.close()
        drop_from_page_cache(paths)
        with h5py.File(index, "r") as h5:
            out["cold64_vds"] = timed(lambda: read_sequential(h5["images"], n, 64, expect))
        per_row = {"write": n, "seq32_vds": n, "seq64_vds": n, "seq64_shard": n, "cold64_vds": n,
                   "row_vds": len(singles), "row_shard": len(singles), "b32rows_vds": 32 * len(batches),
                   "b32fancy_vds": 32 * min(FANCY_BATCHES, len(batches))}
    size = sum(os.path.getsize(p) for p in paths)
    shutil.rmtree(folder)
    scaled = {m: {"wall": v["wall"] / per_row[m], "cpu": v["cpu"] / per_row[m], "others": v["others"]}
              for m, v in out.items()}
    return scaled, size


def bench_set(name: str, rows: np.ndarray, shards: int, repeats: int, n_random: int, scratch: str) -> dict:
    bounds = shard_bounds(len(rows), shards)
    layouts = [*LAYOUTS, PARQUET]
    timed_layouts = [layout for layout in layouts if layout not in SIZE_ONLY]
    runs: dict[str, list[dict]] = {layout: [] for layout in timed_layouts}
    sizes: dict[str, int] = {}
    for rep in range(repeats + 1):  # round 0 checks every read against the rows and is not counted
        if rep:
            wait_quiet(log)
        rng = np.random.default_rng([rep, len(rows)])
        singles = rng.choice(len(rows), size=min(len(rows), n_random), replace=False)
        batches = [rng.choice(len(rows), size=32, replace=False) for _ in range(max(1, n_random // 32))]
        order = layouts if rep == 0 else timed_layouts if rep % 2 else list(reversed(timed_layouts))
        for position, layout in enumerate(order):
            folder = os.path.join(scratch, f"{name}-{layout}-{rep}")
            figures, sizes[layout] = measure_layout(layout, rows, bounds, folder, singles, batches,
                                                    reverse=bool((rep + position) % 2), check=rep == 0)
            if rep:
                runs[layout].append(figures)
        if rep:
            log(f"  {name} repeat {rep}/{repeats}: seq64 vds wall ms/row "
                + ", ".join(f"{lay} {1e3 * runs[lay][-1]['seq64_vds']['wall']:.3f}" for lay in timed_layouts))
        else:
            log(f"  {name}: every layout read back equal to the rows written")
    return summarise(name, rows, shards, repeats, n_random, runs, sizes)


def summarise(name, rows, shards, repeats, n_random, runs, sizes) -> dict:
    base = runs[BASELINE]
    out = {"set": name, "rows": len(rows), "shape": list(rows.shape[1:]), "raw_mb": round(rows.nbytes / 1e6, 2),
           "shards": shards, "repeats": repeats, "random_rows": n_random, "layouts": {}}
    for layout, size in sizes.items():
        chunk_rows = LAYOUTS[layout][0] if layout in LAYOUTS else None
        entry = {"chunk_rows": chunk_rows, "bytes": size, "size_over_raw": round(size / rows.nbytes, 4),
                 "size_over_none": round(size / sizes[BASELINE], 4), "measures": {}}
        reps = runs.get(layout, [])
        for measure in reps[0] if reps else ():
            wall = [r[measure]["wall"] for r in reps]
            cpu = [r[measure]["cpu"] for r in reps]
            entry["measures"][measure] = {
                "wall_us_per_row": round(1e6 * median(wall), 2),
                "cpu_us_per_row": round(1e6 * median(cpu), 2),
                "wall_over_none": round(median([r[measure]["wall"] / b[measure]["wall"]
                                                for r, b in zip(reps, base)]), 3),
                "cpu_over_none": round(median([r[measure]["cpu"] / max(b[measure]["cpu"], 1e-9)
                                               for r, b in zip(reps, base)]), 3),
                "wall_over_none_runs": [round(r[measure]["wall"] / b[measure]["wall"], 3) for r, b in zip(reps, base)],
                "others_cores_max": round(max(r[measure]["others"] for r in reps), 2),
            }
        out["layouts"][layout] = entry
    return out


# --- report -------------------------------------------------------------------------

_HEAD = {"write": "write", "seq32_vds": "seq32 vds", "seq64_vds": "seq64 vds", "seq64_shard": "seq64 shard",
         "cold64_vds": "cold64 vds", "row_vds": "row vds", "row_shard": "row shard",
         "b32rows_vds": "b32rows vds", "b32fancy_vds": "b32fancy vds"}


def format_set(s: dict) -> list[str]:
    width = 13
    head = "".join(f"{_HEAD[m]:>{width}}" for m in MEASURES)
    lay = s["layouts"]
    base = lay[BASELINE]["measures"]
    others = max(m["others_cores_max"] for e in lay.values() for m in e["measures"].values())
    lines = [
        "",
        (f"{s['set']}: {s['rows']} rows of {'x'.join(map(str, s['shape']))} uint8 ({s['raw_mb']} MB), "
         f"{s['shards']} shards + features.h5, median of {s['repeats']} repeats; random reads: "
         f"{s['random_rows']} rows"),
        f"  {'layout':<15}{'chunk':>6}{'MB':>9}{'size/none':>11}",
    ]
    for name, e in lay.items():
        chunk = "-" if e["chunk_rows"] is None else str(e["chunk_rows"])
        lines.append(f"  {name:<15}{chunk:>6}{e['bytes'] / 1e6:9.1f}{e['size_over_none']:11.3f}")
    lines += [f"  baseline '{BASELINE}', us per row:",
              f"  {'':<21}{head}",
              f"  {'wall':<21}" + "".join(f"{base[m]['wall_us_per_row']:>{width}.1f}" for m in MEASURES),
              f"  {'CPU':<21}" + "".join(f"{base[m]['cpu_us_per_row']:>{width}.1f}" for m in MEASURES)]
    for kind in ("wall", "cpu"):
        lines.append(f"  ratio to '{BASELINE}', {'wall time' if kind == 'wall' else 'CPU time'} "
                     "(median of per-repeat ratios):")
        lines.append(f"  {'':<21}{head}")
        for name, e in lay.items():
            if name == BASELINE or not e["measures"]:
                continue
            cells = "".join(f"{e['measures'][m][f'{kind}_over_none']:>{width}.2f}" if m in e["measures"]
                            else f"{'-':>{width}}" for m in MEASURES)
            lines.append(f"  {name:<21}{cells}")
    lines.append(f"  cores used by other processes during a measurement: at most {others:.2f}")
    lines.append(f"  ({', '.join(SIZE_ONLY)}: size only, not timed; "
                 f"{PARQUET}: one file, 64-row row groups; its seq64 is pyarrow iter_batches(64) "
                 "-> flatten -> reshape)")
    return lines


def format_report(report: dict) -> str:
    m = report["machine"]
    lines = [(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, numpy {m['numpy']}, "
              f"h5py {report['h5py']} (HDF5 {report['hdf5']}); load average {m['loadavg_start']:.2f} -> "
              f"{m.get('loadavg_end', float('nan')):.2f}; {m['date']}")]
    for s in report["sets"]:
        lines += format_set(s)
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=512, help="rows per set (digits: at most 1797)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    parser.add_argument("--shards", type=int, default=4, help="shard files per layout")
    parser.add_argument("--random-rows", type=int, default=256, help="rows read at random positions")
    parser.add_argument("--sets", default="photos,digits", help="comma-separated: photos, digits")
    parser.add_argument("--json", metavar="OUT", help="also write every figure to OUT as JSON")
    args = parser.parse_args(argv)
    import h5py

    info = machine()
    scratch = tempfile.mkdtemp(prefix="featurelib-bench-pixels-")
    results = []
    try:
        for name in args.sets.split(","):
            started = time.perf_counter()
            rows = photo_rows(args.rows, seed=0) if name == "photos" else digit_rows(min(args.rows, 1797))
            log(f"{name}: {len(rows)} rows built in {time.perf_counter() - started:.1f} s; "
                f"{len(LAYOUTS) + 1} layouts, {args.repeats} repeats")
            results.append(bench_set(name, rows, args.shards, args.repeats, args.random_rows, scratch))
        info["loadavg_end"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    command = "python benchmarks/bench_pixels.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = {"benchmark": "bench_pixels", "command": command.strip(), "machine": info,
              "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version, "sets": results}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

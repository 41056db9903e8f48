"""Skew: one class of huge images among small ones (issue #13). Does the hash assignment spread the
huge images across shards, and does a worker's memory stay bounded by streaming?

    .venv/bin/python benchmarks/bench_skew.py [--small-scale 3] [--huge 30] [--giant 8] [--rows-per-shard 30]
                                              [--repeats 2] [--engines local] [--reduce] [--data DIR] [--json OUT]

Corpora, built from the bundled photographs (``featurelib.sample_data``: crops, scales,
re-encodes; nothing downloaded):

  * ``skew``: the 500x375 JPEGs of the ``photos`` sample at scale ``--small-scale`` (10 classes of
    10 x K), plus a class ``huge`` of ``--huge`` 2000x1500 JPEGs (4:3 crops of the photographs,
    enlarged) and ``--giant`` 6000x4000 JPEGs (3:2 crops, enlarged), seeded, quality 90;
  * ``flat``: the same small classes, and a class ``huge`` of as many 500x375 crops: the same number
    of files and classes, no huge image (the baseline measured in the same run).

Each repeat runs ``featurize run`` (a fresh process, as a user starts it; ``--engines``, 2 workers)
over ``flat`` then ``skew`` (the order alternating between repeats), spec: the ``photos`` features
(colour statistics and histograms) at 224x224 (aspect crop, area), Parquet, ``--rows-per-shard``
rows per shard, ``decode.reduce: false`` (every pixel of a 6000x4000 JPEG decoded: the hard case for
memory; ``--reduce`` measures the default, where a 6000x4000 JPEG decodes at a DCT scale of 1/8).

Reported:
  (a) spread: per shard, the huge (2000x1500) and giant (6000x4000) images it holds (from
      ``featurelib.plan.plan``: the hash assignment of the run itself) and its task seconds (the
      manifest's per-shard metrics); max / median of the task seconds for ``skew`` and ``flat``;
      the run's wall time ``skew`` / ``flat`` per repeat;
  (b) memory: peak resident memory (``VmHWM``, sampled every 0.1 s from /proc for every process of
      the run's tree) of each worker process, the largest of them, for ``skew`` and ``flat``;
      next to it, the decoded size of one 6000x4000 image (what streaming must hold at most, with
      its intermediates) and of all the huge images of the heaviest shard (what a task holding its
      decoded images would need).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.bench_kernel import FEATURES, log, machine, photos_corpus, scratch_dirs, wait_quiet  # noqa: E402
from benchmarks.bench_memory import ENGINES, PeakMemory  # noqa: E402  (featurize run's flags per engine, 2 workers)

HUGE_SIZE = (2000, 1500)
GIANT_SIZE = (6000, 4000)
SMALL_SIZE = (500, 375)
STAGES = ("read_s", "decode_s", "preprocess_s", "augment_s", "extract_s", "stats_s", "write_s")


# --- corpora ---------------------------------------------------------------------------------


def _crop(rng, source, aspect: float, fraction=(0.7, 1.0)):
    """A random crop of `source` with width / height = `aspect`, covering `fraction` of the largest one."""
    height, width = source.shape[:2]
    max_w = min(width, int(height * aspect))
    w = max(8, int(max_w * rng.uniform(*fraction)))
    h = int(round(w / aspect))
    x = int(rng.integers(0, width - w + 1))
    y = int(rng.integers(0, height - h + 1))
    return source[y:y + h, x:x + w]


def build_corpora(base: str, small_scale: int, huge: int, giant: int) -> dict[str, str]:
    """``base/skew-...`` and ``base/flat-...`` (hard links for the shared small classes)."""
    import numpy as np

    from featurelib.sample_data import PHOTO_CLASSES, encode_jpeg, load_photo_bgr, resize

    tag = f"s{small_scale}-h{huge}-g{giant}"
    folders = {"skew": os.path.join(base, f"skew-{tag}"), "flat": os.path.join(base, f"flat-{tag}")}
    done = os.path.join(base, f".skew-{tag}-complete")
    if os.path.exists(done):
        return folders
    for folder in folders.values():
        shutil.rmtree(folder, ignore_errors=True)
    root, _ = photos_corpus(base, small_scale, log)
    small = [p for p in glob.glob(os.path.join(root, "*", "*.jpg")) if "-large-" not in p]
    for folder in folders.values():
        for path in small:
            target = os.path.join(folder, os.path.relpath(path, root))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.link(path, target)
    started = time.perf_counter()
    sources = [load_photo_bgr(name) for name in PHOTO_CLASSES]
    rng = np.random.default_rng(13)
    for folder in folders.values():
        os.makedirs(os.path.join(folder, "huge"))
    n_bytes = 0
    for i in range(huge + giant):
        source = sources[i % len(sources)]
        giant_one = i >= huge
        size = GIANT_SIZE if giant_one else HUGE_SIZE
        name = f"giant-{i - huge:04d}.jpg" if giant_one else f"huge-{i:04d}.jpg"
        data = encode_jpeg(resize(np.ascontiguousarray(_crop(rng, source, size[0] / size[1])), size), 90)
        n_bytes += len(data)
        with open(os.path.join(folders["skew"], "huge", name), "wb") as handle:
            handle.write(data)
        flat = encode_jpeg(resize(np.ascontiguousarray(_crop(rng, source, 4 / 3)), SMALL_SIZE), 90)
        with open(os.path.join(folders["flat"], "huge", name), "wb") as handle:
            handle.write(flat)
    log(f"built skew corpora: {len(small)} small + {huge} of {HUGE_SIZE[0]}x{HUGE_SIZE[1]} + {giant} of "
        f"{GIANT_SIZE[0]}x{GIANT_SIZE[1]} ({n_bytes / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s")
    open(done, "w").close()
    return folders


def spec_dict(data: str, output: str, rows_per_shard: int, reduce: bool) -> dict:
    return {"spec_version": 1, "input": {"path": data}, "seed": 7,
            "image": {"size": [224, 224], "resize": "aspect_crop", "interpolation": "area"},
            "decode": {"reduce": reduce}, "features": FEATURES,
            "output": {"path": output, "formats": ["parquet"], "rows_per_shard": rows_per_shard}}


def assignment(spec: dict) -> list[dict]:
    """Per shard (in shard order): sources, huge and giant images it holds, and their decoded bytes."""
    from featurelib.plan import plan
    from featurelib.spec import RunSpec

    out = []
    for task in sorted(plan(RunSpec.from_dict(spec)), key=lambda t: t.shard):
        names = [os.path.basename(r.uri) for r in task.records]
        huge = sum(n.startswith("huge-") for n in names)
        giant = sum(n.startswith("giant-") for n in names)
        small = len(names) - huge - giant
        decoded = 3 * (huge * HUGE_SIZE[0] * HUGE_SIZE[1] + giant * GIANT_SIZE[0] * GIANT_SIZE[1]
                       + small * SMALL_SIZE[0] * SMALL_SIZE[1])
        out.append({"shard": task.shard, "sources": len(names), "huge": huge, "giant": giant,
                    "decoded_mb": decoded / 2**20})
    return out


# --- one run ---------------------------------------------------------------------------------


def run(spec: dict, scratch: str, engine: str) -> dict:
    import yaml

    path = os.path.join(scratch, "spec.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(spec, handle)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    featurize = os.path.join(os.path.dirname(sys.executable), "featurize")
    started = time.perf_counter()
    process = subprocess.Popen([featurize, "run", "--spec", path, "--overwrite", *ENGINES[engine]],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    sampler = PeakMemory(process.pid, interval=0.1)
    _, stderr = process.communicate()
    wall = time.perf_counter() - started
    sampler.stop()
    peaks = sampler.peaks  # pid -> (name, VmHWM kB)
    if process.returncode != 0:
        raise SystemExit(f"{engine} failed ({process.returncode}):\n{stderr[-3000:]}")
    with open(os.path.join(spec["output"]["path"], "_manifest.json"), encoding="utf-8") as handle:
        manifest = json.load(handle)
    shards = manifest["metrics"]["shards"]
    task_pids = {s["pid"] for s in shards}
    workers = {pid: kb / 1024 for pid, (comm, kb) in peaks.items() if pid in task_pids}
    jvm = [kb / 1024 for comm, kb in peaks.values() if comm == "java"]
    seconds = [s["seconds"] for s in shards]
    # A worker's first task also builds its state (imports, extractors): its stages' sum leaves that out.
    work = [sum(s.get(k, 0.0) for k in STAGES) for s in shards]
    # The stages whose cost grows with the pixels: read (and hash), decode, preprocess (resize and crop).
    sized = [sum(s.get(k, 0.0) for k in ("read_s", "decode_s", "preprocess_s")) for s in shards]
    steady = [w for w, s in zip(work, shards) if not s.get("state_built")]
    return {
        "wall_s": wall,
        "written": manifest["counts"]["written_sources"],
        "rejected": manifest["counts"]["rejected"],
        "task_s": seconds,
        "work_s": work,
        "state_built": [bool(s.get("state_built")) for s in shards],
        "task_pid": [s["pid"] for s in shards],
        "decode_s": [s.get("decode_s", 0.0) for s in shards],
        "sized_s": sized,
        # over the tasks that did not build their worker's state (first tasks pay imports, lazily)
        "task_max_over_median": max(steady) / statistics.median(steady),
        "task_max_over_mean": max(steady) / statistics.fmean(steady),
        "sized_max_over_median": max(sized) / statistics.median(sized),
        "worker_peak_mb": workers,
        "worker_peak_mb_max": max(workers.values(), default=0.0),
        "driver_peak_mb": peaks.get(process.pid, ("", 0))[1] / 1024,
        "jvm_peak_mb": max(jvm, default=0.0),
        "first_task_s": manifest["metrics"].get("first_task_s"),
    }


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-scale", type=int, default=3, help="photos scale of the small classes (100 x K)")
    parser.add_argument("--huge", type=int, default=30, help="2000x1500 JPEGs in the huge class")
    parser.add_argument("--giant", type=int, default=8, help="6000x4000 JPEGs in the huge class")
    parser.add_argument("--rows-per-shard", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--engines", default="local", help="comma-separated, of local, beam, spark (2 workers)")
    parser.add_argument("--reduce", action="store_true", help="decode.reduce: true (the default decoding)")
    parser.add_argument("--max-wait", type=float, default=60.0, help="seconds to wait for a quiet machine per run")
    parser.add_argument("--data", help="folder to build/reuse the corpora in (default: a temporary folder)")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    if unknown := sorted(set(engines) - set(ENGINES)):
        parser.error(f"unknown engines {unknown}")
    scratch, base = scratch_dirs("featurelib-bench-skew-", args.data)
    try:
        info = machine()
        folders = build_corpora(base, args.small_scale, args.huge, args.giant)
        for folder in folders.values():
            for path in glob.glob(os.path.join(folder, "*", "*.jpg")):
                with open(path, "rb") as handle:
                    handle.read()
        specs = {kind: spec_dict(folder, os.path.join(scratch, f"out-{kind}"), args.rows_per_shard, args.reduce)
                 for kind, folder in folders.items()}
        shards = {kind: assignment(spec) for kind, spec in specs.items()}
        runs: dict = {e: {"flat": [], "skew": []} for e in engines}
        for rep in range(args.repeats):
            for engine in engines:
                for kind in ("flat", "skew") if rep % 2 == 0 else ("skew", "flat"):
                    wait_quiet(log, max_wait_s=args.max_wait)
                    result = run(specs[kind], scratch, engine)
                    runs[engine][kind].append(result)
                    log(f"  repeat {rep + 1}/{args.repeats} {engine:<5} {kind}: {result['wall_s']:.2f} s, task max/median "
                        f"{result['task_max_over_median']:.2f}, worker peak {result['worker_peak_mb_max']:.0f} MB")
        info["loadavg_end"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {"benchmark": "bench_skew", "command": ("python benchmarks/bench_skew.py " + " ".join(argv)).strip(),
              "machine": info, "args": vars(args), "shards": shards, "summary": summarise(runs, shards), "runs": runs}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2, default=str)
            handle.write("\n")
    print(format_report(report))
    return 0


def summarise(runs: dict, shards: dict) -> dict:
    med = statistics.median
    out = {}
    heaviest = max(shards["skew"], key=lambda s: s["decoded_mb"])
    for engine, kinds in runs.items():
        e = {}
        for kind, results in kinds.items():
            e[kind] = {
                "wall_s": round(med([r["wall_s"] for r in results]), 2),
                "task_max_over_median": round(med([r["task_max_over_median"] for r in results]), 2),
                "task_max_over_median_runs": [round(r["task_max_over_median"], 2) for r in results],
                "task_max_over_mean": round(med([r["task_max_over_mean"] for r in results]), 2),
                "task_s_per_shard": [round(med(v), 3) for v in zip(*(r["task_s"] for r in results))],
                "work_s_per_shard": [round(med(v), 3) for v in zip(*(r["work_s"] for r in results))],
                "decode_s_per_shard": [round(med(v), 3) for v in zip(*(r["decode_s"] for r in results))],
                "sized_s_per_shard": [round(med(v), 3) for v in zip(*(r["sized_s"] for r in results))],
                "state_built": results[0]["state_built"],
                "sized_max_over_median": round(med([r["sized_max_over_median"] for r in results]), 2),
                "sized_s_total": round(med([sum(r["sized_s"]) for r in results]), 2),
                "sized_s_median": round(med([statistics.median(r["sized_s"]) for r in results]), 3),
                "sized_s_max": round(med([max(r["sized_s"]) for r in results]), 3),
                "worker_peak_mb_max": round(med([r["worker_peak_mb_max"] for r in results]), 1),
                "worker_peak_mb_max_runs": [round(r["worker_peak_mb_max"], 1) for r in results],
                "worker_peak_mb_each_runs": [sorted(round(v, 1) for v in r["worker_peak_mb"].values()) for r in results],
                "driver_peak_mb": round(med([r["driver_peak_mb"] for r in results]), 1),
                "jvm_peak_mb": round(med([r["jvm_peak_mb"] for r in results]), 1),
            }
        e["wall_skew_over_flat_runs"] = [round(s["wall_s"] / f["wall_s"], 3) for s, f in zip(kinds["skew"], kinds["flat"])]
        e["wall_skew_over_flat"] = round(med(e["wall_skew_over_flat_runs"]), 3)
        ratios = [s["worker_peak_mb_max"] / f["worker_peak_mb_max"] for s, f in zip(kinds["skew"], kinds["flat"])]
        e["worker_peak_skew_over_flat_runs"] = [round(r, 3) for r in ratios]
        e["worker_peak_skew_over_flat"] = round(med(ratios), 3)
        e["worker_peak_skew_minus_flat_mb"] = round(med([s["worker_peak_mb_max"] - f["worker_peak_mb_max"]
                                                         for s, f in zip(kinds["skew"], kinds["flat"])]), 1)
        out[engine] = e
    out["one_giant_decoded_mb"] = round(3 * GIANT_SIZE[0] * GIANT_SIZE[1] / 2**20, 1)
    out["heaviest_shard"] = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in heaviest.items()}
    return out


def format_report(report: dict) -> str:
    m, s, a = report["machine"], report["summary"], report["args"]
    skew, flat = report["shards"]["skew"], report["shards"]["flat"]
    n_huge = sum(x["huge"] for x in skew)
    n_giant = sum(x["giant"] for x in skew)
    lines = [
        (f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; load average "
         f"{m['loadavg_start']:.2f} -> {m.get('loadavg_end', float('nan')):.2f}; {m['date']}"),
        (f"skew corpus: {sum(x['sources'] for x in skew)} images, of them {n_huge} of 2000x1500 and {n_giant} of "
         f"6000x4000 (class 'huge'), the rest 500x375; {len(skew)} shards (~{a['rows_per_shard']} rows); "
         f"decode.reduce: {str(a['reduce']).lower()}; median of {a['repeats']} repeats"),
        "",
        "(a) spread of the huge images by the hash assignment, and task seconds per shard:",
        "  shard  sources  2000x1500  6000x4000  decoded MB" + "".join(f"  {e} skew s (sized)  {e} flat s (sized)"
                                                                   for e in report["runs"]),
    ]
    for i, x in enumerate(skew):
        row = f"  {x['shard']:5d}  {x['sources']:7d}  {x['huge']:9d}  {x['giant']:9d}  {x['decoded_mb']:10.0f}"
        for engine in report["runs"]:
            sk, fl = s[engine]["skew"], s[engine]["flat"]
            row += (f"  {sk['work_s_per_shard'][i]:>{len(engine) + 7}.2f}{'*' if sk['state_built'][i] else ' '}"
                    f"({sk['sized_s_per_shard'][i]:5.2f})"
                    f"  {fl['work_s_per_shard'][i]:>{len(engine) + 7}.2f}{'*' if fl['state_built'][i] else ' '}"
                    f"({fl['sized_s_per_shard'][i]:5.2f})")
        lines.append(row)
    lines.append("  task s = the sum of a task's stages (read, decode, preprocess, extract, statistics, write); "
                 "* = the worker's first task, which also pays lazy imports; (sized) its read + decode + "
                 "preprocess seconds, the part that grows with the pixels")
    lines.append(f"  expected per shard if spread evenly: {n_huge / len(skew):.2f} of 2000x1500, "
                 f"{n_giant / len(skew):.2f} of 6000x4000; flat corpus: {len(flat)} shards")
    memory = ["", "(b) peak resident memory (VmHWM) of the worker processes, MB:"]
    for engine in report["runs"]:
        e = s[engine]
        sk, fl = e["skew"], e["flat"]
        lines += [
            f"  {engine}: read + decode + preprocess seconds per task, max / median: skew "
            f"{sk['sized_max_over_median']} (max {sk['sized_s_max']} s, median {sk['sized_s_median']} s), "
            f"flat {fl['sized_max_over_median']}; the huge class costs "
            f"{sk['sized_s_total'] - fl['sized_s_total']:.2f} s of them more than as small images: one shard "
            f"holding it (a by-class assignment) would take about "
            f"{sk['sized_s_median'] + sk['sized_s_total'] - fl['sized_s_total']:.2f} s there",
            f"  {engine}: task seconds (stages, first tasks left out) max / median: skew {sk['task_max_over_median']} "
            f"(per repeat {sk['task_max_over_median_runs']}), flat {fl['task_max_over_median']} "
            f"(per repeat {fl['task_max_over_median_runs']}); max / mean: skew {sk['task_max_over_mean']}, "
            f"flat {fl['task_max_over_mean']}",
            f"  {engine}: run wall skew {sk['wall_s']} s, flat {fl['wall_s']} s; skew / flat "
            f"{e['wall_skew_over_flat']} (per repeat {e['wall_skew_over_flat_runs']})",
        ]
        memory.append(
            f"  {engine}: largest worker skew {sk['worker_peak_mb_max']} (per repeat {sk['worker_peak_mb_max_runs']}, "
            f"each worker {sk['worker_peak_mb_each_runs']}), flat {fl['worker_peak_mb_max']} (per repeat "
            f"{fl['worker_peak_mb_max_runs']}); skew / flat {e['worker_peak_skew_over_flat']} (per repeat "
            f"{e['worker_peak_skew_over_flat_runs']}), +{e['worker_peak_skew_minus_flat_mb']} MB; driver "
            f"{sk['driver_peak_mb']}, JVM {sk['jvm_peak_mb']}")
    heavy = s["heaviest_shard"]
    lines += memory
    lines.append(f"  one 6000x4000 image decoded: {s['one_giant_decoded_mb']} MB; the heaviest shard "
                 f"(shard {heavy['shard']}: {heavy['huge']} of 2000x1500, {heavy['giant']} of 6000x4000, "
                 f"{heavy['sources']} images) decoded all at once: {heavy['decoded_mb']} MB")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

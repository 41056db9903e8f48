"""Large JPEGs decoded at a reduced DCT scale (``decode.reduce``) against full-size decoding.

    .venv/bin/python benchmarks/bench_decode.py [--scale K] [--repeats R] [--data DIR] [--json OUT] [--end-to-end]

Part 1, decode + resize: the kernel's decode and preprocess stages on the
2000x1500 JPEGs of the ``photos`` sample (``20 * K`` files, JPEG quality
75..95, 4:3 crops of ten photographs enlarged with ``INTER_CUBIC``), read into
memory first, brought to 224x224 (``aspect_crop``, ``area``: the geometry of
``deploy/specs/photos.yaml``). Three loops over all the files:

- ``plain``: ``cv2.imdecode(IMREAD_COLOR_RGB)``, then an aspect-preserving
  ``INTER_AREA`` resize and centre crop written directly with OpenCV
  (``bench_kernel.plain_centre_crop``): the baseline;
- ``full``: :func:`featurelib.decode.decode_image` without a target, then
  :func:`featurelib.transforms.resize_image` (what the kernel does with
  ``decode.reduce: false``);
- ``reduced``: ``decode_image(data, target=(224, 224, "aspect_crop"))``, then
  the same resize (``decode.reduce: true``, the default): DCT scale 1/4 here.

The loops alternate within every repeat (the order reverses every other
repeat); every ratio is the median of the per-repeat ratios of CPU time
(``time.process_time``: one thread, OpenCV set to one thread as in every engine
worker), with the wall-clock ratio next to it. The pixels are compared too:
the mean absolute difference of ``reduced`` and ``full`` against ``plain``
(``full`` must be 0: the same decode and the same resize).

Part 2, ``--end-to-end``: :func:`featurelib.driver.execute` on the ``photos``
sample at scale ``4 * K`` (480 images at K = 1, one in six 2000x1500, the rest
500x375, which 224x224 ``aspect_crop`` does not let shrink) on the local engine
with 2 workers, ``decode.reduce: true`` against ``false`` alternated, wall
time of the whole run (pool start-up and commit included) and the CPU time of
the driver and its workers; the first round warms the page cache and is not
counted.

The process re-executes itself once with the glibc malloc settings the engines
give their workers (``featurelib.worker.environment``), as bench_kernel.py
does, and every repeat first waits (up to 60 s) for a quiet machine and
records the cores other processes used meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import json
import os
import pathlib
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.bench_kernel import (  # noqa: E402
    log,
    machine,
    machine_busy_s,
    median,
    photos_corpus,
    photos_spec,
    plain_centre_crop,
    scratch_dirs,
    wait_quiet,
)

SIDE = 224
MODE = "aspect_crop"
LOOPS = ("plain", "full", "reduced")
_REEXEC_MARK = "FEATURELIB_BENCH_DECODE_REEXEC"


def _with_worker_env() -> None:
    """Re-execute once with the engines' worker environment (glibc reads it at start-up)."""
    from featurelib import worker

    wanted = worker.environment(worker.WorkerSettings(threads=1))
    if not os.environ.get(_REEXEC_MARK) and any(os.environ.get(k) != v for k, v in wanted.items()):
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]],
                  {**os.environ, **wanted, _REEXEC_MARK: "1"})


# --- part 1: decode + resize ------------------------------------------------------------------


def loops(blobs: list[bytes]) -> dict:
    """name -> function of no arguments running that loop over every file, returning the 224x224 images."""
    import cv2
    import numpy as np

    from featurelib.decode import decode_image
    from featurelib.transforms import resize_image

    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    target = (SIDE, SIDE, MODE)

    def plain():
        return [plain_centre_crop(cv2.imdecode(np.frombuffer(b, np.uint8), flags), SIDE) for b in blobs]

    def ours(with_target):
        return [resize_image(decode_image(b, target=with_target).pixels, (SIDE, SIDE), mode=MODE,
                             interpolation="area") for b in blobs]

    return {"plain": plain, "full": lambda: ours(None), "reduced": lambda: ours(target)}


def bench_stages(data: str, repeats: int, log) -> dict:
    import numpy as np

    from featurelib import worker
    from featurelib.decode import reduction_factor

    worker.setup(worker.WorkerSettings(threads=1))  # one core, as in every engine's worker
    paths = sorted(glob.glob(os.path.join(data, "*", "*-large-*.jpg")))
    blobs = []
    for path in paths:
        with open(path, "rb") as handle:
            blobs.append(handle.read())
    n = len(blobs)
    factor = reduction_factor(1500, 2000, (SIDE, SIDE, MODE))
    calls = loops(blobs)
    outputs = {name: np.stack(call()) for name, call in calls.items()}  # warm-up, and the pixels compared
    mad = {name: round(float(np.abs(outputs[name].astype(np.int16) - outputs["plain"]).mean()), 3)
           for name in ("full", "reduced")}
    assert mad["full"] == 0.0, mad  # featurelib's full path does exactly the plain loop's work
    cpu: dict[str, list[float]] = {name: [] for name in LOOPS}
    wall: dict[str, list[float]] = {name: [] for name in LOOPS}
    foreign = []
    for rep in range(repeats):
        wait_quiet(log)
        m0, c_all, t_all = machine_busy_s(), time.process_time(), time.perf_counter()
        for name in LOOPS if rep % 2 == 0 else reversed(LOOPS):
            c0, t0 = time.process_time(), time.perf_counter()
            calls[name]()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
        spent = time.perf_counter() - t_all
        foreign.append(max(0.0, machine_busy_s() - m0 - (time.process_time() - c_all)) / spent)
        log(f"  repeat {rep + 1}/{repeats}: " + ", ".join(
            f"{name} {cpu[name][-1] * 1e3 / n:.2f} ms/img CPU ({wall[name][-1] * 1e3 / n:.2f} wall)" for name in LOOPS))

    def ratio(slow: str, fast: str, times: dict) -> float:
        return round(median([s / f for s, f in zip(times[slow], times[fast])]), 3)

    return {
        "images": n,
        "size": "2000x1500",
        "target": [SIDE, SIDE, MODE],
        "reduction": factor,
        "repeats": repeats,
        "cpu_ms_per_image": {name: round(median(v) * 1e3 / n, 3) for name, v in cpu.items()},
        "wall_ms_per_image": {name: round(median(v) * 1e3 / n, 3) for name, v in wall.items()},
        "speedup_reduced_over_plain_cpu": ratio("plain", "reduced", cpu),
        "speedup_reduced_over_plain_wall": ratio("plain", "reduced", wall),
        "speedup_reduced_over_plain_cpu_runs": [round(p / r, 3) for p, r in zip(cpu["plain"], cpu["reduced"])],
        "speedup_reduced_over_full_cpu": ratio("full", "reduced", cpu),
        "speedup_reduced_over_full_wall": ratio("full", "reduced", wall),
        "ratio_full_over_plain_cpu": ratio("plain", "full", cpu),
        "mean_abs_diff_vs_plain": mad,
        "foreign_cores_runs": [round(x, 2) for x in foreign],
    }


# --- part 2: the photos sample end to end, decode.reduce true vs false --------------------------


def bench_end_to_end(data: str, n_images: int, repeats: int, scratch: str, log) -> dict:
    """``execute()`` wall time with ``decode.reduce`` true and false, alternated, and the
    kernel's own stage timings (every shard's metrics in the manifest) per image."""
    from featurelib.driver import execute
    from featurelib.engines.local import LocalEngine
    from featurelib.spec import RunSpec

    stages = ("decode_s", "preprocess_s", "seconds")  # "seconds": a shard task's whole time
    walls: dict[str, list[float]] = {"true": [], "false": []}
    stage_ms: dict[str, dict[str, list[float]]] = {flag: {k: [] for k in stages} for flag in walls}
    foreign: dict[str, list[float]] = {"true": [], "false": []}
    for rep in range(repeats + 1):  # the first round warms the page cache and is not counted
        for flag in ("true", "false") if rep % 2 else ("false", "true"):
            doc = photos_spec(data, os.path.join(scratch, f"e2e-{flag}"), shards=8).to_dict()
            doc["decode"]["reduce"] = flag == "true"
            if rep:
                wait_quiet(log)
            m0 = machine_busy_s()
            with contextlib.redirect_stderr(io.StringIO()):
                report = execute(RunSpec.from_dict(doc), LocalEngine(2), overwrite=True, log=lambda _m: None)
            busy = machine_busy_s() - m0
            manifest = report.manifest
            assert manifest["counts"]["written_sources"] == n_images, manifest["counts"]
            if not rep:
                continue
            walls[flag].append(report.seconds)
            for key in stages:
                total = sum(shard.get(key, 0.0) for shard in manifest["metrics"]["shards"])
                stage_ms[flag][key].append(total * 1e3 / n_images)
            # cores busy beyond the two workers' task time: the driver, pool start-up, and other processes
            foreign[flag].append(max(0.0, busy - stage_ms[flag]["seconds"][-1] * n_images / 1e3) / report.seconds)
            log(f"  repeat {rep}/{repeats}: reduce={flag} {n_images / report.seconds:.1f} img/s, decode "
                f"{stage_ms[flag]['decode_s'][-1]:.2f} ms/img (other work used {foreign[flag][-1]:.2f} cores)")
    return {
        "images": n_images,
        "workers": 2,
        "shards": 8,
        "repeats": repeats,
        "img_s": {flag: round(n_images / median(v), 2) for flag, v in walls.items()},
        "speedup_wall": round(median([f / t for t, f in zip(walls["true"], walls["false"])]), 3),
        "speedup_wall_runs": [round(f / t, 3) for t, f in zip(walls["true"], walls["false"])],
        "task_ms_per_image": {flag: {k.removesuffix("_s"): round(median(v), 3) for k, v in by_stage.items()}
                              for flag, by_stage in stage_ms.items()},
        "speedup_task_time": round(median([f / t for t, f in zip(stage_ms["true"]["seconds"],
                                                                  stage_ms["false"]["seconds"])]), 3),
        "other_cores_runs": {flag: [round(x, 2) for x in v] for flag, v in foreign.items()},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=1, help="photos scale (20*K large JPEGs; end to end 4*K)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (median reported)")
    parser.add_argument("--data", help="folder to build/reuse the corpora in (default: a temporary folder)")
    parser.add_argument("--json", metavar="OUT", help="also write every figure to OUT as JSON")
    parser.add_argument("--end-to-end", action="store_true", help="also part 2: the local engine, reduce on/off")
    args = parser.parse_args(argv)
    _with_worker_env()
    scratch, base = scratch_dirs("featurelib-bench-decode-", args.data)
    try:
        info = machine()
        data, _ = photos_corpus(base, args.scale, log)
        log(f"decode + resize to {SIDE}x{SIDE} {MODE}: plain / full / reduced, {args.repeats} repeats")
        stages = bench_stages(data, args.repeats, log)
        end_to_end = None
        if args.end_to_end:
            data4, n4 = photos_corpus(base, 4 * args.scale, log)
            log(f"local engine, 2 workers, decode.reduce true vs false on {n4} images, {args.repeats} repeats")
            end_to_end = bench_end_to_end(data4, n4, args.repeats, scratch, log)
        info["loadavg_end"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    arguments = " ".join(argv if argv is not None else sys.argv[1:])
    report = {"benchmark": "bench_decode", "command": f"python benchmarks/bench_decode.py {arguments}".strip(),
              "machine": info, "stages": stages, "end_to_end": end_to_end}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(format_report(report))
    return 0


def format_report(report: dict) -> str:
    m, s, e = report["machine"], report["stages"], report["end_to_end"]
    load = f"load average {m['loadavg_start']:.2f} -> {m.get('loadavg_end', float('nan')):.2f}"
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, numpy {m['numpy']}, "
        f"OpenCV {m['opencv']}; {load}; {m['date']}",
        "",
        (f"decode + resize, {s['images']} JPEGs of {s['size']} to {s['target'][0]}x{s['target'][1]} {s['target'][2]} "
         f"(area), 1 thread, median of {s['repeats']} (reduced: DCT scale 1/{s['reduction']}):"),
        "              ms/image CPU   ms/image wall",
        *(f"  {name:<10}  {s['cpu_ms_per_image'][name]:12.2f}   {s['wall_ms_per_image'][name]:13.2f}"
          for name in LOOPS),
        (f"  reduced vs plain loop: {s['speedup_reduced_over_plain_cpu']:.2f}x faster (CPU time), "
         f"{s['speedup_reduced_over_plain_wall']:.2f}x (wall); per repeat {s['speedup_reduced_over_plain_cpu_runs']}"),
        (f"  reduced vs featurelib full-size: {s['speedup_reduced_over_full_cpu']:.2f}x (CPU), "
         f"{s['speedup_reduced_over_full_wall']:.2f}x (wall); full / plain speed {s['ratio_full_over_plain_cpu']:.3f}"),
        (f"  mean |output - plain| (levels): full {s['mean_abs_diff_vs_plain']['full']}, "
         f"reduced {s['mean_abs_diff_vs_plain']['reduced']}"),
        f"  cores used by other processes during the repeats: {s['foreign_cores_runs']}",
    ]
    if e:
        lines += [
            "",
            (f"photos end to end, local engine {e['workers']} workers, {e['images']} images, {e['shards']} shards, "
             f"execute() wall incl. start-up and commit, median of {e['repeats']}:"),
            "                         img/s (wall)   task ms/img: decode  preprocess   whole task",
            *(f"  decode.reduce: {flag:<5}  {e['img_s'][flag]:12.1f}   {e['task_ms_per_image'][flag]['decode']:19.2f}"
              f"  {e['task_ms_per_image'][flag]['preprocess']:10.2f}   {e['task_ms_per_image'][flag]['seconds']:10.2f}"
              for flag in ("true", "false")),
            (f"  speedup true / false: {e['speedup_wall']:.3f} wall (per repeat {e['speedup_wall_runs']}), "
             f"{e['speedup_task_time']:.3f} task time"),
            "  cores used beyond the workers' tasks (driver, start-up, other processes): "
            + "; ".join(f"reduce={k} {v}" for k, v in e["other_cores_runs"].items()),
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

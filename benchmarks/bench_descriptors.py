"""Each hand-crafted extractor against the reference implementation it equals, on real photographs.

    .venv/bin/python benchmarks/bench_descriptors.py [--images 60] [--repeats 5] [--bundle-scale 2] [--json OUT]

The ``photos`` sample (500x375 and 2000x1500 JPEGs of scikit-image's and
scikit-learn's photographs) is decoded, brought to 224x224 (aspect crop, area
interpolation) and converted to the gray view once; then, per extractor, the
featurelib function and its reference run over the same images, alternated,
``--repeats`` times, in one process with one native thread and the worker's
malloc settings (:func:`featurelib.worker.setup`). Reported: CPU ms per image
of each (median), and the median of the per-repeat ratios reference / featurelib
(> 1: featurelib is faster). Every pair is checked equal first.

Part 2, the exact bundle: ``color_hist`` (8x8x8 HSV) + ``hu_moments`` + ``lbp``
(8, 1, uniform) + ``hog`` (9 orientations, 16x16 cells, 2x2 blocks) at 224x224,
from the JPEG bytes of the 500x375 ``photos`` (scale ``--bundle-scale``: 100 x K
images) to feature rows. featurelib: ``process_shard`` of one task holding them
all, in this process, one thread (Parquet + HDF5 written); and the local engine
with 2 workers (``execute``, wall time, pool start and commit included). The
baseline: a plain loop in this process, one thread, calling OpenCV and
scikit-image for the same features (``imdecode``, resize and crop, ``calcHist``,
``HuMoments``, ``local_binary_pattern`` + ``bincount``, ``skimage.feature.hog``),
its features checked equal to featurelib's. Alternated, CPU time for the
one-thread pair, wall time for the engine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def load_images(n: int) -> list:
    import glob

    import cv2

    from featurelib.decode import decode_image
    from featurelib.sample_data import make_sample
    from featurelib.transforms import resize_image

    with tempfile.TemporaryDirectory(prefix="featurelib-bench-desc-") as tmp:
        make_sample("photos", tmp)
        paths = sorted(glob.glob(os.path.join(tmp, "*", "*")))[:n]
        out = []
        for path in paths:
            with open(path, "rb") as handle:
                rgb = resize_image(decode_image(handle.read()).pixels, (224, 224), mode="aspect_crop")
            out.append(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    return out


def cases():
    """(name, featurelib function, reference function, comparison) over one gray image."""
    import cv2
    import numpy as np
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern
    from skimage.feature import hog as skimage_hog

    from featurelib.descriptors.gradient import hog

    from featurelib.descriptors.shape import hu_moments, signed_log10
    from featurelib.descriptors.texture import PROPERTIES, haralick, lbp

    def skimage_lbp(points, radius, method, bins):
        def reference(gray):
            codes = local_binary_pattern(gray, points, radius, method).astype(np.int64)
            return (np.bincount(codes.ravel(), minlength=bins) / codes.size).astype(np.float32)
        return reference

    def hu_reference(gray):
        return signed_log10(cv2.HuMoments(cv2.moments(gray)).reshape(-1)).astype(np.float32)

    def haralick_reference(gray):
        q = (gray.astype(np.int64) * 32 // 256).astype(np.uint8)
        matrix = graycomatrix(q, [1, 2], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=32, symmetric=True,
                              normed=True)
        return np.stack([graycoprops(matrix, p) for p in PROPERTIES]).reshape(-1).astype(np.float32)

    return [
        ("lbp (8, 1, uniform) vs skimage", lambda g: lbp(g), skimage_lbp(8, 1, "uniform", 10)),
        ("lbp (8, 1, nri_uniform) vs skimage", lambda g: lbp(g, method="nri_uniform"),
         skimage_lbp(8, 1, "nri_uniform", 59)),
        ("lbp (24, 3, uniform) vs skimage", lambda g: lbp(g, points=24, radius=3), skimage_lbp(24, 3, "uniform", 26)),
        ("hog (defaults: 9, 8x8, 3x3, L2-Hys) vs skimage", lambda g: hog(g), lambda g: skimage_hog(g).astype(np.float32)),
        ("hog (9, 16x16 cells, 2x2 blocks) vs skimage", lambda g: hog(g, pixels_per_cell=(16, 16), cells_per_block=(2, 2)),
         lambda g: skimage_hog(g, pixels_per_cell=(16, 16), cells_per_block=(2, 2)).astype(np.float32)),
        ("hu_moments vs cv2.HuMoments", hu_moments, hu_reference),
        ("haralick (32 levels, 2 x 4) vs skimage", lambda g: haralick(g, distances=[1, 2], levels=32),
         haralick_reference),
    ]


BUNDLE = [
    {"name": "color_hist", "params": {"bins": 8, "color_space": "hsv"}},
    {"name": "hu_moments"},
    {"name": "lbp", "params": {"points": 8, "radius": 1, "method": "uniform"}},
    {"name": "hog", "params": {"orientations": 9, "pixels_per_cell": [16, 16], "cells_per_block": [2, 2]}},
]


def plain_bundle(path: str) -> np.ndarray:
    """The bundle with OpenCV and scikit-image directly: what a user would write without featurelib."""
    import cv2
    from skimage.feature import hog as skimage_hog
    from skimage.feature import local_binary_pattern

    from benchmarks.bench_kernel import plain_centre_crop
    from featurelib.descriptors.shape import signed_log10

    with open(path, "rb") as handle:
        bgr = cv2.imdecode(np.frombuffer(handle.read(), np.uint8), cv2.IMREAD_COLOR)
    bgr = plain_centre_crop(bgr, 224)
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [8, 8, 8], [0, 180, 0, 256, 0, 256]).reshape(-1) / (224 * 224)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    hu = signed_log10(cv2.HuMoments(cv2.moments(gray)).reshape(-1))
    codes = local_binary_pattern(gray, 8, 1, "uniform").astype(np.int64)
    lbp = np.bincount(codes.ravel(), minlength=10) / codes.size
    hog = skimage_hog(gray, orientations=9, pixels_per_cell=(16, 16), cells_per_block=(2, 2))
    return np.concatenate([hist, hu, lbp, hog]).astype(np.float32)


def bench_bundle(scale: int, repeats: int) -> dict:
    import glob
    import shutil

    import pyarrow.parquet as pq

    from featurelib.driver import execute
    from featurelib.engines.local import LocalEngine
    from featurelib.io.files import shard_relpath
    from featurelib.plan import plan
    from featurelib.sample_data import make_sample
    from featurelib.shard import process_shard
    from featurelib.spec import RunSpec

    tmp = tempfile.mkdtemp(prefix="featurelib-bench-bundle-")
    try:
        make_sample("photos", os.path.join(tmp, "all"), scale=scale)
        data = os.path.join(tmp, "photos")
        for path in glob.glob(os.path.join(tmp, "all", "*", "*.jpg")):
            if "-large-" not in path:  # the 500x375 photographs only
                target = os.path.join(data, os.path.relpath(path, os.path.join(tmp, "all")))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(path, target)

        def spec(out, shards):
            return RunSpec.from_dict({"features": BUNDLE, "input": {"path": data}, "seed": 7,
                                      "image": {"size": [224, 224], "resize": "aspect_crop", "interpolation": "area"},
                                      "output": {"path": out, "shards": shards}})

        (task,) = plan(spec(os.path.join(tmp, "kernel"), 1))
        paths = [r.uri for r in sorted(task.records, key=lambda r: r.source_key)]
        n = len(paths)
        process_shard(task)  # warm-up and the features to check against
        table = pq.read_table(os.path.join(tmp, "kernel", shard_relpath("parquet", 0, 1)))
        kernel_rows = np.concatenate([np.stack(table.column(c).to_numpy(zero_copy_only=False))
                                      for c in ("color_hist", "hu_moments", "lbp", "hog")], axis=1)
        plain_rows = np.stack([plain_bundle(p) for p in paths])
        worst = float(np.abs(kernel_rows - plain_rows).max())
        assert worst < 1e-5, f"the plain loop and featurelib disagree by {worst}"
        cpu = {"kernel": [], "plain": []}
        wall = {"engine": [], "plain": []}
        for rep in range(repeats):
            for side in ("kernel", "plain") if rep % 2 == 0 else ("plain", "kernel"):
                c0, t0 = time.process_time(), time.perf_counter()
                if side == "kernel":
                    process_shard(task)
                else:
                    for path in paths:
                        plain_bundle(path)
                    wall["plain"].append(time.perf_counter() - t0)
                cpu[side].append(time.process_time() - c0)
            t0 = time.perf_counter()
            execute(spec(os.path.join(tmp, "engine"), 8), LocalEngine(2), overwrite=True, log=lambda m: None)
            wall["engine"].append(time.perf_counter() - t0)
        one_thread = [p / k for k, p in zip(cpu["kernel"], cpu["plain"])]
        engine = [p / e for e, p in zip(wall["engine"], wall["plain"])]
        return {"images": n, "repeats": repeats, "max_abs_diff_vs_plain": worst,
                "kernel_cpu_ms_per_image": round(1e3 * statistics.median(cpu["kernel"]) / n, 3),
                "plain_cpu_ms_per_image": round(1e3 * statistics.median(cpu["plain"]) / n, 3),
                "speedup_one_thread": round(statistics.median(one_thread), 2),
                "speedup_one_thread_runs": [round(r, 2) for r in one_thread],
                "engine_img_s": round(n / statistics.median(wall["engine"]), 1),
                "plain_img_s": round(n / statistics.median(wall["plain"]), 1),
                "speedup_local_engine_2_workers": round(statistics.median(engine), 2),
                "speedup_local_engine_runs": [round(r, 2) for r in engine]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    import numpy as np

    from featurelib import worker

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bundle-scale", type=int, default=2, help="photos scale of part 2 (100 x K images)")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    worker.setup(worker.WorkerSettings(threads=1))
    images = load_images(args.images)
    report = {"benchmark": "bench_descriptors", "images": len(images), "repeats": args.repeats, "size": [224, 224],
              "results": {}}
    for name, ours, reference in cases():
        for gray in images[:5]:
            np.testing.assert_allclose(ours(gray), reference(gray), rtol=1e-5, atol=1e-6, err_msg=name)
        times = {"featurelib": [], "reference": []}
        for rep in range(args.repeats):
            order = (("featurelib", ours), ("reference", reference))
            for side, function in order if rep % 2 == 0 else order[::-1]:
                c0 = time.process_time()
                for gray in images:
                    function(gray)
                times[side].append((time.process_time() - c0) * 1e3 / len(images))
        ratios = [r / f for f, r in zip(times["featurelib"], times["reference"])]
        report["results"][name] = {"featurelib_ms": round(statistics.median(times["featurelib"]), 3),
                                   "reference_ms": round(statistics.median(times["reference"]), 3),
                                   "speedup": round(statistics.median(ratios), 2),
                                   "speedup_runs": [round(r, 2) for r in ratios]}
        r = report["results"][name]
        print(f"{name:<42} featurelib {r['featurelib_ms']:7.3f} ms  reference {r['reference_ms']:7.3f} ms  "
              f"speed-up {r['speedup']:5.2f}x  (per repeat {r['speedup_runs']})", flush=True)
    bundle = bench_bundle(args.bundle_scale, args.repeats)
    report["bundle"] = bundle
    print(f"bundle (color_hist 8x8x8 HSV + hu_moments + lbp 8,1 uniform + hog 9/16x16/2x2) from JPEG bytes, "
          f"{bundle['images']} photos 500x375: one thread {bundle['kernel_cpu_ms_per_image']} ms/image vs plain "
          f"{bundle['plain_cpu_ms_per_image']} ms/image = {bundle['speedup_one_thread']}x "
          f"(per repeat {bundle['speedup_one_thread_runs']}); local engine, 2 workers, "
          f"{bundle['engine_img_s']} img/s vs plain loop {bundle['plain_img_s']} img/s = "
          f"{bundle['speedup_local_engine_2_workers']}x (per repeat {bundle['speedup_local_engine_runs']}); "
          f"max |difference| {bundle['max_abs_diff_vs_plain']:.2g}", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

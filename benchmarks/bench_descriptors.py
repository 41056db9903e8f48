"""Each hand-crafted extractor against the reference implementation it equals, on real photographs.

    .venv/bin/python benchmarks/bench_descriptors.py [--images 60] [--repeats 5] [--json OUT]

The ``photos`` sample (500x375 and 2000x1500 JPEGs of scikit-image's and
scikit-learn's photographs) is decoded, brought to 224x224 (aspect crop, area
interpolation) and converted to the gray view once; then, per extractor, the
featurelib function and its reference run over the same images, alternated,
``--repeats`` times, in one process with one native thread and the worker's
malloc settings (:func:`featurelib.worker.setup`). Reported: CPU ms per image
of each (median), and the median of the per-repeat ratios reference / featurelib
(> 1: featurelib is faster). Every pair is checked equal first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

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


def main(argv=None) -> int:
    import numpy as np

    from featurelib import worker

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
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
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

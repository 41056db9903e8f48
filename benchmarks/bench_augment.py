"""Each augmentation op against the bare OpenCV / numpy call doing the same work, on real photographs.

    .venv/bin/python benchmarks/bench_augment.py [--images 40] [--repeats 7] [--json OUT]

The ``photos`` sample is decoded and brought to 224x224 (aspect crop, area
interpolation) once. Then, per op (``p: 1``, so it always applies), featurelib's
``augment_image`` with that one op and a plain loop calling OpenCV / numpy for the
same transform run over the same images, alternated, ``--repeats`` times, in one
process with one native thread and the worker's malloc settings. Reported: CPU ms
per image of each (median) and the median of the per-repeat ratios plain /
featurelib (1.0: featurelib costs nothing on top of the library call; > 1: faster).
Seeding each variant's generator is timed apart (a variant pays it once).

Part 2: the whole chain of every op (as in docs/AUGMENT.md's example, 13 ops) per
variant, against what a source costs before augmentation: decoding its 500x375
JPEG and preprocessing it to 224x224 (the kernel's decode + resize), alternated.
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

SIZE = (224, 224)


def load_photos(n: int) -> tuple[list[bytes], list[np.ndarray]]:
    """The first `n` 500x375 JPEGs of the ``photos`` sample, and their 224x224 preprocessed pixels."""
    import glob

    from featurelib.decode import decode_image
    from featurelib.sample_data import make_sample
    from featurelib.transforms import resize_image

    with tempfile.TemporaryDirectory(prefix="featurelib-bench-augment-") as tmp:
        make_sample("photos", tmp)
        paths = [p for p in sorted(glob.glob(os.path.join(tmp, "*", "*"))) if os.path.getsize(p) < 200_000][:n]
        data = [open(p, "rb").read() for p in paths]
    images = [resize_image(decode_image(d).pixels, SIZE, mode="aspect_crop") for d in data]
    return data, images


def plain_cases():
    """(op, featurelib op spec, plain function(image, rng)) doing the same transform by hand."""
    import cv2

    h, w = SIZE
    centre = ((w - 1) / 2.0, (h - 1) / 2.0)

    def warp(matrix):
        return lambda image, rng: cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR,
                                                 borderMode=cv2.BORDER_REFLECT_101)

    def shear(image, rng):
        s = np.tan(np.radians(6.0))
        return cv2.warpAffine(image, np.array([[1.0, s, -s * centre[1]], [0.0, 1.0, 0.0]]), (w, h),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)

    def crop(image, rng):
        return cv2.resize(image[20:200, 20:200], (w, h), interpolation=cv2.INTER_LINEAR)

    def mask(image, rng):
        out = image.copy()
        out[60:130, 60:130] = 0
        return out

    def brightness(image, rng):
        return np.clip(np.rint(image.astype(np.float32) * 1.1), 0, 255).astype(np.uint8)

    def contrast(image, rng):
        pixels = image.astype(np.float32)
        mean = pixels.mean(axis=(0, 1), keepdims=True)
        return np.clip(np.rint((pixels - mean) * 1.1 + mean), 0, 255).astype(np.uint8)

    def saturation(image, rng):
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None]
        return np.clip(np.rint(gray + 1.2 * (image.astype(np.float32) - gray)), 0, 255).astype(np.uint8)

    def hue(image, rng):
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)
        hsv[..., 0] += np.uint8(10)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)

    def noise(image, rng):
        return np.clip(np.rint(image + 8 * rng.standard_normal(image.shape, dtype=np.float32)), 0, 255
                       ).astype(np.uint8)

    def grayscale(image, rng):
        return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)

    return [
        ("flip", {"op": "flip", "p": 1.0}, lambda image, rng: cv2.flip(image, 1)),
        ("rotate", {"op": "rotate", "degrees": [10, 10]}, warp(cv2.getRotationMatrix2D(centre, 10.0, 1.0))),
        ("translate", {"op": "translate"}, warp(np.array([[1.0, 0.0, 12.0], [0.0, 1.0, -9.0]]))),
        ("scale", {"op": "scale", "factor": [1.1, 1.1]}, warp(cv2.getRotationMatrix2D(centre, 0.0, 1.1))),
        ("shear", {"op": "shear", "degrees": 6.0}, shear),
        ("crop", {"op": "crop"}, crop),
        ("mask", {"op": "mask", "p": 1.0}, mask),
        ("brightness", {"op": "brightness"}, brightness),
        ("contrast", {"op": "contrast"}, contrast),
        ("saturation", {"op": "saturation"}, saturation),
        ("hue", {"op": "hue"}, hue),
        ("noise", {"op": "noise"}, noise),
        ("grayscale", {"op": "grayscale", "p": 1.0}, grayscale),
    ]


def timed(function, items) -> float:
    """CPU seconds for ``function(item)`` over `items` (one thread: CPU time is the honest clock here)."""
    start = time.process_time()
    for item in items:
        function(item)
    return time.process_time() - start


def bench_ops(images: list[np.ndarray], repeats: int) -> tuple[list[dict], float]:
    """Per op: (featurelib, plain) CPU time over `images`; and the per-variant seeding cost alone.

    Each variant's generator is made outside the timed loop (its cost is reported once, separately:
    a variant pays it once, whatever its number of ops); the plain loop draws from one shared generator.
    """
    from featurelib.transforms import augment_image, normalize_op, record_rng

    keys = [f"photo-{i}.jpg#aug1" for i in range(len(images))]
    seeding = []
    rows = []
    for name, op, plain in plain_cases():
        ops = [normalize_op(op)]
        shared = np.random.default_rng(0)
        ours_s, plain_s, ratios = [], [], []
        for _ in range(repeats):
            start = time.process_time()
            rngs = [record_rng(0, key) for key in keys]
            seeding.append((time.process_time() - start) / len(keys))
            pairs = list(zip(images, rngs))
            a = timed(lambda pair: augment_image(pair[0], ops, pair[1]), pairs)
            b = timed(lambda image: plain(image, shared), images)
            ours_s.append(a)
            plain_s.append(b)
            ratios.append(b / a)
        n = len(images)
        rows.append({"op": name, "featurelib_ms": 1000 * statistics.median(ours_s) / n,
                     "plain_ms": 1000 * statistics.median(plain_s) / n, "ratio": statistics.median(ratios)})
    return rows, 1000 * statistics.median(seeding)


def bench_chain(data: list[bytes], images: list[np.ndarray], repeats: int) -> dict:
    from featurelib.decode import decode_image
    from featurelib.transforms import augment_image, normalize_op, record_rng, resize_image

    ops = [normalize_op({**op, "p": 1.0}) for _, op, _ in plain_cases()]
    chain = lambda image: augment_image(image, ops, record_rng(0, "bench#aug1"))  # noqa: E731
    source = lambda blob: resize_image(decode_image(blob).pixels, SIZE, mode="aspect_crop")  # noqa: E731
    chain_s, source_s, ratios = [], [], []
    for _ in range(repeats):
        wall = time.perf_counter()
        a = timed(chain, images)
        chain_wall = time.perf_counter() - wall
        b = timed(source, data)
        chain_s.append(a)
        source_s.append(b)
        ratios.append(a / b)
    n = len(images)
    return {"ops": len(ops), "chain_cpu_ms": 1000 * statistics.median(chain_s) / n,
            "chain_wall_ms_last": 1000 * chain_wall / n,
            "decode_resize_cpu_ms": 1000 * statistics.median(source_s) / n,
            "chain_over_decode_resize": statistics.median(ratios)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)

    from featurelib import worker

    worker.setup(worker.WorkerSettings(threads=1))
    data, images = load_photos(args.images)
    rows, seeding_ms = bench_ops(images, args.repeats)
    chain = bench_chain(data, images, args.repeats)
    print(f"augmentation ops on {len(images)} real 224x224 photos, {args.repeats} repeats, one thread, CPU time")
    print(f"{'op':<12}{'featurelib ms':>14}{'plain ms':>10}{'plain/featurelib':>18}")
    for row in rows:
        print(f"{row['op']:<12}{row['featurelib_ms']:>14.3f}{row['plain_ms']:>10.3f}{row['ratio']:>18.2f}")
    print(f"seeding a variant's generator (sha256 of seed and key, then a new Generator): {seeding_ms:.3f} ms, "
          "once per variant")
    print(f"all {chain['ops']} ops chained: {chain['chain_cpu_ms']:.2f} ms CPU per variant "
          f"({chain['chain_wall_ms_last']:.2f} ms wall, last repeat); decode + resize of its 500x375 JPEG source: "
          f"{chain['decode_resize_cpu_ms']:.2f} ms; chain / source = {chain['chain_over_decode_resize']:.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"ops": rows, "seeding_ms": seeding_ms, "chain": chain, "images": len(images), "repeats": args.repeats}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

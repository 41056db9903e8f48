"""VGG16 features in the pipeline against bare Keras ``predict`` on the same images and the same 2 cores.

    .venv/bin/python benchmarks/bench_vgg16.py [--images 64] [--repeats 2] [--configs local-2x1,local-1x2] [--json OUT]

Images: the first ``2N`` JPEGs of the ``photos`` sample (N = ``--images``), brought to 224x224
(aspect crop, area). Weights: VGG16 without top, random (seeded) and saved as ``.weights.h5`` (ImageNet's
cannot be downloaded here; the speed is the same), ``block5_pool`` flattened (25,088 values).

* bare Keras: ``model.predict(preprocess_input(x), batch_size=16)`` in this process on the N decoded and
  preprocessed images, TensorFlow's intra- and inter-op pools set to the machine's cores, after one
  warm-up call. ``predict`` sometimes keeps a whole call on one core (seen in whole runs: 1.56 img/s
  against 3.1 on two), so each repeat also times ``predict_on_batch`` batch by batch and the baseline
  is the faster of the two: the pipeline is held to Keras at its best;
* in the pipeline: ``featurize run`` over the 2N images in a fresh process per run, Parquet output,
  16 shards, with each configuration: ``local-2x1`` (2 worker processes, 1 thread each: the default),
  ``local-1x2`` (1 worker, 2 threads), ``beam`` (2 worker processes), ``spark`` (``local[2]``). The
  steady rate leaves out each worker process's first shard task (TensorFlow's import, reading the
  weights, building the model): per worker process, the rows of its later tasks over their seconds
  (the manifest's per-task metrics), summed over the processes, which run side by side.

The configurations alternate with the bare Keras measurement within each repeat; reported: images/s of
each (median) and the median of the per-repeat ratios pipeline / bare Keras, with the CPU seconds per
image (the run's whole process tree, sampled from /proc, start-up included) next to the wall time.
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
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SIZE = (224, 224)
CONFIGS = {
    "local-2x1": ["--engine", "local", "--workers", "2", "--threads-per-worker", "1"],
    "local-1x2": ["--engine", "local", "--workers", "1", "--threads-per-worker", "2"],
    "beam": ["--engine", "beam", "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
    "spark": ["--engine", "spark", "--master", "local[2]", "--conf", "spark.ui.enabled=false"],
}


def corpus(base: str, n: int) -> tuple[str, str]:
    """Two input folders: the first `n` and the first `2n` JPEGs of the photos sample (500x375 ones)."""
    from featurelib.sample_data import make_sample

    sample = os.path.join(base, "sample")
    make_sample("photos", sample, scale=max(1, -(-2 * n // 80)))
    paths = [p for p in sorted(glob.glob(os.path.join(sample, "*", "*"))) if os.path.getsize(p) < 200_000][: 2 * n]
    if len(paths) < 2 * n:
        raise SystemExit(f"the photos sample has {len(paths)} small JPEGs, fewer than {2 * n}")
    folders = []
    for count in (n, 2 * n):
        folder = os.path.join(base, f"in-{count}")
        for path in paths[:count]:
            target = os.path.join(folder, os.path.relpath(path, sample))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(path, target)
        folders.append(folder)
    return folders[0], folders[1]


def decoded(folder: str) -> np.ndarray:
    from featurelib.decode import decode_image
    from featurelib.transforms import resize_image

    images = []
    for path in sorted(glob.glob(os.path.join(folder, "*", "*"))):
        with open(path, "rb") as handle:
            images.append(resize_image(decode_image(handle.read()).pixels, SIZE, mode="aspect_crop"))
    return np.stack(images)


def write_weights_and_spec(base: str) -> str:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(*SIZE, 3))
    weights = os.path.join(base, "vgg16.weights.h5")
    model.save_weights(weights)
    import yaml

    spec = os.path.join(base, "spec.yaml")
    with open(spec, "w") as handle:
        yaml.safe_dump({"spec_version": 1, "seed": 1,
                        "image": {"size": list(SIZE), "resize": "aspect_crop", "interpolation": "area"},
                        "features": [{"name": "vgg16", "params": {"weights": weights}}],
                        "output": {"formats": ["parquet"], "shards": 8}}, handle)
    return spec


def bare_keras(weights_spec: str, images: np.ndarray):
    """A callable timing bare Keras over `images`: ``(wall, cpu)`` of the faster of ``predict`` and
    ``predict_on_batch`` (model built and warmed up once)."""
    import keras
    import yaml

    with open(weights_spec) as handle:
        weights = yaml.safe_load(handle)["features"][0]["params"]["weights"]
    model = keras.applications.VGG16(include_top=False, weights=weights, input_shape=(*SIZE, 3))
    flat = keras.Model(model.input, keras.layers.Flatten()(model.output))
    x = keras.applications.vgg16.preprocess_input(images.astype(np.float32))
    flat.predict(x[:16], batch_size=16, verbose=0)

    def timed(call) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        return time.perf_counter() - wall, time.process_time() - cpu

    def measure() -> tuple[float, float]:
        whole = timed(lambda: flat.predict(x, batch_size=16, verbose=0))
        batched = timed(lambda: [flat.predict_on_batch(x[i: i + 16]) for i in range(0, len(x), 16)])
        return min(whole, batched)
    return measure


def pipeline_run(spec: str, folder: str, out: str, config: str) -> tuple[float, float, float]:
    """Steady images/s (see the module docstring), wall and CPU seconds (whole process tree) of one run."""
    from benchmarks.bench_kernel import TreeCpu

    featurize = os.path.join(os.path.dirname(sys.executable), "featurize")
    wall = time.perf_counter()
    process = subprocess.Popen([featurize, "run", "--spec", spec, "--input", folder, "--output", out, "--overwrite",
                                "--shards", "16", *CONFIGS[config]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    tree = TreeCpu(process.pid)  # workers are grandchildren (forkserver, JVM): /proc, not RUSAGE_CHILDREN
    _, stderr = process.communicate()
    wall = time.perf_counter() - wall
    used = tree.snapshot()
    tree.stop()
    if process.returncode != 0:
        raise SystemExit(f"{config} failed ({process.returncode}):\n{stderr[-3000:]}")
    with open(os.path.join(out, "_manifest.json"), encoding="utf-8") as handle:
        shards = json.load(handle)["metrics"]["shards"]
    per_pid: dict[int, list[tuple[int, float]]] = {}
    for shard in shards:  # in shard order; a process's first task built its state
        if not shard["state_built"]:
            per_pid.setdefault(shard["pid"], []).append((shard["written_rows"], shard["seconds"]))
    rate = sum(sum(r for r, _ in tasks) / sum(t for _, t in tasks) for tasks in per_pid.values() if tasks)
    return rate, wall, used["user_s"] + used["sys_s"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--configs", default="local-2x1,local-1x2")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configs {unknown}; known: {sorted(CONFIGS)}")

    import tensorflow as tf  # its pools are fixed at first use (the weights file is written with Keras)

    tf.config.threading.set_intra_op_parallelism_threads(os.cpu_count() or 1)
    tf.config.threading.set_inter_op_parallelism_threads(os.cpu_count() or 1)
    n = args.images
    with tempfile.TemporaryDirectory(prefix="featurelib-bench-vgg16-") as base:
        small, large = corpus(base, n)
        spec = write_weights_and_spec(base)
        measure = bare_keras(spec, decoded(small))
        rows = {name: [] for name in ["keras", *configs]}
        for repeat in range(args.repeats):
            keras_wall, keras_cpu = measure()
            rows["keras"].append({"rate": n / keras_wall, "cpu_per_image": keras_cpu / n})
            order = configs[repeat % len(configs):] + configs[: repeat % len(configs)]
            for config in order:
                rate, wall, cpu = pipeline_run(spec, large, os.path.join(base, "out"), config)
                rows[config].append({"rate": rate, "cpu_per_image": cpu / (2 * n), "wall_s": wall,
                                     "ratio": rate / rows["keras"][-1]["rate"]})
                print(f"repeat {repeat + 1}: {config:<10} {rate:6.2f} img/s steady, run {wall:5.1f} s "
                      f"(bare Keras {rows['keras'][-1]['rate']:.2f} img/s), ratio {rows[config][-1]['ratio']:.3f}",
                      flush=True)
    print(f"\nVGG16 block5_pool flatten at 224x224: bare Keras on {n} images, the pipeline on {2 * n}, "
          f"{args.repeats} repeats, 2 cores")
    print(f"{'':<12}{'img/s':>8}{'CPU s/img':>11}{'vs Keras':>10}{'run s':>8}   (CPU: whole run, start-up included)")
    summary = {}
    for name, values in rows.items():
        rate = statistics.median(v["rate"] for v in values)
        cpu = statistics.median(v["cpu_per_image"] for v in values)
        ratio = statistics.median(v["ratio"] for v in values) if name != "keras" else 1.0
        run = statistics.median(v["wall_s"] for v in values) if name != "keras" else 0.0
        summary[name] = {"rate": rate, "cpu_per_image": cpu, "ratio": ratio, "wall_s": run, "repeats": values}
        print(f"{name:<12}{rate:>8.2f}{cpu:>11.3f}{ratio:>10.3f}{run:>8.1f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"images": n, "summary": summary}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

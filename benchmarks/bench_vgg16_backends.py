"""VGG16 features: bare Keras against featurelib's ONNX graph on ONNX Runtime and OpenCV DNN, fp32 and int8.

    .venv/bin/python benchmarks/bench_vgg16_backends.py [--images 64] [--repeats 3] [--batch 16] [--threads 2]
                                                          [--qoperator] [--json OUT]

``--images`` photographs of the ``photos`` sample (spread over its ten
classes, 500x375 and 2000x1500 JPEGs) are decoded and brought to 224x224
(``aspect_crop``, ``area``) once. Features: ``block5_pool`` flattened (25,088
values), VGG16 with seeded random weights (the speed does not depend on the
values; nothing is downloaded). The sides, each given ``--threads`` native
threads (2: the whole machine) and batches of ``--batch`` images:

- ``keras predict``: the baseline, bare Keras as a user writes it:
  ``model.predict(preprocess_input(x), batch_size=...)``, TensorFlow's intra-
  and inter-op pools set to the threads (as the worker environment sets them);
  and ``keras predict_on_batch``, the same network called batch by batch:
  ``predict`` sometimes keeps to one core for a whole call (seen after an idle
  moment, and in whole runs: 1.56 img/s at 1.0 cores against 3.1..3.5 at 1.95),
  ``predict_on_batch`` did not, so it shows Keras' two-core speed. CPU time per
  image is the same either way, which makes the CPU ratios the steadier figure;
- ``onnxruntime fp32`` and ``opencv fp32``: :class:`featurelib.deep.onnx_graph.OnnxVGG16`
  on the graph :func:`~featurelib.deep.onnx_graph.build_vgg16` wrote from the same
  Keras weights (preprocessing inside the graph, raw pixels in);
- ``onnxruntime int8 (QDQ)``: ``precision="int8"``, the model
  :func:`~featurelib.deep.onnx_graph.quantize_int8` makes (its quantisation time is
  reported); with ``--qoperator`` also ``onnxruntime int8 (QOperator)``: the same
  calibration written in the QOperator format, to compare the formats (QDQ
  was faster: 3.5x vs 2.9x Keras' img/s, 3.1x vs 2.8x its CPU time, in one run
  of 3 rounds; the errors are identical; off by default to keep a run short).

Every side first runs one batch (warm-up). The fp32 sides must equal Keras
within 1e-4 relative norm per image, checked on that batch before the timed
rounds and on all images after them (the run fails otherwise); int8's relative
error against ONNX Runtime fp32 is reported (median, max over the images). The
``--repeats`` timed rounds alternate the sides (the order reverses every other
round), each round after waiting (up to 60 s) for a quiet machine. Reported: images/s (wall), CPU
seconds per image (``time.process_time``: every thread of this process), the
cores other processes used meanwhile, and the ratios against Keras measured in
the same round (wall: img/s over Keras' img/s; CPU: Keras' CPU s per image over
the side's), median of the per-round ratios. The process re-executes itself
once with the environment the engines give their workers
(``featurelib.worker.environment`` at ``--threads`` threads).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import bench_kernel as common  # noqa: E402  (machine facts, quiet waits, the photos corpus)

SIDE = 224
LAYER, POOLING = "block5_pool", "flatten"
PARITY = 1e-4
BASELINE = "keras predict"
_REEXEC_MARK = "FEATURELIB_BENCH_VGG16_REEXEC"


def _with_worker_env(threads: int) -> None:
    """Re-execute once with a worker's environment at `threads` threads (glibc, TF read it at start-up)."""
    from featurelib import worker

    wanted = worker.environment(worker.WorkerSettings(threads=threads))
    if not os.environ.get(_REEXEC_MARK) and any(os.environ.get(k) != v for k, v in wanted.items()):
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]],
                  {**os.environ, **wanted, _REEXEC_MARK: "1"})


def load_images(data: str, n: int) -> np.ndarray:
    """`n` photos spread over the sample (sorted paths, evenly spaced), 224x224 RGB uint8."""
    from featurelib.decode import decode_image
    from featurelib.transforms import resize_image

    paths = sorted(glob.glob(os.path.join(data, "*", "*.jpg")))
    picks = [paths[i] for i in np.linspace(0, len(paths) - 1, n).round().astype(int)]
    images = []
    for path in picks:
        pixels = decode_image(pathlib.Path(path).read_bytes()).pixels
        images.append(resize_image(pixels, (SIDE, SIDE), mode="aspect_crop", interpolation="area"))
    return np.stack(images)


def relative(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||a - b|| / ||b|| per row."""
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def check_parity(features: dict[str, np.ndarray], what: str) -> dict[str, float]:
    """Max relative difference of the fp32 sides from Keras; raises beyond PARITY or on empty features."""
    ref = features[BASELINE]
    assert (ref != 0).mean() > 0.2, "Keras features mostly zero: the check would be empty"
    parity = {name: float(relative(features[name], ref).max()) for name in ("onnxruntime fp32", "opencv fp32")}
    assert max(parity.values()) <= PARITY, f"fp32 features differ from Keras on {what}: {parity}"
    return parity


def make_sides(threads: int, batch: int, qoperator: bool) -> tuple[dict, dict]:
    """name -> function(images) -> (N, 25088) features; and facts about the setup (quantisation times)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras
    from keras.applications.vgg16 import preprocess_input

    from featurelib.deep import onnx_graph as og

    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(weights=None, include_top=False, input_shape=(SIDE, SIDE, 3))
    weights = {layer.name: layer.get_weights() for layer in model.layers if layer.get_weights()}
    fp32 = og.build_vgg16(weights, layer=LAYER, pooling=POOLING, height=SIDE, width=SIDE)
    facts = {"model_mb": round(len(fp32) / 1e6, 1)}
    started = time.perf_counter()
    qdq = og.quantize_int8(fp32)
    facts["quantize_s"] = round(time.perf_counter() - started, 1)
    runners = {
        "onnxruntime fp32": og.OnnxVGG16(fp32, runtime="onnxruntime", threads=threads),
        "opencv fp32": og.OnnxVGG16(fp32, runtime="opencv", threads=threads),
        "onnxruntime int8 (QDQ)": og.OnnxVGG16(qdq, runtime="onnxruntime", precision="int8", threads=threads),
    }
    if qoperator:
        started = time.perf_counter()
        blob = og._quantize(fp32, quant_format="QOperator")
        facts["quantize_qoperator_s"] = round(time.perf_counter() - started, 1)
        runners["onnxruntime int8 (QOperator)"] = og.OnnxVGG16(blob, runtime="onnxruntime", precision="int8",
                                                               threads=threads)

    def keras_predict(images):
        return model.predict(preprocess_input(images.astype(np.float32)), batch_size=batch, verbose=0).reshape(
            len(images), -1)

    def keras_predict_on_batch(images):
        return np.concatenate([model.predict_on_batch(preprocess_input(images[i: i + batch].astype(np.float32)))
                               .reshape(len(images[i: i + batch]), -1) for i in range(0, len(images), batch)])

    def batched(runner):
        return lambda images: np.concatenate([runner.run(images[i: i + batch]) for i in range(0, len(images), batch)])

    sides = {BASELINE: keras_predict, "keras predict_on_batch": keras_predict_on_batch}
    return {**sides, **{name: batched(r) for name, r in runners.items()}}, facts


def bench(images: np.ndarray, repeats: int, threads: int, batch: int, qoperator: bool) -> dict:
    n = len(images)
    sides, facts = make_sides(threads, batch, qoperator)
    common.log(f"setup: model {facts['model_mb']} MB, int8 quantisation {facts['quantize_s']} s; warm-up on one batch")
    warm = {name: side(images[:batch]) for name, side in sides.items()}
    check_parity(warm, "the warm-up batch")  # fail before the timed rounds
    wall: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    foreign: dict[str, list[float]] = {name: [] for name in sides}
    features: dict[str, np.ndarray] = {}
    for rep in range(repeats):
        common.wait_quiet(common.log)
        order = list(sides) if rep % 2 == 0 else list(sides)[::-1]
        for name in order:
            busy0, c0, t0 = common.machine_busy_s(), time.process_time(), time.perf_counter()
            features[name] = sides[name](images)
            t, c = time.perf_counter() - t0, time.process_time() - c0
            wall[name].append(t)
            cpu[name].append(c)
            foreign[name].append(max(0.0, common.machine_busy_s() - busy0 - c) / t)
        common.log(f"  round {rep + 1}: " + ", ".join(f"{name} {n / wall[name][-1]:.2f} img/s" for name in sides))
    parity = check_parity(features, f"all {n} images")
    int8_error = {}
    for name in sides:
        if "int8" in name:
            error = relative(features[name], features["onnxruntime fp32"])
            int8_error[name] = {"median": float(np.median(error)), "max": float(error.max()),
                                "max_vs_keras": float(relative(features[name], features[BASELINE]).max())}
    results = {}
    for name in sides:
        wall_ratio = [k / s for k, s in zip(wall[BASELINE], wall[name])]
        cpu_ratio = [k / s for k, s in zip(cpu[BASELINE], cpu[name])]
        on_batch_ratio = [k / s for k, s in zip(wall["keras predict_on_batch"], wall[name])]
        results[name] = {"img_s": round(n / common.median(wall[name]), 2),
                         "cpu_s_per_image": round(common.median(cpu[name]) / n, 3),
                         "vs_keras_wall": round(common.median(wall_ratio), 2),
                         "vs_keras_wall_runs": [round(r, 2) for r in wall_ratio],
                         "vs_keras_cpu": round(common.median(cpu_ratio), 2),
                         "vs_keras_cpu_runs": [round(r, 2) for r in cpu_ratio],
                         "vs_keras_predict_on_batch_wall": round(common.median(on_batch_ratio), 2),
                         "other_cores": round(common.median(foreign[name]), 2)}
    faster = {clock: max(("onnxruntime fp32", "opencv fp32"), key=lambda name: results[name][f"vs_keras_{clock}"])
              for clock in ("wall", "cpu")}
    return {"images": n, "size": [SIDE, SIDE], "layer": LAYER, "pooling": POOLING, "batch": batch,
            "threads": threads, "repeats": repeats, **facts, "parity_max_rel_vs_keras": parity,
            "int8_rel_error_vs_fp32": int8_error, "faster_fp32": faster, "sides": results}


def format_report(report: dict) -> str:
    m, r = report["machine"], report["result"]
    lines = [
        (f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, numpy {m['numpy']}, OpenCV {m['opencv']}; "
         f"load average {m['loadavg_start']:.2f} -> {m.get('loadavg_end', float('nan')):.2f}; {m['date']}"),
        "",
        (f"VGG16 {r['layer']} {r['pooling']} at {r['size'][0]}x{r['size'][1]}, {r['images']} photos, batches of "
         f"{r['batch']}, {r['threads']} threads each, median of {r['repeats']} rounds:"),
        (f"  (vs Keras: against {BASELINE}; vs on_batch: against keras predict_on_batch, wall)"),
        "  side                            img/s   CPU s/img   vs Keras wall   vs Keras CPU   vs on_batch   "
        "other cores   per-round wall ratios",
    ]
    for name, s in r["sides"].items():
        lines.append(f"  {name:<30} {s['img_s']:6.2f}   {s['cpu_s_per_image']:9.3f}   {s['vs_keras_wall']:13.2f}   "
                     f"{s['vs_keras_cpu']:12.2f}   {s['vs_keras_predict_on_batch_wall']:11.2f}   "
                     f"{s['other_cores']:11.2f}   {s['vs_keras_wall_runs']}")
    lines += [
        "  fp32 max relative difference vs Keras: " + ", ".join(f"{k} {v:.2g}" for k, v in
                                                               r["parity_max_rel_vs_keras"].items()),
        "  int8 relative error vs onnxruntime fp32: " + "; ".join(
            f"{k} median {v['median']:.4f}, max {v['max']:.4f} (max vs Keras {v['max_vs_keras']:.4f})"
            for k, v in r["int8_rel_error_vs_fp32"].items()),
        (f"  faster fp32 runtime: {r['faster_fp32']['wall']} (wall), {r['faster_fp32']['cpu']} (CPU time); "
         f"int8 quantisation (calibration included) "
         f"{r['quantize_s']} s; fp32 model {r['model_mb']} MB"),
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
    parser.add_argument("--batch", type=int, default=16, help="images per predict / run call")
    parser.add_argument("--threads", type=int, default=2, help="native threads of every side")
    parser.add_argument("--qoperator", action="store_true", help="also int8 in the QOperator format")
    parser.add_argument("--json", metavar="OUT", help="also write every figure to OUT as JSON")
    args = parser.parse_args(argv)
    _with_worker_env(args.threads)
    info = common.machine()
    with tempfile.TemporaryDirectory(prefix="featurelib-bench-vgg16-") as scratch:
        data, _ = common.photos_corpus(scratch, 1, common.log)
        images = load_images(data, args.images)
    result = bench(images, args.repeats, args.threads, args.batch, args.qoperator)
    info["loadavg_end"] = os.getloadavg()[0]
    command = ["python", "benchmarks/bench_vgg16_backends.py", *(argv if argv is not None else sys.argv[1:])]
    report = {"benchmark": "bench_vgg16_backends", "command": " ".join(command), "machine": info, "result": result}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What ``precision: int8`` does to VGG16 features: their error, and a classifier's decisions.

    .venv/bin/python benchmarks/bench_vgg16_int8.py [--scale 1] [--splits 10] [--json OUT]

The ``photos`` sample (10 classes, 120 real photographs per ``--scale``, 500x375
and 2000x1500 JPEGs) is decoded and brought to 224x224 (``aspect_crop``,
``area``), then VGG16 ``block5_pool`` features are computed twice from the same
weights (seeded random weights saved by Keras: ImageNet's cannot be downloaded
here): fp32 (:class:`~featurelib.deep.onnx_graph.OnnxVGG16` on ONNX Runtime) and
int8 (:func:`~featurelib.deep.onnx_graph.quantize_int8`, static QDQ).

Reported, for ``flatten`` (25,088 values) and ``avg`` (512; the spatial mean of
the same tensor):

- the relative error of int8 against fp32, ``||a - b|| / ||b||`` per image
  (median, 95th percentile, max);
- the **agreement** of a classifier trained on fp32 features when it is given
  int8 ones: over ``--splits`` seeded stratified halves (train / test), a
  standardised logistic regression is fitted on the fp32 train half, then
  predicts the test half from fp32 and from int8 features; agreement = the
  fraction of test images with the same predicted class; also both accuracies,
  and how far int8 moves the predicted probabilities (per image, the largest
  change of a class probability; median over the test half). Median and
  minimum (worst) over the splits.

This is a measurement of effect, not of speed (``bench_vgg16_backends.py``
times int8): it can run on a busy machine.
"""

from __future__ import annotations

import argparse
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

from benchmarks import bench_kernel as common  # noqa: E402  (machine facts, the photos corpus)
from benchmarks.bench_vgg16_backends import SIDE, relative  # noqa: E402

BATCH = 16


def labelled_images(data: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every photo of the sample at 224x224 ``(N, 224, 224, 3)`` uint8, its class index ``(N,)``
    (classes sorted by folder name), and the class names."""
    from featurelib.decode import decode_image
    from featurelib.transforms import resize_image

    classes = sorted(p.name for p in pathlib.Path(data).iterdir() if p.is_dir())
    images, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted(pathlib.Path(data, name).glob("*.jpg")):
            pixels = decode_image(path.read_bytes()).pixels
            images.append(resize_image(pixels, (SIDE, SIDE), mode="aspect_crop", interpolation="area"))
            labels.append(index)
    return np.stack(images), np.asarray(labels), classes


def features(images: np.ndarray) -> dict[str, np.ndarray]:
    """fp32 and int8 ``block5_pool`` flatten features, ``(N, 25088)`` each, and the quantisation time."""
    import keras

    from featurelib.deep import onnx_graph as og

    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(weights=None, include_top=False, input_shape=(SIDE, SIDE, 3))
    weights = {layer.name: layer.get_weights() for layer in model.layers if layer.get_weights()}
    fp32 = og.build_vgg16(weights, layer="block5_pool", pooling="flatten", height=SIDE, width=SIDE)
    started = time.perf_counter()
    int8 = og.quantize_int8(fp32)
    quantize_s = time.perf_counter() - started
    out = {}
    for name, runner in (("fp32", og.OnnxVGG16(fp32, threads=2)),
                         ("int8", og.OnnxVGG16(int8, precision="int8", threads=2))):
        out[name] = np.concatenate([runner.run(images[i: i + BATCH]) for i in range(0, len(images), BATCH)])
    return {**out, "quantize_s": quantize_s}


def avg_pool(flat: np.ndarray) -> np.ndarray:
    """``(N, 7*7*512)`` flattened NHWC -> ``(N, 512)`` spatial mean (``pooling: avg``)."""
    return flat.reshape(len(flat), -1, 512).mean(axis=1)


def agreement(fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray, splits: int) -> dict:
    """Classifier trained on fp32, tested on fp32 and int8, over seeded stratified halves."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = []
    for train, test in StratifiedShuffleSplit(n_splits=splits, test_size=0.5, random_state=0).split(fp32, labels):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        model.fit(fp32[train], labels[train])
        pa, pb = model.predict_proba(fp32[test]), model.predict_proba(int8[test])
        a, b = pa.argmax(axis=1), pb.argmax(axis=1)
        rows.append({"agreement": float((a == b).mean()), "acc_fp32": float((a == labels[test]).mean()),
                     "acc_int8": float((b == labels[test]).mean()), "test_images": int(len(test)),
                     # an accurate classifier agrees almost by construction: how far do the probabilities move?
                     "prob_shift": float(np.median(np.abs(pa - pb).max(axis=1)))})
    summary = {key: {"median": float(np.median([r[key] for r in rows])), "min": float(min(r[key] for r in rows)),
                     "max": float(max(r[key] for r in rows))}
               for key in ("agreement", "acc_fp32", "acc_int8", "prob_shift")}
    return {**summary, "test_images": rows[0]["test_images"], "splits": splits}


def error(fp32: np.ndarray, int8: np.ndarray) -> dict:
    e = relative(int8, fp32)
    return {"median": float(np.median(e)), "p95": float(np.percentile(e, 95)), "max": float(e.max())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=1, help="copies of the photos sample (120 images each)")
    parser.add_argument("--splits", type=int, default=10, help="seeded train/test halves")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    info = common.machine()
    with tempfile.TemporaryDirectory(prefix="featurelib-bench-int8-") as scratch:
        data, _ = common.photos_corpus(scratch, args.scale, common.log)
        images, labels, classes = labelled_images(data)
    common.log(f"{len(images)} images, {len(classes)} classes; computing fp32 and int8 features")
    feats = features(images)
    result = {"images": len(images), "classes": len(classes), "quantize_s": round(feats["quantize_s"], 1)}
    for pooling, transform in (("flatten", lambda x: x), ("avg", avg_pool)):
        fp32, int8 = transform(feats["fp32"]), transform(feats["int8"])
        result[pooling] = {"rel_error": error(fp32, int8), "classifier": agreement(fp32, int8, labels, args.splits)}
    report = {"benchmark": "bench_vgg16_int8", "command": " ".join(["python", "benchmarks/bench_vgg16_int8.py",
                                                                     *(argv if argv is not None else sys.argv[1:])]),
              "machine": info, "result": result}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"machine: {info['cpu']}, {info['cores']} cores; {info['date']}")
    print(f"VGG16 block5_pool at {SIDE}x{SIDE}, {result['images']} photos, {result['classes']} classes, "
          f"int8 quantisation {result['quantize_s']} s")
    for pooling in ("flatten", "avg"):
        r = result[pooling]
        e, k = r["rel_error"], r["classifier"]
        print(f"  {pooling:8s} int8 vs fp32 relative error: median {e['median']:.4f}, p95 {e['p95']:.4f}, "
              f"max {e['max']:.4f}")
        print(f"  {pooling:8s} classifier trained on fp32 ({k['splits']} halves, {k['test_images']} test images): "
              f"agreement median {k['agreement']['median']:.3f} (min {k['agreement']['min']:.3f}); accuracy "
              f"fp32 {k['acc_fp32']['median']:.3f}, int8 {k['acc_int8']['median']:.3f}; largest class-probability "
              f"change per image, median {k['prob_shift']['median']:.4f} (worst split {k['prob_shift']['max']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

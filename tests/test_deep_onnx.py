"""The ONNX VGG16 built from Keras weights gives Keras' features on both runtimes; int8 is deterministic.

One Keras VGG16 without top (random glorot weights, seeded) serves every block test at small
sizes; the fc1/fc2 test builds the 138M-parameter model with top once, at 224x224.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

import keras  # noqa: E402  (the deep and onnx extras are part of the test install)
import onnx  # noqa: E402,F401
import onnxruntime  # noqa: E402,F401

from featurelib.deep import onnx_graph as og  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
#: ||onnx - keras|| / ||keras|| per image, fp32 (measured: ONNX Runtime < 1e-6, OpenCV Winograd < 5e-6).
PARITY = 1e-4
#: int8 vs fp32, per image, these weights at 32x32 (measured: median 0.025, max 0.029; at 224x224 on 64
#: photos of the sample, bench_vgg16_backends.py: median 0.029, max 0.043).
INT8_ERROR = 0.05


def photos(height: int, width: int) -> np.ndarray:
    """Real photographs, centre crops to (height, width), uint8 RGB (the int8 calibration set holds a
    similar crop of each: the int8 error here is no estimate for unseen images; the benchmark's is)."""
    from featurelib.sample_data import load_photo_bgr
    from featurelib.transforms import resize_image

    return np.stack([resize_image(np.ascontiguousarray(load_photo_bgr(name)[..., ::-1]), (height, width),
                                  mode="aspect_crop") for name in PHOTOS])


def relative(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def keras_input(images: np.ndarray) -> np.ndarray:
    """What bare Keras gets: preprocess_input of a float32 copy (it works in place)."""
    from keras.applications.vgg16 import preprocess_input

    return preprocess_input(images.astype(np.float32))


def check_reference(ref: np.ndarray) -> None:
    """Random weights can kill every unit after a few ReLUs: the comparison must be non-trivial."""
    assert np.isfinite(ref).all()
    assert (ref != 0).mean() > 0.2, "reference features are mostly zero: the comparison would be empty"
    assert np.linalg.norm(ref - ref.mean(axis=0), axis=1).min() > 1e-3 * np.linalg.norm(ref, axis=1).max()


@pytest.fixture(scope="module")
def notop():
    """(Keras VGG16 without top, any input size, seeded glorot weights; its weights dict)."""
    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(weights=None, include_top=False, input_shape=(None, None, 3))
    return model, {layer.name: layer.get_weights() for layer in model.layers if layer.get_weights()}


def keras_features(model, layer: str, poolings, x: np.ndarray) -> dict[str, np.ndarray]:
    """Bare Keras: ``predict`` of the sub-model up to `layer` on ``preprocess_input(x)``, then Keras'
    Flatten / GlobalAveragePooling2D / GlobalMaxPooling2D on its output, per pooling."""
    heads = {"flatten": keras.layers.Flatten, "avg": keras.layers.GlobalAveragePooling2D,
             "max": keras.layers.GlobalMaxPooling2D}
    sub = model if layer == model.layers[-1].name else keras.Model(model.input, model.get_layer(layer).output)
    maps = sub.predict(keras_input(x), verbose=0)
    return {p: keras.ops.convert_to_numpy(heads[p]()(maps)) for p in poolings}


def test_graphs_pass_the_onnx_checker(notop):
    """The block graphs (every pooling, an inner layer, a non-square input) are valid ONNX of OPSET
    with full shape inference; the top's graph is checked in the fc test (it needs 224x224)."""
    import onnx
    import onnx.numpy_helper

    _model, weights = notop
    for layer, pooling in [("block5_pool", "flatten"), ("block5_pool", "avg"), ("block5_pool", "max"),
                           ("block2_conv1", "flatten")]:
        blob = og.build_vgg16(weights, layer=layer, pooling=pooling, height=32, width=48)
        onnx.checker.check_model(blob, full_check=True)
        model = onnx.load_model_from_string(blob)
        assert [o.version for o in model.opset_import] == [og.OPSET]
        assert og.model_properties(blob) == {p.key: p.value for p in model.metadata_props}
    # the weights (written into the bytes directly) read back as the Keras arrays, OIHW
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert sorted(stored) == sorted(f"{name}/{part}" for name in ("block1_conv1", "block1_conv2", "block2_conv1")
                                    for part in ("kernel", "bias")) + ["caffe_mean_rgb"]
    np.testing.assert_array_equal(stored["block2_conv1/kernel"], weights["block2_conv1"][0].transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(stored["block2_conv1/bias"], weights["block2_conv1"][1])
    np.testing.assert_array_equal(stored["caffe_mean_rgb"], np.float32([123.68, 116.779, 103.939]))


def test_layers_are_keras_names_in_order(notop):
    model, _ = notop
    keras_names = [layer.name for layer in model.layers if layer.name != model.layers[0].name]
    names = [name for name, _kind in og.vgg16_layers()]
    assert names == keras_names + ["fc1", "fc2"]
    assert [kind for _, kind in og.vgg16_layers()].count("conv") == 13
    assert [kind for _, kind in og.vgg16_layers()].count("pool") == 5


@pytest.mark.parametrize("height, width", [(32, 32), (48, 80)])
def test_block5_pool_matches_keras(notop, height, width):
    """Every pooling on both runtimes, within 1e-4 of Keras per image; 48x80 (block5_pool 1x2)
    catches an h/w mix-up and the pools' rounding down."""
    model, weights = notop
    x = photos(height, width)
    worst = {}
    for pooling, ref in keras_features(model, "block5_pool", og.POOLINGS, x).items():
        check_reference(ref)
        blob = og.build_vgg16(weights, layer="block5_pool", pooling=pooling, height=height, width=width)
        assert ref.shape == (len(x), og.feature_dim("block5_pool", pooling, height, width))
        for runtime in ("onnxruntime", "opencv"):
            out = og.OnnxVGG16(blob, runtime=runtime).run(x)
            assert out.dtype == np.float32 and out.shape == ref.shape
            worst[pooling, runtime] = float(relative(out, ref).max())
    print(f"\n{height}x{width} max relative difference vs Keras:", worst)
    assert max(worst.values()) <= PARITY, worst


def test_intermediate_layer_and_float_input(notop):
    """A layer inside the network (block3_pool); float pixels give the same as uint8 pixels; OpenCV's
    process-wide thread count is the runner's only during run()."""
    import cv2

    model, weights = notop
    x = photos(64, 64)
    ref = keras_features(model, "block3_pool", ["flatten"], x)["flatten"]
    check_reference(ref)
    assert ref.shape == (len(x), 8 * 8 * 256)
    blob = og.build_vgg16(weights, layer="block3_pool", pooling="flatten", height=64, width=64)
    for runtime in ("onnxruntime", "opencv"):
        runner = og.OnnxVGG16(blob, runtime=runtime, threads=2)
        assert relative(runner.run(x), ref).max() <= PARITY
        np.testing.assert_array_equal(runner.run(x.astype(np.float64)), runner.run(x))
    before = cv2.getNumThreads()
    og.OnnxVGG16(blob, runtime="opencv", threads=before + 1).run(x[:1])
    assert cv2.getNumThreads() == before
    assert og.OnnxVGG16(blob, runtime="onnxruntime").run(x[:0]).shape == (0, 8 * 8 * 256)


@pytest.mark.timeout(120)
def test_fc1_fc2_match_keras_at_224():
    """The top (Flatten in NHWC order -> fc1 -> fc2); one 138M-parameter Keras model. fc2 on both
    runtimes (its graph holds fc1's), fc1 on ONNX Runtime: loading a 470 MB model costs each runtime
    seconds of memory copies, and this test is most of the file's time."""
    import onnx

    keras.utils.set_random_seed(1)
    model = keras.applications.VGG16(weights=None, include_top=True)
    x = photos(224, 224)[:2]
    sub = keras.Model(model.input, [model.get_layer("fc1").output, model.get_layer("fc2").output])
    refs = dict(zip(("fc1", "fc2"), sub.predict(keras_input(x), verbose=0)))
    weights = {layer.name: layer.get_weights() for layer in model.layers[:-1] if layer.get_weights()}
    del model, sub
    worst = {}
    for layer, ref in refs.items():
        check_reference(ref)
        blob = og.build_vgg16(weights, layer=layer, pooling=None, height=224, width=224)
        if layer == "fc2":
            onnx.checker.check_model(blob)
        for runtime in ("onnxruntime", "opencv") if layer == "fc2" else ("onnxruntime",):
            out = og.OnnxVGG16(blob, runtime=runtime, threads=2).run(x)
            assert out.shape == (2, 4096)
            worst[layer, runtime] = float(relative(out, ref).max())
        del blob
    print("\nfc max relative difference vs Keras:", worst)
    assert max(worst.values()) <= PARITY, worst


def test_int8_close_to_fp32_and_byte_identical(notop, tmp_path):
    """int8 within INT8_ERROR of fp32 per image; quantising again, in another process on one core
    (so ONNX Runtime calibrates with another thread count), gives the same bytes; the int8 bytes
    quantised once run as they are."""
    _model, weights = notop
    blob = og.build_vgg16(weights, layer="block5_pool", pooling="flatten", height=32, width=32)
    x = photos(32, 32)
    fp32 = og.OnnxVGG16(blob, runtime="onnxruntime").run(x)
    int8_runner = og.OnnxVGG16(blob, runtime="auto", precision="int8", threads=2)
    assert int8_runner.runtime == "onnxruntime"
    int8 = int8_runner.run(x)
    error = relative(int8, fp32)
    print(f"\nint8 vs fp32 relative error: median {np.median(error):.4f}, max {error.max():.4f}")
    assert error.max() <= INT8_ERROR
    quantized = og.quantize_int8(blob)  # cached: the bytes the runner uses
    assert og.model_properties(quantized)["featurelib.precision"] == "int8"
    np.testing.assert_array_equal(og.OnnxVGG16(quantized, precision="int8", threads=2).run(x), int8)
    with pytest.raises(ValueError, match="got a model of precision 'int8'"):
        og.OnnxVGG16(quantized, runtime="onnxruntime")
    (tmp_path / "fp32.onnx").write_bytes(blob)
    code = ("import hashlib, sys; from featurelib.deep.onnx_graph import _quantize; "
            "print(hashlib.sha256(_quantize(open(sys.argv[1], 'rb').read())).hexdigest())")
    command = [sys.executable, "-c", code, str(tmp_path / "fp32.onnx")]
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) > 1:
        command = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *command]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    again = subprocess.run(command, capture_output=True, text=True, check=True, cwd=root)
    assert again.stdout.strip() == hashlib.sha256(quantized).hexdigest()
    assert "pre-processing" not in again.stderr


def test_bad_requests_say_what_is_wrong(notop):
    _model, weights = notop
    build = og.build_vgg16
    with pytest.raises(ValueError, match="unknown VGG16 layer 'block6_pool'.*block5_pool"):
        build(weights, layer="block6_pool", pooling="avg", height=64, width=64)
    with pytest.raises(ValueError, match="unknown pooling 'mean'.*flatten, avg, max"):
        build(weights, layer="block5_pool", pooling="mean", height=64, width=64)
    with pytest.raises(ValueError, match="'fc1' needs a 224x224 input.*got 64x64"):
        build(weights, layer="fc1", pooling=None, height=64, width=64)
    with pytest.raises(ValueError, match="pooling 'avg' does not apply to 'fc2'"):
        build(weights, layer="fc2", pooling="avg", height=224, width=224)
    with pytest.raises(ValueError, match="height must be an integer >= 32"):
        build(weights, layer="block5_pool", pooling="avg", height=16, width=64)
    missing = {name: value for name, value in weights.items() if name != "block4_conv2"}
    with pytest.raises(ValueError, match="no entry for layer 'block4_conv2'"):
        build(missing, layer="block5_pool", pooling="avg", height=64, width=64)
    with pytest.raises(ValueError, match="no entry for layer 'fc1'"):
        build(weights, layer="fc1", pooling=None, height=224, width=224)
    swapped = dict(weights, block2_conv1=weights["block2_conv2"])
    with pytest.raises(ValueError, match=r"weights\['block2_conv1'\] has kernel \(3, 3, 128, 128\)"):
        build(swapped, layer="block5_pool", pooling="avg", height=64, width=64)
    # a layer before the missing one builds: only the layers up to `layer` are read
    blob = build(missing, layer="block3_pool", pooling="max", height=32, width=32)
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        og.OnnxVGG16(blob, runtime="tensorrt")
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        og.OnnxVGG16(blob, precision="fp16")
    with pytest.raises(ValueError, match="int8' runs on onnxruntime only"):
        og.OnnxVGG16(blob, runtime="opencv", precision="int8")
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        og.OnnxVGG16(blob, threads=0)
    with pytest.raises(ValueError, match="not a serialized ONNX model"):
        og.OnnxVGG16(b"not a model")
    runner = og.OnnxVGG16(blob)
    assert runner.runtime == og.AUTO_FP32 and runner.dim == 256
    with pytest.raises(ValueError, match=r"images must be \(N, 32, 32, 3\) RGB, got shape \(32, 32, 3\)"):
        runner.run(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"got shape \(1, 64, 64, 3\)"):
        runner.run(np.zeros((1, 64, 64, 3), np.uint8))

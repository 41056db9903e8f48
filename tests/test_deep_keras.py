"""The ``vgg16`` and ``cnn`` extractors on the Keras backend, against bare Keras with the same weights.

Weights are random (``keras.utils.set_random_seed``) and written here in both
layouts (tests/deep_weights.py); nothing is downloaded. Parity is the relative
norm difference ``||a - b|| / ||b||`` per image against ``model.predict`` of
``preprocess_input`` of the same pixels.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pyarrow.dataset as ds
import pytest
import yaml

import deep_weights  # tests/ is on sys.path (conftest)
from deep_weights import keras as import_keras
from featurelib import cli, registry
from featurelib.driver import execute
from featurelib.engines.local import LocalEngine
from featurelib.errors import SpecError
from featurelib.spec import RunSpec
from test_engines import assert_built_once_per_process

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5

# TensorFlow is imported by the tests that need it, not when this module is collected.
# The deep extra is part of the test install (make install: ".[all]"): without it these fail, not skip.
pytestmark = pytest.mark.timeout(600)


def relative(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: ||a - b|| / ||b||."""
    return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30)


def crops(real_images, n: int, size=None) -> list[np.ndarray]:
    """`n` crops of the real photographs (two per photograph, alternating), optionally resized."""
    names = ["astronaut", "coffee", "chelsea", "rocket", "china", "flower"]
    out = []
    for i in range(n):
        photo = real_images[names[i % len(names)]]
        h, w = photo.shape[:2]
        top, left = (0, 0) if i < len(names) else (h // 4, w // 4)
        crop = np.ascontiguousarray(photo[top:top + h * 3 // 4, left:left + w * 3 // 4])
        out.append(crop if size is None else cv2.resize(crop, size[::-1], interpolation=cv2.INTER_AREA))
    return out


@pytest.fixture(scope="module")
def photos(real_images, tmp_path_factory) -> pathlib.Path:
    """A dozen real photographs as JPEGs in three class folders."""
    root = tmp_path_factory.mktemp("deep") / "photos"
    for i, image in enumerate(crops(real_images, 12)):
        folder = root / ("animal", "object", "scene")[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"photo{i:02d}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return root


@pytest.fixture(scope="module")
def vgg_files(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Random VGG16 weights (no top) as Keras 3 ``.weights.h5`` and legacy ``.h5``, and a broken file."""
    folder = tmp_path_factory.mktemp("weights")
    model = deep_weights.random_model("VGG16", (64, 64), seed=1)
    return {"keras3": deep_weights.save_keras3(model, folder / "vgg16.weights.h5"),
            "legacy": deep_weights.save_legacy(model, folder / "vgg16_legacy.h5"),
            "wrong_shape": deep_weights.save_with_wrong_shape(model, folder / "vgg16_wrong.h5", "block3_conv2")}


def vgg16_reference(path, size, pooling: str):
    """Bare Keras: VGG16 without top loading `path` (a ``.weights.h5``), read as the extractor reads it."""
    keras = import_keras()
    base = keras.applications.VGG16(include_top=False, weights=str(path), input_shape=(*size, 3),
                                    pooling=None if pooling == "flatten" else pooling)
    return keras.Model(base.input, keras.layers.Flatten()(base.output)) if pooling == "flatten" else base


def predict(model, module: str, images: np.ndarray) -> np.ndarray:
    preprocess = getattr(import_keras().applications, module).preprocess_input
    return model.predict(preprocess(np.asarray(images).astype(np.float32)), verbose=0)


def write_spec(path: pathlib.Path, features, *, size=(64, 64), **sections) -> pathlib.Path:
    doc = {"spec_version": 1, "seed": 3, "image": {"size": list(size)}, "features": features,
           "output": {"shards": 4, "pixels": True}, **sections}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# --- vgg16 on the local engine --------------------------------------------------------------------


def test_vgg16_local_engine_equals_bare_keras_loads_once_per_worker_and_lists_its_weights(photos, vgg_files,
                                                                                           tmp_path):
    keras3, legacy = str(vgg_files["keras3"]), str(vgg_files["legacy"])
    features = [{"name": "vgg16", "params": {"weights": keras3}, "column": "flat"},
                {"name": "vgg16", "params": {"weights": keras3, "pooling": "avg"}, "column": "avg"},
                {"name": "vgg16", "params": {"weights": legacy}, "column": "legacy"}]
    spec = RunSpec.from_yaml(str(write_spec(tmp_path / "spec.yaml", features)))
    out = tmp_path / "out"
    manifest = execute(spec.with_overrides(input=str(photos), output=str(out)), LocalEngine(2),
                       log=lambda m: None).manifest
    assert manifest["counts"]["written_sources"] == 12 and manifest["counts"]["rejected"] == 0

    # The network loads once per worker process and serves every later shard task there.
    assert_built_once_per_process(manifest)

    files = [str(out / f["path"]) for f in manifest["files"] if f["kind"] == "parquet"]
    table = ds.dataset(files, format="parquet").to_table()
    pixels = np.stack(table.column("pixels").to_numpy(zero_copy_only=False)).reshape(-1, 64, 64, 3)
    stored = {c: np.stack(table.column(c).to_numpy(zero_copy_only=False)) for c in ("flat", "avg", "legacy")}
    assert stored["flat"].shape == (12, 2 * 2 * 512) and stored["avg"].shape == (12, 512)
    for column, pooling in (("flat", "flatten"), ("avg", "avg")):
        expected = predict(vgg16_reference(keras3, (64, 64), pooling), "vgg16", pixels)
        assert relative(stored[column], expected).max() <= TOLERANCE, column
    # Both layouts of the same weights give the same values.
    np.testing.assert_array_equal(stored["legacy"], stored["flat"])

    # The manifest lists each weights file with its content hash; the shards hold the hash, not the path.
    digests = {name: hashlib.sha256(pathlib.Path(p).read_bytes()).hexdigest() for name, p in
               (("keras3", keras3), ("legacy", legacy))}
    assert manifest["extractor_files"] == [
        {"column": "flat", "param": "weights", "path": keras3, "sha256": digests["keras3"],
         "bytes": os.path.getsize(keras3)},
        {"column": "avg", "param": "weights", "path": keras3, "sha256": digests["keras3"],
         "bytes": os.path.getsize(keras3)},
        {"column": "legacy", "param": "weights", "path": legacy, "sha256": digests["legacy"],
         "bytes": os.path.getsize(legacy)}]
    metadata = table.schema.metadata
    assert keras3.encode() not in metadata[b"featurelib.spec"]
    columns = json.loads(metadata[b"featurelib.columns"])
    assert columns[0]["params"]["weights"] == f"sha256:{digests['keras3']}"
    assert manifest["columns"][2]["params"]["weights"] == f"sha256:{digests['legacy']}"


# --- handler-level checks -------------------------------------------------------------------------


def test_vgg16_max_pooling_both_layouts_and_keras_reads_the_legacy_file_written_here(real_images, vgg_files):
    definition = registry.get("vgg16")
    images = np.stack(crops(real_images, 5, (64, 80)))
    reference = vgg16_reference(vgg_files["keras3"], (64, 80), "max")
    expected = predict(reference, "vgg16", images)
    for layout in ("keras3", "legacy"):
        params = definition.normalize_params({"weights": str(vgg_files[layout]), "pooling": "max"})
        assert definition.output_dim(params, (64, 80)) == 512
        got = definition.build(params).extract_batch(images)
        assert got.shape == (5, 512) and got.dtype == np.float32
        assert relative(got, expected).max() <= TOLERANCE, layout
    # The legacy file written with h5py is what Keras 3's own legacy loader reads, weight for weight.
    loaded = deep_weights.random_model("VGG16", (64, 64), seed=7)
    loaded.load_weights(str(vgg_files["legacy"]))
    for a, b in zip(loaded.get_weights(), vgg16_reference(vgg_files["keras3"], (64, 64), "flatten").get_weights()):
        np.testing.assert_array_equal(a, b)


def test_vgg16_fc1_and_fc2_equal_the_whole_keras_network(real_images, tmp_path):
    """The whole network (138 M random weights, a 528 MB file): built once, fc1 and fc2 read from it."""
    model = deep_weights.random_model("VGG16", (224, 224), seed=5, include_top=True)
    path = deep_weights.save_keras3(model, tmp_path / "vgg16_full.weights.h5")
    try:
        images = np.stack(crops(real_images, 3, (224, 224)))
        reference = import_keras().Model(model.input, [model.get_layer("fc1").output, model.get_layer("fc2").output])
        expected = dict(zip(("fc1", "fc2"), predict(reference, "vgg16", images)))
        del model, reference
        definition = registry.get("vgg16")
        for layer in ("fc1", "fc2"):
            params = definition.normalize_params({"weights": str(path), "layer": layer})
            assert definition.output_dim(params, (224, 224)) == 4096
            handler = definition.build(params)
            got = handler.extract_batch(images)
            handler.close()
            assert relative(got, expected[layer]).max() <= TOLERANCE, layer
    finally:
        path.unlink(missing_ok=True)


# --- cnn ------------------------------------------------------------------------------------------

#: (model, Keras constructor, preprocessing module, an odd input size at or just above its minimum, layout)
BACKBONES = [("resnet50", "ResNet50", "resnet50", (65, 47), "keras3"),
             ("inception_v3", "InceptionV3", "inception_v3", (75, 99), "legacy"),
             ("xception", "Xception", "xception", (71, 75), "keras3"),
             ("mobilenet_v2", "MobileNetV2", "mobilenet_v2", (63, 33), "legacy"),
             ("efficientnet_b0", "EfficientNetB0", "efficientnet", (65, 40), "keras3")]


@pytest.mark.parametrize("name, constructor, module, size, layout", BACKBONES, ids=[b[0] for b in BACKBONES])
def test_cnn_backbone_equals_bare_keras(name, constructor, module, size, layout, real_images, tmp_path):
    from featurelib.deep.backbones import CNN, shapes_digest

    model = deep_weights.random_model(constructor, size, seed=11)
    backbone = CNN[name]
    weighted = [layer for layer in model.layers if layer.weights]
    # The table the driver checks files against without TensorFlow is Keras' network.
    assert backbone.feature_layer == model.layers[-1].name and backbone.channels == model.output_shape[-1]
    assert backbone.layer_count == len(weighted)
    assert backbone.layer_digest == shapes_digest(
        [[tuple(w.shape) for w in layer.trainable_weights + layer.non_trainable_weights] for layer in weighted])
    save = deep_weights.save_keras3 if layout == "keras3" else deep_weights.save_legacy
    path = save(model, tmp_path / ("w.weights.h5" if layout == "keras3" else "w.h5"))

    definition = registry.get("cnn")
    params = definition.normalize_params({"model": name, "pooling": "flatten", "weights": str(path)})
    assert params["layer"] == backbone.feature_layer
    images = np.stack(crops(real_images, 4, size))
    keras = import_keras()
    preprocess = getattr(keras.applications, module).preprocess_input
    # Eager Keras (model.predict would trace a graph of several hundred layers: seconds per backbone).
    expected = keras.ops.convert_to_numpy(keras.layers.Flatten()(model(preprocess(images.astype(np.float32)),
                                                                       training=False)))
    assert definition.output_dim(params, size) == expected.shape[1]  # the formula, at an odd size
    got = definition.build(params).extract_batch(images)
    assert relative(got, expected).max() <= TOLERANCE
    assert definition.output_dim({**params, "pooling": "avg"}, size) == backbone.channels
    with pytest.raises(SpecError, match=f"at least {backbone.min_side}x{backbone.min_side}"):
        definition.output_dim(params, (backbone.min_side - 1, 224))


# --- fingerprints and weights identity (no TensorFlow) ------------------------------------------------


def feature_spec(**params) -> RunSpec:
    return RunSpec.from_dict({"features": [{"name": "vgg16", "params": params}], "image": {"size": [64, 64]}})


def test_the_weights_file_enters_the_fingerprint_by_its_content_not_its_path(vgg_files, tmp_path, monkeypatch):
    from featurelib.deep import weights as weightsfile

    moved = tmp_path / "elsewhere" / "renamed.h5"
    moved.parent.mkdir()
    shutil.copyfile(vgg_files["keras3"], moved)
    base = feature_spec(weights=str(vgg_files["keras3"])).feature_fingerprint()
    assert feature_spec(weights=str(moved)).feature_fingerprint() == base
    assert feature_spec(weights=str(vgg_files["legacy"])).feature_fingerprint() != base
    monkeypatch.chdir(moved.parent)  # a relative path is made absolute when the spec is read
    assert feature_spec(weights="renamed.h5").features[0].params["weights"] == str(moved)

    # weights: imagenet is Keras' cached file; a present cache file enters by its hash like any file ...
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    cached = tmp_path / "keras_home" / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    cached.parent.mkdir(parents=True)
    shutil.copyfile(vgg_files["legacy"], cached)
    assert feature_spec().feature_fingerprint() == feature_spec(weights=str(vgg_files["legacy"])).feature_fingerprint()
    # ... and an absent one is fetched when the run's fingerprint is first computed (on the driver, before
    # any image is read); offline, the error names the weights: /path alternative.
    cached.unlink()

    def offline(spec):
        raise OSError("network is unreachable")

    monkeypatch.setattr(weightsfile, "_download", offline)
    with pytest.raises(SpecError, match=r"network is unreachable.*weights: /path/to/vgg16_weights_tf_dim_"
                                        r"ordering_tf_kernels_notop\.h5"):
        feature_spec().feature_fingerprint()


def test_dimensions_without_building_a_network():
    vgg16, cnn = registry.get("vgg16"), registry.get("cnn")
    params = vgg16.normalize_params({"weights": "imagenet"})
    assert vgg16.output_dim(params, (224, 224)) == 25_088
    assert vgg16.output_dim(params, (100, 70)) == 3 * 2 * 512
    assert vgg16.output_dim({**params, "pooling": "avg"}, (32, 500)) == 512
    assert cnn.output_dim(cnn.normalize_params({"model": "resnet50"}), (224, 224)) == 2048
    assert cnn.output_dim(cnn.normalize_params({"model": "resnet50", "pooling": "flatten"}), (224, 224)) == 100_352
    assert cnn.output_dim(cnn.normalize_params({"model": "inception_v3", "pooling": "flatten"}), (299, 299)) == \
        8 * 8 * 2048
    assert registry.get("vgg16").tags == registry.get("cnn").tags == frozenset({"deep"})


# --- errors: exit 2, one message, no traceback ---------------------------------------------------


def run_cli(capsys, spec_path, photos, out):
    code = cli.main(["run", "--spec", str(spec_path), "--input", str(photos), "--output", str(out)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


ERRORS = {
    "missing file": ({"weights": "/nonexistent/vgg16.weights.h5"}, (64, 64),
                     ["weights file '/nonexistent/vgg16.weights.h5' does not exist"]),
    "random bytes": ({"weights": "{noise}"}, (64, 64), ["cannot be used: not a readable HDF5 file"]),
    "wrong shape": ({"weights": "{wrong_shape}"}, (64, 64),
                    ["cannot be used: wrong weight shapes: block3_conv2 [(3, 3, 256, 255), (256,)] "
                     "(VGG16: [(3, 3, 256, 256), (256,)])"]),
    "unknown layer": ({"layer": "block4_pool", "weights": "{keras3}"}, (64, 64),
                      ["layer must be one of ['block5_pool', 'fc1', 'fc2'], got 'block4_pool'"]),
    "fc1 at 64x64": ({"layer": "fc1"}, (64, 64),
                     ["cannot take image size [64, 64]: layer fc1 needs image.size [224, 224]"]),
    "too small": ({"weights": "{keras3}"}, (64, 31), ["VGG16 needs images of at least 32x32"]),
    "int8 with keras": ({"precision": "int8", "weights": "{keras3}"}, (64, 64),
                        ["precision int8 runs on backend onnx only"]),
    "several at once": ({"layer": "fc9", "pooling": "mean", "backend": "torch", "weights": "/nonexistent.h5"},
                        (64, 64), ["4 problems in the spec", "layer must be one of", "pooling must be one of",
                                   "backend must be one of", "'/nonexistent.h5' does not exist"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_spec_errors_exit_2_with_one_message(case, vgg_files, photos, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))  # nothing cached, nothing fetched
    params, size, messages = ERRORS[case]
    noise = tmp_path / "noise.h5"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    files = {"noise": noise, **vgg_files}
    params = {k: v.format(**files) if isinstance(v, str) else v for k, v in params.items()}
    spec = write_spec(tmp_path / "spec.yaml", [{"name": "vgg16", "params": params}], size=size)
    code, err = run_cli(capsys, spec, photos, tmp_path / "out")
    assert code == 2, err
    for message in messages:
        assert message in err, (message, err)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_imagenet_offline_exits_2_naming_the_path_alternative(photos, tmp_path, capsys, monkeypatch):
    from featurelib.deep import weights as weightsfile

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))
    monkeypatch.setattr(weightsfile, "_download", lambda spec: (_ for _ in ()).throw(OSError("no route to host")))
    spec = write_spec(tmp_path / "spec.yaml", [{"name": "vgg16"}])
    code, err = run_cli(capsys, spec, photos, tmp_path / "out")
    assert code == 2, err
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 is not in Keras' cache" in err
    assert "no route to host" in err and "weights: /path/to/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in err


def test_missing_extras_exit_2_naming_the_pip_command(vgg_files, photos, tmp_path):
    """TensorFlow, Keras and ONNX Runtime made unimportable in a fresh ``featurize`` process."""
    features = [{"name": "vgg16", "params": {"weights": str(vgg_files["keras3"])}},
                {"name": "vgg16", "params": {"weights": str(vgg_files["keras3"]), "backend": "onnx"}, "column": "o"},
                {"name": "cnn", "params": {"model": "resnet50"}}]
    spec = write_spec(tmp_path / "spec.yaml", features)
    code = ("import sys\n"
            "for name in ('tensorflow', 'keras', 'onnxruntime'):\n"
            "    sys.modules[name] = None  # import fails, find_spec finds nothing\n"
            "from featurelib.cli import main\n"
            "status = main(sys.argv[1:])\n"
            "assert not any(m == 'tensorflow' or m.startswith('tensorflow.') for m in sys.modules if sys.modules[m])\n"
            "sys.exit(status)\n")
    result = subprocess.run([sys.executable, "-c", code, "run", "--spec", str(spec), "--input", str(photos),
                             "--output", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "3 problems in the spec" in result.stderr
    assert result.stderr.count("pip install 'featurelib[deep]'") == 2  # vgg16 (keras) and cnn
    assert "backend onnx needs ONNX and ONNX Runtime" in result.stderr and "pip install 'featurelib[onnx]'" in \
        result.stderr


# --- the onnx backend (featurelib.deep.onnx_graph) --------------------------------------------------


def test_vgg16_onnx_backend_reads_the_same_weights_without_tensorflow(real_images, vgg_files):
    definition = registry.get("vgg16")
    images = np.stack(crops(real_images, 4, (64, 64)))
    for pooling in ("flatten", "avg"):
        keras_params = definition.normalize_params({"weights": str(vgg_files["keras3"]), "pooling": pooling})
        expected = definition.build(keras_params).extract_batch(images)
        for layout in ("keras3", "legacy"):
            params = definition.normalize_params({"weights": str(vgg_files[layout]), "pooling": pooling,
                                                  "backend": "onnx"})
            got = definition.build(params).extract_batch(images)
            assert got.shape == expected.shape and got.dtype == np.float32
            assert relative(got, expected).max() <= 1e-4, (pooling, layout)  # measured: 3e-6
    # int8 (a statically quantised graph, ONNX Runtime): the same features, coarsely (measured: 2-3%).
    params = definition.normalize_params({"weights": str(vgg_files["keras3"]), "pooling": "avg", "backend": "onnx",
                                          "precision": "int8"})
    assert relative(definition.build(params).extract_batch(images), expected).max() <= 0.1

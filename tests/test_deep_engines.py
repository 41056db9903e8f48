"""``vgg16`` on Beam (multi-processing) and Spark local[2,3]: the stored features equal bare Keras
``model.predict(preprocess_input(x))`` on the stored pixels, and each worker process loads the network
once. (The local engine's check is in test_deep_keras.py.) Few tasks: TensorFlow's import costs about
5 s in every worker process."""

from __future__ import annotations

import pathlib

import cv2
import numpy as np
import pyarrow.dataset as ds
import pytest
import yaml

import deep_weights
from test_deep_keras import TOLERANCE, crops, predict, relative, vgg16_reference
from test_engines import assert_built_once_per_process, beam, run_on, spark_engine

# The deep extra is part of the test install (make install: ".[all]"): without it these fail, not skip.
pytestmark = pytest.mark.timeout(600)

SIZE = (48, 64)


@pytest.fixture(scope="module")
def setup(real_images, tmp_path_factory):
    """Eight real photographs as JPEGs in two classes, random VGG16 weights, and the spec."""
    base = tmp_path_factory.mktemp("deep-engines")
    root = base / "photos"
    for i, image in enumerate(crops(real_images, 8)):
        folder = root / ("left", "right")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"p{i}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    weights = deep_weights.save_keras3(deep_weights.random_model("VGG16", SIZE, seed=11), base / "vgg.weights.h5")
    spec = base / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "spec_version": 1, "seed": 5, "image": {"size": list(SIZE), "resize": "aspect_crop"},
        "features": [{"name": "vgg16", "params": {"weights": str(weights), "pooling": "avg"}, "column": "vgg"}],
        "augment": {"copies": 1, "ops": [{"op": "flip", "p": 1.0}]},
        "output": {"shards": 4, "pixels": True}}))
    return root, weights, spec


def stored(out: pathlib.Path, manifest):
    files = [str(out / f["path"]) for f in manifest["files"] if f["kind"] == "parquet"]
    table = ds.dataset(files, format="parquet").to_table()
    pixels = np.stack(table.column("pixels").to_numpy(zero_copy_only=False)).reshape(-1, *SIZE, 3)
    return pixels, np.stack(table.column("vgg").to_numpy(zero_copy_only=False))


@pytest.mark.parametrize("engine_name", ["beam-multiprocessing", "spark-local[2,3]"])
def test_vgg16_on_beam_and_spark_equals_bare_keras(engine_name, setup, tmp_path, spark):
    root, weights, spec = setup
    engine = (beam("--direct_num_workers=2", "--direct_running_mode=multi_processing")
              if engine_name.startswith("beam") else spark_engine(spark))
    manifest = run_on(engine, spec, root, tmp_path / "o")
    assert manifest["counts"]["written_sources"] == 8 and manifest["counts"]["rejected"] == 0
    pixels, features = stored(tmp_path / "o", manifest)
    assert features.shape == (len(pixels), 512) and len(pixels) > 8  # originals and the train variants
    expected = predict(vgg16_reference(weights, SIZE, "avg"), "vgg16", pixels)
    assert relative(features, expected).max() <= TOLERANCE
    assert_built_once_per_process(manifest)

"""The descriptors separate real classes: end to end through the local engine, then a logistic
regression on the train split, scored on the test split (at least 100 test images each)."""

from __future__ import annotations

import numpy as np
import pytest

from featurelib.driver import execute
from featurelib.engines.local import LocalEngine
from featurelib.io.readers import read_parquet
from featurelib.spec import RunSpec

pytestmark = pytest.mark.timeout(600)


def accuracy(out, column: str) -> tuple[float, int]:
    """Test accuracy of a standardised logistic regression fitted on the train split; and the test count."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = read_parquet(str(out), columns=[column])
    x, y = data["features"][column], data["labels"]
    split = np.array(data["split"])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x[split == "train"], y[split == "train"])
    test = split == "test"
    return float(model.score(x[test], y[test])), int(test.sum())


def run(tmp_path, inp, features, size):
    spec = RunSpec.from_dict({"features": features, "image": {"size": size}, "seed": 7,
                              "split": {"train": 0.6, "val": 0.0, "test": 0.4},
                              "input": {"path": str(inp)}, "output": {"path": str(tmp_path / "out"), "shards": 4}})
    execute(spec, LocalEngine(2), log=lambda m: None)
    return tmp_path / "out"


def test_lbp_separates_brick_grass_and_gravel(tmp_path):
    from featurelib.sample_data import make_sample

    make_sample("textures", tmp_path / "textures", scale=4)  # 480 crops of three real texture photographs
    out = run(tmp_path, tmp_path / "textures",
              [{"name": "lbp", "params": {"points": 8, "radius": 1, "method": "uniform", "grid": [2, 2]}}], [128, 128])
    score, n_test = accuracy(out, "lbp")
    assert n_test >= 100
    assert score >= 0.95, f"lbp on textures: test accuracy {score:.3f} on {n_test} images"


def test_hog_recognises_handwritten_digits(tmp_path, digits_dir):
    out = run(tmp_path, digits_dir,
              [{"name": "hog", "params": {"pixels_per_cell": [8, 8], "cells_per_block": [2, 2]}}], [32, 32])
    score, n_test = accuracy(out, "hog")
    assert n_test >= 100
    assert score >= 0.95, f"hog on digits: test accuracy {score:.3f} on {n_test} images"

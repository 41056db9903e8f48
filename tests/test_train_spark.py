"""The Spark MLlib trainer on real digits (``hog`` 324 values, ``lbp`` 10), on the shared session.

Accuracy against scikit-learn fitted on the same rows, selection on val, OneVsRest(LinearSVC)
with standardisation and PCA, predictions on another output (other label order, unlabelled
images), refusals, and ``jobs/train_classifier.py`` under spark-submit.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import copy_digits, write_spec
from featurelib.cli import main as featurize
from featurelib.errors import UserError
from featurelib.io.dataset import open_dataset
from featurelib.train import base, trainer_class
from featurelib.train.base import TrainRequest
from jobs.spark_trainer import GRIDS, SPARK_DIR, SparkTrainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
JOB = ROOT / "jobs" / "train_classifier.py"
#: The features of the shared digits_output; an output made with them has its feature fingerprint.
FEATURES = [{"name": "hog", "params": {"pixels_per_cell": [8, 8], "cells_per_block": [2, 2]}}, {"name": "lbp"}]
#: Short-lived JVMs start faster on 2 cores with the C1 compiler and the serial GC.
FAST_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
#: The JVM's own line on stderr (Spark 4 adds the vector incubator module); not ours.
JVM_NOISE = ("WARNING: Using incubator modules",)


def make_output(root: pathlib.Path, images: pathlib.Path, *, size=(32, 32), shards: int = 2,
                split=None) -> pathlib.Path:
    """``featurize run`` of ``images`` with the digits features (Parquet only, one worker)."""
    spec = write_spec(root / "spec.yaml", image={"size": list(size)}, features=FEATURES,
                      split=split or {"train": 0.6, "val": 0.2, "test": 0.2},
                      output={"shards": shards, "formats": ["parquet"]})
    out = root / "out"
    code = featurize(["run", "--spec", str(spec), "--input", str(images), "--output", str(out), "--workers", "1"])
    assert code == 0, code
    return out


@pytest.fixture(scope="module")
def trained(spark, digits_output, tmp_path_factory):
    """A writable copy of digits_output with ``logreg-hog`` trained on it by the Spark trainer (default grid)."""
    out = tmp_path_factory.mktemp("spark-train") / "out"
    shutil.copytree(digits_output, out)
    t0 = time.monotonic()
    # the default grid, its three candidates fitted at once
    report = SparkTrainer().train(TrainRequest(str(out), ["hog"], "logreg", "logreg-hog", options={"parallelism": 3}))
    print(f"spark logreg on hog: {time.monotonic() - t0:.1f} s")
    return out, report


@pytest.fixture(scope="module")
def other_output(digits_dir, tmp_path_factory):
    """Another output with the digits' feature fingerprint: every 9th digit except class '0' (so its
    label indices differ from the model's), plus 12 digits in the input root (unlabelled); no val split."""
    root = tmp_path_factory.mktemp("spark-other")
    images = root / "images"
    copy_digits(digits_dir, images, step=9, limit=400)
    shutil.rmtree(images / "0")
    for path in sorted(digits_dir.rglob("*.png"))[4::150]:
        shutil.copyfile(path, images / f"loose-{path.parent.name}-{path.name}")
    return make_output(root, images, split={"train": 0.7, "val": 0.0, "test": 0.3})


def sklearn_logreg_test_accuracy(dataset) -> float:
    """scikit-learn's LogisticRegression on the same train rows, C chosen on val, test accuracy."""
    from sklearn.linear_model import LogisticRegression

    train, val, test = (dataset.read(["hog"], split=s) for s in ("train", "val", "test"))
    fitted = [LogisticRegression(C=c, max_iter=2000).fit(train.X, train.y) for c in (0.01, 0.1, 1.0, 10.0, 100.0)]
    best = int(np.argmax([m.score(val.X, val.y) for m in fitted]))
    return float(fitted[best].score(test.X, test.y))


def test_logreg_on_hog_reaches_095_and_matches_scikit_learn(trained):
    out, report = trained
    test = report["test"]
    assert test["rows"] >= 100
    assert test["accuracy"] >= 0.95, test["accuracy"]
    reference = sklearn_logreg_test_accuracy(open_dataset(str(out)))
    print(f"test accuracy: spark {test['accuracy']:.4f}, scikit-learn {reference:.4f} ({test['rows']} images)")
    assert abs(test["accuracy"] - reference) <= 0.02, (test["accuracy"], reference)
    assert sum(map(sum, test["confusion"])) == test["rows"]


def test_selection_is_the_val_best_of_the_whole_grid_and_the_folder_is_complete(trained):
    out, report = trained
    selection = report["selection"]
    assert [c["params"] for c in selection["candidates"]] == GRIDS["logreg"]
    scores = [c["val_accuracy"] for c in selection["candidates"]]
    best = scores.index(max(scores))  # the first of equals
    assert selection["chosen"] == GRIDS["logreg"][best]
    # the saved pipeline, run end to end for the report, scores val as the selection did
    assert report["val"]["accuracy"] == pytest.approx(scores[best], abs=1e-12)

    model_dir = out / "models" / "logreg-hog"
    assert sorted(p.name for p in model_dir.iterdir()) == ["confusion.png", "model.json", "report.json", SPARK_DIR]
    info = json.loads((model_dir / "model.json").read_text())
    assert info["trainer"] == "spark" and info["model"] == "logreg" and info["columns"] == ["hog"]
    assert info["params"] == selection["chosen"] and info["files"] == [SPARK_DIR] and info["pca"] is None
    assert info["feature_fingerprint"] == open_dataset(str(out)).feature_fingerprint
    assert json.loads((model_dir / "report.json").read_text()) == json.loads(json.dumps(report))
    assert (model_dir / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in (out / "models").iterdir() if p.name.startswith(".")]  # no staging left


def test_predict_on_another_output_maps_labels_by_name_and_keeps_unlabelled_rows(trained, other_output):
    out, _ = trained
    path = SparkTrainer().predict(str(out / "models" / "logreg-hog"), str(other_output))
    assert path == str(other_output / "predictions" / "logreg-hog.parquet")
    table = pq.read_table(path)
    assert table.column_names == ["key", "source_key", "aug_index", "split", "true_label", "label", "label_name",
                                  "probabilities"]
    rows = table.to_pylist()
    source = open_dataset(str(other_output)).to_pandas([])
    assert len(rows) == len(source) == open_dataset(str(other_output)).counts["written_rows"]
    assert [r["key"] for r in rows] == sorted(source["key"])
    names = [str(d) for d in range(10)]
    truth = dict(zip(source["key"], source["label_name"]))
    unlabelled = [r for r in rows if truth[r["key"]] is None]
    assert len(unlabelled) == 12 and all(r["true_label"] == -1 for r in unlabelled)
    labelled = [r for r in rows if truth[r["key"]] is not None]
    # the output has no class '0': its index 0 is '1', the model's 1
    assert all(r["true_label"] == names.index(truth[r["key"]]) for r in labelled)
    assert all(r["label_name"] == names[r["label"]] for r in rows)
    for r in rows:
        assert len(r["probabilities"]) == 10 and sum(r["probabilities"]) == pytest.approx(1, abs=1e-4)
        assert int(np.argmax(r["probabilities"])) == r["label"]
    accuracy = np.mean([r["true_label"] == r["label"] for r in labelled])
    assert len(labelled) >= 150 and accuracy >= 0.95, (len(labelled), accuracy)


def test_predict_refuses_features_with_another_fingerprint(trained, digits_dir, tmp_path):
    out, _ = trained
    images = copy_digits(digits_dir, tmp_path / "images", step=90, limit=20)
    other = make_output(tmp_path, images, size=(28, 28), shards=1)  # another image size: other features
    with pytest.raises(UserError, match=r"feature_fingerprint .* the model was trained on .* not comparable"):
        SparkTrainer().predict(str(out / "models" / "logreg-hog"), str(other))
    assert not (other / "predictions").exists()


def test_random_forest_cross_validates_on_train_when_val_is_empty(spark, other_output):
    """No val split: the candidate is scored by 3-fold cross-validation on train, folds by
    crc32(source_key) % 3 as in the sklearn trainer, then fitted on all train rows."""
    import zlib

    import pyspark.sql.functions as F

    grid = [{"numTrees": 100, "maxDepth": 6}]
    report = SparkTrainer().train(TrainRequest(str(other_output), ["hog"], "random_forest", "forest", seed=7,
                                               options={"grid": grid}))
    selection = report["selection"]
    assert report["val"] is None and selection["metric"] == "3-fold cross-validation accuracy on train"
    assert selection["chosen"] == grid[0] and 0.6 <= selection["candidates"][0]["val_accuracy"] <= 1
    # 132 train rows, 48 test images: scikit-learn's forest of the same shape scores 0.75-0.79 (4 seeds)
    assert report["test"]["accuracy"] >= 0.6, report["test"]
    keys = ["3/digit-00012.png", "loose-7-digit-01234.png", "é/ü.png"]
    folds = spark.createDataFrame([(k,) for k in keys], "k string").select(F.pmod(F.crc32("k"), F.lit(3)).alias("f"))
    assert [r["f"] for r in folds.collect()] == [zlib.crc32(k.encode()) % 3 for k in keys]


@pytest.mark.parametrize("model, message", [
    ("knn", r"the spark trainer fits logreg, linear_svm, random_forest; 'knn' is another trainer's model: "
            r"use --trainer sklearn"),
    ("xgboost", r"'xgboost' is not a featurelib model: use --trainer sklearn"),
])
def test_a_model_mllib_does_not_fit_here_is_refused_before_spark(tmp_path, model, message):
    with pytest.raises(UserError, match=message):
        SparkTrainer(spark=object()).train(TrainRequest(str(tmp_path / "nowhere"), ["hog"], model, "m"))
    assert trainer_class("spark") is SparkTrainer  # the entry point is installed


def test_a_wrong_grid_parameter_is_refused_before_any_spark_job(trained):
    out, _ = trained
    request = TrainRequest(str(out), ["lbp"], "random_forest", "bad-grid", options={"grid": [{"numTree": 5}]})
    with pytest.raises(UserError, match="grid parameter 'numTree' is not a parameter of MLlib's "
                                        "RandomForestClassifier"):
        SparkTrainer().train(request)
    assert not (out / "models" / "bad-grid").exists()


def spark_submit(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``spark-submit --master local[2] jobs/train_classifier.py ARGS`` (the pip package's spark-submit)."""
    import pyspark

    home = pathlib.Path(pyspark.__file__).parent
    env = {**os.environ, "SPARK_HOME": str(home), "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    env.pop("PYSPARK_SUBMIT_ARGS", None)
    command = [str(home / "bin" / "spark-submit"), "--master", "local[2]", "--conf", "spark.ui.enabled=false",
               "--driver-java-options", FAST_JVM, str(JOB), *args]
    t0 = time.monotonic()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    print(f"spark-submit {' '.join(args[1:5])}: exit {done.returncode} in {time.monotonic() - t0:.1f} s")
    return done


@pytest.fixture(scope="module")
def three_digits(digits_dir, tmp_path_factory):
    """An output of every 2nd image of the digits 0, 1 and 2 (about 270): OneVsRest fits one
    LinearSVC per class, each a chain of Spark jobs, so three classes keep the test short."""
    root = tmp_path_factory.mktemp("spark-three")
    images = copy_digits(digits_dir, root / "images", step=2, limit=2000)
    for folder in images.iterdir():
        if folder.name not in ("0", "1", "2"):
            shutil.rmtree(folder)
    return make_output(root, images)


@pytest.fixture(scope="module")
def submitted(three_digits):
    """OneVsRest(LinearSVC) on 20 principal components of hog, standardised, trained by
    ``jobs/train_classifier.py`` under spark-submit (a one-point grid)."""
    done = spark_submit(str(three_digits), "--features", "hog", "--model", "linear_svm", "--name", "svm-pca",
                        "--standardize", "--pca", "20", "--grid", '[{"regParam": 0.01, "maxIter": 5}]',
                        "--parallelism", "3")
    return three_digits / "models" / "svm-pca", done


def test_spark_submit_trains_linear_svm_after_pca_and_standardisation(submitted, three_digits, spark):
    # spark: loading the saved scaler needs an active session (the shared one), whatever ran before
    from pyspark.ml.feature import StandardScalerModel

    model_dir, done = submitted
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"
    assert "model svm-pca: linear_svm on hog (spark)" in done.stdout
    assert sorted(p.name for p in model_dir.iterdir()) == ["confusion.png", "model.json", "pca.npz", "report.json",
                                                           SPARK_DIR]
    report = json.loads((model_dir / "report.json").read_text())
    assert report["pca"] == 20 and report["standardize"] and report["label_names"] == ["0", "1", "2"]
    assert report["selection"]["chosen"] == {"regParam": 0.01, "maxIter": 5}
    assert report["test"]["rows"] >= 40 and report["test"]["accuracy"] >= 0.95, report["test"]
    assert json.loads((model_dir / "model.json").read_text())["files"] == [SPARK_DIR, base.PCA_FILE]

    # the PCA: fitted on the train rows (all of them: fewer than the sample limit)
    mean, components = base.load_pca(str(model_dir))
    train = open_dataset(str(three_digits)).read(["hog"], split="train")
    assert components.shape == (20, 324) and len(train) > 100
    np.testing.assert_allclose(mean, train.X.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(components @ components.T, np.eye(20), atol=1e-4)
    # the scaler after it, fitted on Spark's projection of those rows, has the statistics of numpy's
    (stage,) = (model_dir / SPARK_DIR / "stages").glob("1_*")
    scaler = StandardScalerModel.load(str(stage))
    projected = base.project(train.X, mean, components)
    np.testing.assert_allclose(scaler.mean.toArray(), projected.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(scaler.std.toArray(), projected.std(axis=0, ddof=1), rtol=1e-3)


def test_linear_svm_predictions_have_no_probabilities(submitted, three_digits):
    model_dir, done = submitted
    assert done.returncode == 0
    table = pq.read_table(SparkTrainer().predict(str(model_dir), str(three_digits)))
    assert table.num_rows == open_dataset(str(three_digits)).counts["written_rows"]
    assert table.column("probabilities").null_count == table.num_rows  # a LinearSVC has no probabilities
    truth, label = (table.column(c).to_numpy() for c in ("true_label", "label"))
    assert (truth == label).mean() >= 0.95


def test_a_mistake_through_spark_submit_exits_2_with_one_message(trained):
    out, _ = trained
    done = spark_submit(str(out), "--features", "hog", "--model", "knn", timeout=120)
    assert done.returncode == 2, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    # spark-submit merges the Python driver's stderr into its own stdout
    lines = [line for line in (done.stdout + done.stderr).splitlines()
             if line.strip() and not line.startswith(JVM_NOISE)]
    assert len(lines) == 1 and lines[0].startswith("featurize: error: the spark trainer fits logreg"), lines
    assert "Traceback" not in done.stdout + done.stderr
    assert not (out / "models" / "knn-hog").exists()


def test_the_job_predict_mode_writes_the_predictions_file(trained, three_digits, capsys):
    """``jobs/train_classifier.py --predict OUT_NEW --model-dir DIR`` in this process (the shared session)."""
    from jobs.train_classifier import main

    out, _ = trained
    assert main(["--predict", str(three_digits), "--model-dir", str(out / "models" / "logreg-hog")]) == 0
    path = three_digits / "predictions" / "logreg-hog.parquet"
    assert capsys.readouterr().out.strip() == f"wrote {pq.read_metadata(path).num_rows} predictions to {path}"
    table = pq.read_table(path)
    truth, label = (table.column(c).to_numpy() for c in ("true_label", "label"))
    assert set(truth) <= {0, 1, 2} and (truth == label).mean() >= 0.95  # the model's indices of '0', '1', '2'

    assert main(["--predict", str(three_digits)]) == 2
    assert capsys.readouterr().err.strip() == "featurize: error: --predict OUT_NEW takes --model-dir DIR"

"""``featurize train`` / ``featurize predict`` with the sklearn trainer, on real images.

Models are written into copies of the shared outputs (the session fixture is read-only).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pathlib
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import write_spec
from featurelib.cli import main
from featurelib.io.dataset import open_dataset
from featurelib.train import base, sklearn_trainer
from featurelib.train.base import TrainRequest
from featurelib.train.sklearn_trainer import GRIDS, SklearnTrainer

#: The features of the ``digits_output`` fixture: an output with these has its feature fingerprint.
DIGITS_FEATURES = [{"name": "hog", "params": {"pixels_per_cell": [8, 8], "cells_per_block": [2, 2]}},
                   {"name": "lbp"}]
REPORT_KEYS = {"name", "model", "trainer", "columns", "feature_fingerprint", "label_names", "standardize", "pca",
               "seed", "selection", "train", "val", "test", "seconds"}
PREDICTION_COLUMNS = ["key", "source_key", "aug_index", "split", "true_label", "label", "label_name",
                      "probabilities"]


def cli(*argv) -> tuple[int, str, str]:
    """``featurize ARGV``: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def run_output(spec: pathlib.Path, source: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    code, _, err = cli("run", "--spec", spec, "--input", source, "--output", out, "--workers", "2")
    assert code == 0, err
    return out


def load_json(path) -> dict:
    return json.loads(pathlib.Path(path).read_text())


@pytest.fixture(scope="module")
def digits(digits_output, tmp_path_factory) -> pathlib.Path:
    """A writable copy of the digits output (hog + lbp, split 0.6/0.2/0.2)."""
    copy = tmp_path_factory.mktemp("train") / "digits"
    shutil.copytree(digits_output, copy)
    return copy


@pytest.fixture(scope="module")
def logreg_hog(digits) -> tuple[pathlib.Path, str]:
    """``featurize train`` of logreg on hog, standardised: (model folder, what it printed)."""
    code, out, err = cli("train", digits, "--features", "hog", "--model", "logreg", "--standardize")
    assert code == 0, err
    return digits / "models" / "logreg-hog", out


@pytest.fixture(scope="module")
def textures(tmp_path_factory) -> pathlib.Path:
    """480 real texture crops (3 classes) with one ``lbp`` column (P 8, R 1, uniform), split 0.5/0.25/0.25."""
    root = tmp_path_factory.mktemp("textures")
    code, _, err = cli("sample-data", "textures", root / "images", "--scale", "4")
    assert code == 0, err
    spec = write_spec(root / "spec.yaml", image={"size": [128, 128]}, features=[{"name": "lbp"}],
                      split={"train": 0.5, "val": 0.25, "test": 0.25}, output={"shards": 2})
    return run_output(spec, root / "images", root / "out")


# --- accuracy on real data ----------------------------------------------------------------------------

def test_logreg_on_digits_hog_from_the_command_line(logreg_hog, digits):
    model_dir, printed = logreg_hog
    report = load_json(model_dir / "report.json")
    assert REPORT_KEYS <= set(report)
    assert report["test"]["rows"] >= 100
    assert report["test"]["accuracy"] >= 0.95, report["test"]
    assert report["trainer"] == "sklearn" and report["columns"] == ["hog"] and report["standardize"] is True
    # The chosen C is the first of the best val accuracies, in grid order.
    candidates = report["selection"]["candidates"]
    assert [c["params"] for c in candidates] == GRIDS["logreg"]
    scores = [c["val_accuracy"] for c in candidates]
    assert report["selection"]["chosen"] == candidates[scores.index(max(scores))]["params"]
    assert sum(map(sum, report["test"]["confusion"])) == report["test"]["rows"]
    assert printed.splitlines()[0].startswith("model logreg-hog: logreg on hog (sklearn), chosen {\"C\": ")
    assert f"test  {report['test']['rows']:6d} rows  accuracy {report['test']['accuracy']:.4f}" in printed
    assert f"model saved in {model_dir}" in printed

    info = load_json(model_dir / "model.json")
    manifest = load_json(digits / "_manifest.json")
    assert info["model_info_version"] == base.MODEL_INFO_VERSION
    assert (info["trainer"], info["model"], info["name"]) == ("sklearn", "logreg", "logreg-hog")
    assert info["feature_fingerprint"] == manifest["feature_fingerprint"]
    assert info["label_names"] == manifest["label_names"] and info["columns"] == ["hog"]
    assert info["params"] == report["selection"]["chosen"] and info["pca"] is None and info["created_at"]
    assert sorted(os.listdir(model_dir)) == ["confusion.png", "model.joblib", "model.json", "report.json"]

    import matplotlib.image

    png = model_dir / "confusion.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(png)
    assert 300 <= pixels.shape[0] <= 1500 and 300 <= pixels.shape[1] <= 1500
    assert pixels[..., :3].std() > 0.05  # drawn, not blank


def test_random_forest_on_textures_lbp(textures):
    report = SklearnTrainer().train(TrainRequest(str(textures), ["lbp"], "random_forest", "rf-lbp", seed=1))
    assert report["label_names"] == ["brick", "grass", "gravel"]
    assert report["test"]["rows"] >= 100
    assert report["test"]["accuracy"] >= 0.95, report["test"]
    assert report["selection"]["chosen"] in GRIDS["random_forest"]


def test_knn_chooses_the_val_best_k_and_metric(digits):
    from sklearn.neighbors import KNeighborsClassifier

    report = SklearnTrainer().train(TrainRequest(str(digits), ["hog"], "knn", "knn-hog"))
    candidates = report["selection"]["candidates"]
    assert {c["params"]["metric"] for c in candidates} == {"euclidean", "manhattan"}
    assert len({c["params"]["n_neighbors"] for c in candidates}) >= 3

    # Independently: every candidate fitted on train and scored on val.
    ds = open_dataset(str(digits))
    train, val = ds.read(["hog"], split="train"), ds.read(["hog"], split="val")
    recomputed = [KNeighborsClassifier(**c["params"]).fit(train.X, train.y).score(val.X, val.y) for c in candidates]
    assert [c["val_accuracy"] for c in candidates] == pytest.approx(recomputed, abs=1e-12)
    best = candidates[int(np.argmax(recomputed))]["params"]
    assert report["selection"]["chosen"] == best
    assert report["val"]["accuracy"] == pytest.approx(max(recomputed), abs=1e-12)
    assert report["test"]["accuracy"] >= 0.93


class SpyDataset:
    """A dataset that records what the trainer takes from it: every ``read``, every batch."""

    def __init__(self, dataset):
        self.dataset, self.reads, self.batches_seen = dataset, [], []

    def __getattr__(self, name):
        return getattr(self.dataset, name)

    def read(self, *args, **kwargs):
        self.reads.append(kwargs.get("split", "train"))
        return self.dataset.read(*args, **kwargs)

    def batches(self, columns=None, **kwargs):
        for batch in self.dataset.batches(columns, **kwargs):
            self.batches_seen.append({"split": kwargs.get("split"), "shuffle": kwargs.get("shuffle", False),
                                      "batch_size": kwargs["batch_size"], "rows": len(batch),
                                      "bytes": batch.X.nbytes, "first": batch.keys[0]})
            yield batch


def test_sgd_streams_bounded_batches_and_never_reads_a_split(digits, monkeypatch):
    spies = []

    def spy_open(root, **kwargs):
        spies.append(SpyDataset(open_dataset(root, **kwargs)))
        return spies[-1]

    monkeypatch.setattr(sklearn_trainer, "open_dataset", spy_open)
    options = {"batch_size": 64, "shuffle_buffer": 128, "epochs": 2}
    report = SklearnTrainer().train(TrainRequest(str(digits), ["hog", "lbp"], "sgd", "sgd-hog+lbp",
                                                 standardize=True, seed=3, options=options))
    spy = spies[0]
    assert spy.reads == []  # no split is ever materialised
    fitting = [b for b in spy.batches_seen if b["shuffle"]]
    train_rows = sum(open_dataset(str(digits)).stats["labels"]["train"].values())
    width = (324 + 10) * 4
    # Every block the trainer holds is one batch: bounded by the batch size, far below the split.
    assert max(b["rows"] for b in spy.batches_seen) <= 64
    assert max(b["bytes"] for b in spy.batches_seen) <= 64 * width < train_rows * width / 15
    assert sum(b["rows"] for b in fitting) == 2 * train_rows  # two epochs, every train row each
    # A seeded shuffle per epoch: the epochs start with different rows.
    firsts, seen = [], 0
    for b in fitting:
        if seen % train_rows == 0:
            firsts.append(b["first"])
        seen += b["rows"]
    assert len(set(firsts)) == 2
    # val and test are scored batch by batch too, in the same batch size.
    assert {b["split"] for b in spy.batches_seen if not b["shuffle"]} == {"train", "val", "test"}

    assert [c["params"] for c in report["selection"]["candidates"]] == GRIDS["sgd"]
    assert report["test"]["rows"] >= 100 and report["test"]["accuracy"] >= 0.9, report["test"]
    # The same seed, the same model.
    again = SklearnTrainer().train(TrainRequest(str(digits), ["hog", "lbp"], "sgd", "sgd-again", standardize=True,
                                                seed=3, options=options))
    assert again["selection"] == report["selection"] and again["test"] == report["test"]


def test_pca_is_recorded_and_applied_by_predict(digits):
    import joblib

    code, out, err = cli("train", digits, "--features", "hog,lbp", "--model", "logreg", "--pca", "20",
                         "--standardize", "--name", "pca20")
    assert code == 0, err
    model_dir = digits / "models" / "pca20"
    report, info = load_json(model_dir / "report.json"), load_json(model_dir / "model.json")
    assert report["pca"] == 20 and info["pca"] == 20
    assert info["steps"] == ["pca", "standardize", "model"]
    mean, components = base.load_pca(str(model_dir))
    assert mean.shape == (334,) and components.shape == (20, 334)
    pipeline = joblib.load(model_dir / "model.joblib")
    assert pipeline.n_features_in_ == 20  # the model sees the projection, not the 334 features
    assert report["test"]["accuracy"] >= 0.9

    code, out, err = cli("predict", digits, "--model", model_dir)
    assert code == 0, err
    table = pq.read_table(digits / "predictions" / "pca20.parquet").to_pydict()
    ds = open_dataset(str(digits))
    rows = ds.read(["hog", "lbp"], split=None, include_unlabelled=True)
    expected = dict(zip(rows.keys, pipeline.predict(base.project(rows.X, mean, components)).tolist()))
    assert dict(zip(table["key"], table["label"])) == expected


# --- predict ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def new_output(digits, digits_dir, tmp_path_factory) -> tuple[pathlib.Path, list[str]]:
    """Another output with the digits' features: every test image of ``digits`` (class folders,
    labelled) plus 12 other digits directly in the root (unlabelled). Returns it and the
    unlabelled keys."""
    root = tmp_path_factory.mktemp("new")
    images = root / "images"
    test_keys = open_dataset(str(digits)).read([], split="test").keys
    for key in test_keys:
        (images / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(digits_dir / key, images / key)
    unlabelled = []
    for path in sorted(digits_dir.rglob("*.png"))[5::150]:
        name = f"unknown-{path.parent.name}-{path.name}"
        shutil.copyfile(path, images / name)
        unlabelled.append(name)
    spec = write_spec(root / "spec.yaml", seed=7, image={"size": [32, 32]}, features=DIGITS_FEATURES,
                      output={"shards": 2})
    return run_output(spec, images, root / "out"), unlabelled


def test_predict_on_another_output_with_unlabelled_rows(logreg_hog, new_output):
    model_dir, _ = logreg_hog
    out, unlabelled = new_output
    code, printed, err = cli("predict", out, "--model", model_dir)
    assert code == 0, err
    path = out / "predictions" / "logreg-hog.parquet"
    assert printed.startswith(f"wrote {load_json(out / '_manifest.json')['counts']['written_rows']} predictions "
                              f"to {path}")
    assert os.listdir(out / "predictions") == ["logreg-hog.parquet"]  # no temporary file left

    table = pq.read_table(path)
    assert table.column_names == PREDICTION_COLUMNS
    assert str(table.schema.field("label").type) == "int32" and str(table.schema.field("true_label").type) == "int32"
    rows = table.to_pydict()
    assert len(rows["key"]) == load_json(out / "_manifest.json")["counts"]["written_rows"]
    assert rows["key"] == sorted(rows["key"]) and rows["source_key"] == rows["key"]
    assert set(rows["aug_index"]) == {0}
    true, label = np.array(rows["true_label"]), np.array(rows["label"])
    assert sorted(np.array(rows["key"])[true == -1].tolist()) == sorted(unlabelled)
    names = load_json(model_dir / "model.json")["label_names"]
    assert rows["label_name"] == [names[i] for i in label]
    probabilities = np.array(rows["probabilities"], dtype=np.float64)
    assert probabilities.shape == (len(label), 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    assert (probabilities.argmax(axis=1) == label).all()
    # The labelled rows are exactly the test images of the training output: the same accuracy.
    labelled = true >= 0
    accuracy = float((label[labelled] == true[labelled]).mean())
    report = load_json(model_dir / "report.json")
    assert labelled.sum() == report["test"]["rows"]
    assert accuracy == pytest.approx(report["test"]["accuracy"], abs=1e-12) and accuracy >= 0.95
    for name in names:  # the printed counts per predicted label
        assert f"\n  {name:<16}{rows['label_name'].count(name)}" in printed or name not in rows["label_name"]


def test_predict_refuses_features_of_another_fingerprint(logreg_hog, textures):
    model_dir, _ = logreg_hog
    code, out, err = cli("predict", textures, "--model", model_dir)
    assert code == 2
    theirs = load_json(textures / "_manifest.json")["feature_fingerprint"]
    ours = load_json(model_dir / "model.json")["feature_fingerprint"]
    assert err.startswith("featurize: error: ") and theirs[:12] in err and ours[:12] in err
    assert "not comparable" in err
    assert not (textures / "predictions").exists()


# --- selection without a val split -------------------------------------------------------------------

@pytest.fixture(scope="module")
def no_val(digits_dir, tmp_path_factory) -> pathlib.Path:
    """Every 4th digit through a manifest CSV whose split column has only train and test."""
    root = tmp_path_factory.mktemp("noval")
    with open(root / "inputs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uri", "label", "split"])
        for i, path in enumerate(sorted(digits_dir.rglob("*.png"))[::4]):
            writer.writerow([str(path), path.parent.name, "test" if i % 3 == 0 else "train"])
    spec = write_spec(root / "spec.yaml", image={"size": [32, 32]}, features=DIGITS_FEATURES[:1],
                      output={"shards": 2})
    return run_output(spec, root / "inputs.csv", root / "out")


@pytest.mark.parametrize("model", ["linear_svm", "sgd"])
def test_empty_val_selects_by_cross_validation(no_val, model):
    report = SklearnTrainer().train(TrainRequest(str(no_val), ["hog"], model, model, standardize=True))
    assert report["val"] is None
    selection = report["selection"]
    assert selection["metric"] == "3-fold cross-validation accuracy on train"
    assert "val split is empty" in selection["note"]
    scores = [c["val_accuracy"] for c in selection["candidates"]]
    assert selection["chosen"] == selection["candidates"][scores.index(max(scores))]["params"]
    assert report["test"]["rows"] >= 100 and report["test"]["accuracy"] >= 0.9, report["test"]
    assert load_json(no_val / "models" / model / "model.json")["params"] == selection["chosen"]
    if model == "linear_svm":  # no predict_proba: null probabilities
        assert SklearnTrainer().predict(str(no_val / "models" / model), str(no_val))
        probabilities = pq.read_table(no_val / "predictions" / f"{model}.parquet").column("probabilities")
        assert probabilities.null_count == len(probabilities) > 0


# --- errors -----------------------------------------------------------------------------------------

def test_user_mistakes_exit_2_with_one_line(digits, tmp_path):
    def refused(*argv) -> str:
        code, _, err = cli(*argv)
        assert code == 2, err
        assert err.startswith("featurize: error: ") and err.count("\n") == 1, err
        return err

    err = refused("train", digits, "--features", "hog,nope", "--model", "logreg")
    assert "no feature column 'nope'" in err and "its columns: hog, lbp" in err
    assert "unknown model 'xgb'" in refused("train", digits, "--features", "hog", "--model", "xgb")
    assert "unknown trainer 'nope'" in refused("train", digits, "--features", "hog", "--model", "logreg",
                                               "--trainer", "nope")
    assert "does not exist" in refused("train", tmp_path / "missing", "--features", "hog", "--model", "logreg")
    (tmp_path / "empty").mkdir()
    assert "no _manifest.json" in refused("train", tmp_path / "empty", "--features", "hog", "--model", "logreg")
    assert "--pca 0: must be between 1 and 324" in refused("train", digits, "--features", "hog", "--model",
                                                           "logreg", "--pca", "0", "--name", "pca0")
    assert "expected KEY=VALUE" in refused("train", digits, "--features", "hog", "--model", "logreg",
                                           "--conf", "nonsense")
    assert "not a saved featurelib model" in refused("predict", digits, "--model", tmp_path / "nomodel")
    assert not (digits / "models" / "xgb-hog").exists()

    # An existing model folder is refused, then replaced with --overwrite.
    train = ("train", digits, "--features", "lbp", "--model", "decision_tree", "--name", "tree")
    assert cli(*train)[0] == 0
    first = load_json(digits / "models" / "tree" / "report.json")
    assert "already exists" in refused(*train) and "--overwrite" in refused(*train)
    code, _, err = cli(*train, "--seed", "5", "--overwrite")
    assert code == 0, err
    assert load_json(digits / "models" / "tree" / "report.json")["seed"] == 5 != first["seed"]
    assert not [n for n in os.listdir(digits / "models") if n.startswith(".")]  # no staging folder left


def _csv_output(root: pathlib.Path, digits_dir: pathlib.Path, rows: list[tuple[str, str]]) -> pathlib.Path:
    """An output of a few digits of class folders 3 and 7, with the given (label, split) per row."""
    paths = sorted(digits_dir.glob("3/*.png"))[:3] + sorted(digits_dir.glob("7/*.png"))[:3]
    with open(root / "inputs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uri", "label", "split"])
        for path, (label, split) in zip(paths, rows):
            writer.writerow([str(path), label, split])
    spec = write_spec(root / "spec.yaml", image={"size": [32, 32]}, features=DIGITS_FEATURES[1:],
                      output={"shards": 1})
    return run_output(spec, root / "inputs.csv", root / "out")


def test_refuses_one_class_and_no_train_rows(digits_dir, tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "none").mkdir()
    one = _csv_output(tmp_path / "one", digits_dir, [("3", "train")] * 3 + [("7", "val")] * 3)
    code, _, err = cli("train", one, "--features", "lbp", "--model", "logreg")
    assert code == 2 and "one class in its train split ('3')" in err, err
    none = _csv_output(tmp_path / "none", digits_dir, [("3", "val"), ("3", "test")] * 3)
    code, _, err = cli("train", none, "--features", "lbp", "--model", "sgd")
    assert code == 2 and "no labelled train rows" in err, err
    assert not (one / "models" / "logreg-lbp").exists() and not (none / "models").exists()


def test_help_lists_train_and_predict(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "train" in text and "predict" in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--features", "--model", "--trainer", "--name", "--standardize", "--pca", "--seed", "--overwrite",
                 "--master", "--conf"):
        assert flag in text


def test_ctrl_c_during_training_saves_nothing_and_says_so(digits):
    import signal
    import subprocess
    import sys
    import time

    featurize = pathlib.Path(sys.executable).parent / "featurize"
    process = subprocess.Popen([str(featurize), "train", str(digits), "--features", "hog,lbp", "--model",
                                "random_forest", "--name", "interrupted"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    staging = digits / "models"
    time.sleep(2.5)  # importing or fitting the grid (200-tree forests, three depths): seconds from the end
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "featurize: interrupted; nothing was saved (a model folder appears only when training completes)" in err
    assert not [p.name for p in (staging.iterdir() if staging.exists() else []) if "interrupted" in p.name]

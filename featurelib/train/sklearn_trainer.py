"""The ``sklearn`` trainer: scikit-learn models on one machine.

Fit on train, select on val, report on test::

    featurize train out/digits --features hog --model logreg --standardize

Five models (``logreg``, ``knn``, ``linear_svm``, ``random_forest``,
``decision_tree``) read the train split into memory; ``sgd`` never does: it
streams seeded, shuffled mini-batches through the shards with
``partial_fit`` (memory: the reader's shuffle buffer, not the split) and
evaluates val and test batch by batch too.

Every model takes the same path through the features::

    X (N, D) --[pca.npz projection, --pca]--> (N, k) --[model.joblib: scaler?, model]--> label

The projection comes first so that ``model.joblib`` is one scikit-learn
``Pipeline`` on the projected features, and ``predict`` is "project, then
pipeline" for every model.

Selection: every candidate of the model's grid (:data:`GRIDS`, listed from the
most regularised to the least) is fitted on train and scored on val; the best
val accuracy wins, a tie goes to the earlier, simpler candidate. With an empty
val split the score is the accuracy of a 3-fold cross-validation on train
(folds by source key, so an image and its augmented variants stay together).
Reports count original images only (``aug_index == 0``): variants of a val or
test image are not independent evidence.
"""

from __future__ import annotations

import datetime
import os
import time
import warnings
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from featurelib.errors import UserError
from featurelib.io.dataset import Arrays, FeatureDataset, open_dataset
from featurelib.train import base
from featurelib.train.base import MODELS, TrainRequest

#: Candidate parameters per model, most regularised first (a tie on val goes to the first).
GRIDS: dict[str, list[dict[str, Any]]] = {
    "logreg": [{"C": c} for c in (0.01, 0.1, 1.0, 10.0, 100.0)],
    # A larger k averages more neighbours: the smoother (simpler) model comes first.
    "knn": [{"n_neighbors": k, "metric": m} for m in ("euclidean", "manhattan") for k in (15, 9, 7, 5, 3, 1)],
    "linear_svm": [{"C": c} for c in (0.001, 0.01, 0.1, 1.0)],
    "random_forest": [{"n_estimators": 200, "max_depth": d} for d in (8, 16, None)],
    "decision_tree": [{"max_depth": d} for d in (4, 8, 16, None)],
    "sgd": [{"alpha": a} for a in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)],
}
#: Folds of the cross-validation that replaces an empty val split.
CV_FOLDS = 3
#: Train rows the PCA is fitted on, at most (a seeded sample), and the bytes they may take
#: (wide features get fewer rows, never fewer than the components).
PCA_SAMPLE = 4096
PCA_SAMPLE_BYTES = 256 << 20
#: ``sgd`` streaming settings; ``request.options`` may override each. ``shuffle_buffer`` None
#: lets the reader size its buffer (a fixed number of bytes, whatever the row width).
SGD_DEFAULTS = {"batch_size": 256, "shuffle_buffer": None, "epochs": 5}
#: Rows per batch when predicting, at most, and the bytes a batch of features may take.
PREDICT_BATCH = 4096
PREDICT_BATCH_BYTES = 64 << 20
#: Fitted file of the scikit-learn pipeline inside the model folder.
MODEL_FILE = "model.joblib"


# --- estimators and selection ---------------------------------------------------------------------

def make_estimator(model: str, params: dict[str, Any], seed: int):
    """The unfitted scikit-learn estimator of one grid candidate.

    Parameters
    ----------
    model : str
        One of :data:`~featurelib.train.base.MODELS`.
    params : dict
        One entry of ``GRIDS[model]``.
    seed : int
        ``random_state`` of the models that draw random numbers.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import LinearSVC
    from sklearn.tree import DecisionTreeClassifier

    if model == "logreg":
        return LogisticRegression(max_iter=1000, **params)
    if model == "knn":
        return KNeighborsClassifier(**params)
    if model == "linear_svm":
        return LinearSVC(max_iter=5000, random_state=seed, **params)
    if model == "random_forest":
        return RandomForestClassifier(random_state=seed, n_jobs=-1, **params)
    if model == "decision_tree":
        return DecisionTreeClassifier(random_state=seed, **params)
    if model == "sgd":
        # log_loss: a logistic regression fitted by SGD, so predictions carry probabilities.
        return SGDClassifier(loss="log_loss", random_state=seed, **params)
    raise UserError(f"unknown model {model!r}; the sklearn trainer fits: {', '.join(MODELS)}")


def choose(scores: Sequence[float]) -> int:
    """Index of the best score; the first one on a tie (grids list the simplest candidate first)."""
    return int(np.argmax(np.asarray(scores, dtype=np.float64)))


def source_keys(keys: Sequence[str], aug_index: np.ndarray) -> list[str]:
    """``source_key`` of each row: ``key`` minus the ``#aug{n}`` suffix of a variant (contract)."""
    return [key if n == 0 else key[: -len(f"#aug{n}")] for key, n in zip(keys, aug_index.tolist())]


def folds(keys: Sequence[str], aug_index: np.ndarray, n_folds: int = CV_FOLDS) -> np.ndarray:
    """Cross-validation fold of each row, ``(N,)`` int: ``crc32(source_key) % n_folds``.

    By source key, so variants land in their original's fold (no leak between folds),
    and by hash, so a streamed batch knows its rows' folds without seeing the split.
    """
    return np.fromiter((zlib.crc32(k.encode()) % n_folds for k in source_keys(keys, aug_index)),
                       np.int64, len(keys))


def full_probabilities(estimator, X: np.ndarray, n_classes: int) -> np.ndarray | None:
    """``predict_proba`` as ``(N, n_classes)`` float32 in label order, None when the model has none.

    A class absent from train has no column in scikit-learn's output; it gets probability 0.
    """
    if not hasattr(estimator, "predict_proba"):
        return None
    proba = estimator.predict_proba(X)
    out = np.zeros((len(X), n_classes), np.float32)
    out[:, np.asarray(estimator.classes_, dtype=np.int64)] = proba
    return out


def fixed_scaler(mean: np.ndarray, scale: np.ndarray):
    """A fitted ``StandardScaler`` with given statistics (no fitting pass).

    Parameters
    ----------
    mean, scale : ndarray, (D,)
        ``x -> (x - mean) / scale``; a ``scale`` of 0 is taken as 1, as the reader does
        (a constant element is only centred).
    """
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler()
    scaler.mean_ = np.asarray(mean, np.float64)
    scaler.scale_ = np.where(np.asarray(scale, np.float64) > 0, scale, 1.0)
    scaler.var_ = scaler.scale_**2
    scaler.n_features_in_ = len(scaler.mean_)
    scaler.n_samples_seen_ = 0
    return scaler


def stats_scaler(dataset: FeatureDataset, columns: Sequence[str]):
    """The train mean and std of ``stats.json`` as a fitted scaler over ``columns`` side by side.

    The same numbers as ``normalize="standard"`` in the reader; kept in the saved model so that
    ``predict`` standardises another output with the statistics of the one trained on.
    """
    means, stds = [], []
    for name in columns:
        entry = dataset.stats["features"][name]
        if entry["mean"] is None:
            raise UserError(f"{dataset.root}: stats.json has no train statistics for {name!r}")
        means.append(np.asarray(entry["mean"], np.float64))
        stds.append(np.asarray(entry["std"], np.float64))
    return fixed_scaler(np.concatenate(means), np.concatenate(stds))


def pipeline(estimator, scaler=None):
    """``Pipeline([("standardize", scaler), ("model", estimator)])``, without the scaler when None."""
    from sklearn.pipeline import Pipeline

    return Pipeline(([("standardize", scaler)] if scaler is not None else []) + [("model", estimator)])


def _fit_quietly(estimator, X: np.ndarray, y: np.ndarray) -> str | None:
    """Fit; return a note when scikit-learn says the solver did not converge (else None)."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        estimator.fit(X, y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        return "did not converge within max_iter"
    return None


# --- the request and the dataset --------------------------------------------------------------------

def _check_name(name: str) -> None:
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or os.sep in name:
        raise UserError(f"model name {name!r} must be a plain folder name (no '/', not starting with '.')")


def rows_within(width: int, rows: int, budget: int, floor: int = 1) -> int:
    """At most ``rows`` rows of ``width`` float32 features, fewer if they would pass ``budget``
    bytes, but never fewer than ``floor``."""
    return max(floor, min(rows, budget // max(1, 4 * width)))


def _check_request(request: TrainRequest, dataset: FeatureDataset) -> None:
    """Fail fast on what the dataset cannot give (columns, ``--pca``, train labels)."""
    unknown = [name for name in request.columns if name not in dataset.columns]
    if unknown or not request.columns:
        raise UserError(f"no feature column {', '.join(map(repr, unknown)) or '(none given)'} in {dataset.root}; "
                        f"its columns: {', '.join(dataset.columns) or 'none'}")
    width = sum(dataset.columns[name] for name in request.columns)
    if request.pca is not None and not 1 <= request.pca <= width:
        raise UserError(f"--pca {request.pca}: must be between 1 and {width} (the width of "
                        f"{'+'.join(request.columns)})")
    train = {name: n for name, n in dataset.stats["labels"].get("train", {}).items() if n}
    if not train:
        raise UserError(f"{dataset.root} has no labelled train rows to fit on")
    if len(train) < 2:
        raise UserError(f"{dataset.root} has one class in its train split ({next(iter(train))!r}); "
                        f"a classifier needs at least 2")


def _split_rows(dataset: FeatureDataset, split: str) -> int:
    """Labelled original rows of ``split`` (``stats.json``)."""
    return sum(dataset.stats["labels"].get(split, {}).values())


def _train_sample(dataset: FeatureDataset, columns: Sequence[str], seed: int, floor: int) -> np.ndarray:
    """Up to :data:`PCA_SAMPLE` train rows (within :data:`PCA_SAMPLE_BYTES`, at least ``floor``),
    a seeded draw, ``(S, D)`` float32.

    The first batch of a shuffled stream: memory is the sample, never the split.
    """
    rows = rows_within(sum(dataset.columns[c] for c in columns), PCA_SAMPLE, PCA_SAMPLE_BYTES, floor)
    batch = next(iter(dataset.batches(columns, split="train", batch_size=rows, shuffle=True, seed=seed,
                                      shuffle_buffer=rows)))
    return batch.X


def _prepare(request: TrainRequest, dataset: FeatureDataset, *, scaler_for_stream: bool):
    """The projection (``(mean, components)`` or None) and, for streamed fitting, the scaler.

    A streamed model cannot fit a scaler in a pass of its own: without PCA it takes the train
    statistics of ``stats.json``; with PCA those do not describe the components, so it is
    fitted on the projected PCA sample.
    """
    sample = _train_sample(dataset, request.columns, request.seed, request.pca) if request.pca else None
    pca = base.fit_pca(sample, request.pca, request.seed) if request.pca else None
    scaler = None
    if scaler_for_stream and request.standardize:
        if pca is None:
            scaler = stats_scaler(dataset, request.columns)
        else:
            from sklearn.preprocessing import StandardScaler

            scaler = StandardScaler().fit(base.project(sample, *pca))
    return pca, scaler


def _transform(X: np.ndarray, pca, scaler=None) -> np.ndarray:
    """Projection then scaling, each when present: ``(N, D)`` -> ``(N, k)`` float32."""
    if pca is not None:
        X = base.project(X, *pca)
    if scaler is not None:
        X = scaler.transform(X).astype(np.float32, copy=False)
    return X


def _report(y_true: np.ndarray, y_pred: np.ndarray, label_names: Sequence[str]) -> dict[str, Any] | None:
    return base.classification_report(y_true, y_pred, label_names) if len(y_true) else None


# --- in-memory models -------------------------------------------------------------------------------

def _fit_in_memory(request: TrainRequest, dataset: FeatureDataset, label_names: list[str]):
    """Fit every candidate on train, select, report. Returns (pipeline, pca, selection, reports)."""
    from sklearn.preprocessing import StandardScaler

    pca, _ = _prepare(request, dataset, scaler_for_stream=False)
    train = dataset.read(request.columns, split="train")
    val, test = (dataset.read(request.columns, split=s, originals_only=True) for s in ("val", "test"))
    X_train, X_val, X_test = (_transform(part.X, pca) for part in (train, val, test))

    def fit(params, X, y):
        model = pipeline(make_estimator(request.model, params, request.seed),
                         StandardScaler() if request.standardize else None)
        return model, _fit_quietly(model, X, y)

    cv = len(val) == 0
    fold = folds(train.keys, train.aug_index) if cv else None
    fit_rows = min(int((fold != f).sum()) for f in range(CV_FOLDS)) if cv else len(train)
    grid = _feasible(request.model, fit_rows)
    candidates, best, best_model = [], None, None
    for params in grid:
        started = time.perf_counter()
        if cv:
            model, score, note = None, _cross_validate(fit, params, X_train, train, fold), None
        else:
            model, note = fit(params, X_train, train.y)
            score = float((model.predict(X_val) == val.y).mean())
        candidates.append(_candidate(params, score, time.perf_counter() - started, note))
        if best is None or score > candidates[best]["val_accuracy"]:
            best, best_model = len(candidates) - 1, model
    if cv:  # the folds only scored; the chosen candidate is fitted on the whole train split
        best_model, _ = fit(grid[best], X_train, train.y)
    originals = np.flatnonzero(train.aug_index == 0)
    reports = {
        "train": _report(train.y[originals], best_model.predict(X_train[originals]), label_names),
        "val": _report(val.y, best_model.predict(X_val), label_names) if len(val) else None,
        "test": _report(test.y, best_model.predict(X_test), label_names) if len(test) else None,
    }
    return best_model, pca, _selection(candidates, best, cv), reports


def _cross_validate(fit, params, X: np.ndarray, train: Arrays, fold: np.ndarray) -> float:
    """Pooled accuracy of ``CV_FOLDS``-fold cross-validation on the train originals."""
    correct = total = 0
    for f in range(CV_FOLDS):
        fitting, held = fold != f, (fold == f) & (train.aug_index == 0)
        if len(np.unique(train.y[fitting])) < 2:
            raise UserError(f"too few train rows for {CV_FOLDS}-fold cross-validation (val is empty): "
                            f"give the spec a val split")
        model, _ = fit(params, X[fitting], train.y[fitting])
        correct += int((model.predict(X[held]) == train.y[held]).sum())
        total += int(held.sum())
    return correct / total if total else 0.0


def _feasible(model: str, fit_rows: int) -> list[dict[str, Any]]:
    """The grid without candidates the fitting rows cannot take (k-NN with k above them)."""
    return [p for p in GRIDS[model] if p.get("n_neighbors", 0) <= fit_rows]


def _candidate(params, score: float, seconds: float | None = None, note: str | None = None) -> dict[str, Any]:
    """One row of ``selection.candidates``; ``seconds`` when the candidate was fitted on its own."""
    entry = {"params": dict(params), "val_accuracy": score}
    if seconds is not None:
        entry["seconds"] = round(seconds, 3)
    if note:
        entry["note"] = note
    return entry


def _selection(candidates: list[dict[str, Any]], best: int, cv: bool) -> dict[str, Any]:
    selection = {"metric": "val accuracy", "candidates": candidates, "chosen": dict(candidates[best]["params"]),
                 "rule": "best score; a tie goes to the earlier (simpler) candidate of the grid"}
    if cv:
        selection["metric"] = f"{CV_FOLDS}-fold cross-validation accuracy on train"
        selection["note"] = (f"the val split is empty: each candidate's val_accuracy is its pooled {CV_FOLDS}-fold "
                             f"cross-validation accuracy on train (folds by crc32(source_key) % {CV_FOLDS})")
    return selection


# --- the streamed model (sgd) -----------------------------------------------------------------------

def _sgd_settings(options: dict[str, Any]) -> dict[str, int | None]:
    """:data:`SGD_DEFAULTS` overridden by ``options``; each must be an integer >= 1 (or None for the buffer)."""
    settings = {}
    for key, default in SGD_DEFAULTS.items():
        value = options.get(key, default)
        if value is None and key == "shuffle_buffer":
            settings[key] = None
            continue
        try:
            settings[key] = int(value)
        except (TypeError, ValueError):
            settings[key] = 0
        if settings[key] < 1:
            raise UserError(f"sgd option {key} must be an integer >= 1; got {value!r}")
    return settings


def _stream(dataset: FeatureDataset, columns: Sequence[str], split: str, transform, *, batch_size: int,
            shuffle: bool = False, seed: int = 0, shuffle_buffer: int | None = None,
            originals_only: bool = True) -> Iterator[tuple[np.ndarray, Arrays]]:
    """``(transformed X (B, k), batch)`` over one split, a batch at a time.

    ``shuffle_buffer`` None: the reader's own default.
    """
    buffer = {} if shuffle_buffer is None else {"shuffle_buffer": shuffle_buffer}
    for batch in dataset.batches(columns, split=split, batch_size=batch_size, shuffle=shuffle, seed=seed,
                                 originals_only=originals_only, **buffer):
        yield transform(batch.X), batch


def _fit_streamed(request: TrainRequest, dataset: FeatureDataset, label_names: list[str]):
    """SGD through shuffled mini-batches for several epochs; every candidate (and, with an empty
    val split, every candidate on every fold) learns from the same pass. Returns as
    :func:`_fit_in_memory`."""
    settings = _sgd_settings(request.options)
    pca, scaler = _prepare(request, dataset, scaler_for_stream=True)

    def transform(X):
        return _transform(X, pca, scaler)

    def evaluate(split):  # fitting's batch and buffer sizes: evaluating holds no more rows than fitting
        return _stream(dataset, request.columns, split, transform, batch_size=settings["batch_size"],
                       shuffle_buffer=settings["shuffle_buffer"])

    classes = np.arange(len(label_names))
    cv = _split_rows(dataset, "val") == 0
    grid = GRIDS["sgd"]
    # (candidate, fold): fold None fits on all train rows, fold f on the rows outside fold f.
    members = [(i, None) for i in range(len(grid))] + [(i, f) for i in range(len(grid)) for f in range(CV_FOLDS)
                                                       if cv]
    models = [make_estimator("sgd", grid[i], request.seed) for i, _ in members]
    for epoch in range(settings["epochs"]):
        for X, batch in _stream(dataset, request.columns, "train", transform, batch_size=settings["batch_size"],
                                shuffle=True, seed=request.seed + epoch, shuffle_buffer=settings["shuffle_buffer"],
                                originals_only=False):
            fold = folds(batch.keys, batch.aug_index) if cv else None
            for (_, f), model in zip(members, models):
                rows = slice(None) if f is None else np.flatnonzero(fold != f)
                if f is None or len(rows):
                    model.partial_fit(X[rows], batch.y[rows], classes=classes)

    full = models[: len(grid)]
    if cv:
        correct = np.zeros(len(grid))
        total = 0
        for X, batch in evaluate("train"):
            fold = folds(batch.keys, batch.aug_index)
            total += len(batch)
            for (i, f), model in zip(members[len(grid):], models[len(grid):]):
                held = fold == f
                correct[i] += int((model.predict(X[held]) == batch.y[held]).sum())
        scores = correct / total
    else:
        scores = _streamed_accuracy(full, evaluate("val"))
    candidates = [_candidate(params, float(s)) for params, s in zip(grid, scores)]
    best = choose(scores)
    chosen = full[best]
    reports = {split: _streamed_report(chosen, evaluate(split), label_names) for split in ("train", "val", "test")}
    return pipeline(chosen, scaler), pca, _selection(candidates, best, cv), reports


def _streamed_accuracy(models, stream) -> np.ndarray:
    """Accuracy of each model over a stream of ``(X, batch)``, ``(M,)``."""
    correct, total = np.zeros(len(models)), 0
    for X, batch in stream:
        total += len(batch)
        for i, model in enumerate(models):
            correct[i] += int((model.predict(X) == batch.y).sum())
    return correct / total if total else correct


def _streamed_report(model, stream, label_names) -> dict[str, Any] | None:
    """:func:`~featurelib.train.base.classification_report` of a stream; memory: two ints a row."""
    truth, predicted = [], []
    for X, batch in stream:
        truth.append(batch.y)
        predicted.append(model.predict(X))
    if not truth:
        return None
    return _report(np.concatenate(truth), np.concatenate(predicted), label_names)


# --- the trainer --------------------------------------------------------------------------------------

class SklearnTrainer(base.Trainer):
    """scikit-learn on one machine: every model of :data:`~featurelib.train.base.MODELS`."""

    name = "sklearn"
    models = MODELS

    def train(self, request: TrainRequest) -> dict[str, Any]:
        """Fit, select on val, report on test; write ``request.model_dir``. See :class:`~featurelib.train.base.Trainer`.

        Raises
        ------
        UserError
            Unknown model or column, an output that is not one, no train rows, fewer than 2
            train classes, a model folder that exists (without ``request.overwrite``), an
            out-of-range ``--pca``.
        """
        started = time.perf_counter()
        if request.model not in self.models:
            raise UserError(f"unknown model {request.model!r}; the sklearn trainer fits: {', '.join(self.models)}")
        _check_name(request.name)
        if "://" in request.output:
            raise UserError(f"the sklearn trainer writes its model folder locally; {request.output!r} is a URL")
        base.refuse_existing_model_dir(request.model_dir, request.overwrite)
        dataset = open_dataset(request.output)
        _check_request(request, dataset)
        label_names = list(dataset.label_names)
        fit = _fit_streamed if request.model == "sgd" else _fit_in_memory
        model, pca, selection, reports = fit(request, dataset, label_names)
        report = {
            "name": request.name, "model": request.model, "trainer": self.name, "columns": list(request.columns),
            "feature_fingerprint": dataset.feature_fingerprint, "label_names": label_names,
            "standardize": request.standardize, "pca": request.pca, "seed": request.seed, "selection": selection,
            **reports, "seconds": round(time.perf_counter() - started, 3),
        }
        _save(request, report, model, pca)
        return report

    def predict(self, model_dir: str, output: str) -> str:
        """Apply the model in ``model_dir`` to every row of ``output`` (all splits, unlabelled too).

        Writes ``output/predictions/NAME.parquet`` (columns in :data:`PREDICTION_SCHEMA`), sorted by
        key, through a temporary file and a rename; returns its path. Reads a batch at a time.

        Raises
        ------
        UserError
            Not a saved sklearn model, not an output, or an output with another feature
            fingerprint (or without the model's columns).
        """
        import joblib

        info, dataset = base.open_for_prediction(self.name, model_dir, output)
        model = joblib.load(os.path.join(model_dir, MODEL_FILE))
        pca = base.load_pca(model_dir)
        names = list(info["label_names"])
        # The output's label indices may follow another label list: compare by name.
        # The trailing -1 maps an unlabelled row (y == -1, the last index) to -1.
        to_model = base.to_model_labels(names, dataset.label_names)
        parts = []
        rows = rows_within(sum(dataset.columns[c] for c in info["columns"]), PREDICT_BATCH, PREDICT_BATCH_BYTES)
        for batch in dataset.batches(info["columns"], split=None, include_unlabelled=True, batch_size=rows):
            X = _transform(batch.X, pca)
            label = np.asarray(model.predict(X), np.int32)
            parts.append((batch, to_model[batch.y], label, full_probabilities(model, X, len(names))))
        path = os.path.join(output, base.PREDICTIONS_DIR, f"{info['name']}.parquet")
        write_predictions(path, parts, names, info)
        return path


# --- files ----------------------------------------------------------------------------------------------

def model_info(report: dict[str, Any]) -> dict[str, Any]:
    """``model.json`` from a train report: what predict needs to check and apply the model."""
    return {
        "model_info_version": base.MODEL_INFO_VERSION, "trainer": report["trainer"], "model": report["model"],
        "name": report["name"], "columns": report["columns"], "feature_fingerprint": report["feature_fingerprint"],
        "label_names": report["label_names"], "standardize": report["standardize"], "pca": report["pca"],
        "seed": report["seed"], "params": report["selection"]["chosen"],
        "steps": (["pca"] if report["pca"] else []) + (["standardize"] if report["standardize"] else []) + ["model"],
        "files": [MODEL_FILE] + ([base.PCA_FILE] if report["pca"] else []),
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _save(request: TrainRequest, report: dict[str, Any], model, pca) -> None:
    """Write the model folder beside its final place, then rename it there
    (:func:`base.staged_model_dir`): a folder under ``models/`` is always complete.
    ``model.json`` goes last inside it."""
    import joblib

    with base.staged_model_dir(request.model_dir, request.overwrite) as staging:
        joblib.dump(model, os.path.join(staging, MODEL_FILE))
        if pca is not None:
            base.save_pca(staging, *pca)
        base.write_json(os.path.join(staging, base.REPORT), report)
        shown = next(s for s in ("test", "val", "train") if report[s])
        base.write_confusion_png(report[shown]["confusion"], report["label_names"],
                                 os.path.join(staging, base.CONFUSION_PNG),
                                 title=f"{report['name']}: {shown} ({report[shown]['rows']} rows)")
        base.write_json(os.path.join(staging, base.MODEL_INFO), model_info(report))


def _prediction_schema():
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("source_key", pa.string()), ("aug_index", pa.int16()),
                      ("split", pa.string()), ("true_label", pa.int32()), ("label", pa.int32()),
                      ("label_name", pa.string()), ("probabilities", pa.list_(pa.float32()))])


def write_predictions(path: str, parts, label_names: list[str], info: dict[str, Any]) -> None:
    """Write ``predictions/NAME.parquet``: the rows of ``parts``, sorted by key (temporary file, rename).

    Parameters
    ----------
    path : str
    parts : list of tuple
        ``(batch: Arrays, true label (B,) int32 in the model's label order (-1 unlabelled),
        predicted label (B,) int32, probabilities (B, C) or None)``.
    label_names : list of str, length C
        The model's.
    info : dict
        ``model.json`` (its ``name`` and ``feature_fingerprint`` go into the file's metadata).
    """
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = [k for batch, *_ in parts for k in batch.keys]
    order = np.asarray(sorted(range(len(keys)), key=keys.__getitem__), np.int64)

    def column(values):
        return np.concatenate(values)[order] if values else np.zeros(0)

    aug = column([b.aug_index for b, *_ in parts]).astype(np.int16)
    label = column([p for _, _, p, _ in parts]).astype(np.int32)
    probs = [p for *_, p in parts]
    n_classes = len(label_names)
    if parts and probs[0] is not None:
        flat = column(probs).astype(np.float32).reshape(-1)
        probabilities = pa.ListArray.from_arrays(pa.array(np.arange(0, len(flat) + 1, n_classes, dtype=np.int32)),
                                                 pa.array(flat))
    else:
        probabilities = pa.nulls(len(order), pa.list_(pa.float32()))
    sorted_keys = [keys[i] for i in order]
    splits = [s for batch, *_ in parts for s in batch.split]
    table = pa.table({
        "key": sorted_keys, "source_key": source_keys(sorted_keys, aug), "aug_index": aug,
        "split": [splits[i] for i in order], "true_label": column([t for _, t, *_ in parts]).astype(np.int32),
        "label": label, "label_name": [label_names[i] for i in label.tolist()], "probabilities": probabilities,
    }, schema=_prediction_schema().with_metadata({
        "featurelib.model": info["name"], "featurelib.feature_fingerprint": info["feature_fingerprint"],
        "featurelib.label_names": json.dumps(label_names)}))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

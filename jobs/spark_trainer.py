"""The ``spark`` trainer: Spark MLlib models, distributed over the Parquet shards.

Spark glue like the Spark engine (:mod:`jobs.extract_features`): featurelib never imports
pyspark or ``jobs``; the trainer is found through the ``featurelib.trainers`` entry point
(``spark = jobs.spark_trainer:SparkTrainer [spark]``).

    featurize train out/digits --features hog --model logreg --trainer spark [--master URL] [--conf k=v]
    spark-submit jobs/train_classifier.py out/digits --features hog --model logreg

Three models: ``logreg`` (``LogisticRegression``), ``linear_svm``
(``OneVsRest(LinearSVC)``: LinearSVC is binary only) and ``random_forest``
(``RandomForestClassifier``); the others of :data:`~featurelib.train.base.MODELS`
are the ``sklearn`` trainer's (MLlib has no k-NN).

Every model takes the path of the ``sklearn`` trainer (so both read the same
``pca.npz`` and report the same way)::

    arrays --array_to_vector--> vectors --[spark/: VectorAssembler, StandardScaler?, model]--> label
    arrays --concat, pca.npz projection (pandas UDF)--> vector --[spark/: ...]--> label    (--pca N)

Spark reads only the shard files the manifest lists, and the rows stay on the
executors: the driver collects a PCA sample (a few thousand rows at most), one
accuracy per candidate, and ``(split, label, prediction) -> count`` for the
reports. ``spark/`` is an MLlib ``PipelineModel`` (``PipelineModel.load``).

Selection as in the ``sklearn`` trainer: each candidate of the grid (most
regularised first) is fitted on train (augmented variants included) and scored
by its accuracy on the val originals; the best wins, a tie goes to the earlier
candidate; an empty val split is replaced by a 3-fold cross-validation on
train with folds by ``crc32(source_key) % 3`` (the same folds as the sklearn
trainer's; the scaler, though, is fitted once on all train rows, not per fold).
Reports count original images only.

Every fit is a chain of small Spark jobs (one per optimizer iteration, one per
tree level): on 2 cores each costs about 0.15-0.2 s, whatever the data size.
Hence: the fitting rows are cached once for the whole grid, candidates are
fitted ``parallelism`` at a time, and logreg/LinearSVC stop at scikit-learn's
tolerance (1e-4).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd  # a module global: pandas_udf resolves its type hints here
import pyspark  # noqa: F401  (the spark extra: without it the trainer lookup names the pip line)

from featurelib.errors import UserError
from featurelib.io.dataset import Arrays, FeatureDataset, open_dataset
from featurelib.train import base
from featurelib.train.base import TrainRequest
from featurelib.train.sklearn_trainer import (CV_FOLDS, PCA_SAMPLE, PCA_SAMPLE_BYTES, _candidate, _check_name,
                                              _check_request, _selection, choose, model_info, rows_within,
                                              write_predictions)

#: The models this trainer fits (the rest of base.MODELS: ``--trainer sklearn``).
SUPPORTED = ("logreg", "linear_svm", "random_forest")
#: Candidate MLlib parameters per model, most regularised first (a tie on val goes to the first).
#: MLlib's ``regParam`` is a penalty on the mean loss: about ``1 / (C * train rows)`` of scikit-learn's C.
GRIDS: dict[str, list[dict[str, Any]]] = {
    "logreg": [{"regParam": r} for r in (0.1, 0.01, 0.001)],
    "linear_svm": [{"regParam": r} for r in (0.1, 0.01, 0.001)],
    "random_forest": [{"numTrees": 100, "maxDepth": d} for d in (8, 12, 16)],
}
#: ``request.options`` keys this trainer reads: the session (``master``, ``conf``), a grid that
#: replaces :data:`GRIDS` (``grid``: a list of ``{MLlib parameter: value}``; for ``linear_svm``
#: LinearSVC's), and how many fits run at once (``parallelism``, default 2: grid candidates,
#: and OneVsRest's binary LinearSVCs).
OPTIONS = ("master", "conf", "grid", "parallelism")
#: The fitted MLlib PipelineModel inside the model folder.
SPARK_DIR = "spark"
#: Internal column names (a leading underscore: never a feature column's name).
LABEL, FOLD, PROJECTED, FEATURES = "_label", "_fold", "_pca", "_features"


# --- the request ---------------------------------------------------------------------------------

def check_model(model: str) -> None:
    """Refuse a model MLlib does not fit here, naming the ones it does.

    Raises
    ------
    UserError
    """
    if model in SUPPORTED:
        return
    known = "another trainer's model" if model in base.MODELS else "not a featurelib model"
    raise UserError(f"the spark trainer fits {', '.join(SUPPORTED)}; {model!r} is {known}: "
                    f"use --trainer sklearn (it fits {', '.join(base.MODELS)})")


def check_options(options: dict[str, Any]) -> None:
    """Refuse an unknown ``request.options`` key (a typo would otherwise be ignored)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UserError(f"unknown spark trainer option(s) {unknown}; it takes {', '.join(OPTIONS)}")


def parallelism_of(options: dict[str, Any]) -> int:
    """``options["parallelism"]`` (default 2), an integer >= 1."""
    value = options.get("parallelism", 2)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"option parallelism must be an integer >= 1; got {value!r}")
    return value


def grid_of(model: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    """The candidates: ``options["grid"]`` when given (a non-empty list of dicts), else :data:`GRIDS`."""
    grid = options.get("grid", GRIDS[model])
    if not isinstance(grid, (list, tuple)) or not grid or not all(isinstance(p, dict) for p in grid):
        raise UserError(f"option grid must be a non-empty list of {{parameter: value}}; got {grid!r}")
    return [dict(p) for p in grid]


# --- estimators -----------------------------------------------------------------------------------

def _with_params(estimator, params: dict[str, Any]):
    """``estimator`` with ``params`` (MLlib parameter names) set; a wrong name or value is a UserError."""
    for key, value in params.items():
        if not estimator.hasParam(key):
            raise UserError(f"grid parameter {key!r} is not a parameter of MLlib's {type(estimator).__name__}")
        try:
            estimator.set(estimator.getParam(key), value)
        except (TypeError, ValueError) as exc:
            raise UserError(f"grid parameter {key}={value!r}: {exc}") from None
    return estimator


def make_estimator(model: str, params: dict[str, Any], seed: int, parallelism: int = 2):
    """The unfitted MLlib estimator of one candidate (needs an active Spark session).

    Parameters
    ----------
    model : {'logreg', 'linear_svm', 'random_forest'}
    params : dict
        MLlib parameters (for ``linear_svm``, the inner LinearSVC's).
    seed : int
        The forest's seed.
    parallelism : int
        Binary LinearSVCs OneVsRest fits at once.
    """
    from pyspark.ml.classification import LinearSVC, LogisticRegression, OneVsRest, RandomForestClassifier

    columns = {"featuresCol": FEATURES, "labelCol": LABEL}
    # tol 1e-4 (scikit-learn's, not MLlib's 1e-6): every iteration is a Spark job, and on digits
    # hog the last third of MLlib's iterations changed no val prediction.
    if model == "logreg":
        return _with_params(LogisticRegression(elasticNetParam=0.0, maxIter=100, tol=1e-4, family="multinomial",
                                               **columns), params)
    if model == "linear_svm":
        # Hinge loss converges slowly and OneVsRest multiplies the jobs by the classes:
        # 50 iterations, not MLlib's 100 (the grid may say otherwise).
        inner = _with_params(LinearSVC(maxIter=50, tol=1e-4, **columns), params)
        return OneVsRest(classifier=inner, parallelism=parallelism, **columns)
    if model == "random_forest":
        return _with_params(RandomForestClassifier(seed=seed, **columns), params)
    raise AssertionError(model)  # check_model ran first


# --- the session ------------------------------------------------------------------------------------

def session(options: dict[str, Any]):
    """``(SparkSession, built)``: the active session (tests, spark-submit, a notebook), else one
    built by :func:`jobs.session.build_session` from ``options`` ``master`` and ``conf``."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    from jobs.session import build_session  # the Spark glue: imported only when a session is needed

    return build_session(options.get("master"), options.get("conf") or {}, app_name="featurelib-train"), True


# --- features as vectors ----------------------------------------------------------------------------

def read_rows(spark, dataset: FeatureDataset, columns: Sequence[str]):
    """The listed Parquet shards (only those) as a DataFrame: identity columns, label, ``columns``."""
    paths = [os.path.abspath(p) for p in dataset.shard_paths("parquet")]
    return spark.read.parquet(*paths).select("key", "source_key", "aug_index", "split", "label", *columns)


def pca_sample(rows, columns: Sequence[str], width: int, n_components: int, seed: int) -> np.ndarray:
    """A seeded sample of ``rows`` (train rows) for the PCA, collected to the driver, ``(S, D)`` float32.

    At most :data:`~featurelib.train.sklearn_trainer.PCA_SAMPLE` rows (fewer for wide features,
    never fewer than the components): ``orderBy(rand(seed)).limit(S)`` keeps the top S per
    partition, so Spark never sorts the split.
    """
    import pyspark.sql.functions as F

    limit = rows_within(width, PCA_SAMPLE, PCA_SAMPLE_BYTES, n_components)
    table = rows.select(_concat(columns).alias("x")).orderBy(F.rand(seed)).limit(limit).toArrow()
    return list_column_numpy(table.column("x"), width)


def list_column_numpy(column, width: int) -> np.ndarray:
    """An Arrow ``list<float>`` column of rows of ``width`` values -> ``(N, width)`` float32."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.list_(pa.float32()))
    return np.asarray(column.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(column), width)


def _concat(columns: Sequence[str]):
    """The feature array columns side by side, one ``array<float>`` column."""
    import pyspark.sql.functions as F

    return F.concat(*[F.col(c) for c in columns]) if len(columns) > 1 else F.col(columns[0])


def projection_udf(spark, mean: np.ndarray, components: np.ndarray):
    """A pandas UDF ``array<float>`` (D) -> ``array<float>`` (k): :func:`base.project` per Arrow batch.

    The matrices travel once per executor as a broadcast, not inside every task.
    """
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import ArrayType, FloatType

    matrices = spark.sparkContext.broadcast((mean, components))

    @pandas_udf(ArrayType(FloatType()))
    def project(values: pd.Series) -> pd.Series:
        m, c = matrices.value
        x = np.stack(values.to_numpy()) if len(values) else np.zeros((0, len(m)), np.float32)
        return pd.Series(list(base.project(x, m, c)))

    return project


def vectorize(spark, rows, columns: Sequence[str], pca: tuple[np.ndarray, np.ndarray] | None):
    """``rows`` with its feature arrays replaced by MLlib vectors; returns ``(DataFrame, vector columns)``.

    Without PCA: one vector per feature column (``array_to_vector``: VectorAssembler rejects
    arrays). With PCA: the columns side by side, projected, as the one vector column ``_pca``.
    """
    import pyspark.sql.functions as F
    from pyspark.ml.functions import array_to_vector

    keep = [c for c in rows.columns if c not in columns]
    if pca is None:
        return rows.select(*keep, *[array_to_vector(F.col(c)).alias(c) for c in columns]), list(columns)
    project = projection_udf(spark, *pca)
    return rows.select(*keep, array_to_vector(project(_concat(columns))).alias(PROJECTED)), [PROJECTED]


def label_column(n_classes: int):
    """``label`` as the double MLlib wants, tagged nominal with ``n_classes`` values: every model
    then knows the class count without a pass over the data, and probability vectors have one
    entry per label name even when a class is missing from train."""
    import pyspark.sql.functions as F

    return F.col("label").cast("double").alias(LABEL, metadata={"ml_attr": {"type": "nominal",
                                                                             "num_vals": n_classes}})


def prep_stages(vector_columns: Sequence[str], standardize: bool, train):
    """The fitted stages before the model: VectorAssembler, then StandardScaler (fitted on ``train``,
    a DataFrame with ``vector_columns``) when ``standardize``; the last one outputs ``_features``."""
    from pyspark.ml.feature import StandardScaler, VectorAssembler

    assembler = VectorAssembler(inputCols=list(vector_columns), outputCol="_assembled" if standardize else FEATURES)
    if not standardize:
        return [assembler]
    scaler = StandardScaler(inputCol="_assembled", outputCol=FEATURES, withMean=True, withStd=True)
    return [assembler, scaler.fit(assembler.transform(train))]


# --- selection and reports --------------------------------------------------------------------------

def _accuracy(model, rows) -> float:
    """MLlib's accuracy of ``model`` on ``rows`` (one Spark job)."""
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator

    evaluator = MulticlassClassificationEvaluator(metricName="accuracy", labelCol=LABEL, predictionCol="prediction")
    return float(evaluator.evaluate(model.transform(rows)))


def _score(estimator, features, held_counts: dict[int, int] | None):
    """``(fitted model or None, score)`` of one candidate.

    ``held_counts`` None: fit on the train rows, accuracy on the val rows. Otherwise (empty val)
    ``{fold: train originals in it}``: fit without each fold, score on its originals, pooled.
    """
    import pyspark.sql.functions as F

    train = features.filter(F.col("split") == "train")
    if held_counts is None:
        model = estimator.fit(train)
        return model, _accuracy(model, features.filter(F.col("split") == "val"))
    correct = 0.0
    for fold, held in held_counts.items():
        if held:
            model = estimator.fit(train.filter(F.col(FOLD) != fold))
            correct += held * _accuracy(model, train.filter((F.col(FOLD) == fold) & (F.col("aug_index") == 0)))
    total = sum(held_counts.values())
    return None, correct / total if total else 0.0


def reports_from_counts(counts: Sequence[tuple[str, int, int, int]], label_names: Sequence[str]
                        ) -> dict[str, dict[str, Any] | None]:
    """Per-split :func:`~featurelib.train.base.classification_report` from ``(split, true, predicted,
    rows)`` counts (what Spark aggregates instead of collecting one pair per row).

    Returns
    -------
    dict
        ``{"train": report or None, "val": ..., "test": ...}`` (None: no rows in that split).
    """
    out = {}
    for split in ("train", "val", "test"):
        mine = [(t, p, n) for s, t, p, n in counts if s == split]
        if not mine:
            out[split] = None
            continue
        true, predicted, rows = (np.asarray(v, np.int64) for v in zip(*mine))
        out[split] = base.classification_report(np.repeat(true, rows), np.repeat(predicted, rows), label_names)
    return out


def run_concurrently(spark, function, items: Sequence[Any], threads: int) -> list[Any]:
    """``[function(item) for item in items]``, ``threads`` at a time, results in ``items`` order.

    Each fit is a chain of small Spark jobs whose cost is mostly scheduling latency, so two
    candidates in flight keep the executors busier (3 logreg fits on 2 cores: 29 s one at a
    time, 21 s three at a time). The threads inherit the caller's Spark job properties.
    """
    from concurrent.futures import ThreadPoolExecutor

    from pyspark.util import inheritable_thread_target

    if threads <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(min(threads, len(items))) as pool:
        return list(pool.map(inheritable_thread_target(spark)(function), items))


def _fold_counts(rows) -> tuple[dict[str, int], dict[int, int]]:
    """``({split: rows}, {fold: train originals})`` of the cached fitting rows, in one Spark job."""
    import pyspark.sql.functions as F

    grouped = rows.groupBy("split", FOLD, (F.col("aug_index") == 0).alias("original")).count().collect()
    splits: dict[str, int] = {}
    held = {fold: 0 for fold in range(CV_FOLDS)}
    for row in grouped:
        splits[row["split"]] = splits.get(row["split"], 0) + row["count"]
        if row["split"] == "train" and row["original"]:
            held[row[FOLD]] += row["count"]
    return splits, held


# --- the trainer ------------------------------------------------------------------------------------

class SparkTrainer(base.Trainer):
    """Spark MLlib, distributed over the Parquet shards: ``logreg``, ``linear_svm``, ``random_forest``.

    Parameters
    ----------
    spark : SparkSession, optional
        The session to use; default the active one, else one built from ``options``.
    options : dict, optional
        For :meth:`predict` (``train`` takes ``request.options``): ``master`` and ``conf``.
    """

    name = "spark"
    models = SUPPORTED

    def __init__(self, spark=None, options: dict[str, Any] | None = None) -> None:
        self._spark, self._options = spark, dict(options or {})

    def _session(self, options: dict[str, Any]):
        if self._spark is not None:
            return self._spark, False
        return session(options)

    def train(self, request: TrainRequest) -> dict[str, Any]:
        """Fit, select on val, report on test; write ``request.model_dir``. See :class:`~featurelib.train.base.Trainer`.

        Everything that can be checked without Spark is checked before a session starts.

        Raises
        ------
        UserError
            A model MLlib does not fit here, an unknown option or grid parameter, an unknown
            column, an output that is not one or lacks Parquet shards, no train rows, fewer than
            2 train classes, an existing model folder (without ``request.overwrite``), an
            out-of-range ``--pca``.
        """
        started = time.perf_counter()
        check_model(request.model)
        check_options(request.options)
        grid = grid_of(request.model, request.options)
        parallelism_of(request.options)
        _check_name(request.name)
        if "://" in request.output:
            raise UserError(f"the spark trainer writes its model folder locally; {request.output!r} is a URL")
        base.refuse_existing_model_dir(request.model_dir, request.overwrite)
        dataset = open_dataset(request.output)
        _check_request(request, dataset)
        dataset.shard_paths("parquet")  # an HDF5-only output: one clear line, before Spark starts
        spark, built = self._session(request.options)
        try:
            spark.sparkContext.setJobDescription(f"featurelib train {request.name}")
            pipeline, pca, selection, reports = self._fit(spark, request, dataset, grid)
            report = {
                "name": request.name, "model": request.model, "trainer": self.name,
                "columns": list(request.columns), "feature_fingerprint": dataset.feature_fingerprint,
                "label_names": list(dataset.label_names), "standardize": request.standardize, "pca": request.pca,
                "seed": request.seed, "selection": selection, **reports,
                "seconds": round(time.perf_counter() - started, 3),
            }
            _save(request, report, pipeline, pca)
            return report
        finally:
            if built:
                spark.stop()

    def _fit(self, spark, request: TrainRequest, dataset: FeatureDataset, grid: list[dict[str, Any]]):
        """Fit every candidate, select, report. Returns ``(PipelineModel, pca, selection, reports)``."""
        import pyspark.sql.functions as F
        from pyspark.ml import PipelineModel

        label_names = list(dataset.label_names)
        parallelism = parallelism_of(request.options)
        # Built first: a wrong grid parameter fails before any Spark job runs.
        estimators = [make_estimator(request.model, params, request.seed, parallelism) for params in grid]
        labelled = read_rows(spark, dataset, request.columns).filter(F.col("label") >= 0)
        pca = None
        if request.pca:
            width = sum(dataset.columns[c] for c in request.columns)
            sample = pca_sample(labelled.filter(F.col("split") == "train"), request.columns, width, request.pca,
                                request.seed)
            pca = base.fit_pca(sample, request.pca, request.seed)
        vectors, vector_columns = vectorize(spark, labelled, request.columns, pca)
        # Fitting rows: every train row (augmented variants teach too), the val originals.
        # Cached once: every candidate's iterations read them from memory, and the PCA
        # projection (Python) runs once per row, not once per pass.
        fold = F.pmod(F.crc32(F.col("source_key")), F.lit(CV_FOLDS)).cast("int").alias(FOLD)
        fitting = (vectors.filter((F.col("split") == "train") | ((F.col("split") == "val") & (F.col("aug_index") == 0)))
                   .select("split", "aug_index", label_column(len(label_names)), fold, *vector_columns).cache())
        try:
            split_rows, held = _fold_counts(fitting)
            if not split_rows.get("train"):
                raise UserError(f"{dataset.root} has no labelled train rows in its Parquet shards")
            stages = prep_stages(vector_columns, request.standardize, fitting.filter(F.col("split") == "train"))
            features = PipelineModel(stages).transform(fitting)
            cv = not split_rows.get("val")

            def candidate(index):
                begun = time.perf_counter()
                model, score = _score(estimators[index], features, held if cv else None)
                return model, _candidate(grid[index], score, time.perf_counter() - begun)

            models, candidates = zip(*run_concurrently(spark, candidate, range(len(grid)), parallelism))
            scores = [c["val_accuracy"] for c in candidates]
            best = choose(scores)
            chosen = models[best]
            if chosen is None:  # cross-validation only scored: fit the winner on all train rows
                chosen = estimators[best].fit(features.filter(F.col("split") == "train"))
        finally:
            fitting.unpersist()
        pipeline = PipelineModel(stages + [chosen])
        # The saved pipeline, end to end, on every labelled original: one job, C x C counts per split back.
        counts = (pipeline.transform(vectors.filter(F.col("aug_index") == 0))
                  .groupBy("split", "label", F.col("prediction").cast("int").alias("predicted")).count().collect())
        reports = reports_from_counts([(r["split"], r["label"], r["predicted"], r["count"]) for r in counts],
                                      label_names)
        return pipeline, pca, _selection(list(candidates), best, cv), reports

    def predict(self, model_dir: str, output: str) -> str:
        """Apply the model in ``model_dir`` to every row of ``output`` (all splits, unlabelled too).

        Writes ``output/predictions/NAME.parquet`` (the sklearn trainer's columns: key, source_key,
        aug_index, split, true_label in the model's label order (-1 unlabelled or unknown), label,
        label_name, probabilities (null for ``linear_svm``)), sorted by key, written by the driver
        through a temporary file and a rename; returns its path.

        Raises
        ------
        UserError
            Not a saved spark model, not an output, or an output with another feature
            fingerprint (or without the model's columns).
        """
        import pyspark.sql.functions as F
        from pyspark.ml import PipelineModel
        from pyspark.ml.functions import vector_to_array

        info, dataset = base.open_for_prediction(self.name, model_dir, output)
        names = list(info["label_names"])
        pca = base.load_pca(model_dir) if info.get("pca") else None
        spark, built = self._session(self._options)
        try:
            spark.sparkContext.setJobDescription(f"featurelib predict {info['name']}")
            model = PipelineModel.load(os.path.abspath(os.path.join(model_dir, SPARK_DIR)))
            vectors, _ = vectorize(spark, read_rows(spark, dataset, info["columns"]), info["columns"], pca)
            predicted = model.transform(vectors)
            wanted = ["key", "split", "aug_index", "label", F.col("prediction").cast("int").alias("predicted")]
            if "probability" in predicted.columns:
                wanted.append(vector_to_array("probability", "float32").alias("probability"))
            table = predicted.select(*wanted).toArrow()
        finally:
            if built:
                spark.stop()
        y = table.column("label").to_numpy().astype(np.int32)
        batch = Arrays(np.zeros((len(y), 0), np.float32), y, table.column("key").to_pylist(),
                       table.column("split").to_pylist(), table.column("aug_index").to_numpy().astype(np.int16),
                       None, {})
        probabilities = (list_column_numpy(table.column("probability"), len(names))
                         if "probability" in table.column_names else None)
        path = os.path.join(output, base.PREDICTIONS_DIR, f"{info['name']}.parquet")
        write_predictions(path, [(batch, base.to_model_labels(names, dataset.label_names)[np.asarray(y, np.int64)],
                                  table.column("predicted").to_numpy().astype(np.int32), probabilities)],
                          names, info)
        return path


def _save(request: TrainRequest, report: dict[str, Any], pipeline, pca) -> None:
    """Write the model folder beside its final place, then rename it there (base.staged_model_dir):
    ``spark/`` (the PipelineModel), ``pca.npz``, ``report.json``, ``confusion.png``, ``model.json`` last."""
    with base.staged_model_dir(request.model_dir, request.overwrite) as staging:
        pipeline.write().save(os.path.abspath(os.path.join(staging, SPARK_DIR)))
        if pca is not None:
            base.save_pca(staging, *pca)
        base.write_json(os.path.join(staging, base.REPORT), report)
        shown = next(s for s in ("test", "val", "train") if report[s])
        base.write_confusion_png(report[shown]["confusion"], report["label_names"],
                                 os.path.join(staging, base.CONFUSION_PNG),
                                 title=f"{report['name']}: {shown} ({report[shown]['rows']} rows)")
        info = model_info(report)
        info["files"] = [SPARK_DIR] + ([base.PCA_FILE] if pca is not None else [])
        base.write_json(os.path.join(staging, base.MODEL_INFO), info)
